//! An offline build (no LLM) over a corpus of articles: the 76 real articles of
//! `../shared/corpus/articles.json` when present (CI has it), else generated ones. Each kind and
//! method gives samples; no document is on both sides of the split; nothing is kept twice, nor
//! nearly twice; the same inputs give the same dataset; and export then import gives the same
//! samples back in every format.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use twin_config::DatasetsConfig;
use twin_datasets::formats::{self, Format};
use twin_datasets::quality::{normalize, similarity, MinHasher};
use twin_datasets::{
    build, BuildParams, DatasetError, DatasetKind, Method, OfflineGenerator, Sample, Split,
};
use twin_testkit::documents::corpus;
use twin_warehouse::{Snapshot, SqliteWarehouse, Warehouse};

fn check_clean(samples: &[(Split, Sample)], params: &BuildParams) {
    // Split by document.
    let mut sides: BTreeMap<&str, BTreeSet<Split>> = BTreeMap::new();
    for (split, sample) in samples {
        let doc = sample.origin.document_id.as_deref().expect("document");
        sides.entry(doc).or_default().insert(*split);
    }
    for (doc, splits) in &sides {
        assert_eq!(splits.len(), 1, "{doc} is on both sides");
    }
    // No exact duplicates, no near ones.
    let keys: BTreeSet<String> = samples
        .iter()
        .map(|(_, s)| normalize(&format!("{}\n{}", s.instruction, s.output)))
        .collect();
    assert_eq!(keys.len(), samples.len(), "exact duplicates kept");
    let hasher = MinHasher::default();
    let signatures: Vec<_> = samples
        .iter()
        .map(|(_, s)| hasher.signature(&s.output))
        .collect();
    for (i, a) in signatures.iter().enumerate() {
        for b in &signatures[i + 1..] {
            assert!(
                similarity(a, b) < params.near_duplicate_threshold,
                "near-duplicates kept"
            );
        }
    }
    for (_, s) in samples {
        let n = s.output.trim().chars().count();
        assert!(n >= params.limits.min_answer && n <= params.limits.max_answer);
        assert!(s.instruction.trim().chars().count() >= params.limits.min_instruction);
    }
}

fn round_trip(kind: DatasetKind, samples: &[(Split, Sample)]) {
    for format in Format::ALL.into_iter().filter(|f| f.holds(kind)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = formats::export(kind, samples, format, dir.path()).expect("export");
        assert_eq!(written.len(), 2, "train and test files");
        let imported = formats::import(&[(None, dir.path().to_path_buf())]).expect("import");
        assert_eq!(imported.kind, kind);
        let content = |all: &[(Split, Sample)]| -> Vec<(Split, String)> {
            all.iter()
                .map(|(split, s)| (*split, format!("{:?}", s.content())))
                .collect()
        };
        assert_eq!(
            content(&imported.samples),
            content(samples),
            "{format} round trip"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_builds_over_the_corpus_are_clean_split_by_document_and_reproducible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).expect("open");
    warehouse.ensure_schema().await.expect("schema");
    let docs = corpus();
    common::project(&warehouse, &common::chunker(), &docs, 0).await;
    let snapshot = Snapshot::new(warehouse.applied().await.expect("applied"), None, 1);
    let progress = indicatif::ProgressBar::hidden();
    let config = DatasetsConfig::default();

    for (kind, method) in [
        (DatasetKind::Instruct, Method::Backtranslate),
        (DatasetKind::Instruct, Method::Extract),
        (DatasetKind::Preference, Method::Backtranslate),
    ] {
        let mut params = BuildParams::from_config(&config, kind);
        params.method = method;
        let generator = OfflineGenerator::new();
        let built = build(&warehouse, &snapshot, &params, &generator, &progress)
            .await
            .expect("build");
        let s = &built.stats;
        println!(
            "{kind} {method}: {} documents, {} passages, {} kept ({:?}), {} duplicates, {} near, {} short, {} long",
            s.documents, s.passages, s.kept, s.samples, s.duplicates, s.near_duplicates, s.too_short, s.too_long
        );
        assert!(s.documents >= 70, "{s:?}");
        assert!(s.samples["train"] > 0 && s.samples["test"] > 0, "{s:?}");
        assert_eq!(s.kept, built.samples.len());
        if method == Method::Extract {
            assert!(s.kept > s.passages / 2, "extraction yields pairs: {s:?}");
        }
        check_clean(&built.samples, &params);
        if kind == DatasetKind::Preference {
            assert!(built
                .samples
                .iter()
                .all(|(_, s)| s.rejected.as_ref().is_some_and(|r| *r != s.output)));
        }
        let again = build(
            &warehouse,
            &snapshot,
            &params,
            &OfflineGenerator::new(),
            &progress,
        )
        .await
        .expect("again");
        assert_eq!(again.samples, built.samples, "deterministic");
        assert_eq!(again.record.id, built.record.id);
        round_trip(kind, &built.samples);
    }

    // One snapshot, datasets of several sizes.
    let mut params = BuildParams::from_config(&config, DatasetKind::Instruct);
    params.max_samples = Some(50);
    let small = build(
        &warehouse,
        &snapshot,
        &params,
        &OfflineGenerator::new(),
        &progress,
    )
    .await
    .expect("small");
    assert_eq!(small.samples.len(), 50);
    let full = BuildParams::from_config(&config, DatasetKind::Instruct);
    assert_ne!(
        small.record.id,
        twin_datasets::build::dataset_id(&snapshot, &OfflineGenerator::new(), &full)
    );
}

#[test]
fn a_malformed_line_is_reported_with_its_file_and_line_and_nothing_is_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("train.jsonl");
    std::fs::write(
        &good,
        "{\"instruction\":\"Explain logs\",\"input\":\"\",\"output\":\"A log is ordered.\"}\n",
    )
    .expect("write");
    let bad = dir.path().join("test.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{\"instruction\":\"c\",\"output\":\n",
    )
    .expect("write");
    let err = formats::import(&[(None, good.clone()), (None, bad.clone())]).expect_err("bad");
    assert!(
        matches!(&err, DatasetError::Malformed { line: 3, path, .. } if *path == bad),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("{}:3: not JSON", bad.display())));

    std::fs::write(
        &bad,
        "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n",
    )
    .expect("write");
    let err = formats::import(&[(None, good.clone()), (Some(Split::Test), bad.clone())])
        .expect_err("mixed kinds");
    assert!(
        err.to_string().contains(":1: a preference sample, but"),
        "{err}"
    );

    // A JSON array file, with its split given.
    let array = dir.path().join("held-out.json");
    std::fs::write(
        &array,
        r#"[{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]}]"#,
    )
    .expect("write");
    let imported = formats::import(&[(None, good), (None, array)]).expect("import");
    assert_eq!(imported.kind, DatasetKind::Instruct);
    assert_eq!(imported.samples.len(), 2);
    assert_eq!(
        imported.samples[1].0,
        Split::Train,
        "held-out is not a test name"
    );
    assert_eq!(imported.samples[1].1.system.as_deref(), Some("Be brief."));
}
