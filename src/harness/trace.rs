//! The operation trace: one record per request, sent to any number of
//! sinks, each with its own filter (operations, a path glob):
//!
//! - a file, one JSON line per record, written by a thread of its own
//!   (requests hand it lines through a bounded channel: they wait only if
//!   the writer falls behind, never on a lock held across the write);
//! - a follower on the control socket (`stratafs ctl MNT trace follow`),
//!   which gets records as long as it keeps up (records a slow follower
//!   cannot take are dropped and counted, the filesystem never waits);
//! - memory, for the Rust API (a bounded ring: the oldest records give
//!   way and are counted as dropped).
//!
//! With no sink the trace costs one atomic load per request.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use globset::GlobMatcher;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::ops::{Op, Ops};
use super::rules::compile_glob;

/// One request, as the trace shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When the request arrived, seconds since the epoch.
    pub time: f64,
    /// The operation.
    pub op: Op,
    /// The merged path relative to the mount root (`""` is the root);
    /// bytes that are not UTF-8 are shown as U+FFFD.
    pub path: String,
    /// The second path of `rename` (the new name) and `link` (the new
    /// link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path2: Option<String>,
    /// The calling thread's process id, as the kernel reports it.
    pub pid: u32,
    /// The caller's user id.
    pub uid: u32,
    /// `"ok"`, or the errno's name (`"ENOENT"`).
    pub result: String,
    /// Time to serve the request, microseconds.
    pub duration_us: u64,
    /// The layer that holds the object afterwards: `"upper"`, or
    /// `"lowerN"` (`lower0` is the topmost lower directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The request copied something up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_up: bool,
    /// The id of the fault rule that acted on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<u64>,
    /// Offset of a `read` or `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Bytes asked for (`read`) or given (`write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes transferred, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Which records a sink takes.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    ops: Ops,
    glob: Option<GlobMatcher>,
}

impl Filter {
    /// Operations given as names (`None`: all), paths matching `path`.
    pub(crate) fn new(ops: Option<&[String]>, path: Option<&str>) -> Result<Filter, String> {
        let ops = match ops {
            None => Ops::ALL,
            Some(names) => {
                let mut s = Ops::NONE;
                for n in names {
                    s = s.union(Ops::parse_list(n, ':')?);
                }
                s
            }
        };
        let glob = path.map(compile_glob).transpose()?;
        Ok(Filter { ops, glob })
    }

    /// Every record.
    pub(crate) fn all() -> Filter {
        Filter {
            ops: Ops::ALL,
            glob: None,
        }
    }

    fn accepts(&self, r: &TraceRecord) -> bool {
        self.ops.contains(r.op)
            && self.glob.as_ref().is_none_or(|g| {
                g.is_match(&r.path) || r.path2.as_ref().is_some_and(|p| g.is_match(p))
            })
    }
}

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
}

enum Output {
    File {
        tx: SyncSender<Msg>,
        writer: Mutex<Option<JoinHandle<()>>>,
    },
    Follower(SyncSender<String>),
    Memory,
}

struct Sink {
    id: u64,
    filter: Filter,
    out: Output,
}

/// Records the API keeps, oldest first, at most `cap`.
struct Ring {
    records: VecDeque<TraceRecord>,
    cap: usize,
}

/// Lines a file sink may have queued before requests wait for its writer.
const FILE_QUEUE: usize = 4096;
/// Lines a follower may have queued before records for it are dropped.
const FOLLOW_QUEUE: usize = 4096;
/// Records the memory trace keeps by default.
pub(crate) const MEMORY_RECORDS: usize = 100_000;

/// The trace of one mount.
pub(crate) struct Tracer {
    /// Operations some sink wants (0: the trace is off).
    wanted: AtomicU64,
    sinks: RwLock<Arc<Vec<Arc<Sink>>>>,
    ring: Mutex<Ring>,
    next_id: AtomicU64,
    records: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sinks", &self.sinks.read().len())
            .finish()
    }
}

impl Tracer {
    pub(crate) fn new() -> Tracer {
        Tracer {
            wanted: AtomicU64::new(0),
            sinks: RwLock::new(Arc::new(Vec::new())),
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                cap: MEMORY_RECORDS,
            }),
            next_id: AtomicU64::new(1),
            records: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether some sink wants records of `op`.
    #[inline]
    pub(crate) fn wants(&self, op: Op) -> bool {
        self.wanted.load(Ordering::Relaxed) & op.bit() != 0
    }

    /// (records written, records dropped).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn set_sinks(&self, f: impl FnOnce(&mut Vec<Arc<Sink>>)) -> Vec<Arc<Sink>> {
        let mut guard = self.sinks.write();
        let mut v: Vec<Arc<Sink>> = guard.as_ref().clone();
        f(&mut v);
        let wanted = v.iter().fold(0, |m, s| m | s.filter.ops.0);
        let removed = guard
            .iter()
            .filter(|s| !v.iter().any(|k| k.id == s.id))
            .cloned()
            .collect();
        *guard = Arc::new(v);
        self.wanted.store(wanted, Ordering::Relaxed);
        removed
    }

    fn add(&self, filter: Filter, out: Output) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.set_sinks(|v| v.push(Arc::new(Sink { id, filter, out })));
        id
    }

    /// Start writing records to `path` (created or truncated), which must
    /// not be on the device `not_on` (the mount itself: writing the trace
    /// would make more records, and wait on the requests it traces).
    pub(crate) fn start_file(
        &self,
        path: &Path,
        filter: Filter,
        not_on: Option<u64>,
    ) -> Result<u64, String> {
        let file = File::create(path).map_err(|e| format!("trace {}: {e}", path.display()))?;
        let dev = rustix::fs::fstat(&file).map(|st| st.st_dev).ok();
        if not_on.is_some() && dev == not_on {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(format!(
                "trace {}: the trace cannot be written into the mount it traces",
                path.display()
            ));
        }
        let (tx, rx) = mpsc::sync_channel(FILE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("stratafs-trace".into())
            .spawn(move || write_lines(BufWriter::new(file), &rx))
            .map_err(|e| format!("cannot start the trace writer: {e}"))?;
        Ok(self.add(
            filter,
            Output::File {
                tx,
                writer: Mutex::new(Some(writer)),
            },
        ))
    }

    /// A new follower: records arrive on the receiver as JSON lines.
    pub(crate) fn follow(&self, filter: Filter) -> (u64, Receiver<String>) {
        let (tx, rx) = mpsc::sync_channel(FOLLOW_QUEUE);
        (self.add(filter, Output::Follower(tx)), rx)
    }

    /// Start keeping records in memory (for [`Tracer::memory`]); at most
    /// `cap` of them.
    pub(crate) fn start_memory(&self, filter: Filter, cap: usize) -> u64 {
        {
            let mut r = self.ring.lock();
            r.cap = cap.max(1);
        }
        self.stop_memory();
        self.add(filter, Output::Memory)
    }

    /// Stop keeping records in memory (those kept stay).
    pub(crate) fn stop_memory(&self) {
        self.stop_where(|s| matches!(s.out, Output::Memory));
    }

    /// The records kept in memory; with `take`, they are removed.
    pub(crate) fn memory(&self, take: bool) -> Vec<TraceRecord> {
        let mut r = self.ring.lock();
        if take {
            r.records.drain(..).collect()
        } else {
            r.records.iter().cloned().collect()
        }
    }

    /// Stop sink `id`; returns whether there was one.
    pub(crate) fn stop(&self, id: u64) -> bool {
        self.stop_where(|s| s.id == id) > 0
    }

    /// Stop the file sinks and followers (the memory trace stays).
    pub(crate) fn stop_outputs(&self) -> usize {
        self.stop_where(|s| !matches!(s.out, Output::Memory))
    }

    /// Stop every sink (at unmount).
    pub(crate) fn stop_all(&self) {
        self.stop_where(|_| true);
    }

    /// Stop the sinks `pick` chooses; file sinks are complete on disk when
    /// this returns.
    fn stop_where(&self, pick: impl Fn(&Sink) -> bool) -> usize {
        let removed = self.set_sinks(|v| v.retain(|s| !pick(s)));
        let n = removed.len();
        for s in removed {
            // Requests still emitting hold the sink; the writer ends when
            // the last of them lets it go.
            if let Output::File { writer, .. } = &s.out {
                let handle = writer.lock().take();
                drop(s);
                if let Some(h) = handle {
                    let _ = h.join();
                }
            }
        }
        n
    }

    /// Wait until every file sink has written what it was given.
    pub(crate) fn flush(&self) {
        let sinks = self.sinks.read().clone();
        for s in sinks.iter() {
            if let Output::File { tx, .. } = &s.out {
                let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                if tx.send(Msg::Flush(ack_tx)).is_ok() {
                    let _ = ack_rx.recv_timeout(Duration::from_secs(10));
                }
            }
        }
    }

    /// Hand a record to the sinks that take it.
    pub(crate) fn emit(&self, rec: TraceRecord) {
        let sinks = self.sinks.read().clone();
        let mut line: Option<String> = None;
        let mut gone = Vec::new();
        let mut taken = false;
        for s in sinks.iter() {
            if !s.filter.accepts(&rec) {
                continue;
            }
            taken = true;
            let mut text = || {
                line.get_or_insert_with(|| {
                    let mut l = serde_json::to_string(&rec).unwrap_or_default();
                    l.push('\n');
                    l
                })
                .clone()
            };
            match &s.out {
                Output::File { tx, .. } => {
                    if tx.send(Msg::Line(text())).is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Follower(tx) => match tx.try_send(text()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => gone.push(s.id),
                },
                Output::Memory => {
                    let mut r = self.ring.lock();
                    if r.records.len() >= r.cap {
                        r.records.pop_front();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    r.records.push_back(rec.clone());
                }
            }
        }
        if taken {
            self.records.fetch_add(1, Ordering::Relaxed);
        }
        drop(sinks);
        for id in gone {
            self.stop(id);
        }
    }
}

fn write_lines(mut w: BufWriter<File>, rx: &Receiver<Msg>) {
    let mut failed = false;
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(l) => {
                    if !failed {
                        if let Err(e) = w.write_all(l.as_bytes()) {
                            log::warn!("trace file: {e}; later records are lost");
                            failed = true;
                        }
                    }
                }
                Msg::Flush(ack) => {
                    let _ = w.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Nothing queued: write out what is buffered, so the file is
        // current whenever the filesystem is idle.
        let _ = w.flush();
    }
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, path: &str) -> TraceRecord {
        TraceRecord {
            time: 1.5,
            op,
            path: path.into(),
            path2: None,
            pid: 7,
            uid: 0,
            result: "ok".into(),
            duration_us: 3,
            layer: None,
            copy_up: false,
            fault: None,
            offset: None,
            size: None,
            bytes: None,
        }
    }

    #[test]
    fn sinks_filters_and_the_json_form() -> Result<(), String> {
        let t = Tracer::new();
        assert!(!t.wants(Op::Write));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = dir.path().join("t.jsonl");
        let ops = vec!["write:create".to_string()];
        t.start_file(&file, Filter::new(Some(&ops), Some("db/**"))?, None)?;
        let here = rustix::fs::stat(dir.path()).map(|s| s.st_dev).ok();
        assert!(t
            .start_file(&dir.path().join("x"), Filter::all(), here)
            .is_err());
        t.start_memory(Filter::all(), 2);
        let (_, rx) = t.follow(Filter::new(None, Some("x"))?);
        assert!(t.wants(Op::Write) && t.wants(Op::Read));
        t.emit(rec(Op::Write, "db/wal"));
        t.emit(rec(Op::Read, "db/wal"));
        t.emit(rec(Op::Create, "other"));
        t.emit(rec(Op::Lookup, "x"));
        t.flush();
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        assert_eq!(
            text,
            "{\"time\":1.5,\"op\":\"write\",\"path\":\"db/wal\",\"pid\":7,\"uid\":0,\
             \"result\":\"ok\",\"duration_us\":3}\n"
        );
        let mem = t.memory(false);
        assert_eq!(mem.len(), 2, "the ring keeps the newest");
        assert_eq!((mem[0].op, mem[1].op), (Op::Create, Op::Lookup));
        assert_eq!(rx.try_recv().ok().map(|l| l.contains("lookup")), Some(true));
        assert_eq!(t.counts(), (4, 2));
        assert_eq!(t.stop_outputs(), 2);
        assert!(t.wants(Op::Read), "the memory trace stays");
        t.stop_all();
        assert!(!t.wants(Op::Read));
        assert_eq!(t.memory(true).len(), 2);
        assert!(t.memory(false).is_empty());
        let back: TraceRecord = serde_json::from_str(text.trim_end()).map_err(|e| e.to_string())?;
        assert_eq!(back, rec(Op::Write, "db/wal"));
        Ok(())
    }

    #[test]
    fn a_gone_follower_is_dropped() -> Result<(), String> {
        let t = Tracer::new();
        let (_, rx) = t.follow(Filter::all());
        drop(rx);
        t.emit(rec(Op::Read, "a"));
        assert!(!t.wants(Op::Read));
        Ok(())
    }
}
