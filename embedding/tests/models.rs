//! Model files: pulling from a Hugging Face Hub endpoint (a local server answering the hub's
//! `/{repo}/resolve/{revision}/{file}` urls), and export refusing what it cannot export.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use twin_config::EmbeddingPrecision;

use twin_embedding::model::{pull, tool_cache, REQUIRED_FILES};
use twin_embedding::{EmbeddingError, ModelFiles};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn model_dir() -> PathBuf {
    tool_cache().expect("tool cache").join("models").join(MODEL)
}

/// Each request's url path and whether it carried the bearer token.
type RequestLog = Arc<Mutex<Vec<(String, bool)>>>;

/// A hub on 127.0.0.1 serving `files` (url path -> bytes); records each request's path and
/// whether it carried a bearer token.
fn hub(files: HashMap<String, Vec<u8>>) -> (String, RequestLog) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let mut authorised = false;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if header
                    .to_ascii_lowercase()
                    .starts_with("authorization: bearer secret-token")
                {
                    authorised = true;
                }
            }
            log.lock().expect("log").push((path.clone(), authorised));
            let mut stream = stream;
            let _ = match files.get(&path) {
                Some(body) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(body)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    (endpoint, seen)
}

fn served_model() -> HashMap<String, Vec<u8>> {
    REQUIRED_FILES
        .iter()
        .map(|f| {
            let bytes = std::fs::read(model_dir().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e} (run scripts/setup.sh)"));
            (format!("/{MODEL}/resolve/main/{f}"), bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_model_is_pulled_from_a_hub_endpoint_with_its_token() {
    let (endpoint, seen) = hub(served_model());
    let dest = tempfile::tempdir().expect("tempdir");
    let files = pull(&endpoint, MODEL, "main", dest.path(), Some("secret-token"))
        .await
        .expect("pull");
    for f in REQUIRED_FILES {
        assert_eq!(
            std::fs::read(files.dir.join(f)).expect("pulled"),
            std::fs::read(model_dir().join(f)).expect("original"),
            "{f}"
        );
    }
    // Optional files the hub does not have are skipped; no half-written file is left.
    let leftovers: Vec<_> = walk(dest.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let seen = seen.lock().expect("log");
    assert!(
        seen.iter().all(|(_, authorised)| *authorised),
        "every request carries the token"
    );
}

#[tokio::test]
async fn a_model_the_hub_lacks_is_a_clear_error_without_the_token() {
    let (endpoint, _) = hub(HashMap::new());
    let dest = tempfile::tempdir().expect("tempdir");
    let err = pull(
        &endpoint,
        "nobody/nothing",
        "main",
        dest.path(),
        Some("secret-token"),
    )
    .await
    .expect_err("missing");
    let shown = err.to_string();
    assert!(
        shown.contains("nobody/nothing/resolve/main/config.json") && shown.contains("404"),
        "{shown}"
    );
    assert!(!shown.contains("secret-token"));
    assert!(matches!(err, EmbeddingError::Download { .. }));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A model folder with the real tokenizer, a config and a safetensors file of our choosing.
fn fake_model(config: &str, tensors: &[(&str, Vec<usize>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        model_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("tokenizer");
    std::fs::write(dir.path().join("config.json"), config).expect("config");
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.resize(file.len() + offset, 0);
    std::fs::write(dir.path().join("model.safetensors"), file).expect("weights");
    dir
}

const TINY_BERT: &str = r#"{"model_type": "bert", "hidden_size": 4, "num_attention_heads": 2,
    "num_hidden_layers": 1, "intermediate_size": 8, "max_position_embeddings": 16}"#;

#[test]
fn export_names_the_missing_tensor() {
    let dir = fake_model(
        TINY_BERT,
        &[("embeddings.word_embeddings.weight", vec![10, 4])],
    );
    let files = ModelFiles::at(MODEL, dir.path()).expect("files");
    let err = files
        .export(&dir.path().join("model.onnx"), EmbeddingPrecision::Fp32)
        .expect_err("incomplete");
    assert!(
        err.to_string()
            .contains("embeddings.position_embeddings.weight is missing"),
        "{err}"
    );
    assert!(!dir.path().join("model.onnx").exists(), "no partial output");
}

#[test]
fn export_refuses_a_model_that_is_not_bert() {
    let dir = fake_model(r#"{"model_type": "gpt2", "n_embd": 768}"#, &[]);
    let err = ModelFiles::at(MODEL, dir.path())
        .expect("files")
        .export(&dir.path().join("m.onnx"), EmbeddingPrecision::Fp32)
        .expect_err("gpt2");
    let shown = err.to_string();
    assert!(shown.contains("config.json"), "{shown}");
}

#[test]
fn export_refuses_a_tensor_of_the_wrong_shape() {
    let dir = fake_model(
        TINY_BERT,
        &[("embeddings.word_embeddings.weight", vec![10, 5])],
    );
    let err = ModelFiles::at(MODEL, dir.path())
        .expect("files")
        .export(&dir.path().join("m.onnx"), EmbeddingPrecision::Fp32)
        .expect_err("shape");
    assert!(
        err.to_string()
            .contains("embeddings.word_embeddings.weight"),
        "{err}"
    );
}

#[test]
fn a_folder_without_the_weights_is_not_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ModelFiles::at(MODEL, dir.path()).expect_err("empty");
    assert!(err.to_string().contains("config.json is missing"), "{err}");
}
