//! The test harness of a mount from Rust: fault rules added and removed
//! while mounted, the in-memory trace, metrics, listing orders.

use std::time::Duration;

use super::{BackgroundMount, Errno, Ops, Rule, RuleStatus, SetupError, Stats, TraceRecord};
use crate::harness::rules::{rule_modifiers, RuleSpec, Source};
use crate::harness::trace::{Filter, MEMORY_RECORDS};

/// The order directory listings come in (`readdir_order=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReaddirOrder {
    /// By name hash: the default order.
    #[default]
    Hash,
    /// By name, byte by byte.
    Sorted,
    /// By name, backwards.
    Reverse,
    /// Shuffled, the same way for every listing under the same seed.
    Shuffle(u64),
}

impl ReaddirOrder {
    /// The value of the `readdir_order=` option.
    pub fn option_value(self) -> String {
        match self {
            ReaddirOrder::Hash => "hash".into(),
            ReaddirOrder::Sorted => "sorted".into(),
            ReaddirOrder::Reverse => "reverse".into(),
            ReaddirOrder::Shuffle(seed) => format!("shuffle:{seed}"),
        }
    }
}

/// A rule about to be added to a mount, from [`BackgroundMount::fail`] and
/// its siblings: narrow it down and choose when it fires with the same
/// methods as [`Rule`]. It is added when it is dropped, at the end of the
/// statement (`mount.fail(op::Write, "db/wal", Errno::NOSPC).nth(3);`), or
/// by [`LiveRule::add`], which also gives its id and any error. Dropped
/// with an invalid rule (a bad glob), it panics.
#[derive(Debug)]
pub struct LiveRule<'m> {
    mount: &'m BackgroundMount,
    rule: Rule,
    added: bool,
}

impl LiveRule<'_> {
    fn spec_mut(&mut self) -> &mut RuleSpec {
        &mut self.rule.spec
    }

    /// Add the rule now; its id (for [`BackgroundMount::remove_rule`]).
    pub fn add(mut self) -> Result<u64, SetupError> {
        self.added = true;
        self.mount.add_rule(self.rule.clone())
    }
}

rule_modifiers!(LiveRule<'_>, spec_mut);

impl Drop for LiveRule<'_> {
    fn drop(&mut self) {
        if self.added {
            return;
        }
        self.added = true;
        if let Err(e) = self.mount.add_rule(self.rule.clone()) {
            if !std::thread::panicking() {
                panic!("fault rule not added: {e}");
            }
        }
    }
}

impl BackgroundMount {
    fn live(&self, rule: Rule) -> LiveRule<'_> {
        LiveRule {
            mount: self,
            rule,
            added: false,
        }
    }

    /// From now on, fail `ops` on paths matching `path` with `errno`
    /// (see [`Rule::fail`]); e.g.
    /// `mount.fail(op::Write, "db/wal", Errno::NOSPC).nth(3);`
    pub fn fail(&self, ops: impl Into<Ops>, path: &str, errno: Errno) -> LiveRule<'_> {
        self.live(Rule::fail(ops, path, errno))
    }

    /// From now on, delay `ops` on paths matching `path` (see
    /// [`Rule::delay`]).
    pub fn delay(&self, ops: impl Into<Ops>, path: &str, delay: Duration) -> LiveRule<'_> {
        self.live(Rule::delay(ops, path, delay))
    }

    /// From now on, transfer at most `bytes` per call (see [`Rule::short`]).
    pub fn short(&self, ops: impl Into<Ops>, path: &str, bytes: u64) -> LiveRule<'_> {
        self.live(Rule::short(ops, path, bytes))
    }

    /// From now on, flip `bytes` bytes of each read (see [`Rule::corrupt`]).
    pub fn corrupt(&self, path: &str, bytes: u32) -> LiveRule<'_> {
        self.live(Rule::corrupt(path, bytes))
    }

    /// From now on, report other attributes (see [`Rule::lie`]).
    pub fn lie(&self, ops: impl Into<Ops>, path: &str) -> LiveRule<'_> {
        self.live(Rule::lie(ops, path))
    }

    /// From now on, answer `ops` with success without doing anything (see
    /// [`Rule::noop`]).
    pub fn noop(&self, ops: impl Into<Ops>, path: &str) -> LiveRule<'_> {
        self.live(Rule::noop(ops, path))
    }

    /// Add a rule; returns its id.
    pub fn add_rule(&self, rule: Rule) -> Result<u64, SetupError> {
        self.harness
            .add_rule(rule.spec, Source::Api)
            .map_err(SetupError::new)
    }

    /// Remove rule `id`; whether there was one.
    pub fn remove_rule(&self, id: u64) -> bool {
        self.harness.remove_rule(id)
    }

    /// Remove every rule.
    pub fn clear_rules(&self) {
        self.harness.clear_rules();
    }

    /// The rules, with how often each matched and fired.
    pub fn rules(&self) -> Vec<RuleStatus> {
        self.harness.rules()
    }

    /// Read the faults file again (its rules replace the file's previous
    /// ones); the number of rules it has.
    pub fn reload_faults(&self) -> Result<usize, SetupError> {
        self.harness.reload().map_err(SetupError::new)
    }

    /// Start keeping a trace of every request in memory (the newest
    /// 100,000 records).
    pub fn start_trace(&self) {
        self.harness
            .tracer
            .start_memory(Filter::all(), MEMORY_RECORDS);
    }

    /// Stop the in-memory trace (the records kept stay readable).
    pub fn stop_trace(&self) {
        self.harness.tracer.stop_memory();
    }

    /// The trace records kept in memory so far, oldest first.
    pub fn trace(&self) -> Vec<TraceRecord> {
        self.harness.tracer.memory(false)
    }

    /// The trace records kept so far; they are forgotten.
    pub fn take_trace(&self) -> Vec<TraceRecord> {
        self.harness.tracer.memory(true)
    }

    /// The mount's metrics now.
    pub fn stats(&self) -> Stats {
        self.harness.stats()
    }
}
