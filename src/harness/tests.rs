//! The harness over a real overlay (no FUSE): merged paths of nodes, rules
//! deciding calls, and what a call costs when nothing is asked of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ops::Op;
use super::rules::{RuleSpec, Source};
use super::{Harness, Target, Who};
use crate::core::inodes::ROOT_INO;
use crate::core::overlay::{Config, Overlay};
use crate::error::Errno;
use crate::setup::options::{parse_mount_args, HarnessOptions};
use crate::setup::stack::Stack;
use crate::sys::raw::counting::allocations;

struct Fixture {
    _dir: tempfile::TempDir,
    h: Harness,
}

fn fixture(opts: &HarnessOptions) -> Result<Fixture, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let p = |s: &str| dir.path().join(s);
    for d in ["lower/a/b", "upper", "work", "mnt"] {
        std::fs::create_dir_all(p(d)).map_err(|e| e.to_string())?;
    }
    std::fs::write(p("lower/a/b/c"), "c").map_err(|e| e.to_string())?;
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    );
    let mopts = parse_mount_args(&[o], &[p("mnt").display().to_string()], true, false)
        .map_err(|e| e.to_string())?;
    let stack = Stack::open(&mopts).map_err(|e| e.to_string())?;
    let ov = Arc::new(Overlay::new(stack, Config::default()).map_err(|e| e.to_string())?);
    let h = Harness::new(ov, opts, Vec::new()).map_err(|e| e.to_string())?;
    Ok(Fixture { _dir: dir, h })
}

impl Fixture {
    /// The node of `path`, looked up as the kernel would (it keeps the
    /// references).
    fn ino(&self, path: &str) -> Result<u64, Errno> {
        let mut ino = ROOT_INO;
        for name in path.split('/') {
            let e = self
                .h
                .fs
                .lookup(ino, name.as_bytes())?
                .ok_or(Errno::NOENT)?;
            ino = e.node.hand_over().ino;
        }
        Ok(ino)
    }

    fn rule(&self, text: &str) -> Result<u64, String> {
        let spec: RuleSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        self.h.add_rule(spec, Source::Api)
    }
}

const ME: Who = Who { pid: 42, uid: 7 };

fn text(p: &[u8]) -> &str {
    std::str::from_utf8(p).unwrap_or("?")
}

#[test]
fn merged_paths_of_targets() -> Result<(), String> {
    let f = fixture(&HarnessOptions::default())?;
    let c = f.ino("a/b/c").map_err(|e| e.to_string())?;
    let b = f.ino("a/b").map_err(|e| e.to_string())?;
    let p = f.h.paths(Target::Node(c));
    assert_eq!(text(&p.first), "a/b/c");
    assert_eq!(text(&f.h.paths(Target::Node(ROOT_INO)).first), "");
    assert_eq!(text(&f.h.paths(Target::Name(ROOT_INO, b"x")).first), "x");
    let r = f.h.paths(Target::Rename(b, b"c", ROOT_INO, b"d"));
    assert_eq!(
        (text(&r.first), r.second.as_deref().map(text)),
        ("a/b/c", Some("d"))
    );
    let l = f.h.paths(Target::Link(c, b, b"h"));
    assert_eq!(l.second.as_deref().map(text), Some("a/b/h"));
    Ok(())
}

#[test]
fn rules_decide_calls() -> Result<(), String> {
    let f = fixture(&HarnessOptions::default())?;
    let c = f.ino("a/b/c").map_err(|e| e.to_string())?;
    f.rule("op = \"open\"\npath = \"a/**/c\"\nerrno = \"EIO\"\nuid = 7\n")?;
    f.rule("op = \"read\"\npath = \"a/b/*\"\nshort = 1\nnth = 2\n")?;
    let call = f.h.begin(Op::Open, ME, Target::Node(c));
    assert_eq!(call.refused(), Some(Errno::IO));
    call.finish(Some(Errno::IO));
    let other = Who { pid: 42, uid: 8 };
    assert_eq!(f.h.begin(Op::Open, other, Target::Node(c)).refused(), None);
    assert_eq!(f.h.begin(Op::Getattr, ME, Target::Node(c)).refused(), None);
    let shorts: Vec<Option<u64>> = (0..3)
        .map(|_| f.h.begin(Op::Read, ME, Target::Node(c)).short())
        .collect();
    assert_eq!(shorts, vec![None, Some(1), None]);
    assert!(f.h.direct_io(Target::Node(c)));
    assert!(!f.h.direct_io(Target::Name(ROOT_INO, b"c")));
    assert_eq!(f.h.rules()[0].fired, 1);
    assert_eq!(f.h.stats().faults_injected, 2);
    assert_eq!(f.h.clear_rules(), 2);
    assert!(!f.h.direct_io(Target::Node(c)));
    Ok(())
}

/// `n` calls of `op` on `t`, as the adapter makes them; the allocations
/// they made and the time per call.
fn calls(h: &Harness, op: Op, t: Target<'_>, n: u32) -> (u64, Duration) {
    let before = allocations();
    let start = Instant::now();
    for _ in 0..n {
        let call = h.begin(op, ME, t);
        let r: Result<(), Errno> = call.run(|| Ok(()));
        let _ = call.end(r);
    }
    let took = start.elapsed() / n;
    (allocations() - before, took)
}

#[test]
fn a_call_nothing_is_asked_of_costs_no_allocation() -> Result<(), String> {
    let f = fixture(&HarnessOptions::default())?;
    let c = f.ino("a/b/c").map_err(|e| e.to_string())?;
    let t = Target::Node(c);
    let n = 20_000;
    let (allocs, plain) = calls(&f.h, Op::Getattr, t, n);
    assert_eq!(allocs, 0, "metrics on, no rule, no trace");
    let off = fixture(&HarnessOptions {
        no_metrics: true,
        ..HarnessOptions::default()
    })?;
    let (_, bare) = calls(&off.h, Op::Getattr, Target::Node(ROOT_INO), n);
    // A rule on another operation, and one on this operation but another
    // file: neither builds a path.
    f.rule("op = \"write\"\npath = \"db/wal\"\nerrno = \"ENOSPC\"\n")?;
    let (allocs, other_op) = calls(&f.h, Op::Getattr, t, n);
    assert_eq!(allocs, 0, "a rule on another operation");
    f.rule("op = \"getattr\"\npath = \"db/wal\"\nerrno = \"EIO\"\n")?;
    let (allocs, other_path) = calls(&f.h, Op::Getattr, t, n);
    assert_eq!(allocs, 0, "a rule on another file name");
    f.rule("op = \"getattr\"\npath = \"db/*\"\nerrno = \"EIO\"\n")?;
    let (_, glob) = calls(&f.h, Op::Getattr, t, n);
    eprintln!(
        "harness call: metrics off {bare:?}, metrics on {plain:?}, rule on another op \
         {other_op:?}, on another name {other_path:?}, a glob to match {glob:?}"
    );
    // Generous: a debug build on a busy machine.
    assert!(plain < Duration::from_micros(20), "{plain:?} per call");
    Ok(())
}

#[test]
fn listings_in_the_default_order_cost_no_allocation() -> Result<(), String> {
    let f = fixture(&HarnessOptions::default())?;
    let fh = f.h.fs.opendir(ROOT_INO).map_err(|e| e.to_string())?.0;
    let (src, start) = f.h.fs.dir_entries(fh, 0).map_err(|e| e.to_string())?;
    let before = allocations();
    let n = f.h.listing(fh, src, start, 0).entries().count();
    assert_eq!(allocations() - before, 0);
    assert_eq!(n, 3, ". .. a");
    Ok(())
}
