//! Test-harness mode: fault and latency injection, the operation trace,
//! request metrics, listing orders and live control of a mount.
//!
//! It sits between the FUSE adapter and the overlay: the adapter opens a
//! [`Call`] for every request ([`Harness::begin`]), with the operation, the
//! node or names it is about and the caller, and closes it with the result
//! ([`Call::end`]). In between, the call says whether a fault rule refuses
//! the request, and changes data and attributes on their way to the caller
//! ([`Call::short`], [`Call::corrupt`], [`Call::lie`]); faults never touch
//! the layers. With no rule, no trace and metrics on, a call costs two
//! clock reads and a few relaxed atomic operations: no lock, no allocation,
//! no path.
//!
//! Modules: `ops` (operation names and sets), `rules` (matching, triggers,
//! actions), `metrics` (counters, histograms, stats), `trace` (records and
//! sinks), `order` (listing orders), `control` (the control socket and its
//! client).

pub(crate) mod control;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod order;
pub(crate) mod rules;
pub(crate) mod trace;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustix::fs::Stat;
use serde::{Deserialize, Serialize};

use crate::core::events;
use crate::core::inodes::ROOT_INO;
use crate::core::listing::DirEntry;
use crate::core::names::Name;
use crate::core::overlay::Overlay;
use crate::error::{errno_name, Errno, Result, SetupError};
use crate::setup::options::{HarnessOptions, ListOrder};
use metrics::{Gauges, Metrics, Stats};
use ops::{Op, Ops};
use order::Arranged;
use rules::{Compiled, Effect, RuleSpec, Source};
use trace::{Filter, TraceRecord, Tracer};

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who {
    /// The calling thread's process id.
    pub(crate) pid: u32,
    /// The caller's user id.
    pub(crate) uid: u32,
}

/// What a request is about, as the kernel names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A node.
    Node(u64),
    /// A name in a directory (lookup, create, unlink, ...).
    Name(u64, &'a [u8]),
    /// `rename`: (parent, name) to (new parent, new name).
    Rename(u64, &'a [u8], u64, &'a [u8]),
    /// `link`: a node gets the name (new parent, new name).
    Link(u64, u64, &'a [u8]),
    /// Two nodes (`copy_file_range`: from, to).
    Nodes(u64, u64),
}

/// The deepest path built (a guard against a parent chain that loops
/// while a rename moves things).
const MAX_DEPTH: usize = 4096;
/// Rules a mount holds at most.
const MAX_RULES: usize = 4096;

/// A name as a target has it: borrowed from the request, or a node's.
enum NameOf<'a> {
    Borrowed(&'a [u8]),
    Shared(Name),
}

impl NameOf<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            NameOf::Borrowed(b) => b,
            NameOf::Shared(n) => n,
        }
    }
}

/// The bytes of a target's last names.
fn name_bytes<'n>(names: &'n [Option<NameOf<'_>>; 2]) -> [Option<&'n [u8]>; 2] {
    [
        names[0].as_ref().map(NameOf::bytes),
        names[1].as_ref().map(NameOf::bytes),
    ]
}

/// The merged paths of a request's target.
#[derive(Debug, Default)]
struct Paths {
    first: Vec<u8>,
    second: Option<Vec<u8>>,
}

impl Paths {
    fn all(&self) -> Vec<&[u8]> {
        let mut v = vec![self.first.as_slice()];
        v.extend(self.second.as_deref());
        v
    }
}

/// The rules of a mount.
#[derive(Debug, Default)]
struct RuleSet {
    /// Operations some rule is about (0: no rule).
    ops: AtomicU64,
    list: RwLock<Arc<Vec<Arc<Compiled>>>>,
    next_id: AtomicU64,
}

/// The state of a rule (`stratafs ctl MNT rules`, `mount.rules()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The id (for removal; fault records in the trace name it).
    pub id: u64,
    /// Where the rule came from.
    pub source: Source,
    /// The rule.
    pub rule: RuleSpec,
    /// Requests the rule matched.
    pub matched: u64,
    /// Times it fired.
    pub fired: u64,
}

/// What the rules decided for a request.
#[derive(Debug, Clone, Copy)]
struct Fired {
    effect: Option<Effect>,
    rule: u64,
    seed: u64,
    k: u64,
}

/// The test harness of one mount.
pub(crate) struct Harness {
    fs: Arc<Overlay>,
    metrics: Option<Metrics>,
    rules: RuleSet,
    pub(crate) tracer: Tracer,
    order: ListOrder,
    listings: DashMap<u64, Arc<Arranged>>,
    faults_file: Option<PathBuf>,
    /// Answer FLUSH (close) instead of turning it off with ENOSYS: a rule
    /// given at mount names it.
    answer_flush: bool,
    started: Instant,
    /// The control socket's name, once it listens.
    pub(crate) socket: Mutex<Option<String>>,
    /// The mount's device number, once known (a trace file must not be
    /// on the mount itself).
    pub(crate) dev: std::sync::OnceLock<u64>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("order", &self.order)
            .field("faults_file", &self.faults_file)
            .finish()
    }
}

fn read_faults(path: &std::path::Path) -> std::result::Result<Vec<RuleSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rules::parse_faults(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Harness {
    /// The harness of a mount of `fs` with options `opts` and the rules
    /// `initial` (from the Rust API): reads the faults file, opens the
    /// trace file.
    pub(crate) fn new(
        fs: Arc<Overlay>,
        opts: &HarnessOptions,
        initial: Vec<RuleSpec>,
    ) -> std::result::Result<Harness, SetupError> {
        let h = Harness {
            fs,
            metrics: (!opts.no_metrics).then(Metrics::new),
            rules: RuleSet::default(),
            tracer: Tracer::new(),
            order: opts.order,
            listings: DashMap::new(),
            faults_file: opts.faults.clone(),
            answer_flush: false,
            started: Instant::now(),
            socket: Mutex::new(None),
            dev: std::sync::OnceLock::new(),
        };
        let bad = |e: String| SetupError::new(format!("faults: {e}"));
        if let Some(f) = &opts.faults {
            h.set_file_rules(read_faults(f).map_err(bad)?)
                .map_err(bad)?;
        }
        for spec in initial {
            h.add_rule(spec, Source::Api).map_err(bad)?;
        }
        // Answering FLUSH costs a round trip at every close(2) of every
        // file: only for rules that name it (`*` does not).
        let answer_flush = h
            .rules
            .list
            .read()
            .iter()
            .any(|r| r.named.contains(Op::Flush));
        if let Some(path) = &opts.trace {
            let ops: Option<Vec<String>> = opts.trace_ops.clone().map(|o| vec![o]);
            let filter = Filter::new(ops.as_deref(), opts.trace_path.as_deref())
                .map_err(|e| SetupError::new(format!("trace: {e}")))?;
            // Opened before the mount exists: never on the mount itself.
            h.tracer
                .start_file(path, filter, None)
                .map_err(SetupError::new)?;
        }
        Ok(Harness { answer_flush, ..h })
    }

    /// Whether FLUSH is answered (see `answer_flush`).
    pub(crate) fn answers_flush(&self) -> bool {
        self.answer_flush
    }

    /// The faults file, if the mount has one.
    pub(crate) fn faults_file(&self) -> Option<&std::path::Path> {
        self.faults_file.as_deref()
    }

    /// Stop the trace (files complete on disk) at unmount.
    pub(crate) fn shutdown(&self) {
        self.tracer.stop_all();
    }

    // ------------------------------------------------------------ rules

    fn publish(&self, list: Vec<Arc<Compiled>>) {
        let ops = list.iter().fold(0, |m, r| m | r.ops.0);
        *self.rules.list.write() = Arc::new(list);
        self.rules.ops.store(ops, Ordering::Relaxed);
    }

    fn compile(&self, spec: RuleSpec, source: Source) -> std::result::Result<Compiled, String> {
        let id = self.rules.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Compiled::new(id, source, spec)
    }

    /// Add a rule; returns its id.
    pub(crate) fn add_rule(
        &self,
        spec: RuleSpec,
        source: Source,
    ) -> std::result::Result<u64, String> {
        let r = Arc::new(self.compile(spec, source)?);
        let id = r.id;
        let mut list = self.rules.list.read().as_ref().clone();
        if list.len() >= MAX_RULES {
            return Err(format!("too many rules (at most {MAX_RULES})"));
        }
        list.push(r);
        self.publish(list);
        Ok(id)
    }

    /// Replace the rules of the faults file with `specs` (all or none).
    fn set_file_rules(&self, specs: Vec<RuleSpec>) -> std::result::Result<usize, String> {
        let mut fresh = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            let r = self
                .compile(s, Source::File)
                .map_err(|e| format!("rule {}: {e}", i + 1))?;
            fresh.push(Arc::new(r));
        }
        let n = fresh.len();
        let mut list: Vec<Arc<Compiled>> = self
            .rules
            .list
            .read()
            .iter()
            .filter(|r| r.source != Source::File)
            .cloned()
            .collect();
        // File rules first, in file order.
        fresh.append(&mut list);
        if fresh.len() > MAX_RULES {
            return Err(format!("too many rules (at most {MAX_RULES})"));
        }
        self.publish(fresh);
        Ok(n)
    }

    /// Read the faults file again; its rules replace the previous ones
    /// (with fresh counters), other rules stay. On an error nothing
    /// changes.
    pub(crate) fn reload(&self) -> std::result::Result<usize, String> {
        let path = self
            .faults_file
            .as_deref()
            .ok_or("the mount has no faults file")?;
        self.set_file_rules(read_faults(path)?)
    }

    /// Remove rule `id`; whether there was one.
    pub(crate) fn remove_rule(&self, id: u64) -> bool {
        let mut list = self.rules.list.read().as_ref().clone();
        let before = list.len();
        list.retain(|r| r.id != id);
        let found = list.len() != before;
        self.publish(list);
        found
    }

    /// Remove every rule.
    pub(crate) fn clear_rules(&self) -> usize {
        let n = self.rules.list.read().len();
        self.publish(Vec::new());
        n
    }

    /// The rules and their counters.
    pub(crate) fn rules(&self) -> Vec<RuleStatus> {
        self.rules
            .list
            .read()
            .iter()
            .map(|r| {
                let (matched, fired) = r.counts();
                RuleStatus {
                    id: r.id,
                    source: r.source,
                    rule: r.spec.clone(),
                    matched,
                    fired,
                }
            })
            .collect()
    }

    // ------------------------------------------------------------ paths

    /// The merged path of node `ino` (`""` for the root).
    fn node_path(&self, ino: u64) -> Vec<u8> {
        let mut names: Vec<Name> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO && names.len() < MAX_DEPTH {
            let Ok(node) = self.fs.node(cur) else {
                break;
            };
            let (parent, name) = node.location();
            names.push(name);
            cur = parent;
        }
        let mut p = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names.iter().rev() {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n);
        }
        p
    }

    fn child_path(&self, parent: u64, name: &[u8]) -> Vec<u8> {
        let mut p = self.node_path(parent);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    fn paths(&self, t: Target<'_>) -> Paths {
        match t {
            Target::Node(ino) => Paths {
                first: self.node_path(ino),
                second: None,
            },
            Target::Name(p, n) => Paths {
                first: self.child_path(p, n),
                second: None,
            },
            Target::Rename(p1, n1, p2, n2) => Paths {
                first: self.child_path(p1, n1),
                second: Some(self.child_path(p2, n2)),
            },
            Target::Link(ino, p, n) => Paths {
                first: self.node_path(ino),
                second: Some(self.child_path(p, n)),
            },
            Target::Nodes(a, b) => Paths {
                first: self.node_path(a),
                second: Some(self.node_path(b)),
            },
        }
    }

    fn node_name(&self, ino: u64) -> NameOf<'static> {
        match self.fs.node(ino) {
            Ok(n) => NameOf::Shared(n.location().1),
            Err(_) => NameOf::Borrowed(b""),
        }
    }

    /// The last names of a target's paths (one or two).
    fn names<'a>(&self, t: Target<'a>) -> [Option<NameOf<'a>>; 2] {
        match t {
            Target::Node(ino) => [Some(self.node_name(ino)), None],
            Target::Name(_, n) => [Some(NameOf::Borrowed(n)), None],
            Target::Rename(_, a, _, b) => [Some(NameOf::Borrowed(a)), Some(NameOf::Borrowed(b))],
            Target::Link(ino, _, n) => [Some(self.node_name(ino)), Some(NameOf::Borrowed(n))],
            Target::Nodes(a, b) => [Some(self.node_name(a)), Some(self.node_name(b))],
        }
    }

    /// Whether a rule about one of `ops` may act on requests about `t`
    /// (whatever its trigger and caller): such files are opened with
    /// direct I/O, such entries are not cached by the kernel, so that
    /// every call of the program reaches the rule.
    fn watched(&self, t: Target<'_>, ops: Ops) -> bool {
        if self.rules.ops.load(Ordering::Relaxed) & ops.0 == 0 {
            return false;
        }
        let list = self.rules.list.read().clone();
        let mut names = None;
        let mut paths: Option<Paths> = None;
        list.iter().any(|r| {
            if r.ops.and(ops).is_empty() {
                return false;
            }
            if !r.has_glob() {
                return true;
            }
            let names = names.get_or_insert_with(|| self.names(t));
            if !r.may_match_name(name_bytes(names)) {
                return false;
            }
            let p = paths.get_or_insert_with(|| self.paths(t));
            r.path_matches(&p.all())
        })
    }

    /// Whether a file opened as `t` should bypass the page cache: a rule
    /// on its reads or writes must see every call.
    pub(crate) fn direct_io(&self, t: Target<'_>) -> bool {
        self.watched(t, Ops::from([Op::Read, Op::Write, Op::CopyFileRange]))
    }

    /// How long the kernel may cache an entry or attributes of `t`:
    /// `ttl`, or zero when a rule on `lookup` or `getattr` may act on it.
    pub(crate) fn entry_ttl(&self, t: Target<'_>, ttl: Duration) -> Duration {
        if self.watched(t, Ops::from([Op::Lookup, Op::Getattr])) {
            Duration::ZERO
        } else {
            ttl
        }
    }

    // ------------------------------------------------------------ calls

    /// Open the call of a request: run the rules (sleeping for a delay),
    /// start the clock.
    #[inline]
    pub(crate) fn begin<'a>(&'a self, op: Op, who: Who, target: Target<'a>) -> Call<'a> {
        let traced = self.tracer.wants(op);
        let mut call = Call {
            h: self,
            op,
            who,
            target,
            start: (self.metrics.is_some() || traced).then(Instant::now),
            traced,
            time: None,
            copy_ups: 0,
            paths: None,
            fired: None,
            io: Io::default(),
            node: None,
        };
        if traced {
            call.time = Some(SystemTime::now());
            call.copy_ups = events::copy_ups_by_this_thread();
        }
        if self.rules.ops.load(Ordering::Relaxed) & op.bit() != 0 {
            self.decide(&mut call);
        }
        call
    }

    fn decide(&self, call: &mut Call<'_>) {
        let list = self.rules.list.read().clone();
        let mut names = None;
        let mut delay = Duration::ZERO;
        for r in list.iter() {
            if !r.ops.contains(call.op) || !r.caller_fits(call.who.pid, call.who.uid) {
                continue;
            }
            if r.has_glob() {
                let names = names.get_or_insert_with(|| self.names(call.target));
                if !r.may_match_name(name_bytes(names)) {
                    continue;
                }
                let p = call.paths.get_or_insert_with(|| self.paths(call.target));
                if !r.path_matches(&p.all()) {
                    continue;
                }
            }
            let (fires, k) = r.count_match();
            if !fires {
                continue;
            }
            if let Some(m) = &self.metrics {
                m.fault();
            }
            if let Some(d) = r.delay(k) {
                delay += d;
                call.fired.get_or_insert(Fired {
                    effect: None,
                    rule: r.id,
                    seed: 0,
                    k,
                });
            }
            if let Some(e) = r.effect {
                if call.fired.and_then(|f| f.effect).is_none() {
                    call.fired = Some(Fired {
                        effect: Some(e),
                        rule: r.id,
                        seed: r.spec.seed.unwrap_or(0),
                        k,
                    });
                }
            }
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    // ------------------------------------------------------------ listings

    /// The listing of directory handle `fh` from `offset` on, in the
    /// mount's order; `src` and `start` are the handle's snapshot and the
    /// index after `offset` in it (`Overlay::dir_entries`).
    pub(crate) fn listing(
        &self,
        fh: u64,
        src: Arc<Vec<DirEntry>>,
        start: usize,
        offset: u64,
    ) -> Listing {
        if self.order == ListOrder::Hash {
            return Listing {
                src,
                arranged: None,
                start,
            };
        }
        let arranged = match self.listings.get(&fh) {
            Some(a) if Arc::ptr_eq(&a.src, &src) => a.clone(),
            _ => {
                let a = Arc::new(order::arrange(self.order, src.clone()));
                self.listings.insert(fh, a.clone());
                a
            }
        };
        let start = arranged.start_after(self.order, offset);
        Listing {
            src,
            arranged: Some(arranged),
            start,
        }
    }

    /// Directory handle `fh` was released.
    pub(crate) fn release_listing(&self, fh: u64) {
        if self.order != ListOrder::Hash {
            self.listings.remove(&fh);
        }
    }

    // ------------------------------------------------------------ stats

    /// The metrics now.
    pub(crate) fn stats(&self) -> Stats {
        let (trace_records, trace_dropped) = self.tracer.counts();
        let g = Gauges {
            events: self.fs.events.counts(),
            nodes: self.fs.inodes.len() as u64,
            uptime: self.started.elapsed(),
            trace_records,
            trace_dropped,
            metrics_on: self.metrics.is_some(),
        };
        metrics::snapshot(self.metrics.as_ref(), &g)
    }

    /// What a layer index is called in the trace.
    fn layer_name(&self, layer: usize) -> String {
        if self.fs.stack.is_upper(layer) {
            "upper".to_string()
        } else {
            let first_lower = usize::from(self.fs.stack.has_upper);
            format!("lower{}", layer.saturating_sub(first_lower))
        }
    }
}

/// A listing to return, in the mount's order.
pub(crate) struct Listing {
    src: Arc<Vec<DirEntry>>,
    arranged: Option<Arc<Arranged>>,
    start: usize,
}

impl Listing {
    /// The entries to return, in order.
    pub(crate) fn entries(&self) -> Entries<'_> {
        match &self.arranged {
            Some(a) => Entries::Arranged(a.from(self.start)),
            None => Entries::Plain(self.src.get(self.start..).unwrap_or_default().iter()),
        }
    }
}

/// The entries of a [`Listing`] (no allocation either way).
pub(crate) enum Entries<'a> {
    /// In offset order.
    Plain(std::slice::Iter<'a, DirEntry>),
    /// In the mount's order.
    Arranged(order::InOrder<'a>),
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a DirEntry;

    fn next(&mut self) -> Option<&'a DirEntry> {
        match self {
            Entries::Plain(i) => i.next(),
            Entries::Arranged(i) => i.next(),
        }
    }
}

/// Offsets and sizes of a data request, for the trace.
#[derive(Debug, Default, Clone, Copy)]
struct Io {
    offset: Option<u64>,
    size: Option<u64>,
    bytes: Option<u64>,
}

/// One request on its way through the harness (see the module
/// documentation).
pub(crate) struct Call<'a> {
    h: &'a Harness,
    op: Op,
    who: Who,
    target: Target<'a>,
    start: Option<Instant>,
    traced: bool,
    time: Option<SystemTime>,
    copy_ups: u64,
    paths: Option<Paths>,
    fired: Option<Fired>,
    io: Io,
    node: Option<u64>,
}

impl Call<'_> {
    fn effect(&self) -> Option<Effect> {
        self.fired.and_then(|f| f.effect)
    }

    /// The errno a rule refuses the request with.
    pub(crate) fn refused(&self) -> Option<Errno> {
        match self.effect() {
            Some(Effect::Fail(e)) => Some(e),
            _ => None,
        }
    }

    /// Run the request unless a rule refuses it.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.refused() {
            Some(e) => Err(e),
            None => f(),
        }
    }

    /// Like [`Call::run`], but a `noop` rule answers `noop()` instead.
    pub(crate) fn run_or_noop<T>(
        &self,
        noop: impl FnOnce() -> Result<T>,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match self.effect() {
            Some(Effect::Noop) => noop(),
            _ => self.run(f),
        }
    }

    /// The most bytes the request may transfer, if a rule limits it.
    pub(crate) fn short(&self) -> Option<u64> {
        match self.effect() {
            Some(Effect::Short(n)) => Some(n),
            _ => None,
        }
    }

    /// Corrupt data read, if a rule says so.
    pub(crate) fn corrupt(&self, data: &mut [u8]) {
        if let Some(Fired {
            effect: Some(Effect::Corrupt(n)),
            seed,
            k,
            ..
        }) = self.fired
        {
            rules::corrupt(data, n, seed, k);
        }
    }

    /// Change attributes on their way to the caller, if a rule says so.
    pub(crate) fn lie(&self, st: &mut Stat) {
        if let Some(Effect::Lie(l)) = self.effect() {
            if let Some(s) = l.size {
                st.st_size = s as i64;
            }
            if let Some(m) = l.mode {
                st.st_mode = (st.st_mode & !0o7777) | m;
            }
            if let Some(t) = l.mtime {
                st.st_mtime = t;
                st.st_mtime_nsec = 0;
            }
        }
    }

    /// How long the kernel may cache what this request answers: `ttl`, or
    /// zero when a rule may act on the next such request.
    pub(crate) fn ttl(&self, ttl: Duration) -> Duration {
        if matches!(self.effect(), Some(Effect::Lie(_))) {
            return Duration::ZERO;
        }
        self.h.entry_ttl(self.target, ttl)
    }

    /// Note the offset and size of a data request (for the trace).
    pub(crate) fn io(&mut self, offset: u64, size: u64) {
        self.io.offset = Some(offset);
        self.io.size = Some(size);
    }

    /// Note the bytes a data request transferred.
    pub(crate) fn bytes(&mut self, n: u64) {
        self.io.bytes = Some(n);
    }

    /// Note the node a request answered with (lookup, create, ...).
    pub(crate) fn node(&mut self, ino: u64) {
        self.node = Some(ino);
    }

    /// Close the call with the request's result.
    pub(crate) fn end<T>(self, r: Result<T>) -> Result<T> {
        self.finish(r.as_ref().err().copied());
        r
    }

    /// Close the call: `failed` is the errno the caller gets, if any.
    pub(crate) fn finish(self, failed: Option<Errno>) {
        let Some(start) = self.start else {
            return;
        };
        let took = start.elapsed();
        if let Some(m) = &self.h.metrics {
            m.record(self.op, took, failed.is_some());
        }
        if self.traced {
            self.trace(took, failed);
        }
    }

    fn trace(self, took: Duration, failed: Option<Errno>) {
        let h = self.h;
        let paths = self.paths.unwrap_or_else(|| h.paths(self.target));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let node = self.node.or(match self.target {
            Target::Node(ino) | Target::Link(ino, _, _) | Target::Nodes(_, ino) => Some(ino),
            _ => None,
        });
        let layer = node
            .filter(|_| failed.is_none())
            .and_then(|ino| h.fs.node(ino).ok())
            .and_then(|n| n.top_layer_obj())
            .map(|(layer, _)| h.layer_name(layer));
        let time = self
            .time
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| (d.as_micros() as f64) / 1e6);
        let result = match failed {
            None => "ok".to_string(),
            Some(e) => errno_name(e).map_or_else(|| e.raw_os_error().to_string(), String::from),
        };
        h.tracer.emit(TraceRecord {
            time,
            op: self.op,
            path: text(&paths.first),
            path2: paths.second.as_deref().map(text),
            pid: self.who.pid,
            uid: self.who.uid,
            result,
            duration_us: took.as_micros() as u64,
            layer,
            copy_up: events::copy_ups_by_this_thread() != self.copy_ups,
            fault: self.fired.map(|f| f.rule),
            offset: self.io.offset,
            size: self.io.size,
            bytes: self.io.bytes.filter(|_| failed.is_none()),
        });
    }
}
