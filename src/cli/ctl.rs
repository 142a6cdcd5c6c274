//! `stratafs ctl MNT ...` and `stratafs stats MNT`: talk to a mount's
//! control socket (see `harness::control`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use super::{fail, init_log, out};
use crate::error::errno_by_name;
use crate::harness::control::{self, Request};
use crate::harness::rules::RuleSpec;
use crate::harness::RuleStatus;

/// `stratafs ctl`: control a mount while it is mounted: fault rules, the
/// trace, metrics.
///
/// TARGET is the mount point (its control socket is found from the mount
/// table), or a control socket (`@NAME`, or the path given with
/// `-o control=PATH`). Only the user the daemon runs as may connect.
#[derive(Parser, Debug)]
#[command(name = "stratafs ctl", version)]
struct CtlCmd {
    /// The mount point, or a control socket.
    #[arg(value_name = "TARGET")]
    target: String,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// The daemon: pid, control socket, faults file, listing order.
    Info,
    /// The control socket's name.
    Socket,
    /// Metrics (JSON by default).
    Stats(StatsFormat),
    /// The rules, with how often each matched and fired.
    Rules {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule (the options are the keys of a `[[rule]]` table).
    Add(Box<AddArgs>),
    /// Remove a rule by id.
    Remove {
        /// The id (see `rules`).
        id: u64,
    },
    /// Remove every rule.
    Clear,
    /// Reread the faults file (as SIGHUP does).
    Reload,
    /// Start, stop or follow the trace.
    #[command(subcommand)]
    Trace(TraceCmd),
}

#[derive(Args, Debug, Default)]
struct StatsFormat {
    /// JSON (the default).
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// The Prometheus text format.
    #[arg(long)]
    prometheus: bool,
}

#[derive(Args, Debug)]
struct AddArgs {
    /// The whole rule as JSON (the keys of a `[[rule]]` table); the other
    /// options then must not be given.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["op", "path", "errno", "delay_ms", "short", "corrupt", "size", "mode", "mtime", "noop"])]
    json: Option<String>,
    /// Operations (FUSE names, `*`); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    op: Vec<String>,
    /// A glob on the path relative to the mount root.
    #[arg(long)]
    path: Option<String>,
    /// Fail with this errno (`ENOSPC`).
    #[arg(long)]
    errno: Option<String>,
    /// Delay by MS milliseconds, or by MIN:MAX.
    #[arg(long, value_name = "MS|MIN:MAX")]
    delay_ms: Option<String>,
    /// Transfer at most N bytes per call.
    #[arg(long, value_name = "N")]
    short: Option<u64>,
    /// Flip N bytes of each read.
    #[arg(long, value_name = "N")]
    corrupt: Option<u32>,
    /// Report this size.
    #[arg(long)]
    size: Option<u64>,
    /// Report these permission bits (octal).
    #[arg(long, value_name = "OCTAL")]
    mode: Option<String>,
    /// Report this mtime (seconds since the epoch).
    #[arg(long)]
    mtime: Option<i64>,
    /// Answer success without doing anything.
    #[arg(long)]
    noop: bool,
    /// Only this process (thread) id.
    #[arg(long)]
    pid: Option<u32>,
    /// Only this user id.
    #[arg(long)]
    uid: Option<u32>,
    /// Fire with this probability (0 to 1).
    #[arg(long)]
    probability: Option<f64>,
    /// Seed of the random draws.
    #[arg(long)]
    seed: Option<u64>,
    /// Fire on the Nth match only.
    #[arg(long)]
    nth: Option<u64>,
    /// Fire only after N matches.
    #[arg(long)]
    after: Option<u64>,
    /// Fire at most N times.
    #[arg(long)]
    times: Option<u64>,
    /// A label.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args, Debug)]
struct TraceFilter {
    /// Only these operations (comma separated).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Only paths matching this glob.
    #[arg(long)]
    path: Option<String>,
}

impl TraceFilter {
    fn ops(&self) -> Option<Vec<String>> {
        (!self.ops.is_empty()).then(|| self.ops.clone())
    }
}

#[derive(Subcommand, Debug)]
enum TraceCmd {
    /// Write the trace to FILE (JSON lines; created by the daemon).
    Start {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        filter: TraceFilter,
    },
    /// Stop the trace files and followers.
    Stop,
    /// Wait until the trace files are written out.
    Flush,
    /// Print trace records as they come (JSON lines) until interrupted.
    Follow {
        #[command(flatten)]
        filter: TraceFilter,
    },
}

/// `stratafs stats MNT`: the metrics of a mount (JSON by default).
#[derive(Parser, Debug)]
#[command(name = "stratafs stats", version)]
struct StatsCmd {
    /// The mount point, or a control socket.
    #[arg(value_name = "TARGET")]
    target: String,
    #[command(flatten)]
    format: StatsFormat,
}

fn rule_of(a: AddArgs) -> Result<RuleSpec, String> {
    if let Some(json) = a.json {
        return serde_json::from_str(&json).map_err(|e| format!("--json: {e}"));
    }
    let errno = a
        .errno
        .map(|e| {
            errno_by_name(&e)
                .map(|e| e.raw_os_error())
                .ok_or(format!("--errno {e}: not an errno name"))
        })
        .transpose()?;
    let delay_ms = a
        .delay_ms
        .map(|d| {
            let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| *v >= 0.0);
            match d.split_once(':') {
                Some((lo, hi)) => parse(lo).zip(parse(hi)).map(|(l, h)| [l, h]),
                None => parse(&d).map(|v| [v, v]),
            }
            .ok_or(format!("--delay-ms {d}: expected MS or MIN:MAX"))
        })
        .transpose()?;
    let mode = a
        .mode
        .map(|m| u32::from_str_radix(&m, 8).map_err(|_| format!("--mode {m}: not octal")))
        .transpose()?;
    Ok(RuleSpec {
        name: a.name,
        op: a.op,
        path: a.path,
        pid: a.pid,
        uid: a.uid,
        errno,
        delay_ms,
        short: a.short,
        corrupt: a.corrupt,
        size: a.size,
        mode,
        mtime: a.mtime,
        noop: a.noop.then_some(true),
        probability: a.probability,
        seed: a.seed,
        nth: a.nth,
        after: a.after,
        times: a.times,
    })
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn rules_table(v: Value) -> Result<String, String> {
    let rules: Vec<RuleStatus> = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let mut s = String::from("ID  SOURCE   MATCHED  FIRED  RULE\n");
    for r in rules {
        let spec = serde_json::to_string(&r.rule).unwrap_or_default();
        let source = serde_json::to_value(r.source)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<3} {:<8} {:>7} {:>6}  {spec}\n",
            r.id, source, r.matched, r.fired
        ));
    }
    Ok(s)
}

fn stats(target: &str, f: &StatsFormat) -> Result<String, String> {
    let s = control::connect(&control::resolve(target)?)?;
    if f.prometheus {
        let v = control::call(&s, &Request::Prometheus)?;
        return Ok(v.as_str().unwrap_or_default().to_string());
    }
    Ok(pretty(&control::call(&s, &Request::Stats)?))
}

/// Print trace records as they come, until the mount or stdout goes away.
fn follow(target: &str, filter: &TraceFilter) -> Result<String, String> {
    let s = control::connect(&control::resolve(target)?)?;
    let req = Request::TraceFollow {
        ops: filter.ops(),
        path: filter.path.clone(),
    };
    let mut line = serde_json::to_string(&req).map_err(|e| e.to_string())?;
    line.push('\n');
    (&s).write_all(line.as_bytes())
        .map_err(|e| format!("control socket: {e}"))?;
    let mut lines = BufReader::new(&s).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .ok_or("control socket: no answer")?;
    let v: Value = serde_json::from_str(&first).map_err(|e| e.to_string())?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        return Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused")
            .to_string());
    }
    let stdout = std::io::stdout();
    for l in lines {
        let Ok(l) = l else { break };
        let mut o = stdout.lock();
        if writeln!(o, "{l}").and_then(|()| o.flush()).is_err() {
            break;
        }
    }
    Ok(String::new())
}

fn run_ctl(cmd: CtlCmd) -> Result<String, String> {
    let target = cmd.target.as_str();
    let request = match cmd.what {
        What::Socket => return control::resolve(target).map(|s| format!("{s}\n")),
        What::Stats(f) => return stats(target, &f),
        What::Trace(TraceCmd::Follow { filter }) => return follow(target, &filter),
        What::Info => Request::Info,
        What::Rules { json } => {
            let s = control::connect(&control::resolve(target)?)?;
            let v = control::call(&s, &Request::Rules)?;
            return if json { Ok(pretty(&v)) } else { rules_table(v) };
        }
        What::Add(a) => Request::Add { rule: rule_of(*a)? },
        What::Remove { id } => Request::Remove { id },
        What::Clear => Request::Clear,
        What::Reload => Request::Reload,
        What::Trace(TraceCmd::Start { file, filter }) => {
            let file =
                std::path::absolute(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            Request::TraceStart {
                file,
                ops: filter.ops(),
                path: filter.path,
            }
        }
        What::Trace(TraceCmd::Stop) => Request::TraceStop,
        What::Trace(TraceCmd::Flush) => Request::TraceFlush,
    };
    let s = control::connect(&control::resolve(target)?)?;
    let v = control::call(&s, &request)?;
    Ok(match (&request, &v) {
        (Request::Add { .. }, v) => format!("rule {} added\n", v["id"]),
        (_, Value::Null) => String::new(),
        (_, v) => pretty(v),
    })
}

/// `stratafs ctl`.
pub(super) fn run(args: Vec<OsString>) -> i32 {
    let cmd = CtlCmd::parse_from(args);
    init_log(false);
    match run_ctl(cmd) {
        Ok(text) => {
            out(&text);
            0
        }
        Err(e) => fail(e),
    }
}

/// `stratafs stats`.
pub(super) fn run_stats(args: Vec<OsString>) -> i32 {
    let cmd = StatsCmd::parse_from(args);
    init_log(false);
    match stats(&cmd.target, &cmd.format) {
        Ok(text) => {
            out(&text);
            0
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_options_are_the_rule_keys() -> Result<(), String> {
        let cmd = CtlCmd::try_parse_from([
            "stratafs ctl",
            "/mnt",
            "add",
            "--op",
            "write,fsync",
            "--path",
            "db/wal",
            "--errno",
            "ENOSPC",
            "--nth",
            "3",
            "--delay-ms",
            "1:5",
            "--mode",
            "600",
        ])
        .map_err(|e| e.to_string())?;
        let What::Add(a) = cmd.what else {
            return Err("not add".into());
        };
        let r = rule_of(*a)?;
        assert_eq!(r.op, vec!["write", "fsync"]);
        assert_eq!(r.errno, Some(libc::ENOSPC));
        assert_eq!(r.delay_ms, Some([1.0, 5.0]));
        assert_eq!(r.mode, Some(0o600));
        assert_eq!(r.nth, Some(3));
        let cmd = CtlCmd::try_parse_from(["x", "/m", "add", "--errno", "EBOGUS"])
            .map_err(|e| e.to_string())?;
        let What::Add(a) = cmd.what else {
            return Err("not add".into());
        };
        assert!(rule_of(*a).is_err());
        let json = r#"{"op":"read","corrupt":2}"#;
        let cmd = CtlCmd::try_parse_from(["x", "/m", "add", "--json", json])
            .map_err(|e| e.to_string())?;
        let What::Add(a) = cmd.what else {
            return Err("not add".into());
        };
        assert_eq!(rule_of(*a)?.corrupt, Some(2));
        Ok(())
    }
}
