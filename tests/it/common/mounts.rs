//! Mounts: the stratafs daemon (spawned as the binary under test), the
//! kernel overlay (the oracle), scratch tmpfs, and /proc/self/mountinfo.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use stratafs::api::OpaqueForm;

use super::env::stratafs_bin;
use super::errno::errno_name;
use super::process::{read_captured, wait_timeout};
use super::stacks::join_rel;
use super::sys;

/// One line of /proc/self/mountinfo.
#[derive(Debug)]
pub struct MountInfo {
    /// The filesystem's device, `major:minor`.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub mount_opts: String,
    /// The filesystem's own options (`default_permissions`, `user_id=`...).
    pub super_opts: String,
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// The mounts this process sees.
pub fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            dev: pre[2].to_string(),
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            fstype: post[0].to_string(),
            mount_opts: pre[5].to_string(),
            super_opts: post[2].to_string(),
        });
    }
    out
}

/// The processes (pid and name, one per mount namespace) other than this
/// one that see a mount of the filesystem with device `dev` (`major:minor`):
/// copies of a mount in namespaces created while it was mounted, which keep
/// the filesystem (and so the FUSE connection) alive after it is unmounted
/// here.
pub fn mount_copies_elsewhere(dev: &str) -> Vec<String> {
    let own = fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(ns) = fs::read_link(e.path().join("ns/mnt")) else {
            continue;
        };
        if Some(&ns) == own.as_ref() || seen.contains(&ns) {
            continue;
        }
        let text = fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.split(' ').nth(2) == Some(dev) && l.contains(" - fuse"))
        {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            out.push(format!("{pid} ({})", comm.trim()));
            seen.insert(ns);
        }
    }
    out
}

/// Aborts the FUSE connection of the filesystem with device `dev`
/// (`0:minor`) through a private mount of fusectl (as root), as the kernel
/// ends it at the filesystem's last unmount; whether that was done.
fn abort_connection(dev: &str) -> bool {
    let Some(minor) = dev.strip_prefix("0:") else {
        return false;
    };
    let dir = super::env::tempdir();
    if sys::mount("fusectl", dir.path(), "fusectl", 0, "").is_err() {
        return false;
    }
    let done = fs::write(dir.path().join(minor).join("abort"), "1").is_ok();
    let _ = sys::umount2(dir.path(), libc::MNT_DETACH);
    done
}

/// Number of mounts stacked on `mnt`.
pub fn mounts_at(mnt: &Path) -> usize {
    mountinfo().iter().filter(|m| m.mount_point == mnt).count()
}

/// The last (topmost) mount on `mnt`, if any.
pub fn mount_at(mnt: &Path) -> Option<MountInfo> {
    mountinfo().into_iter().rfind(|m| m.mount_point == mnt)
}

/// Escapes `\`, `:` and `,` in a path used inside `-o` option values.
pub fn escape_opt_path(p: &Path) -> String {
    let s = p.to_str().expect("utf-8 path");
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `-o` value (`lowerdir=...,upperdir=...,workdir=...`) of a stack.
pub fn overlay_opts(lowers: &[PathBuf], upper: Option<&Path>, work: Option<&Path>) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| escape_opt_path(p)).collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some(u) = upper {
        opts.push_str(&format!(",upperdir={}", escape_opt_path(u)));
    }
    if let Some(w) = work {
        opts.push_str(&format!(",workdir={}", escape_opt_path(w)));
    }
    opts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountKind {
    Strata,
    Kernel,
}

/// A live mount. Dropping it always unmounts (fusermount3 -u, then a lazy
/// umount) and reaps the daemon.
pub struct Mount {
    kind: MountKind,
    pub mnt: PathBuf,
    base_mounts: usize,
    child: Option<Child>,
    stderr: Option<fs::File>,
    done: bool,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.mnt
    }
    /// The daemon's pid (stratafs mounts only).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// A thread that kills the daemon with SIGKILL after `delay` (a crash
    /// at a moment the caller's changes do not know).
    pub fn sigkill_after(&self, delay: Duration) -> std::thread::JoinHandle<()> {
        let pid = self.daemon_pid().expect("daemon pid");
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: a plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        })
    }
    /// Wait for the daemon to exit by itself (after a signal or an
    /// unmount); its exit status, or `None` after `timeout`.
    pub fn wait_daemon(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_timeout(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some(st)
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }

    /// What the daemon wrote to stderr so far.
    pub fn daemon_stderr(&self) -> String {
        self.stderr.as_ref().map(read_captured).unwrap_or_default()
    }

    /// Unmounts and returns the daemon's exit status (None for kernel
    /// mounts or when the daemon had to be killed).
    pub fn unmount(mut self) -> Option<ExitStatus> {
        self.do_unmount()
    }

    /// [`Mount::unmount`], and what the daemon wrote to stderr by then.
    pub fn unmount_with_stderr(mut self) -> (Option<ExitStatus>, String) {
        let st = self.do_unmount();
        (st, self.daemon_stderr())
    }

    fn do_unmount(&mut self) -> Option<ExitStatus> {
        if self.done {
            return None;
        }
        self.done = true;
        match self.kind {
            MountKind::Kernel => {
                if sys::umount2(&self.mnt, 0).is_err() {
                    let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                }
                None
            }
            MountKind::Strata => {
                let dev = mount_at(&self.mnt)
                    .filter(|m| m.fstype.starts_with("fuse"))
                    .map(|m| m.dev);
                // Anything mounted on our private mountpoint above what was
                // there before the daemon started is ours.
                for attempt in 0..3 {
                    if mounts_at(&self.mnt) <= self.base_mounts {
                        break;
                    }
                    match attempt {
                        0 => {
                            let _ = Command::new("fusermount3")
                                .arg("-u")
                                .arg("-q")
                                .arg(&self.mnt)
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status();
                        }
                        1 => {
                            let _ = sys::umount2(&self.mnt, 0);
                        }
                        _ => {
                            let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                        }
                    }
                }
                let mut child = self.child.take()?;
                let st = wait_timeout(&mut child, Duration::from_secs(10));
                if st.is_some() {
                    return st;
                }
                let copies = dev
                    .as_deref()
                    .map(mount_copies_elsewhere)
                    .unwrap_or_default();
                if let (false, Some(dev)) = (copies.is_empty(), dev.as_deref()) {
                    // Copies of the mount that processes of other mount
                    // namespaces hold keep the connection alive; end it as
                    // the last unmount would, and the daemon has to exit.
                    eprintln!(
                        "note: a copy of the mount is held by {}; aborting the connection",
                        copies.join(", ")
                    );
                    if abort_connection(dev) {
                        let st = wait_timeout(&mut child, Duration::from_secs(10));
                        if st.is_some() {
                            return st;
                        }
                    }
                }
                eprintln!(
                    "warning: stratafs daemon did not exit after unmount; killing it \
                     (copies of the mount held elsewhere: {})",
                    if copies.is_empty() {
                        "none".to_string()
                    } else {
                        copies.join(", ")
                    }
                );
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// Mounts stratafs on `mnt` over these directories (`-f`, a child of the
/// test).
pub fn mount_stratafs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> Mount {
    try_mount_stratafs(&overlay_opts(lowers, upper, work), mnt).unwrap_or_else(|e| panic!("{e}"))
}

/// Spawns `stratafs -f -o OPTS MNT` and waits until the mount is live.
pub fn try_mount_stratafs(opts: &str, mnt: &Path) -> Result<Mount, String> {
    spawn_stratafs(&["-f".to_string(), "-o".to_string(), opts.to_string()], mnt)
}

/// Spawns the daemon with arbitrary arguments followed by `mnt` and waits
/// until mountinfo shows `mnt` with the stratafs fstype.
fn spawn_stratafs(args: &[String], mnt: &Path) -> Result<Mount, String> {
    let bin = stratafs_bin();
    let override_fstype = std::env::var("STRATAFS_TEST_FSTYPE").ok();
    let base_mounts = mounts_at(mnt);
    let stderr = tempfile::tempfile().map_err(|e| format!("stderr capture file: {e}"))?;
    // Extra options for every mount of the suite (`STRATAFS_TEST_OPTS`,
    // e.g. `no_open`: the whole suite run with them).
    let extra: Vec<String> = match std::env::var("STRATAFS_TEST_OPTS") {
        Ok(o) if !o.is_empty() => vec!["-o".to_string(), o],
        _ => Vec::new(),
    };
    let child = Command::new(&bin)
        .args(&extra)
        .args(args)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot spawn {bin:?}: {e}"))?;
    let mut m = Mount {
        kind: MountKind::Strata,
        mnt: mnt.to_path_buf(),
        base_mounts,
        child: Some(child),
        stderr: Some(stderr),
        done: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The exact fstype (`fuse.stratafs`) is asserted by the CLI tests;
        // here any FUSE mount on the mountpoint means the daemon is up, so
        // one wrong detail does not fail every test.
        if mounts_at(mnt) > base_mounts {
            if let Some(mi) = mount_at(mnt) {
                let accepted = match &override_fstype {
                    Some(f) => &mi.fstype == f,
                    None => mi.fstype == "fuse" || mi.fstype.starts_with("fuse."),
                };
                if accepted {
                    return Ok(m);
                }
            }
        }
        if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let err = m.daemon_stderr();
            m.child = None;
            m.done = mounts_at(mnt) <= base_mounts;
            return Err(format!(
                "stratafs exited before the mount went live ({st}); args {args:?} {mnt:?}\n--- daemon stderr ---\n{err}"
            ));
        }
        if Instant::now() > deadline {
            let err = m.daemon_stderr();
            drop(m);
            return Err(format!(
                "timed out waiting for a FUSE mount on {mnt:?} in mountinfo; args {args:?}\n--- daemon stderr ---\n{err}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Mounts the kernel overlay (the oracle) on `mnt`.
pub fn mount_kernel(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> Mount {
    mount_kernel_with(lowers, upper, work, mnt, "")
}

/// [`mount_kernel`] with `extra` options (comma-separated, may be empty).
pub fn mount_kernel_with(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra: &str,
) -> Mount {
    let mut opts = overlay_opts(lowers, upper, work);
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    // The kernel overlay reads user.overlay.* xattrs only with userxattr
    // (required in a user namespace); stacks carry the kernel's markers.
    if OpaqueForm::kernel() != OpaqueForm::Trusted {
        opts.push_str(",userxattr");
    }
    // The behaviour stratafs follows: lower hard links stay one file
    // across copy-up (an inode index). Rootless the kernel cannot decode
    // file handles and falls back to index=off (see docs/COMPAT.md).
    if upper.is_some() {
        opts.push_str(",index=on");
    }
    let flags = if upper.is_none() { libc::MS_RDONLY } else { 0 };
    sys::mount("overlay", mnt, "overlay", flags, &opts)
        .unwrap_or_else(|e| panic!("mount -t overlay -o {opts} {mnt:?}: {}", errno_name(e)));
    Mount {
        kind: MountKind::Kernel,
        mnt: mnt.to_path_buf(),
        base_mounts: 0,
        child: None,
        stderr: None,
        done: false,
    }
}

/// A scratch tmpfs mounted on `dir`, unmounted on drop.
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    pub fn new(dir: &Path) -> Result<TmpfsMount, i32> {
        Self::with_options(dir, "size=64m,mode=0755")
    }

    /// A tmpfs with the given mount options (e.g. `size=8m,nr_inodes=64`).
    pub fn with_options(dir: &Path, opts: &str) -> Result<TmpfsMount, i32> {
        fs::create_dir_all(dir).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        sys::mount("tmpfs", dir, "tmpfs", 0, opts)?;
        Ok(TmpfsMount {
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if sys::umount2(&self.path, 0).is_err() {
            let _ = sys::umount2(&self.path, libc::MNT_DETACH);
        }
    }
}

/// A mount made by a daemonized `stratafs` (not a child of the test):
/// unmounted on drop, which also ends the daemon.
pub struct ExternalMount {
    mnt: PathBuf,
}

impl ExternalMount {
    /// Runs `cmd`, a stratafs command line that mounts `mnt` and returns
    /// once the daemon serves it; asserts it exited 0 (its stderr is the
    /// message) and guards the mount.
    #[track_caller]
    pub fn run(cmd: &mut Command, mnt: &Path) -> Self {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ExternalMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for ExternalMount {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // Wait for the mount to disappear.
        for _ in 0..200 {
            if mount_at(&self.mnt).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
