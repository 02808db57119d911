//! The import against the real libraries: dequantization bit for bit equal to the `gguf` Python
//! package, tokenizers equal to transformers' own GGUF conversion, and bad files refused with
//! what and where. The reference data was made by `data/make_reference.py` (versions in
//! `data/README.md`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use twin_gguf::{GgufError, GgufFile, TensorType, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(data(name)).expect("reference data");
    serde_json::from_str(&text).expect("reference JSON")
}

fn sha(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SmolLM2 file setup installs, or `None` (the test says it skipped; under CI it fails).
fn smollm2(test: &str) -> Option<PathBuf> {
    let path = twin_testkit::process::tool_cache()
        .join("models/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf");
    match (path.exists(), std::env::var_os("CI")) {
        (true, _) => Some(path),
        (false, None) => {
            eprintln!(
                "SKIPPED {test}: {} is missing (run scripts/setup.sh)",
                path.display()
            );
            None
        }
        (false, Some(_)) => panic!("{test}: {} is missing under CI", path.display()),
    }
}

#[test]
fn every_supported_type_dequantizes_as_the_gguf_package_does() {
    let file = GgufFile::open(&data("types.gguf")).expect("types.gguf");
    let expected = json("types.json");
    let expected = expected.as_object().expect("object");
    assert_eq!(file.tensors.len(), 11);
    for tensor in &file.tensors {
        let values = file.dequantize(tensor).expect("dequantize");
        assert_eq!(values.len(), 1024, "{}", tensor.name);
        let reference = &expected[&tensor.name];
        assert_eq!(
            sha(&values),
            reference["sha256"].as_str().expect("sha"),
            "{} ({}) differs from gguf.quants.dequantize; first values {:?}, expected {}",
            tensor.name,
            tensor.kind,
            &values[..4],
            reference["first"]
        );
    }
    let kinds: Vec<String> = file.tensors.iter().map(|t| t.kind.to_string()).collect();
    for kind in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} tensor in {kinds:?}"
        );
    }
}

#[test]
fn metadata_of_every_value_type_is_read() {
    let file = GgufFile::open(&data("types.gguf")).expect("types.gguf");
    assert_eq!(file.version, 3);
    assert_eq!(file.get("test.i8"), Some(&Value::I8(-3)));
    assert_eq!(file.get("test.u16"), Some(&Value::U16(65535)));
    assert_eq!(file.get("test.i16"), Some(&Value::I16(-32768)));
    assert_eq!(file.get("test.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(file.get("test.f64"), Some(&Value::F64(2.5)));
    assert_eq!(file.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(
        file.get("test.array.floats"),
        Some(&Value::Array(vec![Value::F32(0.5), Value::F32(-1.25)]))
    );
    let nested = file
        .get("test.array.nested")
        .and_then(Value::as_array)
        .expect("nested");
    assert_eq!(nested.len(), 2);
    assert_eq!(nested[1].as_array().map(<[Value]>::len), Some(1));
    assert_eq!(
        file.get("general.name").and_then(Value::as_str),
        Some("every type")
    );
}

#[test]
fn a_version_2_file_reads_the_same() {
    let mut bytes = std::fs::read(data("types.gguf")).expect("types.gguf");
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = GgufFile::from_bytes(Path::new("v2.gguf"), bytes).expect("version 2");
    assert_eq!(file.version, 2);
    assert_eq!(file.tensors.len(), 11);
}

#[test]
fn every_tensor_of_smollm2_equals_the_gguf_package() {
    let Some(path) = smollm2("every_tensor_of_smollm2_equals_the_gguf_package") else {
        return;
    };
    let file = GgufFile::open(&path).expect("SmolLM2");
    let expected = json("smollm2_tensors.json");
    let rows = expected["tensors"].as_array().expect("tensors");
    assert_eq!(file.tensors.len(), rows.len());
    for (tensor, row) in file.tensors.iter().zip(rows) {
        assert_eq!(tensor.name, row["name"].as_str().expect("name"));
        assert_eq!(tensor.kind.to_string(), row["type"].as_str().expect("type"));
        let values = file.dequantize(tensor).expect("dequantize");
        assert_eq!(
            sha(&values),
            row["sha256"].as_str().expect("sha"),
            "{} ({}) differs from gguf.quants.dequantize",
            tensor.name,
            tensor.kind
        );
    }
}

/// Token ids of our tokenizer.json against transformers' conversion of the same file (`key`
/// picks the reference: `files` for transformers as it is).
fn check_tokenizer(path: &Path, smollm_pre_tokenizer: bool) {
    let references = json("tokenizer_ids.json");
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let plain = references["files"][name]
        .as_array()
        .expect("ids of this file");
    let expected = if smollm_pre_tokenizer {
        references["smollm_pre_tokenizer"]
            .as_array()
            .expect("smollm ids")
    } else {
        plain
    };
    let texts = references["texts"].as_array().expect("texts");
    let out = tempfile::tempdir().expect("tempdir");
    let file = GgufFile::open(path).expect("open");
    let built = twin_gguf::tokenizer::build(&file, 2048).expect("tokenizer");
    let json_path = out.path().join("tokenizer.json");
    std::fs::write(&json_path, built.tokenizer.to_string()).expect("write");
    let tokenizer = tokenizers::Tokenizer::from_file(&json_path).expect("load");
    for ((text, ids), plain) in texts.iter().zip(expected).zip(plain) {
        let text = text.as_str().expect("text");
        let ours = tokenizer.encode(text, false).expect("encode");
        // Without digits, the pre-tokenizers agree: transformers' plain conversion is the reference.
        if !text.chars().any(|c| c.is_numeric()) {
            assert_eq!(
                ids, plain,
                "{name}: the references differ on a text without digits"
            );
        }
        let theirs: Vec<u32> = ids
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            ours.get_ids(),
            theirs.as_slice(),
            "{name}: {:?}",
            text.chars().take(80).collect::<String>()
        );
        // What is encoded decodes back (byte-level BPE loses nothing).
        if !name.contains("spm") {
            let decoded = tokenizer.decode(ours.get_ids(), false).expect("decode");
            assert_eq!(decoded, text, "{name}: decode");
        }
    }
}

#[test]
fn smollm2s_tokenizer_equals_transformers_conversion() {
    if let Some(path) = smollm2("smollm2s_tokenizer_equals_transformers_conversion") {
        // transformers' converter ignores `tokenizer.ggml.pre = smollm` (digits isolated first,
        // as SmolLM2's own tokenizer.json and llama.cpp do): where whitespace precedes a digit,
        // the reference is transformers' vocabulary and merges under that pre-tokenizer.
        check_tokenizer(&path, true);
    }
}

#[test]
fn llama3_qwen2_and_sentencepiece_tokenizers_equal_transformers_conversion() {
    for name in ["tiny-llama.gguf", "tiny-qwen2.gguf", "tiny-llama-spm.gguf"] {
        check_tokenizer(&data(name), false);
    }
}

#[test]
fn a_truncated_file_is_an_error_that_says_where() {
    let bytes = std::fs::read(data("tiny-qwen2.gguf")).expect("file");
    for cut in [3, 10, 100, 2_000, bytes.len() / 2, bytes.len() - 1] {
        let err = GgufFile::from_bytes(Path::new("cut.gguf"), bytes[..cut].to_vec())
            .expect_err("a truncated file must not read");
        let text = err.to_string();
        assert!(text.starts_with("cut.gguf: "), "{text}");
        assert!(
            text.contains("truncated") || text.contains("not GGUF"),
            "cut at {cut}: {text}"
        );
        assert!(matches!(err, GgufError::Format { .. }), "{err:?}");
    }
    let err = GgufFile::from_bytes(Path::new("x.gguf"), b"PK\x03\x04 not a model".to_vec())
        .expect_err("not GGUF");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

/// `bytes` with the tensor description of `name` found and `patch` applied to what follows
/// its name (dimension count, dimensions, type).
fn patch_tensor(bytes: &mut [u8], name: &str, patch: impl Fn(&mut [u8])) {
    let needle = name.as_bytes();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name in the header")
        + needle.len();
    patch(&mut bytes[at..]);
}

#[test]
fn unknown_types_architectures_and_missing_tensors_are_refused_and_nothing_is_written() {
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("model");

    // A tensor of a type twin does not read (Q3_K = 11).
    let mut bytes = std::fs::read(data("tiny-qwen2.gguf")).expect("file");
    patch_tensor(&mut bytes, "blk.1.ffn_up.weight", |rest| {
        let n_dims = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let at = 4 + 8 * n_dims;
        rest[at..at + 4].copy_from_slice(&11u32.to_le_bytes());
    });
    let file = GgufFile::from_bytes(Path::new("q3k.gguf"), bytes).expect("readable");
    assert_eq!(
        file.tensor("blk.1.ffn_up.weight").map(|t| t.kind),
        Some(TensorType::Unknown(11))
    );
    let err = twin_gguf::checkpoint::import_file(&file, &target).expect_err("Q3_K");
    assert!(
        err.to_string()
            .contains("`blk.1.ffn_up.weight` has type Q3_K (11)"),
        "{err}"
    );
    assert!(!target.exists(), "nothing is written for a refused file");

    // A missing tensor (renamed in place).
    let mut bytes = std::fs::read(data("tiny-llama.gguf")).expect("file");
    patch_tensor(&mut bytes, "blk.1.ffn_gate.weigh", |rest| rest[0] = b'X');
    let file = GgufFile::from_bytes(Path::new("missing.gguf"), bytes).expect("readable");
    let err = twin_gguf::checkpoint::import_file(&file, &target).expect_err("missing");
    let text = err.to_string();
    assert!(
        text.contains("`blk.1.ffn_gate.weight` is missing"),
        "{text}"
    );
    assert!(!target.exists());

    // An architecture twin does not import.
    let file = GgufFile::open(&data("types.gguf")).expect("types");
    let err = twin_gguf::checkpoint::import_file(&file, &target).expect_err("arch");
    assert!(
        err.to_string()
            .contains("architecture `test` is not one twin imports"),
        "{err}"
    );
    assert!(!target.exists());
}

#[test]
fn the_tiny_models_import_as_checkpoints_of_their_family() {
    let out = tempfile::tempdir().expect("tempdir");
    for (name, model_type, tied) in [
        ("tiny-llama.gguf", "llama", true),
        ("tiny-qwen2.gguf", "qwen2", false),
    ] {
        let dir = out.path().join(model_type);
        let imported = twin_gguf::import(&data(name), &dir).expect("import");
        assert_eq!(imported.model_type, model_type);
        assert_eq!(imported.config["tie_word_embeddings"], tied);
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            assert!(dir.join(file).exists(), "{name}: {file}");
        }
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).expect("read"),
        )
        .expect("json");
        assert!(config["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>")));
        assert_eq!(config["eos_token"], "<|im_end|>");
    }
}
