//! Fault rules: what a rule matches (operations, a path glob, the caller),
//! what it does when it fires (fail, delay, short transfer, corrupt data,
//! lying attributes, success without effect), and when it fires (every
//! match, the Nth, after N, at most N times, with a seeded probability).
//!
//! A rule is written as a [`RuleSpec`]: the `[[rule]]` table of a faults
//! file (TOML), the JSON object of `stratafs ctl MNT add`, or built with
//! [`Rule`] in Rust. It is compiled once ([`Compiled`]); matching a request
//! against it costs no allocation except the merged path, which is built
//! only when the rule's operations include the request's and its name
//! test passes (see [`Compiled::may_match_name`]).
//!
//! Randomness is a pure function of the rule's seed and the number of the
//! match (the Nth request the rule matched), so a program that makes the
//! same requests in the same order meets the same faults on every run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ops::{Op, Ops};
use crate::error::{errno_by_name, errno_name, Errno};

/// A rule as written by a user: the keys of a `[[rule]]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A label shown in rule lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Operation names (`write`, ...) or `*`; a string or a list. Empty:
    /// every operation.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub op: Vec<String>,
    /// A glob on the merged path relative to the mount root (`db/wal`,
    /// `logs/*.log`, `src/**`). None: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests from this process (thread) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only requests from this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Fail with this errno: a name (`"ENOSPC"`) or a number.
    #[serde(
        default,
        deserialize_with = "errno_value",
        serialize_with = "errno_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub errno: Option<i32>,
    /// Delay the request: milliseconds, or `[min, max]` for a delay drawn
    /// from that range.
    #[serde(
        default,
        deserialize_with = "delay_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay_ms: Option<[f64; 2]>,
    /// Transfer at most this many bytes per call (`read`, `write`,
    /// `copy_file_range`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<u64>,
    /// Flip this many bytes of the data a `read` returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<u32>,
    /// Report this size in attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Report these permission bits in attributes: a number (TOML `0o644`)
    /// or an octal string (`"644"`).
    #[serde(
        default,
        deserialize_with = "mode_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<u32>,
    /// Report this modification time (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Answer success without doing anything (`fsync`, `write`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noop: Option<bool>,
    /// Fire with this probability (0 to 1), drawn from `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Seed of the rule's random draws (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Fire on the Nth match only (1 is the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// Fire only on matches after the first N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Fire at most N times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        One(String),
        Many(Vec<String>),
    }
    Ok(match V::deserialize(d)? {
        V::One(s) => vec![s],
        V::Many(v) => v,
    })
}

fn errno_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Num(i32),
        Name(String),
    }
    let e = match V::deserialize(d)? {
        V::Num(n) => errno_by_name(&n.to_string()),
        V::Name(s) => errno_by_name(&s),
    };
    e.map(|e| Some(e.raw_os_error()))
        .ok_or_else(|| serde::de::Error::custom("errno: expected a name such as \"ENOSPC\""))
}

fn errno_out<S: Serializer>(e: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
    match e.map(Errno::from_raw_os_error) {
        Some(e) => match errno_name(e) {
            Some(name) => s.serialize_str(name),
            None => s.serialize_i32(e.raw_os_error()),
        },
        None => s.serialize_none(),
    }
}

fn delay_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        One(f64),
        Range([f64; 2]),
    }
    let [lo, hi] = match V::deserialize(d)? {
        V::One(ms) => [ms, ms],
        V::Range(r) => r,
    };
    if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi && hi <= 3_600_000.0) {
        return Err(serde::de::Error::custom(
            "delay_ms: expected milliseconds (0 to 3600000) or [min, max]",
        ));
    }
    Ok(Some([lo, hi]))
}

fn mode_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Num(u32),
        Octal(String),
    }
    let m = match V::deserialize(d)? {
        V::Num(n) => Some(n),
        V::Octal(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
    };
    m.filter(|m| *m <= 0o7777)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("mode: expected permission bits such as \"644\""))
}

/// A faults file: `[[rule]]` tables, and an optional default `seed`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsFile {
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// Parse the text of a faults file.
pub(crate) fn parse_faults(text: &str) -> Result<Vec<RuleSpec>, String> {
    let f: FaultsFile = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
    let mut rules = f.rule;
    if let Some(seed) = f.seed {
        for r in rules.iter_mut().filter(|r| r.seed.is_none()) {
            r.seed = Some(seed);
        }
    }
    Ok(rules)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Attributes a rule reports instead of the real ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lie {
    pub(crate) size: Option<u64>,
    pub(crate) mode: Option<u32>,
    pub(crate) mtime: Option<i64>,
}

/// What a firing rule does to the request (besides a delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Refuse with this errno before anything happens.
    Fail(Errno),
    /// Transfer at most this many bytes.
    Short(u64),
    /// Flip this many bytes of the data read.
    Corrupt(u32),
    /// Report other attributes.
    Lie(Lie),
    /// Answer success without doing anything.
    Noop,
}

impl Effect {
    /// The operations this effect makes sense for.
    fn ops(&self) -> Ops {
        use Op::*;
        match self {
            // The kernel does not wait for an answer to these.
            Effect::Fail(_) => Ops(Ops::ALL.0 & !Ops::from([Forget, Release, Releasedir]).0),
            Effect::Short(_) => Ops::from([Read, Write, CopyFileRange]),
            Effect::Corrupt(_) => Ops::from([Read]),
            Effect::Lie(_) => Ops::from([
                Lookup,
                Getattr,
                Setattr,
                Create,
                Mknod,
                Mkdir,
                Symlink,
                Link,
                Readdirplus,
            ]),
            Effect::Noop => Ops::from([
                Fsync,
                Fsyncdir,
                Flush,
                Write,
                Fallocate,
                Setxattr,
                Removexattr,
                Unlink,
                Rmdir,
                Rename,
                Setattr,
                Access,
            ]),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Effect::Fail(_) => "errno",
            Effect::Short(_) => "short",
            Effect::Corrupt(_) => "corrupt",
            Effect::Lie(_) => "size/mode/mtime",
            Effect::Noop => "noop",
        }
    }
}

/// Where a rule came from (rules of a faults file are replaced when it is
/// reread; the others stay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `-o faults=FILE`.
    File,
    /// The control socket (`stratafs ctl MNT add`).
    Control,
    /// The Rust API.
    Api,
}

/// A rule ready to match requests, with its counters.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) id: u64,
    pub(crate) source: Source,
    pub(crate) spec: RuleSpec,
    pub(crate) ops: Ops,
    /// The operations named in `op` (not through `*`).
    pub(crate) named: Ops,
    glob: Option<GlobMatcher>,
    /// The last component of the glob when it is a plain name: a request
    /// whose names all differ cannot match.
    basename: Option<Box<[u8]>>,
    delay_us: Option<(u64, u64)>,
    pub(crate) effect: Option<Effect>,
    /// Fire when the draw is below this (`None`: always).
    threshold: Option<u64>,
    seed: u64,
    matched: AtomicU64,
    fired: AtomicU64,
}

/// A compiled glob on merged paths: `*` and `?` stay within a component,
/// `**` crosses them; a leading `/` is ignored.
pub(crate) fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    let p = pattern.trim_start_matches('/');
    GlobBuilder::new(p)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("path {pattern:?}: {e}"))
}

/// The last component of a glob if it is a plain name.
fn literal_basename(pattern: &str) -> Option<Box<[u8]>> {
    let p = pattern.trim_start_matches('/');
    let last = p.rsplit('/').next()?;
    let plain = !last.is_empty() && !last.contains(['*', '?', '[', ']', '{', '}', '\\']);
    plain.then(|| Box::from(last.as_bytes()))
}

/// splitmix64 of the seed and a match number: the rule's random draws.
pub(crate) fn draw(seed: u64, k: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(salt.wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const SALT_CHANCE: u64 = 1;
const SALT_DELAY: u64 = 2;
const SALT_CORRUPT: u64 = 3;

impl Compiled {
    /// Check and compile `spec` as rule `id`.
    pub(crate) fn new(id: u64, source: Source, spec: RuleSpec) -> Result<Compiled, String> {
        let lie = Lie {
            size: spec.size,
            mode: spec.mode,
            mtime: spec.mtime,
        };
        let mut effects = Vec::new();
        if let Some(e) = spec.errno {
            effects.push(Effect::Fail(Errno::from_raw_os_error(e)));
        }
        if let Some(n) = spec.short {
            effects.push(Effect::Short(n));
        }
        if let Some(n) = spec.corrupt {
            if n == 0 {
                return Err("corrupt: flip at least one byte".into());
            }
            effects.push(Effect::Corrupt(n));
        }
        if lie != Lie::default() {
            effects.push(Effect::Lie(lie));
        }
        if spec.noop == Some(true) {
            effects.push(Effect::Noop);
        }
        let effect = match effects.as_slice() {
            [] => None,
            [e] => Some(*e),
            _ => {
                let kinds: Vec<&str> = effects.iter().map(Effect::kind).collect();
                return Err(format!(
                    "one action per rule (errno, short, corrupt, size/mode/mtime or noop), got {}",
                    kinds.join(" and ")
                ));
            }
        };
        let delay_us = spec
            .delay_ms
            .map(|[lo, hi]| ((lo * 1000.0) as u64, (hi * 1000.0) as u64));
        if effect.is_none() && delay_us.is_none() {
            return Err(
                "no action: give errno, delay_ms, short, corrupt, size/mode/mtime or noop".into(),
            );
        }
        let mut ops = Ops::NONE;
        let mut star = spec.op.is_empty();
        for name in &spec.op {
            let o = Ops::parse_one(name)?;
            star |= o == Ops::ALL;
            ops = ops.union(o);
        }
        if star {
            ops = Ops::ALL;
        }
        if let Some(e) = &effect {
            let allowed = e.ops();
            let refused = Ops(ops.0 & !allowed.0);
            if !star && !refused.is_empty() {
                return Err(format!(
                    "{} does not apply to {}",
                    e.kind(),
                    refused.names().join(", ")
                ));
            }
            ops = ops.and(allowed);
        }
        let glob = spec.path.as_deref().map(compile_glob).transpose()?;
        let basename = spec.path.as_deref().and_then(literal_basename);
        let threshold = match spec.probability {
            None => None,
            Some(p) if (0.0..=1.0).contains(&p) => (p < 1.0).then(|| (p * 2f64.powi(64)) as u64),
            Some(p) => return Err(format!("probability {p}: expected 0 to 1")),
        };
        if spec.nth == Some(0) {
            return Err("nth: the first match is 1".into());
        }
        Ok(Compiled {
            id,
            source,
            ops,
            named: if star { Ops::NONE } else { ops },
            glob,
            basename,
            delay_us,
            effect,
            threshold,
            seed: spec.seed.unwrap_or(0),
            spec,
            matched: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        })
    }

    /// Whether the caller fits the rule's `pid` and `uid`.
    pub(crate) fn caller_fits(&self, pid: u32, uid: u32) -> bool {
        self.spec.pid.is_none_or(|p| p == pid) && self.spec.uid.is_none_or(|u| u == uid)
    }

    /// Whether the rule has a path glob.
    pub(crate) fn has_glob(&self) -> bool {
        self.glob.is_some()
    }

    /// False when no path with one of these last names can match (the
    /// glob ends in a plain name none of them has); true when they may.
    pub(crate) fn may_match_name(&self, names: [Option<&[u8]>; 2]) -> bool {
        match &self.basename {
            Some(b) => names.iter().flatten().any(|n| **n == **b),
            None => true,
        }
    }

    /// Whether one of `paths` (merged paths, relative) matches the glob.
    pub(crate) fn path_matches(&self, paths: &[&[u8]]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match &self.glob {
            None => true,
            Some(g) => paths
                .iter()
                .any(|p| g.is_match(Path::new(std::ffi::OsStr::from_bytes(p)))),
        }
    }

    /// Count a match; returns whether the rule fires on it and the match
    /// number (for the draws of its effect).
    pub(crate) fn count_match(&self) -> (bool, u64) {
        let k = self.matched.fetch_add(1, Ordering::Relaxed) + 1;
        let s = &self.spec;
        let mut fires = s.nth.is_none_or(|n| k == n) && s.after.is_none_or(|a| k > a);
        if fires {
            if let Some(t) = self.threshold {
                fires = draw(self.seed, k, SALT_CHANCE) < t;
            }
        }
        if fires {
            fires = match s.times {
                Some(t) => self
                    .fired
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                        (f < t).then_some(f + 1)
                    })
                    .is_ok(),
                None => {
                    self.fired.fetch_add(1, Ordering::Relaxed);
                    true
                }
            };
        }
        (fires, k)
    }

    /// The delay of the rule's `k`th match.
    pub(crate) fn delay(&self, k: u64) -> Option<Duration> {
        let (lo, hi) = self.delay_us?;
        let us = if hi > lo {
            lo + draw(self.seed, k, SALT_DELAY) % (hi - lo + 1)
        } else {
            lo
        };
        Some(Duration::from_micros(us))
    }

    /// (matched, fired) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.matched.load(Ordering::Relaxed),
            self.fired.load(Ordering::Relaxed),
        )
    }
}

/// Flip `n` bytes of `data`, at places drawn from `seed` and the match
/// number `k` (each flipped byte is inverted, so it surely changes).
pub(crate) fn corrupt(data: &mut [u8], n: u32, seed: u64, k: u64) {
    if data.is_empty() {
        return;
    }
    for i in 0..u64::from(n) {
        let at = draw(seed, k, SALT_CORRUPT.wrapping_add(i << 8)) % data.len() as u64;
        if let Some(b) = data.get_mut(at as usize) {
            *b = !*b;
        }
    }
}

/// A fault rule built in Rust, for [`crate::api::OverlayBuilder::fault`]
/// and the mount's methods. Start with the action, narrow it down, choose
/// when it fires:
///
/// ```
/// use stratafs::api::{op, Errno, Rule};
///
/// let r = Rule::fail(op::Write, "db/wal", Errno::NOSPC).nth(3);
/// let slow = Rule::delay([op::Read, op::Write], "data/**", std::time::Duration::from_millis(20))
///     .probability(0.1)
///     .seed(7);
/// # let _ = (r, slow);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub(crate) spec: RuleSpec,
}

fn spec_for(ops: Ops, path: &str) -> RuleSpec {
    RuleSpec {
        op: ops.names().into_iter().map(String::from).collect(),
        path: Some(path.to_string()),
        ..RuleSpec::default()
    }
}

impl Rule {
    /// Fail `ops` on paths matching `path` with `errno`, before anything
    /// happens.
    pub fn fail(ops: impl Into<Ops>, path: &str, errno: Errno) -> Rule {
        let mut spec = spec_for(ops.into(), path);
        spec.errno = Some(errno.raw_os_error());
        Rule { spec }
    }

    /// Delay `ops` on paths matching `path` by `delay`.
    pub fn delay(ops: impl Into<Ops>, path: &str, delay: Duration) -> Rule {
        Rule {
            spec: spec_for(ops.into(), path),
        }
        .with_delay(delay, delay)
    }

    /// Transfer at most `bytes` per `read`/`write`/`copy_file_range` call.
    pub fn short(ops: impl Into<Ops>, path: &str, bytes: u64) -> Rule {
        let mut spec = spec_for(ops.into(), path);
        spec.short = Some(bytes);
        Rule { spec }
    }

    /// Flip `bytes` bytes of what each `read` returns (never on disk).
    pub fn corrupt(path: &str, bytes: u32) -> Rule {
        let mut spec = spec_for(Op::Read.into(), path);
        spec.corrupt = Some(bytes);
        Rule { spec }
    }

    /// Report other attributes for `ops` (`getattr`, `lookup`, ...): add
    /// them with [`Rule::size`], [`Rule::mode`], [`Rule::mtime`].
    pub fn lie(ops: impl Into<Ops>, path: &str) -> Rule {
        Rule {
            spec: spec_for(ops.into(), path),
        }
    }

    /// Answer `ops` with success without doing anything (e.g. `fsync`).
    pub fn noop(ops: impl Into<Ops>, path: &str) -> Rule {
        let mut spec = spec_for(ops.into(), path);
        spec.noop = Some(true);
        Rule { spec }
    }

    /// The rules of a faults file (TOML, `[[rule]]` tables).
    pub fn from_toml(text: &str) -> Result<Vec<Rule>, crate::error::SetupError> {
        let specs = parse_faults(text).map_err(crate::error::SetupError::new)?;
        Ok(specs.into_iter().map(|spec| Rule { spec }).collect())
    }

    /// The rule as the keys of a `[[rule]]` table.
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }
}

/// The modifiers shared by [`Rule`] and the rule builders of a mount.
macro_rules! rule_modifiers {
    ($t:ty, $spec:ident) => {
        impl $t {
            /// Fire on the Nth match only (1 is the first).
            pub fn nth(mut self, n: u64) -> Self {
                self.$spec().nth = Some(n);
                self
            }
            /// Fire only after the first `n` matches.
            pub fn after(mut self, n: u64) -> Self {
                self.$spec().after = Some(n);
                self
            }
            /// Fire at most `n` times.
            pub fn times(mut self, n: u64) -> Self {
                self.$spec().times = Some(n);
                self
            }
            /// Fire with probability `p` (0 to 1), drawn from the seed.
            pub fn probability(mut self, p: f64) -> Self {
                self.$spec().probability = Some(p);
                self
            }
            /// The seed of the random draws (default 0).
            pub fn seed(mut self, seed: u64) -> Self {
                self.$spec().seed = Some(seed);
                self
            }
            /// Only requests of this process (thread) id.
            pub fn pid(mut self, pid: u32) -> Self {
                self.$spec().pid = Some(pid);
                self
            }
            /// Only requests of this user id.
            pub fn uid(mut self, uid: u32) -> Self {
                self.$spec().uid = Some(uid);
                self
            }
            /// A label shown in rule lists.
            pub fn name(mut self, name: &str) -> Self {
                self.$spec().name = Some(name.to_string());
                self
            }
            /// Also delay the request, by a time drawn from `min..=max`.
            pub fn with_delay(mut self, min: Duration, max: Duration) -> Self {
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                self.$spec().delay_ms = Some([ms(min), ms(max.max(min))]);
                self
            }
            /// Report this size (a [`Rule::lie`] rule).
            pub fn size(mut self, size: u64) -> Self {
                self.$spec().size = Some(size);
                self
            }
            /// Report these permission bits.
            pub fn mode(mut self, mode: u32) -> Self {
                self.$spec().mode = Some(mode & 0o7777);
                self
            }
            /// Report this modification time (seconds since the epoch).
            pub fn mtime(mut self, mtime: i64) -> Self {
                self.$spec().mtime = Some(mtime);
                self
            }
        }
    };
}
pub(crate) use rule_modifiers;

impl Rule {
    fn spec_mut(&mut self) -> &mut RuleSpec {
        &mut self.spec
    }
}

rule_modifiers!(Rule, spec_mut);

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(toml_text: &str) -> Result<Vec<Compiled>, String> {
        parse_faults(toml_text)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| Compiled::new(i as u64 + 1, Source::File, s))
            .collect()
    }

    #[test]
    fn the_documented_keys() -> Result<(), String> {
        let rules = compile(
            r#"
            seed = 9
            [[rule]]
            op = "write"
            path = "db/wal"
            errno = "ENOSPC"
            nth = 3

            [[rule]]
            op = ["read", "write"]
            path = "data/**"
            delay_ms = [5, 10]
            probability = 0.5

            [[rule]]
            op = "fsync"
            noop = true
            times = 2
            after = 1

            [[rule]]
            op = "getattr"
            path = "big.bin"
            size = 1_000_000
            mode = 0o600
            seed = 3
            "#,
        )?;
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].ops, Ops::from(Op::Write));
        assert_eq!(rules[0].effect, Some(Effect::Fail(Errno::NOSPC)));
        assert_eq!(rules[1].delay_us, Some((5000, 10000)));
        assert_eq!(rules[1].seed, 9, "the file's seed is the default");
        assert_eq!(rules[2].effect, Some(Effect::Noop));
        assert_eq!(rules[3].seed, 3);
        let lie = Lie {
            size: Some(1_000_000),
            mode: Some(0o600),
            mtime: None,
        };
        assert_eq!(rules[3].effect, Some(Effect::Lie(lie)));
        Ok(())
    }

    #[test]
    fn bad_rules_are_one_line_errors() {
        for bad in [
            "[[rule]]\nop = \"write\"\n",
            "[[rule]]\nop = \"write\"\nerrno = \"EBOGUS\"\n",
            "[[rule]]\nop = \"bogus\"\nerrno = \"EIO\"\n",
            "[[rule]]\nop = \"read\"\nerrno = \"EIO\"\nnoop = true\n",
            "[[rule]]\nop = \"open\"\nnoop = true\n",
            "[[rule]]\nop = \"release\"\nerrno = \"EIO\"\n",
            "[[rule]]\nop = \"write\"\ncorrupt = 1\n",
            "[[rule]]\nerrno = \"EIO\"\nprobability = 2.0\n",
            "[[rule]]\nerrno = \"EIO\"\nnth = 0\n",
            "[[rule]]\nerrno = \"EIO\"\npath = \"[\"\n",
            "[[rule]]\nerrno = \"EIO\"\nfrobnicate = 1\n",
            "[[rule]]\ndelay_ms = [10, 5]\n",
            "[[rule]]\nmode = \"999\"\n",
            "[[rules]]\nerrno = \"EIO\"\n",
        ] {
            match compile(bad) {
                Ok(_) => panic!("accepted: {bad}"),
                Err(e) => assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e}"),
            }
        }
    }

    #[test]
    fn star_keeps_the_ops_an_action_applies_to() -> Result<(), String> {
        let r = &compile("[[rule]]\nop = \"*\"\nerrno = \"EIO\"\n")?[0];
        assert!(r.ops.contains(Op::Write) && !r.ops.contains(Op::Release));
        assert!(r.named.is_empty());
        let r = &compile("[[rule]]\ncorrupt = 2\n")?[0];
        assert_eq!(r.ops, Ops::from(Op::Read));
        let r = &compile("[[rule]]\nop = [\"flush\", \"write\"]\nerrno = \"EIO\"\n")?[0];
        assert!(r.named.contains(Op::Flush));
        let r = &compile("[[rule]]\ndelay_ms = 1\n")?[0];
        assert_eq!(r.ops, Ops::ALL);
        Ok(())
    }

    #[test]
    fn globs_and_names() -> Result<(), String> {
        let r = &compile("[[rule]]\npath = \"/db/*.wal\"\nerrno = \"EIO\"\n")?[0];
        assert!(r.path_matches(&[b"db/a.wal"]));
        assert!(
            !r.path_matches(&[b"db/sub/a.wal"]),
            "* stays in a component"
        );
        assert!(
            r.may_match_name([Some(b"anything"), None]),
            "not a plain name"
        );
        let r = &compile("[[rule]]\npath = \"src/**/main.c\"\nerrno = \"EIO\"\n")?[0];
        assert!(r.path_matches(&[b"x", b"src/a/b/main.c"]));
        assert!(r.may_match_name([None, Some(b"main.c")]));
        assert!(!r.may_match_name([Some(b"main.h"), Some(b"x")]));
        let r = &compile("[[rule]]\npath = \"**\"\nerrno = \"EIO\"\n")?[0];
        assert!(r.path_matches(&[b"a/b"]));
        Ok(())
    }

    #[test]
    fn triggers() -> Result<(), String> {
        let fired = |text: &str, n: u64| -> Result<Vec<u64>, String> {
            let r = compile(text)?.remove(0);
            Ok((1..=n)
                .filter_map(|_| match r.count_match() {
                    (true, k) => Some(k),
                    _ => None,
                })
                .collect())
        };
        let base = "[[rule]]\nerrno = \"EIO\"\n";
        assert_eq!(fired(&format!("{base}nth = 3"), 6)?, vec![3]);
        assert_eq!(fired(&format!("{base}after = 4"), 6)?, vec![5, 6]);
        assert_eq!(fired(&format!("{base}times = 2"), 6)?, vec![1, 2]);
        assert_eq!(
            fired(&format!("{base}after = 1\ntimes = 2"), 6)?,
            vec![2, 3]
        );
        let p = fired(&format!("{base}probability = 0.3\nseed = 11"), 1000)?;
        assert_eq!(
            p,
            fired(&format!("{base}probability = 0.3\nseed = 11"), 1000)?
        );
        assert_ne!(
            p,
            fired(&format!("{base}probability = 0.3\nseed = 12"), 1000)?
        );
        assert!((200..400).contains(&p.len()), "{} of 1000", p.len());
        assert!(fired(&format!("{base}probability = 0.0"), 100)?.is_empty());
        assert_eq!(fired(&format!("{base}probability = 1.0"), 10)?.len(), 10);
        Ok(())
    }

    #[test]
    fn delays_and_corruption_are_drawn_from_the_seed() -> Result<(), String> {
        let r = &compile("[[rule]]\ndelay_ms = [1, 3]\nseed = 5\n")?[0];
        let d: Vec<Duration> = (1..50).filter_map(|k| r.delay(k)).collect();
        assert!(d
            .iter()
            .all(|d| (Duration::from_millis(1)..=Duration::from_millis(3)).contains(d)));
        assert_eq!(d, (1..50).filter_map(|k| r.delay(k)).collect::<Vec<_>>());
        let mut a = vec![0u8; 64];
        corrupt(&mut a, 3, 1, 1);
        let changed = a.iter().filter(|b| **b != 0).count();
        assert!((1..=3).contains(&changed));
        let mut b = vec![0u8; 64];
        corrupt(&mut b, 3, 1, 1);
        assert_eq!(a, b);
        corrupt(&mut [], 3, 1, 1);
        Ok(())
    }

    #[test]
    fn specs_round_trip_through_json() -> Result<(), String> {
        let rule = Rule::fail([Op::Write, Op::Fsync], "db/wal", Errno::NOSPC)
            .nth(3)
            .with_delay(Duration::from_millis(2), Duration::from_millis(4));
        let json = serde_json::to_string(rule.spec()).map_err(|e| e.to_string())?;
        assert!(json.contains("\"errno\":\"ENOSPC\""), "{json}");
        let back: RuleSpec = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        assert_eq!(&back, rule.spec());
        let c = Compiled::new(1, Source::Api, back)?;
        assert_eq!(c.ops, Ops::from([Op::Write, Op::Fsync]));
        Ok(())
    }
}
