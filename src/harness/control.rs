//! The control socket of a mount and its client (`stratafs ctl`).
//!
//! Each mount listens on a Unix socket: by default the abstract name
//! `@stratafs/ctl/MAJOR:MINOR`, after the device number the kernel gave the
//! mount, so `stratafs ctl MNT` finds it from `/proc/self/mountinfo`
//! without touching the mount itself (a fault rule cannot lock the user
//! out); `control=PATH` binds a socket file instead, `control=off` none.
//! Only the user the daemon runs as may talk to it: the peer's
//! credentials (`SO_PEERCRED`) are checked on every connection, and the
//! client in turn talks only to a daemon of its own user.
//!
//! The protocol is one JSON object per line: a request with a `cmd`, then
//! one answer `{"ok": true, "result": ...}` or `{"ok": false, "error":
//! "..."}`; after `trace_follow`'s answer, trace records follow as JSON
//! lines until the client goes away.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::metrics::prometheus;
use super::rules::{RuleSpec, Source};
use super::trace::Filter;
use super::Harness;
use crate::setup::options::ControlAt;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// The mount: pid, socket, faults file, listing order.
    Info,
    /// The metrics as JSON.
    Stats,
    /// The metrics in the Prometheus text format.
    Prometheus,
    /// The rules and their counters.
    Rules,
    /// Add a rule.
    Add {
        /// The rule, with the keys of a `[[rule]]` table.
        rule: RuleSpec,
    },
    /// Remove a rule.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Remove every rule.
    Clear,
    /// Read the faults file again.
    Reload,
    /// Start a trace file.
    TraceStart {
        /// The file (absolute; created or truncated by the daemon).
        file: PathBuf,
        /// Only these operations.
        #[serde(default)]
        ops: Option<Vec<String>>,
        /// Only paths matching this glob.
        #[serde(default)]
        path: Option<String>,
    },
    /// Stop the trace files and followers.
    TraceStop,
    /// Wait until the trace files are written out.
    TraceFlush,
    /// Stream trace records over this connection.
    TraceFollow {
        /// Only these operations.
        #[serde(default)]
        ops: Option<Vec<String>>,
        /// Only paths matching this glob.
        #[serde(default)]
        path: Option<String>,
    },
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// The longest request line.
const MAX_LINE: u64 = 1 << 20;
/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(60);

/// The default socket name of the mount with device `major:minor`.
pub(crate) fn default_name(major: u32, minor: u32) -> String {
    format!("@stratafs/ctl/{major}:{minor}")
}

fn socket_addr(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

/// A listening control socket; stops listening when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    name: String,
    listener: Arc<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The socket's name (`@...` for an abstract one).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes the accept loop (accept fails on a shut-down socket).
        let _ = rustix::net::shutdown(self.listener.as_fd(), rustix::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.name.starts_with('@') {
            let _ = std::fs::remove_file(&self.name);
        }
    }
}

/// The device number (`major:minor`) of the topmost mount at `mnt` (taken
/// as written, made absolute), from `/proc/self/mountinfo`: no access to
/// the mount itself.
fn find_dev(mnt: &Path) -> Option<(u32, u32)> {
    let want = absolute(mnt);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let found = text.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let point = unescape(f.get(4)?);
        (Path::new(&point) == want).then(|| f.get(2).map(|s| s.to_string()))?
    })?;
    let (maj, min) = found.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// [`find_dev`], else by the real path of `mnt` (a path through a symbolic
/// link; resolving it looks at the mount, so only as a second try).
fn mount_dev(mnt: &Path) -> Option<(u32, u32)> {
    find_dev(mnt).or_else(|| find_dev(&std::fs::canonicalize(mnt).ok()?))
}

/// `p` as an absolute path, `.` and `..` resolved by name.
fn absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    let mut out = PathBuf::from("/");
    for c in base.join(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// A mountinfo field: `\NNN` octal escapes decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match esc {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Start the control socket of `h`, mounted at `mnt` (the real path, as
/// the mount table shows it), as `at` says.
pub(crate) fn start(
    h: &Arc<Harness>,
    at: &ControlAt,
    mnt: &Path,
) -> Result<Option<Server>, String> {
    if let Some((maj, min)) = find_dev(mnt) {
        let _ = h.dev.set(rustix::fs::makedev(maj, min));
    }
    let name = match at {
        ControlAt::Off => return Ok(None),
        ControlAt::At(name) => name.clone(),
        ControlAt::Default => {
            let (maj, min) = find_dev(mnt)
                .ok_or_else(|| format!("{} is not in the mount table", mnt.display()))?;
            default_name(maj, min)
        }
    };
    let addr = socket_addr(&name).map_err(|e| format!("control socket {name}: {e}"))?;
    if !name.starts_with('@') {
        // A socket file left by a daemon that died.
        if std::fs::symlink_metadata(&name).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&name);
        }
    }
    let listener = bind(&addr).map_err(|e| format!("control socket {name}: {e}"))?;
    if !name.starts_with('@') {
        let _ = std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600));
    }
    let listener = Arc::new(listener);
    let l = listener.clone();
    let hh = h.clone();
    let thread = std::thread::Builder::new()
        .name("stratafs-ctl".into())
        .spawn(move || accept_loop(&l, &hh))
        .map_err(|e| format!("control socket: {e}"))?;
    *h.socket.lock() = Some(name.clone());
    Ok(Some(Server {
        name,
        listener,
        thread: Some(thread),
    }))
}

/// Bind `addr`. The default name is in use only while the daemon of a
/// mount that had the same device number is on its way out (device
/// numbers are unique among live mounts): wait for it a little.
fn bind(addr: &SocketAddr) -> std::io::Result<UnixListener> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match UnixListener::bind_addr(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

fn accept_loop(l: &UnixListener, h: &Arc<Harness>) {
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            // Shut down (unmount), or broken.
            Err(_) => return,
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            answer(&stream, &fail("too many control connections"));
            continue;
        }
        let (h, busy2) = (h.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("stratafs-ctl-conn".into())
            .spawn(move || {
                serve(stream, &h);
                busy2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

fn done(result: Value) -> Value {
    json!({"ok": true, "result": result})
}

fn answer(mut s: &UnixStream, v: &Value) -> bool {
    let mut line = v.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).is_ok()
}

/// Whether the peer of `s` runs as this process's user.
fn peer_allowed(s: &UnixStream) -> Result<(), String> {
    let me = rustix::process::geteuid();
    let peer = rustix::net::sockopt::socket_peercred(s).map_err(|e| e.to_string())?;
    if peer.uid == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not control this mount (only uid {})",
            peer.uid.as_raw(),
            me.as_raw()
        ))
    }
}

fn serve(stream: UnixStream, h: &Arc<Harness>) {
    if let Err(e) = peer_allowed(&stream) {
        log::warn!("control socket: {e}");
        answer(&stream, &fail(e));
        return;
    }
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half.take(MAX_LINE));
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            answer(&stream, &fail("request too long"));
            return;
        }
        let req = match serde_json::from_str::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                if !answer(&stream, &fail(format!("bad request: {e}"))) {
                    return;
                }
                continue;
            }
        };
        if let Request::TraceFollow { ops, path } = req {
            follow(&stream, h, ops, path);
            return;
        }
        if !answer(&stream, &handle(h, req)) {
            return;
        }
        reader.get_mut().set_limit(MAX_LINE);
    }
}

fn follow(stream: &UnixStream, h: &Harness, ops: Option<Vec<String>>, path: Option<String>) {
    let filter = match Filter::new(ops.as_deref(), path.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            answer(stream, &fail(e));
            return;
        }
    };
    let (id, rx) = h.tracer.follow(filter);
    if answer(stream, &done(json!({ "follower": id }))) {
        let mut out = stream;
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    if out.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // A client that went away shows up only when written
                    // to; poll it.
                    if closed(stream) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    h.tracer.stop(id);
}

/// Whether the client of `s` closed its end.
fn closed(s: &UnixStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 1];
    let r = (&*s).read(&mut b);
    let _ = s.set_nonblocking(false);
    matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
}

fn handle(h: &Harness, req: Request) -> Value {
    match req {
        Request::Info => done(json!({
            "pid": std::process::id(),
            "socket": h.socket.lock().clone(),
            "faults": h.faults_file(),
            "readdir_order": format!("{:?}", h.order).to_lowercase(),
            "metrics": h.metrics.is_some(),
        })),
        Request::Stats => match serde_json::to_value(h.stats()) {
            Ok(v) => done(v),
            Err(e) => fail(e),
        },
        Request::Prometheus => done(Value::String(prometheus(&h.stats()))),
        Request::Rules => match serde_json::to_value(h.rules()) {
            Ok(v) => done(v),
            Err(e) => fail(e),
        },
        Request::Add { rule } => match h.add_rule(rule, Source::Control) {
            Ok(id) => done(json!({ "id": id })),
            Err(e) => fail(e),
        },
        Request::Remove { id } => {
            if h.remove_rule(id) {
                done(json!({ "removed": id }))
            } else {
                fail(format!("no rule {id}"))
            }
        }
        Request::Clear => done(json!({ "removed": h.clear_rules() })),
        Request::Reload => match h.reload() {
            Ok(n) => done(json!({ "rules": n })),
            Err(e) => fail(e),
        },
        Request::TraceStart { file, ops, path } => {
            if !file.is_absolute() {
                return fail("trace file: give an absolute path");
            }
            match Filter::new(ops.as_deref(), path.as_deref())
                .and_then(|f| h.tracer.start_file(&file, f, h.dev.get().copied()))
            {
                Ok(id) => done(json!({ "trace": id })),
                Err(e) => fail(e),
            }
        }
        Request::TraceStop => done(json!({ "stopped": h.tracer.stop_outputs() })),
        Request::TraceFlush => {
            h.tracer.flush();
            done(Value::Null)
        }
        Request::TraceFollow { .. } => fail("trace_follow streams; it cannot be answered here"),
    }
}

// ------------------------------------------------------------------ client

/// The control socket for `target`: a socket (`@NAME`, or a path to a
/// socket file), or a mount point (its default socket).
pub(crate) fn resolve(target: &str) -> Result<String, String> {
    if target.starts_with('@') {
        return Ok(target.to_string());
    }
    let p = Path::new(target);
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
        return Ok(target.to_string());
    }
    let (maj, min) = mount_dev(p).ok_or_else(|| format!("{target}: not a mount point"))?;
    Ok(default_name(maj, min))
}

/// Connect to the control socket `name` of a daemon of this user.
pub(crate) fn connect(name: &str) -> Result<UnixStream, String> {
    let addr = socket_addr(name).map_err(|e| format!("{name}: {e}"))?;
    let s = UnixStream::connect_addr(&addr)
        .map_err(|e| format!("{name}: {e} (not a stratafs mount, or mounted with control=off)"))?;
    // Talk only to a daemon of the same user: anyone may bind an abstract
    // name first.
    let me = rustix::process::geteuid();
    match rustix::net::sockopt::socket_peercred(&s) {
        Ok(peer) if peer.uid == me => Ok(s),
        Ok(peer) => Err(format!(
            "{name}: served by uid {}, not by this user",
            peer.uid.as_raw()
        )),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Send `req` and read the answer's result.
pub(crate) fn call(s: &UnixStream, req: &Request) -> Result<Value, String> {
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    (&*s)
        .write_all(line.as_bytes())
        .map_err(|e| format!("control socket: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| format!("control socket: {e}"))?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|_| "control socket: the daemon closed the connection".to_string())?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the daemon refused the request")
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_escapes() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape(r"\04"), r"\04");
        assert_eq!(absolute(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert!(absolute(Path::new("x")).is_absolute());
        assert_eq!(default_name(0, 53), "@stratafs/ctl/0:53");
        assert!(mount_dev(Path::new("/")).is_some());
        assert_eq!(resolve("@x"), Ok("@x".to_string()));
        assert!(resolve("/definitely/not/mounted/here").is_err());
    }

    #[test]
    fn requests_have_a_stable_form() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"remove","id":3}"#).unwrap_or(Request::Info);
        assert!(matches!(r, Request::Remove { id: 3 }));
        let add = r#"{"cmd":"add","rule":{"op":"write","path":"db/wal","errno":"ENOSPC","nth":3}}"#;
        let r: Request = serde_json::from_str(add).unwrap_or(Request::Info);
        assert!(matches!(r, Request::Add { ref rule } if rule.nth == Some(3)));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"bogus"}"#).is_err());
    }
}
