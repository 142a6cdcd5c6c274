//! The environment of a test run: rootless or not, the binary under test,
//! knobs from the environment, skips, a seeded PRNG.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// True when running inside a user namespace (i.e. `/proc/self/uid_map` is
/// not the identity map of the initial namespace).
pub fn is_rootless() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields != ["0", "0", "4294967295"]
}

/// uids/gids a test may chown to in a rootless run (`rootless`) or in one
/// as root (a root run may prepare what a rootless one compares with).
/// Under `unshare -Ur` only 0 is mapped.
pub fn test_ids_for(rootless: bool) -> Vec<u32> {
    if rootless {
        vec![0]
    } else {
        vec![0, 1000, 1001]
    }
}

/// An id other than 0 when one is usable, else 0.
pub fn other_id() -> u32 {
    if is_rootless() {
        0
    } else {
        1000
    }
}

/// The stratafs binary under test: `STRATAFS_TEST_BIN`, or the one cargo
/// built.
pub fn stratafs_bin() -> PathBuf {
    match std::env::var_os("STRATAFS_TEST_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_BIN_EXE_stratafs")),
    }
}

/// The fstype a stratafs mount shows in mountinfo (`STRATAFS_TEST_FSTYPE`,
/// default `fuse.stratafs`).
pub fn stratafs_fstype() -> String {
    std::env::var("STRATAFS_TEST_FSTYPE").unwrap_or_else(|_| "fuse.stratafs".to_string())
}

/// A fresh temporary directory (honours TMPDIR).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stratafs-test.")
        .tempdir()
        .expect("create tempdir")
}

/// Records that test `test` cannot run its checks here, for `reason`; the
/// caller then returns without checking anything. The line goes to stderr and,
/// when `STRATAFS_SKIP_LOG` names a file, `NAME<TAB>REASON` is appended to
/// it in one write (`O_APPEND`, so concurrent tests do not interleave);
/// `scripts/test.sh` and `scripts/test-rootless.sh` report such tests as
/// skipped, not passed. NAME is the name libtest runs the test under (the
/// test thread's name, `module::test`) when that names `test`.
pub fn skip(test: &str, reason: &str) {
    let name = match std::thread::current().name() {
        Some(n) if n == test || n.ends_with(&format!("::{test}")) => n.to_string(),
        _ => test.to_string(),
    };
    let reason = reason.replace(['\t', '\n'], " ");
    eprintln!("skipped: {name}: {reason}");
    if let Some(log) = std::env::var_os("STRATAFS_SKIP_LOG") {
        let line = format!("{name}\t{reason}\n");
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o666)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot record the skip in {log:?}: {e}"));
    }
}

/// A number from the environment (decimal or `0x` hex), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// A deterministic PRNG (splitmix64): the same seed gives the same stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let n = self.below(max_len + 1);
        (0..n).map(|_| b"abcxyz\n0"[self.below(8)]).collect()
    }
}

/// Whether every stratafs mount of this run is made with `no_open`
/// (`STRATAFS_TEST_OPTS`, see `mounts::spawn_stratafs`): an open for
/// writing then copies nothing up before the first write, and opens reach
/// no fault rule.
pub fn no_open_everywhere() -> bool {
    std::env::var("STRATAFS_TEST_OPTS").is_ok_and(|o| o.split(',').any(|x| x == "no_open"))
}

/// `stratafs ctl TARGET ARGS...`: stdout, or stderr as the error.
pub fn ctl(target: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(stratafs_bin())
        .arg("ctl")
        .arg(target)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Write a faults file into `dir`.
pub fn faults_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}
