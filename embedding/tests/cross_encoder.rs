//! The cross-encoder against transformers: a `BertForSequenceClassification` checkpoint made by
//! transformers (`reference/make_cross_encoder.py`: the all-MiniLM-L6-v2 encoder and a head drawn
//! with a fixed seed), exported by our exporter and scored on ONNX Runtime, gives the logits
//! transformers gives for the same pairs: short, long (truncated longest first to 512 tokens)
//! and with an empty query.
//!
//! Needs the weights and ONNX Runtime that scripts/setup.sh installs, and its Python reference
//! environment (skipped, saying why, without it; under CI it must run).

use std::path::PathBuf;
use std::process::Command;
use twin_config::EmbeddingPrecision;

use twin_embedding::model::{default_runtime_library, tool_cache};
use twin_embedding::{CrossEncoder, CrossEncoderOptions, EmbeddingError, ModelFiles};

const ENCODER: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn encoder_dir() -> PathBuf {
    std::env::var_os("TWIN_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .or_else(|| tool_cache().map(|c| c.join("models").join(ENCODER)))
        .expect("a model folder")
}

#[test]
fn a_cross_encoder_exported_by_us_scores_pairs_as_transformers_does() {
    let Some(python) =
        twin_testkit::python::torch_python_with_or_skip("cross-encoder parity", &["transformers"])
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = dir.path().join("cross-encoder");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/make_cross_encoder.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(encoder_dir())
        .arg(&checkpoint)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");

    let files = ModelFiles::at("test/cross-encoder", &checkpoint).expect("files");
    let onnx = dir.path().join("onnx/model.onnx");
    let summary = files
        .export(&onnx, EmbeddingPrecision::Fp32)
        .expect("export");
    assert_eq!(summary.labels, 1, "one logit per pair");
    let runtime = twin_onnx::environment(&default_runtime_library()).expect("onnx runtime");
    let options = CrossEncoderOptions {
        max_batch_size: 2,
        ..Default::default()
    };
    let model = CrossEncoder::load(runtime, &files, &onnx, options).expect("load");

    let pairs = reference["pairs"].as_array().expect("pairs");
    let want: Vec<f64> = reference["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    // Scored one query at a time, in batches of two: padding must not change a score.
    let mut got = Vec::new();
    for pair in pairs {
        let query = pair[0].as_str().expect("query");
        let passage = pair[1].as_str().expect("passage");
        got.extend(model.score(query, &[passage]).expect("score"));
    }
    let kafka = pairs[0][0].as_str().expect("query");
    let batched = model
        .score(
            kafka,
            &[
                pairs[0][1].as_str().expect("passage"),
                pairs[1][1].as_str().expect("passage"),
                pairs[3][1].as_str().expect("passage"),
            ],
        )
        .expect("score");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() < 1e-4,
            "pair {i}: ours {g}, transformers {w} ({})",
            reference["versions"]
        );
    }
    assert!((batched[0] - got[0]).abs() < 1e-4 && (batched[1] - got[1]).abs() < 1e-4);
    let spread = want.iter().cloned().fold(f64::MIN, f64::max)
        - want.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "the pairs' scores differ: {want:?}");
}

#[test]
fn an_embedding_model_is_not_a_cross_encoder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = ModelFiles::at(ENCODER, encoder_dir())
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh: it installs the weights)"));
    let onnx = files
        .onnx(dir.path(), EmbeddingPrecision::Fp32)
        .expect("export");
    let runtime = twin_onnx::environment(&default_runtime_library()).expect("onnx runtime");
    let err = CrossEncoder::load(runtime, &files, &onnx, CrossEncoderOptions::default())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, EmbeddingError::Model { reason, .. } if reason.contains("BertForSequenceClassification")),
        "{err}"
    );
}
