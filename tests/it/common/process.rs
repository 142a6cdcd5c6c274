//! Child processes: waiting with a deadline, running a command with a
//! timeout, reading what it wrote.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Waits up to `timeout` for `child` to exit; its status, or `None` if it
/// is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs a command with a timeout; returns (status, stdout, stderr) or None
/// when it had to be killed.
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Option<(ExitStatus, String, String)> {
    let out = tempfile::tempfile().expect("tempfile");
    let err = tempfile::tempfile().expect("tempfile");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .expect("spawn");
    match wait_timeout(&mut child, timeout) {
        Some(st) => Some((st, read_captured(&out), read_captured(&err))),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Everything written so far to a capture file (stdout or stderr of a
/// child).
pub fn read_captured(f: &fs::File) -> String {
    let Ok(mut f) = f.try_clone() else {
        return String::new();
    };
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}
