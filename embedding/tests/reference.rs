//! Our embeddings against an independent implementation: `reference/minilm_reference.py`
//! computes all-MiniLM-L6-v2 in numpy straight from the safetensors weights (it reproduces the
//! model card's published vector); its output is kept in `testdata/minilm_reference.json`.
//!
//! The int8 export is checked against the fp32 one on the real corpus: how close its vectors
//! are, and how much of a search's top 10 it keeps.
//!
//! Needs the weights and ONNX Runtime that scripts/setup.sh installs into the tool cache.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;
use twin_config::EmbeddingPrecision;
use twin_embedding::model::{default_runtime_library, tool_cache};
use twin_embedding::{Embedder, EmbedderOptions, ModelFiles};
use twin_testkit::vectors::corpus_agreement;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Deserialize)]
struct Reference {
    max_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file"))
        .expect("reference json")
}

fn model() -> ModelFiles {
    let dir = std::env::var_os("TWIN_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .or_else(|| tool_cache().map(|c| c.join("models").join(MODEL)))
        .expect("a model folder");
    ModelFiles::at(MODEL, &dir)
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh: it installs the weights)"))
}

/// One export and one session for the whole test binary.
fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<(tempfile::TempDir, Embedder)> = OnceLock::new();
    &EMBEDDER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let model = model();
            let onnx = model
                .onnx(dir.path(), EmbeddingPrecision::Fp32)
                .expect("export");
            let runtime = twin_onnx::environment(&default_runtime_library()).expect("onnx runtime");
            let options = EmbedderOptions {
                max_batch_tokens: 1024,
                ..Default::default()
            };
            let embedder = Embedder::load(runtime, &model, &onnx, options).expect("load");
            (dir, embedder)
        })
        .1
}

/// An embedder of two single-threaded workers (and the folder of its ONNX export).
fn two_workers(max_batch_tokens: usize) -> (tempfile::TempDir, Embedder) {
    two_workers_at(max_batch_tokens, EmbeddingPrecision::Fp32)
}

fn two_workers_at(
    max_batch_tokens: usize,
    precision: EmbeddingPrecision,
) -> (tempfile::TempDir, Embedder) {
    let model = model();
    let dir = tempfile::tempdir().expect("tempdir");
    let onnx = model.onnx(dir.path(), precision).expect("export");
    let runtime = twin_onnx::environment(&default_runtime_library()).expect("onnx runtime");
    let options = EmbedderOptions {
        workers: 2,
        intra_threads: 1,
        max_batch_tokens,
        ..Default::default()
    };
    let embedder = Embedder::load(runtime, &model, &onnx, options).expect("load");
    (dir, embedder)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_the_independent_reference() {
    let reference = reference();
    let embedder = embedder();
    assert_eq!(embedder.dimension(), 384);
    assert_eq!(reference.max_tokens, 256);
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    // All at once: batched, sorted by length, padded within each batch.
    let vectors = embedder.embed(&texts).expect("embed");
    let mut lowest = f32::MAX;
    for (case, vector) in reference.cases.iter().zip(&vectors) {
        let ids = embedder
            .tokenizer()
            .encode(case.text.as_str(), true)
            .expect("tokenize");
        assert_eq!(
            ids.get_ids(),
            case.token_ids.as_slice(),
            "tokens of {:?}",
            case.text
        );
        let similarity = cosine(vector, &case.embedding);
        lowest = lowest.min(similarity);
        assert!(
            similarity >= 0.9999,
            "cosine {similarity} for {:?}",
            case.text
        );
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not normalised: {norm}");
    }
    eprintln!("lowest cosine similarity to the reference: {lowest:.7}");
}

#[test]
fn padding_in_a_batch_does_not_change_an_embedding() {
    let embedder = embedder();
    let short = "Short text.";
    let long =
        "A much longer text that forces padding onto the short one when both share a batch. "
            .repeat(4);
    let alone = embedder.embed(&[short]).expect("alone").remove(0);
    let together = embedder
        .embed(&[long.as_str(), short, long.as_str()])
        .expect("together");
    assert!(cosine(&alone, &together[1]) > 0.99999);
    assert!(cosine(&together[0], &together[2]) > 0.99999);
    assert!(embedder.embed(&[]).expect("nothing").is_empty());
}

#[test]
fn text_beyond_the_window_is_truncated_not_refused() {
    let embedder = embedder();
    let huge = "word ".repeat(5000);
    let vectors = embedder.embed(&[huge.as_str(), ""]).expect("embed");
    assert_eq!(vectors.len(), 2);
    assert!(vectors
        .iter()
        .all(|v| v.len() == 384 && v.iter().all(|x| x.is_finite())));
}

#[test]
fn concurrent_workers_give_the_same_embeddings_in_the_same_order() {
    let reference = reference();
    // Many small batches, so both workers get some.
    let (_dir, parallel) = two_workers(64);
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let ours = parallel.embed(&texts).expect("embed");
    for (case, vector) in reference.cases.iter().zip(&ours) {
        assert!(cosine(vector, &case.embedding) >= 0.9999, "{:?}", case.text);
    }
}

#[test]
fn concurrent_single_queries_are_served_side_by_side_and_answered_right() {
    let reference = reference();
    let (_dir, pool) = two_workers(EmbedderOptions::default().max_batch_tokens);
    let pool = std::sync::Arc::new(pool);
    assert_eq!(pool.workers(), 2);
    // Sixteen callers, one text each at a time, many times over: every answer is its own text's.
    std::thread::scope(|scope| {
        for caller in 0..16 {
            let pool = pool.clone();
            let reference = &reference;
            scope.spawn(move || {
                for round in 0..4 {
                    let case = &reference.cases[(caller + round) % reference.cases.len()];
                    let vector = pool.embed(&[case.text.as_str()]).expect("query").remove(0);
                    assert!(
                        cosine(&vector, &case.embedding) >= 0.9999,
                        "caller {caller} got another text's vector for {:?}",
                        case.text
                    );
                }
            });
        }
    });
}

#[test]
fn int8_embeddings_agree_with_fp32_on_the_corpus() {
    let (fp32_dir, fp32) = two_workers_at(512, EmbeddingPrecision::Fp32);
    let (int8_dir, int8) = two_workers_at(512, EmbeddingPrecision::Int8);
    let size = |dir: &tempfile::TempDir, precision| {
        let file = dir
            .path()
            .join(MODEL)
            .join(twin_embedding::model::onnx_file_name(precision));
        std::fs::metadata(file).expect("exported").len()
    };
    // The encoder's weights at one byte instead of four (the word embeddings stay fp32).
    let (fp32_bytes, int8_bytes) = (
        size(&fp32_dir, EmbeddingPrecision::Fp32),
        size(&int8_dir, EmbeddingPrecision::Int8),
    );
    assert!(
        int8_bytes * 10 < fp32_bytes * 7,
        "{int8_bytes} vs {fp32_bytes} bytes"
    );

    let (agreed, passages, queries) = corpus_agreement(
        |texts: &[&str]| fp32.embed(texts).expect("embed"),
        |texts: &[&str]| int8.embed(texts).expect("embed"),
        10,
    );
    eprintln!("int8 against fp32 over {passages} passages and {queries} title queries: {agreed:?}");
    assert!(agreed.mean_cosine >= 0.99, "{agreed:?}");
    assert!(agreed.min_cosine >= 0.95, "{agreed:?}");
    assert!(agreed.recall >= 0.95, "recall@10 {agreed:?}");
}

#[test]
fn the_export_writes_onnx_runtimes_fused_operators() {
    use prost::Message;
    use twin_onnx::proto::ModelProto;

    let model = model();
    let dir = tempfile::tempdir().expect("tempdir");
    let count = |precision| {
        let path = model.onnx(dir.path(), precision).expect("export");
        let bytes = std::fs::read(path).expect("read");
        let graph = ModelProto::decode(bytes.as_slice())
            .expect("an ONNX model")
            .graph
            .expect("a graph");
        let mut ops = std::collections::BTreeMap::<String, usize>::new();
        for node in graph.node {
            *ops.entry(node.op_type).or_default() += 1;
        }
        ops
    };
    // Attention, embeddings and GELU fused as ONNX Runtime's transformer optimizer fuses them.
    let fp32 = count(EmbeddingPrecision::Fp32);
    for (op, n) in [
        ("EmbedLayerNormalization", 1),
        ("Attention", 6),
        ("MatMul", 18),
        ("LayerNormalization", 12),
        ("BiasGelu", 6),
    ] {
        assert_eq!(fp32.get(op), Some(&n), "{op} in {fp32:?}");
    }
    assert!(!fp32.contains_key("Softmax") && !fp32.contains_key("Erf"));
    assert!(
        !fp32.contains_key("SkipLayerNormalization"),
        "slower on CPU"
    );
    let int8 = count(EmbeddingPrecision::Int8);
    for (op, n) in [
        ("QAttention", 6),
        ("DynamicQuantizeMatMul", 6),
        ("MatMulNBits", 12),
    ] {
        assert_eq!(int8.get(op), Some(&n), "{op} in {int8:?}");
    }
    assert!(!int8.contains_key("MatMul") && !int8.contains_key("Attention"));
}
