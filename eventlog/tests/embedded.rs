//! What only the embedded log has to prove: durability against `kill -9`, recovery from an
//! interrupted append, damaged files reported and stepped over, and several writers on one folder.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use twin_eventlog::{EmbeddedLog, EventLog, LogError, Record, StartFrom};

const TOPIC: &str = "events";

async fn read_all(log: &EmbeddedLog, group: &str) -> Vec<Result<Record, LogError>> {
    let mut consumer = log
        .consumer(TOPIC, group, StartFrom::Beginning)
        .await
        .expect("consumer");
    let mut out = Vec::new();
    loop {
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => break,
            Err(e @ LogError::Corrupt { .. }) => out.push(Err(e)),
            Err(e) => panic!("log failure: {e}"),
        }
    }
    out
}

/// Run by `acknowledged_appends_survive_kill_9` in a child process: append forever, printing
/// each acknowledged position. Ignored when the suite runs by itself.
#[tokio::test]
#[ignore = "child process of acknowledged_appends_survive_kill_9"]
async fn kill9_child_writer() {
    let Some(dir) = std::env::var_os("TWIN_KILL9_DIR") else {
        return;
    };
    let log = EmbeddedLog::open(dir, 2, false).expect("open");
    let mut stdout = std::io::stdout();
    for i in 0u64.. {
        let key = format!("k{}", i % 5);
        let payload = format!("event-{i}-{}", "x".repeat((i % 300) as usize));
        let pos = log
            .append(TOPIC, key.as_bytes(), payload.as_bytes())
            .await
            .expect("append");
        writeln!(stdout, "ACK {} {} {payload}", pos.partition, pos.offset).expect("stdout");
        stdout.flush().expect("flush");
    }
}

#[tokio::test]
async fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "kill9_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TWIN_KILL9_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while acked.len() < 3000 {
        let line = lines.next().expect("writer ended early").expect("line");
        if let Some(rest) = line.strip_prefix("ACK ") {
            let mut parts = rest.splitn(3, ' ');
            let partition: u32 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .expect("partition");
            let offset: u64 = parts.next().and_then(|s| s.parse().ok()).expect("offset");
            acked.push((
                partition,
                offset,
                parts.next().expect("payload").to_string(),
            ));
        }
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reaped");

    let log = EmbeddedLog::open(dir.path(), 2, false).expect("reopen");
    let records: Vec<Record> = read_all(&log, "check")
        .await
        .into_iter()
        .map(|r| r.expect("no corruption"))
        .collect();
    let stored: std::collections::HashMap<(u32, u64), String> = records
        .iter()
        .map(|r| {
            (
                (r.position.partition, r.position.offset),
                String::from_utf8(r.payload.clone()).expect("utf8"),
            )
        })
        .collect();
    for (partition, offset, payload) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(payload),
            "acknowledged {partition}/{offset} lost"
        );
    }
    // The log stays appendable after the crash, right after what survived.
    let pos = log
        .append(TOPIC, b"k0", b"after")
        .await
        .expect("append after crash");
    let ends = log.end_offsets(TOPIC).await.expect("ends");
    assert_eq!(pos.offset + 1, ends[pos.partition as usize]);
}

fn partition_dir(root: &Path, partition: u32) -> std::path::PathBuf {
    root.join(TOPIC).join(partition.to_string())
}

#[tokio::test]
async fn an_interrupted_append_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1, false).expect("open");
    log.append(TOPIC, b"k", b"one").await.expect("append");
    log.append(TOPIC, b"k", b"two").await.expect("append");
    drop(log);
    // What a crash in the middle of an append leaves: a half frame and a torn index entry.
    let p0 = partition_dir(dir.path(), 0);
    std::fs::OpenOptions::new()
        .append(true)
        .open(p0.join("records.log"))
        .expect("log")
        .write_all(b"\x12\x34half a frame")
        .expect("write");
    std::fs::OpenOptions::new()
        .append(true)
        .open(p0.join("records.idx"))
        .expect("idx")
        .write_all(&[7, 7, 7])
        .expect("write");

    let log = EmbeddedLog::open(dir.path(), 1, false).expect("reopen");
    let before: Vec<String> = read_all(&log, "a")
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.expect("clean").payload).expect("utf8"))
        .collect();
    assert_eq!(
        before,
        ["one", "two"],
        "readers never see the unacknowledged tail"
    );
    let pos = log
        .append(TOPIC, b"k", b"three")
        .await
        .expect("append after recovery");
    assert_eq!(pos.offset, 2);
    let after: Vec<String> = read_all(&log, "b")
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.expect("clean").payload).expect("utf8"))
        .collect();
    assert_eq!(after, ["one", "two", "three"]);
}

#[tokio::test]
async fn a_damaged_record_is_reported_with_its_position_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1, false).expect("open");
    for i in 0..5 {
        log.append(TOPIC, b"k", format!("payload-{i}").as_bytes())
            .await
            .expect("append");
    }
    // Flip one byte inside the third record's payload.
    let path = partition_dir(dir.path(), 0).join("records.log");
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(9)
        .position(|w| w == b"payload-2")
        .expect("find record 2");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&path, &bytes).expect("write");

    let items = read_all(&log, "g").await;
    assert_eq!(items.len(), 5);
    match &items[2] {
        Err(LogError::Corrupt {
            topic,
            partition,
            offset,
            reason,
            bytes,
        }) => {
            assert_eq!((topic.as_str(), *partition, *offset), (TOPIC, 0, 2));
            assert!(reason.contains("checksum"), "{reason}");
            assert!(!bytes.is_empty());
            let shown = items[2].as_ref().expect_err("corrupt").to_string();
            assert!(
                shown.contains("topic events partition 0 at offset 2"),
                "{shown}"
            );
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    let good: Vec<String> = items
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| String::from_utf8(r.payload.clone()).expect("utf8"))
        .collect();
    assert_eq!(good, ["payload-0", "payload-1", "payload-3", "payload-4"]);
}

#[tokio::test]
async fn a_group_has_one_member_at_a_time_and_its_offsets_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1, true).expect("open with fsync");
    for i in 0..3 {
        log.append(TOPIC, b"k", format!("e{i}").as_bytes())
            .await
            .expect("append");
    }
    let mut first = log
        .consumer(TOPIC, "g", StartFrom::Committed)
        .await
        .expect("first member");
    let err = log
        .consumer(TOPIC, "g", StartFrom::Committed)
        .await
        .err()
        .expect("second member refused");
    assert!(matches!(err, LogError::GroupBusy { .. }), "{err}");
    let r = first
        .poll(Duration::from_secs(1))
        .await
        .expect("poll")
        .expect("record");
    first.commit(r.position).await.expect("commit");
    drop(first);
    // A new process (a new log instance) resumes after the commit.
    let log = EmbeddedLog::open(dir.path(), 1, true).expect("reopen");
    let mut again = log
        .consumer(TOPIC, "g", StartFrom::Committed)
        .await
        .expect("member again");
    let r = again
        .poll(Duration::from_secs(1))
        .await
        .expect("poll")
        .expect("record");
    assert_eq!(r.payload, b"e1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_folder_lose_nothing() {
    // Two log instances stand for two processes (a crawler and a stream worker): their appends
    // are serialised by the file lock, not by shared memory.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(EmbeddedLog::open(dir.path(), 2, false).expect("a"));
    let b = Arc::new(EmbeddedLog::open(dir.path(), 2, false).expect("b"));
    let mut tasks = Vec::new();
    for (name, log) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                log.append(TOPIC, b"shared-key", format!("{name}{i}").as_bytes())
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let records: Vec<Record> = read_all(&a, "g")
        .await
        .into_iter()
        .map(|r| r.expect("clean"))
        .collect();
    assert_eq!(records.len(), 1000);
    for (name, _) in [("a", ()), ("b", ())] {
        let seq: Vec<u32> = records
            .iter()
            .filter_map(|r| {
                String::from_utf8(r.payload.clone())
                    .ok()?
                    .strip_prefix(name)?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            seq,
            (0..500).collect::<Vec<_>>(),
            "writer {name}'s records in order, none lost"
        );
    }
}

#[tokio::test]
async fn a_consumer_in_another_process_sees_new_records() {
    // The reader's log instance gets no in-process wake-up from the writer's.
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = EmbeddedLog::open(dir.path(), 1, false).expect("writer");
    let reader = EmbeddedLog::open(dir.path(), 1, false).expect("reader");
    writer.ensure_topic(TOPIC).await.expect("topic");
    let mut consumer = reader
        .consumer(TOPIC, "g", StartFrom::Committed)
        .await
        .expect("consumer");
    assert!(consumer
        .poll(Duration::from_millis(100))
        .await
        .expect("poll")
        .is_none());
    writer.append(TOPIC, b"k", b"hello").await.expect("append");
    let r = consumer
        .poll(Duration::from_secs(2))
        .await
        .expect("poll")
        .expect("seen");
    assert_eq!(r.payload, b"hello");
}
