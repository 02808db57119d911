//! The embedded log: durable, single-machine, with Kafka's semantics.
//!
//! Layout under the log folder:
//!
//! ```text
//! <topic>/partitions                 partition count, fixed at creation
//! <topic>/<p>/records.log            frames: crc32 u32 | body_len u32 | body
//!                                    body: timestamp_ms i64 | key_len u32 | key | payload
//! <topic>/<p>/records.idx            u64 per record: the end of its frame in records.log
//! <topic>/groups/<group>.offsets     committed offsets, one `partition offset` line each
//! <topic>/groups/<group>.lock        held (flock) by the group's one member
//! ```
//!
//! An append writes its frames, then their index entries, under an exclusive `flock` on the
//! index, so that several processes (a crawler and a stream worker) can append to one log. A
//! record exists once its index entry does: readers never look past the index, and an append
//! that died half-way leaves an unindexed tail that the next append cuts off. Data reaches the
//! kernel before an append is acknowledged, so it survives `kill -9`; with `fsync` it is also
//! flushed to disk first and survives a power cut.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::warn;

use crate::{
    now_ms, partition_for, validate_name, EventLog, LogConsumer, LogError, Position, Record,
    Result, StartFrom,
};

/// Most records a consumer reads from one partition at a time.
const READ_BATCH_RECORDS: u64 = 512;
/// Most bytes a consumer reads from one partition at a time (at least one record is read).
const READ_BATCH_BYTES: u64 = 8 << 20;
/// How often an idle consumer looks for records appended by another process.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(20);
/// Frame header: crc32 and body length.
const FRAME_HEADER: usize = 8;
/// Body header: timestamp and key length.
const BODY_HEADER: usize = 12;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The embedded log.
pub struct EmbeddedLog {
    root: PathBuf,
    default_partitions: u32,
    fsync: bool,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

/// An open topic: its partitions' writers and a wake-up for consumers in this process.
struct Topic {
    name: String,
    dir: PathBuf,
    writers: Vec<Mutex<PartitionWriter>>,
    appended: Notify,
}

impl EmbeddedLog {
    /// Open (or create) the log in `root`. New topics get `partitions` partitions; with `fsync`,
    /// appends and commits are flushed to disk before they are acknowledged.
    pub fn open(root: impl Into<PathBuf>, partitions: u32, fsync: bool) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self {
            root,
            default_partitions: partitions.max(1),
            fsync,
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// The folder the log lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Topics that exist on disk.
    pub fn topic_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if entry.path().join("partitions").exists() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        validate_name("topic", name)?;
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        let dir = self.root.join(name);
        let count = read_or_create_partition_count(&dir, self.default_partitions)?;
        let mut writers = Vec::with_capacity(count as usize);
        for p in 0..count {
            writers.push(Mutex::new(PartitionWriter::open(
                &dir.join(p.to_string()),
                self.fsync,
            )?));
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            dir,
            writers,
            appended: Notify::new(),
        });
        topics.insert(name.to_string(), topic.clone());
        Ok(topic)
    }
}

/// The partition count is written once, when the topic is created, like Kafka's.
fn read_or_create_partition_count(dir: &Path, default: u32) -> Result<u32> {
    let path = dir.join("partitions");
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| LogError::Topic {
                topic: dir.display().to_string(),
                reason: format!(
                    "{} holds {:?}, not a partition count",
                    path.display(),
                    text.trim()
                ),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            static ATTEMPT: AtomicU64 = AtomicU64::new(0);
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            // Write a private temporary file, then link it into place: the link fails if another
            // writer (thread or process) created the topic first, and its count stands. A
            // reader never sees a half-written count.
            let tmp = dir.join(format!(
                "partitions.tmp.{}.{}",
                std::process::id(),
                ATTEMPT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::write(&tmp, format!("{default}\n")).map_err(io_err(&tmp))?;
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    // Cheap, and once per topic: always durable, whatever `fsync` says.
                    sync_dir(dir)?;
                    if let Some(root) = dir.parent() {
                        sync_dir(root)?;
                    }
                    Ok(default)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    read_or_create_partition_count(dir, default)
                }
                Err(e) => Err(io_err(&path)(e)),
            }
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        Ok(self.topic(topic)?.writers.len() as u32)
    }

    async fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        validate_name("topic", topic)?;
        if !self.root.join(topic).join("partitions").exists() {
            return Ok(None);
        }
        Ok(Some(self.topic(topic)?.writers.len() as u32))
    }

    async fn append_batch(&self, topic: &str, records: &[(&[u8], &[u8])]) -> Result<Vec<Position>> {
        crate::check_sizes(topic, records)?;
        let topic = self.topic(topic)?;
        let partitions = topic.writers.len() as u32;
        // Group by partition, keeping each partition's records in call order.
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); partitions as usize];
        for (i, (key, _)) in records.iter().enumerate() {
            by_partition[partition_for(key, partitions) as usize].push(i);
        }
        let owned: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let task_topic = topic.clone();
        let positions = tokio::task::spawn_blocking(move || -> Result<Vec<Position>> {
            let timestamp = now_ms();
            let mut positions = vec![
                Position {
                    partition: 0,
                    offset: 0
                };
                owned.len()
            ];
            for (p, indices) in by_partition.iter().enumerate() {
                if indices.is_empty() {
                    continue;
                }
                let mut writer = task_topic.writers[p]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let batch: Vec<(&[u8], &[u8])> = indices
                    .iter()
                    .map(|&i| (owned[i].0.as_slice(), owned[i].1.as_slice()))
                    .collect();
                let first = writer.append(&batch, timestamp)?;
                for (n, &i) in indices.iter().enumerate() {
                    positions[i] = Position {
                        partition: p as u32,
                        offset: first + n as u64,
                    };
                }
            }
            Ok(positions)
        })
        .await
        .map_err(|e| LogError::Io {
            path: topic.dir.clone(),
            source: io::Error::other(e),
        })??;
        topic.appended.notify_waiters();
        metrics::counter!("twin_log_appended_total", "backend" => "embedded", "topic" => topic.name.clone())
            .increment(records.len() as u64);
        Ok(positions)
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        let topic = self.topic(topic)?;
        (0..topic.writers.len())
            .map(|p| {
                let path = topic.dir.join(p.to_string()).join("records.idx");
                let len = fs::metadata(&path).map_err(io_err(&path))?.len();
                Ok(len / 8)
            })
            .collect()
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        Ok(vec![0; self.topic(topic)?.writers.len()])
    }

    async fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<u64>> {
        validate_name("consumer group", group)?;
        let topic = self.topic(topic)?;
        let path = topic.dir.join("groups").join(format!("{group}.offsets"));
        read_offsets(&path, topic.writers.len())
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Box<dyn LogConsumer>> {
        validate_name("consumer group", group)?;
        let topic = self.topic(topic)?;
        Ok(Box::new(EmbeddedConsumer::open(
            topic, group, start, self.fsync,
        )?))
    }
}

/// Appends to one partition.
struct PartitionWriter {
    log: File,
    idx: File,
    dir: PathBuf,
    fsync: bool,
}

impl PartitionWriter {
    fn open(dir: &Path, fsync: bool) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))
        };
        let existed = dir.join("records.idx").exists();
        let writer = Self {
            log: open("records.log")?,
            idx: open("records.idx")?,
            dir: dir.to_path_buf(),
            fsync,
        };
        if fsync && !existed {
            // New files are durable only once their folder (and its parent's entry) is.
            sync_dir(dir)?;
            if let Some(topic) = dir.parent() {
                sync_dir(topic)?;
            }
        }
        Ok(writer)
    }

    /// Append frames and their index entries; returns the first record's offset.
    fn append(&mut self, records: &[(&[u8], &[u8])], timestamp: i64) -> Result<u64> {
        let idx_path = self.dir.join("records.idx");
        // Exclusive across processes; threads of this process are already serialised by the
        // partition's mutex.
        self.idx.lock().map_err(io_err(&idx_path))?;
        let result = self.append_locked(records, timestamp);
        let unlocked = self.idx.unlock().map_err(io_err(&idx_path));
        let first = result?;
        unlocked?;
        Ok(first)
    }

    fn append_locked(&mut self, records: &[(&[u8], &[u8])], timestamp: i64) -> Result<u64> {
        let idx_path = self.dir.join("records.idx");
        let log_path = self.dir.join("records.log");
        let idx_len = self.idx.metadata().map_err(io_err(&idx_path))?.len();
        let whole = idx_len - idx_len % 8;
        if whole != idx_len {
            warn!(path = %idx_path.display(), "cutting a torn index entry left by an interrupted append");
            self.idx.set_len(whole).map_err(io_err(&idx_path))?;
        }
        let data_end = if whole == 0 {
            0
        } else {
            let mut last = [0u8; 8];
            self.idx
                .read_exact_at(&mut last, whole - 8)
                .map_err(io_err(&idx_path))?;
            u64::from_le_bytes(last)
        };
        let log_len = self.log.metadata().map_err(io_err(&log_path))?.len();
        if log_len > data_end {
            warn!(path = %log_path.display(), bytes = log_len - data_end,
                  "cutting an unacknowledged tail left by an interrupted append");
            self.log.set_len(data_end).map_err(io_err(&log_path))?;
        } else if log_len < data_end {
            return Err(LogError::Io {
                path: log_path,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the index points to byte {data_end} but the log holds {log_len}: was the log truncated by hand?"),
                ),
            });
        }
        let mut frames = Vec::new();
        let mut ends = Vec::with_capacity(records.len() * 8);
        for (key, payload) in records {
            encode_frame(&mut frames, timestamp, key, payload);
            ends.extend_from_slice(&(data_end + frames.len() as u64).to_le_bytes());
        }
        self.log
            .write_all_at(&frames, data_end)
            .map_err(io_err(&log_path))?;
        if self.fsync {
            self.log.sync_data().map_err(io_err(&log_path))?;
        }
        self.idx
            .write_all_at(&ends, whole)
            .map_err(io_err(&idx_path))?;
        if self.fsync {
            self.idx.sync_data().map_err(io_err(&idx_path))?;
        }
        Ok(whole / 8)
    }
}

fn encode_frame(out: &mut Vec<u8>, timestamp: i64, key: &[u8], payload: &[u8]) {
    let body_len = BODY_HEADER + key.len() + payload.len();
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A frame's parts, or why it is not a frame.
fn decode_frame(frame: &[u8]) -> std::result::Result<(i64, &[u8], &[u8]), String> {
    if frame.len() < FRAME_HEADER + BODY_HEADER {
        return Err(format!(
            "frame of {} bytes is shorter than its header",
            frame.len()
        ));
    }
    let crc = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let body_len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    if body_len != frame.len() - FRAME_HEADER {
        return Err(format!(
            "frame says {body_len} body bytes, the index {}",
            frame.len() - FRAME_HEADER
        ));
    }
    let actual = crc32fast::hash(&frame[4..]);
    if crc != actual {
        return Err(format!(
            "checksum mismatch: stored {crc:08x}, computed {actual:08x}"
        ));
    }
    let body = &frame[FRAME_HEADER..];
    let timestamp = i64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
    let key_len = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default()) as usize;
    if BODY_HEADER + key_len > body.len() {
        return Err(format!("key of {key_len} bytes runs past the frame"));
    }
    let key = &body[BODY_HEADER..BODY_HEADER + key_len];
    let payload = &body[BODY_HEADER + key_len..];
    Ok((timestamp, key, payload))
}

/// Reads one partition from an offset on.
struct PartitionReader {
    log: File,
    idx: File,
    dir: PathBuf,
    next: u64,
}

impl PartitionReader {
    fn open(dir: &Path, next: u64) -> Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::open(&path).map_err(io_err(&path))
        };
        Ok(Self {
            log: open("records.log")?,
            idx: open("records.idx")?,
            dir: dir.to_path_buf(),
            next,
        })
    }

    /// Read what is there after `next`, up to a batch; corrupt records come back as errors.
    fn read_batch(
        &mut self,
        topic: &str,
        partition: u32,
        out: &mut VecDeque<Result<Record>>,
    ) -> Result<()> {
        let idx_path = self.dir.join("records.idx");
        let log_path = self.dir.join("records.log");
        let visible = self.idx.metadata().map_err(io_err(&idx_path))?.len() / 8;
        if self.next >= visible {
            return Ok(());
        }
        let count = (visible - self.next).min(READ_BATCH_RECORDS);
        // The frame of offset n spans [end(n-1), end(n)).
        let first_entry = self.next.saturating_sub(1);
        let entries = count + u64::from(self.next > 0);
        let mut raw = vec![0u8; (entries * 8) as usize];
        self.idx
            .read_exact_at(&mut raw, first_entry * 8)
            .map_err(io_err(&idx_path))?;
        let mut bounds: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if self.next == 0 {
            bounds.insert(0, 0);
        }
        let log_len = self.log.metadata().map_err(io_err(&log_path))?.len();
        // A damaged index entry (going backwards, or past the end of the log) spoils the one
        // record it ends: report it and step over it; the entries after it are still good.
        let start = bounds[0];
        let sane = |lo: u64, hi: u64| lo <= hi && hi <= log_len;
        if !sane(start, bounds[1]) {
            let reason = format!(
                "index entry says the record spans bytes {start}..{} of a {log_len}-byte log",
                bounds[1]
            );
            out.push_back(Err(self.corrupt(
                topic,
                partition,
                self.next,
                reason,
                Vec::new(),
            )));
            self.next += 1;
            return Ok(());
        }
        // Read whole records up to the byte budget, always at least one.
        let mut take = 1;
        while take < count as usize
            && sane(bounds[take], bounds[take + 1])
            && bounds[take + 1] - start <= READ_BATCH_BYTES
        {
            take += 1;
        }
        let end = bounds[take];
        let mut data = vec![0u8; (end - start) as usize];
        self.log
            .read_exact_at(&mut data, start)
            .map_err(io_err(&log_path))?;
        for i in 0..take {
            let frame = &data[(bounds[i] - start) as usize..(bounds[i + 1] - start) as usize];
            let offset = self.next;
            let item = match decode_frame(frame) {
                Ok((timestamp_ms, key, payload)) => Ok(Record {
                    topic: topic.to_string(),
                    position: Position { partition, offset },
                    key: key.to_vec(),
                    payload: payload.to_vec(),
                    timestamp_ms,
                }),
                Err(reason) => Err(self.corrupt(topic, partition, offset, reason, frame.to_vec())),
            };
            out.push_back(item);
            self.next += 1;
        }
        Ok(())
    }

    fn corrupt(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        reason: String,
        bytes: Vec<u8>,
    ) -> LogError {
        warn!(topic, partition, offset, %reason, "corrupt record in the embedded log; skipping it");
        metrics::counter!("twin_log_corrupt_records_total", "backend" => "embedded").increment(1);
        LogError::Corrupt {
            topic: topic.to_string(),
            partition,
            offset,
            reason,
            bytes,
        }
    }
}

/// The one member of a consumer group on a topic of the embedded log.
struct EmbeddedConsumer {
    topic: Arc<Topic>,
    readers: Vec<PartitionReader>,
    buffered: VecDeque<Result<Record>>,
    next_partition: usize,
    committed: Vec<u64>,
    offsets_path: PathBuf,
    fsync: bool,
    /// Held for the consumer's lifetime: the group's membership.
    _membership: File,
}

impl EmbeddedConsumer {
    fn open(topic: Arc<Topic>, group: &str, start: StartFrom, fsync: bool) -> Result<Self> {
        let groups = topic.dir.join("groups");
        fs::create_dir_all(&groups).map_err(io_err(&groups))?;
        let lock_path = groups.join(format!("{group}.lock"));
        let membership = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match membership.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LogError::GroupBusy {
                    topic: topic.name.clone(),
                    group: group.to_string(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let partitions = topic.writers.len();
        let offsets_path = groups.join(format!("{group}.offsets"));
        let committed = read_offsets(&offsets_path, partitions)?;
        let starts = match start {
            StartFrom::Committed => committed.clone(),
            StartFrom::Beginning => vec![0; partitions],
        };
        let readers = starts
            .iter()
            .enumerate()
            .map(|(p, &next)| PartitionReader::open(&topic.dir.join(p.to_string()), next))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            topic,
            readers,
            buffered: VecDeque::new(),
            next_partition: 0,
            committed,
            offsets_path,
            fsync,
            _membership: membership,
        })
    }

    /// Fill the buffer from the partitions, round robin, until something is there.
    fn fill(&mut self) -> Result<()> {
        for _ in 0..self.readers.len() {
            let p = self.next_partition;
            self.next_partition = (p + 1) % self.readers.len();
            self.readers[p].read_batch(&self.topic.name, p as u32, &mut self.buffered)?;
            if !self.buffered.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

fn read_offsets(path: &Path, partitions: usize) -> Result<Vec<u64>> {
    let mut offsets = vec![0; partitions];
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(offsets),
        Err(e) => return Err(io_err(path)(e)),
    };
    for (n, line) in text.lines().enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(p, o)| Some((p.parse::<usize>().ok()?, o.parse::<u64>().ok()?)));
        match parsed {
            Some((p, o)) if p < partitions => offsets[p] = o,
            _ => {
                return Err(LogError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line {}: {line:?} is not `partition offset`", n + 1),
                    ),
                })
            }
        }
    }
    Ok(offsets)
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, wait: Duration) -> Result<Option<Record>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let topic = self.topic.clone();
            let appended = topic.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            if self.buffered.is_empty() {
                self.fill()?;
            }
            if let Some(item) = self.buffered.pop_front() {
                return item.map(Some);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(CROSS_PROCESS_POLL);
            let _ = tokio::time::timeout(nap, appended).await;
        }
    }

    async fn commit(&mut self, position: Position) -> Result<()> {
        let p = position.partition as usize;
        if p >= self.committed.len() {
            return Err(LogError::Topic {
                topic: self.topic.name.clone(),
                reason: format!("commit to partition {p}, which does not exist"),
            });
        }
        self.committed[p] = position.offset + 1;
        self.write_offsets()
    }

    async fn rewind(&mut self) -> Result<()> {
        self.committed.iter_mut().for_each(|o| *o = 0);
        self.write_offsets()
    }
}

impl EmbeddedConsumer {
    /// Write the committed offsets.
    fn write_offsets(&self) -> Result<()> {
        let mut text = String::new();
        for (p, o) in self.committed.iter().enumerate() {
            text.push_str(&format!("{p} {o}\n"));
        }
        // Write-then-rename: a crash leaves the old offsets or the new, never a mix.
        let tmp = self.offsets_path.with_extension("offsets.tmp");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        if self.fsync {
            file.sync_data().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &self.offsets_path).map_err(io_err(&self.offsets_path))?;
        if self.fsync {
            // The rename is durable only once its folder is.
            if let Some(groups) = self.offsets_path.parent() {
                sync_dir(groups)?;
            }
        }
        Ok(())
    }
}

/// Make a folder's entries (files created or renamed in it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_damage_is_named() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, b"key", b"payload");
        let (ts, key, payload) = decode_frame(&buf).expect("decodes");
        assert_eq!((ts, key, payload), (42, &b"key"[..], &b"payload"[..]));
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode_frame(&flipped)
            .expect_err("crc")
            .contains("checksum"));
        assert!(decode_frame(&buf[..10]).is_err());
        assert!(decode_frame(&buf[..buf.len() - 1])
            .expect_err("len")
            .contains("body bytes"));
    }
}
