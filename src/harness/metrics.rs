//! Request metrics: per operation a count, an error count and a latency
//! histogram (powers of two of microseconds), all relaxed atomics bumped
//! once per request; and the figures read when asked (copy-ups, whiteouts,
//! name map hits, nodes, descriptors, memory, CPU time), as [`Stats`] (JSON)
//! or in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ops::Op;
use crate::core::events::EventCounts;

/// Histogram buckets: upper bounds 1 µs, 2 µs, 4 µs, ... 2^(N-2) µs, +Inf.
const BUCKETS: usize = 28;

#[derive(Debug)]
struct OpMetrics {
    count: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    max_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl OpMetrics {
    fn new() -> Self {
        OpMetrics {
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of a latency: the first whose bound (2^i µs) is not below it.
fn bucket(d: Duration) -> usize {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    let i = if us <= 1 {
        0
    } else {
        (64 - (us - 1).leading_zeros()) as usize
    };
    i.min(BUCKETS - 1)
}

/// Upper bound of bucket `i` in microseconds (`None`: +Inf).
fn bucket_bound_us(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << i)
}

/// The counters of one mount.
#[derive(Debug)]
pub(crate) struct Metrics {
    ops: Vec<OpMetrics>,
    faults: AtomicU64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            ops: Op::ALL.iter().map(|_| OpMetrics::new()).collect(),
            faults: AtomicU64::new(0),
        }
    }

    /// One request of `op` that took `d`, failed or not.
    pub(crate) fn record(&self, op: Op, d: Duration, failed: bool) {
        let Some(m) = self.ops.get(op.index()) else {
            return;
        };
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        m.count.fetch_add(1, Ordering::Relaxed);
        m.nanos.fetch_add(ns, Ordering::Relaxed);
        if let Some(b) = m.buckets.get(bucket(d)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if ns > m.max_nanos.load(Ordering::Relaxed) {
            m.max_nanos.fetch_max(ns, Ordering::Relaxed);
        }
        if failed {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A rule fired.
    pub(crate) fn fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-operation figures and the fault count.
    fn requests(&self) -> (Vec<(Op, OpFigures)>, u64) {
        let v = Op::ALL
            .iter()
            .zip(&self.ops)
            .map(|(op, m)| {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let f = OpFigures {
                    count: get(&m.count),
                    errors: get(&m.errors),
                    nanos: get(&m.nanos),
                    max_nanos: get(&m.max_nanos),
                    buckets: m.buckets.iter().map(get).collect(),
                };
                (*op, f)
            })
            .collect();
        (v, self.faults.load(Ordering::Relaxed))
    }
}

struct OpFigures {
    count: u64,
    errors: u64,
    nanos: u64,
    max_nanos: u64,
    buckets: Vec<u64>,
}

impl OpFigures {
    /// The bound of the bucket holding the `q` quantile, in µs.
    fn quantile_us(&self, q: f64) -> u64 {
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return bucket_bound_us(i).unwrap_or(self.max_nanos / 1000);
            }
        }
        self.max_nanos / 1000
    }
}

/// Latency of one operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Total time, microseconds.
    pub sum_us: u64,
    /// Longest request, microseconds.
    pub max_us: u64,
    /// Median, as the bound of its histogram bucket (µs).
    pub p50_us: u64,
    /// 99th percentile, as the bound of its histogram bucket (µs).
    pub p99_us: u64,
    /// Histogram: `[upper bound in µs, requests]` for each non-empty
    /// bucket (the last bound is `null` for +Inf). Not cumulative.
    pub buckets: Vec<(Option<u64>, u64)>,
}

/// The metrics of a mount at one moment (`stratafs stats MNT --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests served, by operation name (every operation is present).
    pub requests: BTreeMap<String, u64>,
    /// Requests answered with an error, by operation name.
    pub errors: BTreeMap<String, u64>,
    /// Latency by operation name (operations with requests only).
    pub latency: BTreeMap<String, Latency>,
    /// Objects copied up to the upper layer.
    pub copy_ups: u64,
    /// Bytes of file data copied up.
    pub copy_up_bytes: u64,
    /// Whiteouts written.
    pub whiteouts: u64,
    /// Lookups answered from the daemon's name cache.
    pub lookup_cache_hits: u64,
    /// Lookups resolved over the layers.
    pub lookup_cache_misses: u64,
    /// Times a fault rule fired.
    pub faults_injected: u64,
    /// Nodes in the inode table (the root included).
    pub nodes: u64,
    /// Open files (opens and creates that succeeded, minus releases).
    pub open_files: u64,
    /// Open directories.
    pub open_dirs: u64,
    /// Descriptors the daemon has open.
    pub fds: u64,
    /// Resident memory of the daemon, bytes.
    pub rss_bytes: u64,
    /// CPU time of the daemon (user + system), seconds.
    pub cpu_seconds: f64,
    /// Seconds since the mount.
    pub uptime_seconds: f64,
    /// Trace records written.
    pub trace_records: u64,
    /// Trace records dropped (a slow follower, a full memory trace).
    pub trace_dropped: u64,
    /// Whether per-request metrics are counted (`metrics=0` turns them
    /// off; `requests` and `latency` stay empty then).
    pub metrics: bool,
}

/// Figures from outside the request counters.
pub(crate) struct Gauges {
    pub(crate) events: EventCounts,
    pub(crate) nodes: u64,
    pub(crate) uptime: Duration,
    pub(crate) trace_records: u64,
    pub(crate) trace_dropped: u64,
    pub(crate) metrics_on: bool,
}

/// The stats of `m` (`None` when per-request metrics are off) with `g`.
pub(crate) fn snapshot(m: Option<&Metrics>, g: &Gauges) -> Stats {
    let mut s = Stats {
        copy_ups: g.events.copy_ups,
        copy_up_bytes: g.events.copy_up_bytes,
        whiteouts: g.events.whiteouts,
        lookup_cache_hits: g.events.name_hits,
        lookup_cache_misses: g.events.name_misses,
        nodes: g.nodes,
        uptime_seconds: g.uptime.as_secs_f64(),
        trace_records: g.trace_records,
        trace_dropped: g.trace_dropped,
        metrics: g.metrics_on,
        ..Stats::default()
    };
    let (fds, rss, cpu) = process_figures();
    s.fds = fds;
    s.rss_bytes = rss;
    s.cpu_seconds = cpu;
    let Some(m) = m else {
        return s;
    };
    let (ops, faults) = m.requests();
    s.faults_injected = faults;
    let ok = |op: Op| {
        ops.get(op.index())
            .map_or(0, |(_, f)| f.count.saturating_sub(f.errors))
    };
    let count = |op: Op| ops.get(op.index()).map_or(0, |(_, f)| f.count);
    s.open_files = (ok(Op::Open) + ok(Op::Create)).saturating_sub(count(Op::Release));
    s.open_dirs = ok(Op::Opendir).saturating_sub(count(Op::Releasedir));
    for (op, f) in &ops {
        s.requests.insert(op.name().to_string(), f.count);
        s.errors.insert(op.name().to_string(), f.errors);
        if f.count == 0 {
            continue;
        }
        let buckets = f
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (bucket_bound_us(i), *n))
            .collect();
        s.latency.insert(
            op.name().to_string(),
            Latency {
                count: f.count,
                sum_us: f.nanos / 1000,
                max_us: f.max_nanos / 1000,
                p50_us: f.quantile_us(0.5),
                p99_us: f.quantile_us(0.99),
                buckets,
            },
        );
    }
    s
}

/// Descriptors, resident bytes and CPU seconds of this process.
fn process_figures() -> (u64, u64, f64) {
    let fds = crate::core::fdbudget::open_fds() as u64;
    let page = rustix::param::page_size() as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may contain spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / ticks)
        })
        .unwrap_or(0.0);
    (fds, rss, cpu)
}

/// The stats in the Prometheus text exposition format.
pub fn prometheus(s: &Stats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_op = |m: &BTreeMap<String, u64>| -> Vec<(String, String)> {
        m.iter()
            .map(|(op, n)| (format!("{{op=\"{op}\"}}"), n.to_string()))
            .collect()
    };
    let one = |v: String| vec![(String::new(), v)];
    if s.metrics {
        metric(
            "stratafs_requests_total",
            "counter",
            "FUSE requests served, by operation.",
            &per_op(&s.requests),
        );
        metric(
            "stratafs_request_errors_total",
            "counter",
            "FUSE requests answered with an error, by operation.",
            &per_op(&s.errors),
        );
        let mut hist = Vec::new();
        for (op, l) in &s.latency {
            let mut cum = 0;
            for (le, n) in &l.buckets {
                cum += n;
                let le = le.map_or("+Inf".to_string(), |us| format!("{}", us as f64 / 1e6));
                hist.push((
                    format!("_bucket{{op=\"{op}\",le=\"{le}\"}}"),
                    cum.to_string(),
                ));
            }
            if l.buckets.last().is_some_and(|(le, _)| le.is_some()) {
                hist.push((
                    format!("_bucket{{op=\"{op}\",le=\"+Inf\"}}"),
                    l.count.to_string(),
                ));
            }
            hist.push((
                format!("_sum{{op=\"{op}\"}}"),
                format!("{}", l.sum_us as f64 / 1e6),
            ));
            hist.push((format!("_count{{op=\"{op}\"}}"), l.count.to_string()));
        }
        metric(
            "stratafs_request_duration_seconds",
            "histogram",
            "Time to serve a FUSE request, by operation.",
            &hist,
        );
        metric(
            "stratafs_faults_injected_total",
            "counter",
            "Times a fault rule fired.",
            &one(s.faults_injected.to_string()),
        );
        metric(
            "stratafs_open_files",
            "gauge",
            "Open files.",
            &one(s.open_files.to_string()),
        );
        metric(
            "stratafs_open_dirs",
            "gauge",
            "Open directories.",
            &one(s.open_dirs.to_string()),
        );
    }
    // Figures that do not depend on per-request metrics: name, type,
    // help, value.
    let (c, g) = ("counter", "gauge");
    let figures: [(&str, &str, &str, String); 10] = [
        (
            "stratafs_copy_ups_total",
            c,
            "Objects copied up to the upper layer.",
            s.copy_ups.to_string(),
        ),
        (
            "stratafs_copy_up_bytes_total",
            c,
            "Bytes of file data copied up.",
            s.copy_up_bytes.to_string(),
        ),
        (
            "stratafs_whiteouts_total",
            c,
            "Whiteouts written.",
            s.whiteouts.to_string(),
        ),
        (
            "stratafs_lookup_cache_hits_total",
            c,
            "Lookups answered from the name cache.",
            s.lookup_cache_hits.to_string(),
        ),
        (
            "stratafs_lookup_cache_misses_total",
            c,
            "Lookups resolved over the layers.",
            s.lookup_cache_misses.to_string(),
        ),
        (
            "stratafs_cpu_seconds_total",
            c,
            "CPU time of the daemon (user and system).",
            s.cpu_seconds.to_string(),
        ),
        (
            "stratafs_nodes",
            g,
            "Nodes in the inode table.",
            s.nodes.to_string(),
        ),
        (
            "stratafs_open_fds",
            g,
            "Descriptors the daemon holds.",
            s.fds.to_string(),
        ),
        (
            "stratafs_resident_memory_bytes",
            g,
            "Resident memory of the daemon.",
            s.rss_bytes.to_string(),
        ),
        (
            "stratafs_uptime_seconds",
            g,
            "Seconds since the mount.",
            s.uptime_seconds.to_string(),
        ),
    ];
    for (name, kind, help, v) in figures {
        metric(name, kind, help, &one(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(2)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 2);
        assert_eq!(bucket(Duration::from_micros(5)), 3);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
        assert_eq!(bucket_bound_us(3), Some(8));
        assert_eq!(bucket_bound_us(BUCKETS - 1), None);
    }

    fn gauges() -> Gauges {
        Gauges {
            events: EventCounts::default(),
            nodes: 1,
            uptime: Duration::from_secs(1),
            trace_records: 0,
            trace_dropped: 0,
            metrics_on: true,
        }
    }

    #[test]
    fn snapshot_and_prometheus() {
        let m = Metrics::new();
        m.record(Op::Write, Duration::from_micros(3), false);
        m.record(Op::Write, Duration::from_micros(100), true);
        m.record(Op::Open, Duration::from_micros(1), false);
        m.fault();
        let s = snapshot(Some(&m), &gauges());
        assert_eq!(s.requests.get("write"), Some(&2));
        assert_eq!(s.requests.get("copy_file_range"), Some(&0));
        assert_eq!(s.requests.len(), Op::ALL.len());
        assert_eq!(s.errors.get("write"), Some(&1));
        assert_eq!(s.open_files, 1);
        assert_eq!(s.faults_injected, 1);
        let w = &s.latency["write"];
        assert_eq!((w.count, w.max_us, w.p50_us), (2, 100, 4));
        assert_eq!(w.buckets, vec![(Some(4), 1), (Some(128), 1)]);
        assert!(!s.latency.contains_key("read"));
        assert!(s.rss_bytes > 0 && s.fds > 0);
        let text = prometheus(&s);
        assert!(
            text.contains("stratafs_requests_total{op=\"write\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "stratafs_request_duration_seconds_bucket{op=\"write\",le=\"0.000128\"} 2\n"
        ));
        assert!(
            text.contains("stratafs_request_duration_seconds_bucket{op=\"write\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("stratafs_request_duration_seconds_count{op=\"write\"} 2\n"));
        assert!(text.contains("# TYPE stratafs_copy_ups_total counter\n"));
        let json = serde_json::to_string(&s).unwrap_or_default();
        let back: Stats = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, s);
        let off = snapshot(None, &gauges());
        assert!(off.requests.is_empty());
    }
}
