//! The `twin` command as a user runs it: help, configuration, the main job, reading the log.

use std::path::Path;
use std::process::{Command, Output};

use twin_eventlog::{publish, EmbeddedLog, EventLog};
use twin_schemas::{DocumentDeleted, DocumentKind, Event};
use twin_testkit::{FixtureServer, Route};

/// Run `twin` in `dir` with a clean `TWIN_*` environment plus `env`.
fn twin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
    cmd.current_dir(dir).args(args).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("TWIN_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run twin")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    for role in ["run", "ingest", "stream", "train", "serve", "config", "log"] {
        assert!(text.contains(role), "--help lacks {role}:\n{text}");
    }
}

#[test]
fn roles_not_told_what_to_do_say_what_they_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(dir.path(), &["serve"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("which model?"), "{}", stderr(&out));
    // A role that is built but not told what to do says what it needs.
    let out = twin(dir.path(), &["train"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--dataset"), "{}", stderr(&out));
}

/// Security item 1: `twin serve` and `twin up` refuse an address beyond loopback without a
/// token, before loading anything; `--insecure-no-auth` or a token lets them go on.
#[test]
fn serving_beyond_loopback_needs_a_token_or_insecure_no_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = "without an API token";
    for args in [
        &["serve", "--address", "0.0.0.0:0"][..],
        &[
            "up",
            "--roles",
            "serve",
            "--model",
            "m",
            "--address",
            "0.0.0.0:0",
        ][..],
    ] {
        let out = twin(dir.path(), args, &[]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(refused) && err.contains("--insecure-no-auth"),
            "{args:?}: {err}"
        );
    }
    // Past the check, each stops at what it lacks next: the model.
    let out = twin(
        dir.path(),
        &["serve", "--address", "0.0.0.0:0", "--insecure-no-auth"],
        &[],
    );
    let err = stderr(&out);
    assert!(
        !err.contains(refused) && err.contains("WITHOUT AUTHENTICATION"),
        "{err}"
    );
    assert!(err.contains("which model?"), "{err}");
    let out = twin(
        dir.path(),
        &["serve", "--address", "0.0.0.0:0"],
        &[("TWIN_SERVING__API_TOKEN", "a-long-random-token")],
    );
    let err = stderr(&out);
    assert!(
        !err.contains(refused) && err.contains("which model?"),
        "{err}"
    );
    assert!(!err.contains("a-long-random-token"), "{err}");
    // Loopback needs no token.
    let out = twin(dir.path(), &["serve", "--address", "127.0.0.1:0"], &[]);
    assert!(stderr(&out).contains("which model?"), "{}", stderr(&out));
}

/// Security item 1, the deployment: docker/compose.yml publishes every port on the host's
/// loopback only, and takes every secret from the environment with no default (compose refuses
/// to start without it); Qdrant gets an API key and twin passes it on.
#[test]
fn the_deployment_publishes_on_loopback_and_takes_secrets_from_the_environment() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/compose.yml"))
            .expect("docker/compose.yml");
    let lines: Vec<&str> = compose.lines().collect();
    let mut published = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "ports:" {
            for item in lines[i + 1..]
                .iter()
                .take_while(|l| l.trim_start().starts_with("- "))
            {
                published += 1;
                assert!(
                    item.trim_start().starts_with("- \"127.0.0.1:"),
                    "line {}: published beyond loopback: {item}",
                    i + 2
                );
            }
        }
    }
    assert!(published >= 5, "{published} ports found");
    let secret_keys = ["PASSWORD", "API_KEY", "API_TOKEN"];
    let mut secrets = 0;
    for line in &lines {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if secret_keys.iter().any(|k| key.ends_with(k)) {
            secrets += 1;
            let value = value.trim();
            assert!(
                value.starts_with("${") && value.contains(":?") && !value.contains(":-"),
                "a secret with a default or a literal: {line}"
            );
        }
    }
    assert!(secrets >= 5, "{secrets} secrets found");
    assert!(
        compose.contains("QDRANT__SERVICE__API_KEY")
            && compose.contains("TWIN_VECTORS__QDRANT__API_KEY")
    );
}

/// Security item 15: sizes in tokens are not secrets; tokens are.
#[test]
fn config_show_masks_tokens_but_not_token_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(
        dir.path(),
        &["config", "show"],
        &[("TWIN_SERVING__API_TOKEN", "tok-123456")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("tok-123456"), "{text}");
    for key in ["max_tokens", "overlap_tokens"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
        assert!(!line.contains("********"), "{line}");
    }
}

/// A twin.toml crawling `urls` as web articles, impatiently, without a metrics port.
fn crawl_config(dir: &Path, urls: &[String], schedule: &str) {
    let mut text = format!(
        "[metrics]\nstream = \"\"\ningest = \"\"\n[author]\nid = \"paul\"\nfull_name = \"Paul Iusztin\"\n\
         [ingest]\nschedule = \"{schedule}\"\n[ingest.http]\nrequests_per_second = 0.0\n\
         retries = 1\nbackoff_ms = 10\ntimeout_secs = 2.0\n"
    );
    for url in urls {
        text.push_str(&format!(
            "[[ingest.sources]]\nurl = \"{url}\"\nplatform = \"web\"\n"
        ));
    }
    std::fs::write(dir.join("twin.toml"), text).expect("twin.toml");
}

fn page(body: &str) -> Route {
    Route::html(format!(
        "<html><head><title>A post</title></head><body><nav>Home</nav><article><h1>A post</h1><p>{body}</p></article></body></html>"
    ))
}

#[test]
fn ingest_once_summarises_each_source_and_fails_when_one_fails() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(FixtureServer::start()).expect("server");
    server.put("/good", page("Events are the truth."));
    server.put("/broken", Route::status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    crawl_config(
        dir.path(),
        &[server.url("/good"), server.url("/broken")],
        "6h",
    );

    let out = twin(dir.path(), &["ingest", "--once"], &[]);
    assert!(!out.status.success(), "a failed source fails the pass");
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.contains("source") && text.contains("unchanged") && text.contains("total"),
        "{text}"
    );
    let good = text
        .lines()
        .find(|l| l.contains("/good"))
        .expect("a line for /good");
    let numbers: Vec<&str> = good.split_whitespace().skip(2).collect();
    assert_eq!(numbers, vec!["1", "0", "0", "0", "0"], "{good}");
    assert!(
        err.contains(&server.url("/broken")) && err.contains("HTTP 500"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Fixed: the next pass succeeds and emits only what is new.
    server.put("/broken", page("Fixed now."));
    let out = twin(dir.path(), &["ingest", "--once"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let total = text
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("total line");
    assert_eq!(
        total.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec!["1", "0", "1", "0", "0"],
        "{text}"
    );
    let out = twin(
        dir.path(),
        &["ingest", "--once", "--source", "nothing-like-this"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no source matches"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ingest_on_a_schedule_stops_cleanly_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(FixtureServer::start()).expect("server");
    server.put("/post", page("Crawled before the stop."));
    let dir = tempfile::tempdir().expect("tempdir");
    crawl_config(dir.path(), &[server.url("/post")], "1h");
    let mut child = Command::new(env!("CARGO_BIN_EXE_twin"))
        .current_dir(dir.path())
        .args(["ingest"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("twin ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.seen_at("/post").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first pass never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = std::time::Instant::now();
    let out = loop {
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "twin ingest did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 new"), "{}", stdout(&out));
    // The document crawled is on the log.
    let out = twin(
        dir.path(),
        &["log", "tail", "raw-documents", "--max", "10"],
        &[],
    );
    assert!(
        stdout(&out).contains("Crawled before the stop."),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_show_layers_file_then_environment_and_masks_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("twin.toml"),
        "[log]\npartitions = 7\n[log.kafka]\nbrokers = \"from-file:9092\"\n\
         [log.kafka.properties]\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"file-secret\"\n",
    )
    .expect("write");
    let out = twin(
        dir.path(),
        &["config", "show"],
        &[
            ("TWIN_LOG__KAFKA__BROKERS", "from-env:9092"),
            (
                "TWIN_LOG__KAFKA__PROPERTIES__SSL_KEY_PASSWORD",
                "env-secret",
            ),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("partitions = 7"), "file value kept:\n{text}");
    assert!(
        text.contains("from-env:9092") && !text.contains("from-file"),
        "env wins:\n{text}"
    );
    assert!(text.contains("svc"), "non-secret shown:\n{text}");
    assert!(
        !text.contains("file-secret") && !text.contains("env-secret"),
        "secret leaked:\n{text}"
    );
    assert!(text.contains("********"));
}

#[test]
fn a_bad_config_file_is_named_with_the_key_and_the_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("custom.toml"), "[log]\nbackend = 5\n").expect("write");
    let out = twin(
        dir.path(),
        &["--config", "custom.toml", "config", "show"],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("custom.toml") && err.contains("log.backend"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_main_job_prepares_the_embedded_log_under_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(dir.path(), &["run"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("raw-documents") && text.contains("embedded"),
        "{text}"
    );
    assert!(dir
        .path()
        .join(".twin/log/raw-documents/partitions")
        .exists());
    // --data-dir moves it.
    let out = twin(dir.path(), &["--data-dir", "elsewhere", "run"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("elsewhere/log/chunks/partitions").exists());
}

fn tombstone(id: &str) -> Event {
    Event::Deleted(DocumentDeleted {
        document_id: id.into(),
        kind: DocumentKind::Post,
        platform: "linkedin".into(),
        url: format!("https://www.linkedin.com/posts/{id}"),
        deleted_at: 1_700_000_000_000,
        reason: "HTTP 404 at source".into(),
    })
}

#[test]
fn log_tail_prints_events_as_json_and_reports_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bad = runtime.block_on(async {
        let log = EmbeddedLog::open(dir.path().join(".twin/log"), 3, false).expect("open");
        publish(&log, "raw-documents", &[tombstone("a")])
            .await
            .expect("publish");
        let bad = log
            .append("raw-documents", b"b", b"garbage")
            .await
            .expect("append");
        publish(&log, "raw-documents", &[tombstone("c")])
            .await
            .expect("publish");
        bad
    });
    let out = twin(dir.path(), &["log", "tail", "raw-documents"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["document_id"].as_str().expect("id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "c"]);
    assert!(lines.iter().all(|l| l["_type"] == "DocumentDeleted"));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "partition {} at offset {}",
            bad.partition, bad.offset
        )),
        "{err}"
    );
}

#[test]
fn log_tail_of_a_missing_topic_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(dir.path(), &["log", "tail", "no-such-topic"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-such-topic does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join(".twin/log/no-such-topic").exists());
}

#[test]
fn models_embed_prints_normalised_vectors_of_the_configured_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = twin(
        dir.path(),
        &[
            "models",
            "embed",
            "Streaming pipelines in Rust.",
            "Another text.",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["model"], "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(line["dimension"], 384);
        let norm: f64 = line["embedding"]
            .as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number").powi(2))
            .sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    // The ONNX file was exported into the data folder on first use.
    let models = dir
        .path()
        .join(".twin/models/sentence-transformers/all-MiniLM-L6-v2");
    assert!(models.join("model.fp32.v2.onnx").is_file());

    // At int8 (from the environment), its own file, and vectors close to fp32's.
    let out = twin(
        dir.path(),
        &["models", "embed", "Streaming pipelines in Rust."],
        &[("TWIN_EMBEDDING__PRECISION", "int8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(models.join("model.int8.v2.onnx").is_file());
    let int8: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    let cosine: f64 = int8["embedding"]
        .as_array()
        .expect("array")
        .iter()
        .zip(lines[0]["embedding"].as_array().expect("array"))
        .map(|(a, b)| a.as_f64().expect("number") * b.as_f64().expect("number"))
        .sum();
    assert!((0.99..1.0).contains(&cosine), "cosine to fp32 {cosine}");

    let out = twin(
        dir.path(),
        &["models", "export", "--out", "exported.onnx"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("6 layers, 384 dimensions"),
        "{}",
        stdout(&out)
    );
    assert!(dir.path().join("exported.onnx").is_file());
}

#[test]
fn a_model_folder_without_weights_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let out = twin(
        dir.path(),
        &["models", "embed", "x"],
        &[("TWIN_EMBEDDING__MODEL_DIR", "empty")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("config.json is missing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_process_on_an_embedded_vector_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env_less = |cmd: &mut Command| {
        cmd.current_dir(dir.path()).env("RUST_LOG", "warn");
        for (key, _) in std::env::vars() {
            if key.starts_with("TWIN_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("TWIN_METRICS__STREAM", "");
    };
    // The first worker streams until stopped.
    let mut first = Command::new(env!("CARGO_BIN_EXE_twin"));
    env_less(&mut first);
    let mut first = first
        .args(["stream"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("first worker");
    let lock = dir.path().join(".twin/vectors/.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(&lock).ok().as_deref() != Some(&first.id().to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first worker never opened its store"
        );
        if let Ok(Some(status)) = first.try_wait() {
            panic!("the first worker stopped: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A second one on the same data folder (another group, so the log lets it in) is refused.
    let out = twin(
        dir.path(),
        &["stream", "--once", "--group", "second"],
        &[("TWIN_METRICS__STREAM", "")],
    );
    let _ = Command::new("kill").arg(first.id().to_string()).status();
    let _ = first.wait();
    assert!(!out.status.success(), "the second worker ran");
    let message = stderr(&out);
    assert!(message.contains("in use by another process"), "{message}");
    assert!(
        message.contains(&format!("pid {}", first.id())),
        "names the holder: {message}"
    );
    // Once the first is gone, the store opens again.
    let out = twin(
        dir.path(),
        &["stream", "--once"],
        &[("TWIN_METRICS__STREAM", "")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn snapshots_and_datasets_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let docs = twin_testkit::documents::corpus();
    let log = EmbeddedLog::open(dir.path().join(".twin/log"), 3, false).expect("open");
    let events: Vec<Event> = docs[..6].iter().cloned().map(Event::Raw).collect();
    runtime
        .block_on(publish(&log, "raw-documents", &events))
        .expect("publish");
    let ok = |args: &[&str]| {
        let out = twin(dir.path(), args, &[]);
        assert!(out.status.success(), "twin {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&["stream", "--once"]);

    let created = ok(&["snapshot", "create", "--name", "first"]);
    assert!(created.contains("(first) pinned at partition"), "{created}");
    let id = created.split_whitespace().nth(1).expect("id").to_string();
    assert!(ok(&["snapshot", "list"]).contains(&id));
    let shown = ok(&["snapshot", "show", "first"]);
    assert!(shown.contains("positions  partition"), "{shown}");
    assert!(shown.contains("article"), "{shown}");

    // Events the warehouse has not applied: said, and what was applied is pinned.
    runtime
        .block_on(publish(
            &log,
            "raw-documents",
            &[Event::Raw(docs[6].clone())],
        ))
        .expect("publish");
    let out = twin(dir.path(), &["snapshot", "create"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has not applied 1 event(s)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&id), "same positions, same snapshot");
    let out = twin(
        dir.path(),
        &["snapshot", "create", "--wait", "--timeout-secs", "1"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("still 1 event(s) behind"),
        "{}",
        stderr(&out)
    );

    let built = ok(&[
        "dataset",
        "build",
        "--snapshot",
        "first",
        "--kind",
        "instruct",
        "--max-samples",
        "12",
        "--name",
        "small",
    ]);
    assert!(built.contains("train and"), "{built}");
    assert!(built.contains("tokens: 0 prompt + 0 completion"), "{built}");
    let dataset = built.split_whitespace().nth(1).expect("id").to_string();
    let again = ok(&[
        "dataset",
        "build",
        "--snapshot",
        &id,
        "--kind",
        "instruct",
        "--max-samples",
        "12",
    ]);
    assert!(again.contains("already built"), "{again}");
    assert!(ok(&["dataset", "list"]).contains("small"));
    let shown = ok(&["dataset", "show", "small", "--samples", "1"]);
    assert!(shown.contains(&format!("snapshot   {id}")), "{shown}");
    assert!(shown.contains("\"instruction\""), "{shown}");

    let out_dir = dir.path().join("export");
    let exported = ok(&[
        "dataset",
        "export",
        &dataset,
        "--format",
        "chatml",
        "--out",
        out_dir.to_str().expect("path"),
    ]);
    assert!(exported.contains("train.jsonl: "), "{exported}");
    let lines = std::fs::read_to_string(out_dir.join("train.jsonl")).expect("train");
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().expect("a line")).expect("json");
    assert_eq!(first["messages"][1]["role"], "assistant");
    let imported = ok(&[
        "dataset",
        "import",
        out_dir.to_str().expect("path"),
        "--name",
        "copy",
    ]);
    assert!(imported.contains("imported: "), "{imported}");

    // A malformed file: its line is named, and nothing is imported.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\":\"a\",\"output\":\"b\"}\n{\"prompt\": 3}\n",
    )
    .expect("write");
    let out = twin(
        dir.path(),
        &["dataset", "import", bad.to_str().expect("path")],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad.jsonl:2: not a sample of a known format"),
        "{}",
        stderr(&out)
    );
    let listed = ok(&["dataset", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");

    assert!(ok(&["dataset", "delete", "copy"]).contains("deleted"));
    let unknown = twin(
        dir.path(),
        &[
            "dataset",
            "build",
            "--snapshot",
            "first",
            "--kind",
            "instruct",
            "--generator",
            "gpt",
        ],
        &[],
    );
    assert!(
        stderr(&unknown).contains("configure [datasets.generators.gpt]"),
        "{}",
        stderr(&unknown)
    );
    assert!(ok(&["snapshot", "delete", "first"]).contains("deleted"));
    assert!(ok(&["snapshot", "compact"]).contains("removed"));
    assert!(ok(&["snapshot", "list"]).contains("no snapshots"));

    // A snapshot of nothing builds no dataset, and says why.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = twin(empty.path(), &["snapshot", "create", "--name", "none"], &[]);
    assert!(
        stdout(&out).contains("pinned at the start (nothing applied yet): 0 documents"),
        "{}",
        stdout(&out)
    );
    let out = twin(
        empty.path(),
        &[
            "dataset",
            "build",
            "--snapshot",
            "none",
            "--kind",
            "preference",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no sample to keep from snapshot")
            && stderr(&out).contains("nothing stored"),
        "{}",
        stderr(&out)
    );
}

/// The README's main command: the whole loop on the shipped sample author, fine-tuning the
/// pretrained SmolLM2 with LoRA, ends with the base model's and the twin's answers and their
/// sources, and the numbers say the twin writes like her: its perplexity on her test answers at
/// most 0.6 of the base model's, its answers closer to hers, and its served answer no more
/// surprising to the base model than her own passages. A second run finds everything done and
/// goes straight to the answers.
#[test]
fn the_demo_fine_tunes_smollm2_into_a_twin_that_writes_like_her() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let args = ["--data-dir", data, "demo"];
    let first = twin(dir.path(), &args, &[]);
    let text = stdout(&first);
    assert!(first.status.success(), "{text}\n{}", stderr(&first));
    // Every sample document was crawled from the local platforms and streamed.
    let total = |text: &str| -> Vec<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with("total "))
            .unwrap_or_else(|| panic!("no ingest summary:\n{text}"));
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse().expect("a count"))
            .collect()
    };
    assert_eq!(
        total(&text),
        [18, 0, 0, 0, 0],
        "new, changed, unchanged, deleted, failed:\n{text}"
    );
    assert!(text.contains("documents: 18,"), "{text}");
    assert!(
        text.contains("registered smollm2-135m-instruct@v1"),
        "{text}"
    );
    assert!(text.contains("registered nora-twin@v1"), "{text}");
    assert!(text.contains("perplexity (lower is better)"), "{text}");
    let curve = Path::new(data).join("demo/loss.png");
    assert!(
        std::fs::metadata(&curve)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no loss curve at {}",
        curve.display()
    );
    // The numbers of fine-tuning, as the demo prints them.
    let numbers = |prefix: &str| -> Vec<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{text}"));
        line[line.find(prefix).unwrap_or(0) + prefix.len()..]
            .split_whitespace()
            .filter_map(|w| w.trim_matches(|c| "(),:;".contains(c)).parse().ok())
            .collect()
    };
    let perplexity = numbers("fine-tuning: perplexity of her test answers");
    assert!(
        perplexity[1] <= 0.6 * perplexity[0],
        "the twin's perplexity on her test answers is not at most 0.6 of the base's: {perplexity:?}\n{text}"
    );
    let similarity = numbers("fine-tuning: similarity of the answers to hers");
    assert!(
        similarity[1] > similarity[0],
        "the twin's answers are not closer to hers than the base model's: {similarity:?}"
    );
    // Under the base model: her passages' range, then the base's answer, then the twin's.
    let surprise = numbers("perplexity under the base model (her own passages:");
    let (highest, twins) = (surprise[1], surprise[surprise.len() - 1]);
    assert!(
        twins <= highest,
        "the twin's answer ({twins}) is more surprising to the base model than any of her \
         passages (at most {highest}): {surprise:?}\n{text}"
    );
    // Both models answered the question, citing the article that answers it first.
    let answer = |text: &str, model: &str| -> String {
        let label = format!("\nA ({model}");
        let at = text
            .find(&label)
            .unwrap_or_else(|| panic!("no answer of {model}:\n{text}"));
        let rest = &text[at..];
        let said = rest.split_once("): ").map(|(_, a)| a).unwrap_or("");
        // The answer runs to the next answer or the sources (it may hold paragraphs).
        let end = ["\n\nA (", "\n\nsources:"]
            .iter()
            .filter_map(|m| said.find(m))
            .min()
            .unwrap_or(said.len());
        said[..end].trim().to_string()
    };
    let sources = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| *l != "sources:")
            .skip(1)
            .take_while(|l| l.starts_with("  ["))
            .map(str::to_string)
            .collect()
    };
    let twin_said = answer(&text, "nora-twin");
    assert!(
        twin_said.split_whitespace().count() >= 10,
        "the twin said too little: {twin_said:?}"
    );
    assert!(!answer(&text, "smollm2-135m-instruct").is_empty(), "{text}");
    let cited = sources(&text);
    assert!(
        cited
            .first()
            .is_some_and(|s| s.starts_with("  [1] Dead Letters Are Mail Too (http://127.0.0.1:")),
        "{cited:?}"
    );

    let second = twin(dir.path(), &args, &[]);
    let again = stdout(&second);
    assert!(second.status.success(), "{again}\n{}", stderr(&second));
    assert_eq!(total(&again), [0, 0, 18, 0, 0], "{again}");
    assert!(again.contains("documents: 0,"), "{again}");
    assert!(
        again.contains("nora-twin@v1 was trained on dataset") && !again.contains("registered"),
        "{again}"
    );
    assert!(
        again.contains("imported already: smollm2-135m-instruct@v1"),
        "{again}"
    );
    assert_eq!(sources(&again), cited, "the same sources the second time");

    // From scratch instead: the small Llama is trained (a new version) and answers alone.
    let scratch = twin(
        dir.path(),
        &[
            "--data-dir",
            data,
            "demo",
            "--from-scratch",
            "--train-steps",
            "4",
            "--eval-samples",
            "2",
        ],
        &[],
    );
    let text = stdout(&scratch);
    assert!(scratch.status.success(), "{text}\n{}", stderr(&scratch));
    assert!(text.contains("registered nora-twin@v2"), "{text}");
    assert!(
        !text.contains("smollm2-135m-instruct, the base model"),
        "{text}"
    );
    assert_eq!(sources(&text), cited, "the same sources from scratch");
}
