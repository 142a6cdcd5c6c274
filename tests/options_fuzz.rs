//! Fuzzing of the mount option parser (`-o` strings and argv shapes) with
//! proptest, and the binary's handling of malformed command lines.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stratafs::options::parse_mount_args;

use common::{run_with_timeout, stratafs_bin};

const KNOWN_KEYS: &[&str] = &[
    "lowerdir",
    "upperdir",
    "workdir",
    "timeout",
    "threads",
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "fsync",
    "volatile",
    "debug",
    "allow_other",
    "allow_root",
    "default_permissions",
    "ro",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "noatime",
    "relatime",
    "auto_unmount",
    "fsname",
    "context",
    "userxattr",
    "max_write",
];

/// Characters that mean something to the parser, and some that do not.
const SPECIALS: &[char] = &[
    '\\',
    '"',
    ',',
    ':',
    '=',
    '/',
    ' ',
    '\n',
    '\r',
    '\t',
    '\0',
    '\u{1b}',
    'é',
    '日',
    '\u{1F600}',
    '\u{202E}',
    '0',
    '9',
];

fn special_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::sample::select(SPECIALS),
        3 => proptest::char::range('a', 'z'),
        1 => any::<char>(),
    ]
}

fn fuzz_string(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(special_char(), 0..max).prop_map(|v| v.into_iter().collect()),
        1 => Just(String::new()),
        // Very long values.
        1 => (special_char(), 1000usize..8_000).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => "[-0-9.eE+a-z]{0,12}",
    ]
}

/// One `-o` token: a known or unknown key, maybe with a value.
fn token() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        6 => proptest::sample::select(KNOWN_KEYS).prop_map(str::to_string),
        2 => fuzz_string(12),
    ];
    (key, proptest::option::of(fuzz_string(40))).prop_map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k,
    })
}

/// One `-o` argument: tokens joined by commas (sometimes doubled or
/// leading/trailing commas).
fn o_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (proptest::collection::vec(token(), 0..6), proptest::sample::select(&[",", ",", ",,", ", "][..]))
            .prop_map(|(t, sep)| t.join(sep)),
        1 => fuzz_string(80),
        1 => Just(String::new()),
    ]
}

fn argv() -> impl Strategy<Value = (Vec<String>, Vec<String>, bool, bool)> {
    (
        proptest::collection::vec(o_arg(), 0..4),
        proptest::collection::vec(fuzz_string(30), 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut o, mut pos, fg, dbg, plausible)| {
            // Half of the cases start from a valid command line, so that
            // the fuzzed parts also land in accepted ones.
            if plausible {
                o.insert(0, "lowerdir=/l".to_string());
                if pos.is_empty() {
                    pos.push("/mnt".to_string());
                }
            }
            (o, pos, fg, dbg)
        })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Never panics; errors are one non-empty line; successes are complete.
#[test]
fn parser_never_panics_and_errors_are_one_line() {
    let runs = AtomicUsize::new(0);
    let (oks, errs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let start = Instant::now();
    let mut runner = TestRunner::new(config(20_000));
    let res = runner.run(&argv(), |(o, pos, fg, dbg)| {
        runs.fetch_add(1, Ordering::Relaxed);
        match parse_mount_args(&o, &pos, fg, dbg) {
            Ok(opts) => {
                oks.fetch_add(1, Ordering::Relaxed);
                prop_assert!(!opts.lowerdirs.is_empty(), "Ok without lowerdirs");
                prop_assert!(
                    opts.lowerdirs.iter().all(|l| !l.as_os_str().is_empty()),
                    "empty lowerdir in {:?}",
                    opts.lowerdirs
                );
                prop_assert_eq!(Some(opts.mountpoint.clone()), pos.last().map(PathBuf::from));
                prop_assert!(pos.len() <= 2);
                prop_assert_eq!(opts.upperdir.is_some(), opts.workdir.is_some());
                prop_assert!(opts.foreground == fg && (opts.debug || !dbg));
            }
            Err(e) => {
                errs.fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                prop_assert!(!msg.trim().is_empty(), "empty error message");
                prop_assert!(
                    !msg.contains('\n'),
                    "error message is not one line: {:?}",
                    msg
                );
            }
        }
        Ok(())
    });
    eprintln!(
        "options fuzz: {} executions ({} ok, {} errors) in {:?}",
        runs.load(Ordering::Relaxed),
        oks.load(Ordering::Relaxed),
        errs.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = res {
        panic!("{e}");
    }
    assert!(
        oks.load(Ordering::Relaxed) > 0,
        "the generator never produced a valid command line"
    );
}

/// A path for the round trip: never empty, any character the parser
/// treats specially.
fn path_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            3 => special_char().prop_map(|c| if c == '\0' { '@' } else { c }),
            1 => Just('\\'),
            1 => Just(':'),
            1 => Just(','),
        ],
        1..30,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// Escape a path for an `-o` value: `\`, `:` and `,` as documented, and `"`
/// (which the parser also treats as quoting).
fn escape(p: &str) -> String {
    let mut out = String::new();
    for c in p.chars() {
        if matches!(c, '\\' | ':' | ',' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[test]
fn escaped_dir_lists_round_trip() {
    let runs = AtomicUsize::new(0);
    let start = Instant::now();
    let mut runner = TestRunner::new(config(3_000));
    let strategy = (
        proptest::collection::vec(path_strategy(), 1..6),
        proptest::option::of((path_strategy(), path_strategy())),
        path_strategy(),
        any::<bool>(),
    );
    let res = runner.run(&strategy, |(lowers, uw, mnt, split)| {
        runs.fetch_add(1, Ordering::Relaxed);
        let lower: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
        let mut o = vec![format!("lowerdir={}", lower.join(":"))];
        if let Some((u, w)) = &uw {
            let rest = format!("upperdir={},workdir={}", escape(u), escape(w));
            // The same options in one -o or spread over two.
            if split {
                o.push(rest);
            } else {
                o[0] = format!("{},{rest}", o[0]);
            }
        }
        let opts = parse_mount_args(&o, std::slice::from_ref(&mnt), false, false)
            .map_err(|e| TestCaseError::fail(format!("{o:?}: {e}")))?;
        let want: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
        prop_assert_eq!(&opts.lowerdirs, &want, "-o {:?}", o);
        prop_assert_eq!(opts.upperdir, uw.as_ref().map(|(u, _)| PathBuf::from(u)));
        prop_assert_eq!(opts.workdir, uw.as_ref().map(|(_, w)| PathBuf::from(w)));
        prop_assert_eq!(opts.mountpoint, PathBuf::from(&mnt));
        prop_assert!(opts.warnings.is_empty(), "{:?}", opts.warnings);
        Ok(())
    });
    eprintln!(
        "options round trip: {} executions in {:?}",
        runs.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// The harness's escaping (used by every mounting test) round-trips too.
#[test]
fn harness_escaping_round_trips_for_paths_without_quotes() {
    let mut runner = TestRunner::new(config(1_000));
    let strategy = proptest::collection::vec(
        path_strategy().prop_filter("no quotes", |p| !p.contains('"')),
        1..5,
    );
    let res = runner.run(&strategy, |lowers| {
        let paths: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
        let o = common::overlay_opts(&paths, None, None);
        let opts = parse_mount_args(
            std::slice::from_ref(&o),
            &["/mnt".to_string()],
            false,
            false,
        )
        .map_err(|e| TestCaseError::fail(format!("{o:?}: {e}")))?;
        prop_assert_eq!(&opts.lowerdirs, &paths);
        Ok(())
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// Malformed command lines: exit status 1 and one line on stderr, before
/// anything is touched.
#[test]
fn binary_rejects_malformed_command_lines_with_one_line() {
    let cases: &[&[&str]] = &[
        &["-o", "lowerdir=", "/nonexistent-mnt"],
        &["-o", "upperdir=/u,workdir=/w", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a::/b", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,upperdir=/u", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,workdir=/w", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,timeout=soon", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,timeout=1\n2", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,threads=0", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,xattr_permissions=7", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,fsync=maybe", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,squash_to_uid=-1", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,uidmapping=0:1", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a\n:\n:", "/nonexistent-mnt"],
        &["-o", "lowerdir", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a", "-o", "upperdir=", "/nonexistent-mnt"],
        &["-f", "-o", "nodev,,noexec", "/nonexistent-mnt"],
    ];
    for args in cases {
        let (status, out, err) = run_with_timeout(
            Command::new(stratafs_bin()).args(*args),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("stratafs {args:?} hung"));
        assert_eq!(status.code(), Some(1), "stratafs {args:?}: stderr {err:?}");
        assert!(out.is_empty(), "stratafs {args:?}: stdout {out:?}");
        assert_eq!(
            err.lines().count(),
            1,
            "stratafs {args:?}: stderr is not one line: {err:?}"
        );
        assert!(err.starts_with("stratafs: "), "stratafs {args:?}: {err:?}");
        assert!(err.trim().len() > "stratafs:".len(), "{err:?}");
    }
}

/// Control characters from option values must not reach the terminal
/// either: a `\r` in an echoed value rewrites the line, an ESC starts a
/// terminal escape sequence.
#[test]

fn error_messages_carry_no_control_characters() {
    let runs = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config(5_000));
    let res = runner.run(&argv(), |(o, pos, fg, dbg)| {
        runs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = parse_mount_args(&o, &pos, fg, dbg) {
            let msg = e.to_string();
            prop_assert!(
                !msg.chars().any(char::is_control),
                "control character in error message: {:?}",
                msg
            );
        }
        Ok(())
    });
    eprintln!(
        "control characters: {} executions",
        runs.load(Ordering::Relaxed)
    );
    if let Err(e) = res {
        panic!("{e}");
    }
}

/// An empty mount point is no mount point.
#[test]

fn empty_mount_point_is_rejected() {
    for pos in [vec![String::new()], vec!["src".to_string(), String::new()]] {
        let r = parse_mount_args(&["lowerdir=/l".to_string()], &pos, false, false);
        assert!(r.is_err(), "{pos:?} accepted: {r:?}");
    }
}
