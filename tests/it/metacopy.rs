//! `metacopy=on`: a change of metadata only (chown, chmod, utimes,
//! setxattr) copies a lower file's metadata up, marked `overlay.metacopy`,
//! and its data stays below until the first open for writing or truncate;
//! next to the kernel overlay mounted with
//! `index=on,redirect_dir=on,metacopy=on`. Each reads the other's upper.
//! Rootless, where the kernel refuses `metacopy=on` with `userxattr`, the
//! same sequences run on stratafs alone against the expected outcome.

use crate::common::*;
use std::os::fd::OwnedFd;
use std::path::Path;

const BIG: usize = 200_000;

/// The atime and mtime of the lower files.
const T0: i64 = 1_500_000_000;

fn lowers() -> TempStackBuilder {
    stack(
        // Fixed times: both sides' stacks are built, each in its own
        // second, and the times of the lower files are compared.
        vec![Layer::new()
            .file("big", "b".repeat(BIG))
            .times(T0, T0)
            .file("f", "lowerdata")
            .times(T0, T0)
            .file("g", "gdata")
            .times(T0, T0)
            .file("h", "hdata")
            .times(T0, T0)
            .file("t", "tdata")
            .times(T0, T0)
            .file("o", "odata")
            .times(T0, T0)
            .file("x", "xdata")
            .times(T0, T0)
            .file("r", "rdata")
            .times(T0, T0)
            .file("d/deep", "deep")
            .times(T0, T0)],
        Layer::new(),
    )
}

/// The marker's name in the namespace the tests' stacks use.
fn metacopy_key() -> &'static str {
    if OpaqueForm::kernel() == OpaqueForm::Trusted {
        "trusted.overlay.metacopy"
    } else {
        "user.overlay.metacopy"
    }
}

fn append(p: &Path, data: &[u8]) -> Result<(), i32> {
    let fd = sys::open(p, libc::O_WRONLY | libc::O_APPEND, 0)?;
    sys::write(&fd, data).map(|_| ())
}

/// Rootless checks on a stack laid out by hand: mounted with
/// metacopy=on, `name` shows `data`, and an append copies the data up,
/// after which the upper file holds it and no marker.
fn shows_data_then_copies_it_up(s: &Stack, name: &str, data: &str) {
    let sm = s.mount_strata_with("metacopy=on");
    assert_eq!(read_string(&s.m(name)), data);
    assert_ok(append(&s.m(name), b"!"), "append");
    assert_eq!(read_string(&s.m(name)), format!("{data}!"));
    drop(sm);
    assert_eq!(read_string(&s.u(name)), format!("{data}!"));
    assert_errno(
        sys::lgetxattr(&s.u(name), metacopy_key()),
        libc::ENODATA,
        "marker after the data copy-up",
    );
}

/// Metadata changes, then data changes of some of the same files; `r` is
/// opened for reading before its data is copied up.
fn changes(m: &Path, held: &mut Option<OwnedFd>) -> Vec<(&'static str, Result<(), i32>)> {
    let p = |r: &str| m.join(r);
    let id = other_id();
    let mut out = vec![
        ("chown big", sys::lchown(&p("big"), id, id)),
        ("chmod f", sys::chmod(&p("f"), 0o600)),
        ("utimes g", sys::lutimes(&p("g"), (1000, 0), (2000, 0))),
        ("setxattr h", sys::lsetxattr(&p("h"), "user.k", b"v", 0)),
        ("chmod d/deep", sys::chmod(&p("d/deep"), 0o640)),
        ("chmod t", sys::chmod(&p("t"), 0o604)),
        ("chmod o", sys::chmod(&p("o"), 0o606)),
        ("chmod x", sys::chmod(&p("x"), 0o660)),
        ("chmod r", sys::chmod(&p("r"), 0o644)),
    ];
    *held = sys::open(&p("r"), libc::O_RDONLY, 0).ok();
    out.extend([
        ("truncate t", sys::truncate(&p("t"), 2)),
        ("append o", append(&p("o"), b"+")),
        (
            "O_TRUNC x",
            sys::open(&p("x"), libc::O_WRONLY | libc::O_TRUNC, 0).map(drop),
        ),
        ("write r", {
            sys::open(&p("r"), libc::O_WRONLY, 0).and_then(|fd| sys::pwrite(&fd, b"R", 0).map(drop))
        }),
    ]);
    out
}

/// A file as stat(2) and read(2) show it: path, size, blocks, mode, uid,
/// mtime (or link count), contents.
type Shown = (String, i64, i64, u32, u32, i64, Vec<u8>);

/// Every file of the stack as stat(2) and read(2) show it.
fn files(m: &Path) -> Vec<Shown> {
    ["big", "f", "g", "h", "t", "o", "x", "r", "d/deep"]
        .iter()
        .map(|n| {
            let p = m.join(n);
            let st = assert_ok(sys::lstat(&p), n);
            let data = assert_ok(sys::read_all(&p), n);
            (
                n.to_string(),
                st.st_size,
                st.st_blocks,
                st.st_mode,
                st.st_uid,
                // The files `changes` writes get the time of the write, on
                // each side in its own second.
                if ["t", "o", "x", "r"].contains(n) {
                    0
                } else {
                    st.st_mtime
                },
                data,
            )
        })
        .collect()
}

/// Which upper files carry the marker (and its value), and which carry
/// an origin and a redirect.
fn records(upper: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for n in [
        "big", "f", "g", "h", "t", "o", "x", "r", "d/deep", "big2", "d/big3",
    ] {
        let p = upper.join(n);
        for x in sys::llistxattr(&p).unwrap_or_default() {
            if x.ends_with("overlay.metacopy") || x.ends_with("overlay.redirect") {
                let v = sys::lgetxattr(&p, &x).unwrap_or_default();
                let short = x.rsplit('.').next().unwrap_or_default().to_string();
                out.push(format!("{n}: {short}={}", String::from_utf8_lossy(&v)));
            } else if x.ends_with("overlay.origin") {
                out.push(format!("{n}: origin"));
            }
        }
    }
    out.sort();
    out
}

/// What the upper must hold after `changes`: markers on the files whose
/// metadata only changed, none once the data was copied up.
const EXPECTED_RECORDS: &[&str] = &[
    "big: metacopy=",
    "big: origin",
    "d/deep: metacopy=",
    "d/deep: origin",
    "f: metacopy=",
    "f: origin",
    "g: metacopy=",
    "g: origin",
    "h: metacopy=",
    "h: origin",
    "o: origin",
    "r: origin",
    "t: origin",
    "x: origin",
];

/// What `changes` leaves in the files' contents.
fn expected_contents(path: &str) -> Vec<u8> {
    match path {
        "big" => "b".repeat(BIG).into_bytes(),
        "f" => b"lowerdata".to_vec(),
        "g" => b"gdata".to_vec(),
        "h" => b"hdata".to_vec(),
        "t" => b"td".to_vec(),
        "o" => b"odata+".to_vec(),
        "x" => Vec::new(),
        "r" => b"Rdata".to_vec(),
        _ => b"deep".to_vec(),
    }
}

/// The blocks and contents the stratafs mount at `m` shows, checked
/// against the lower files (a metadata copy's blocks are its data file's)
/// and the expected contents.
fn check_alone(s: &Stack, m: &Path, what: &str) {
    for (n, _, blocks, _, _, _, data) in files(m) {
        assert_eq!(data, expected_contents(&n), "{what}: contents of {n}");
        if ["big", "f", "g", "h", "d/deep"].contains(&n.as_str()) {
            let lower = assert_ok(sys::lstat(&s.l(0, &n)), &n);
            assert_eq!(blocks, lower.st_blocks, "{what}: blocks of {n}");
        }
    }
}

#[test]
fn metadata_changes_copy_metadata_only_as_the_kernel_does() {
    if is_rootless() {
        let s = lowers().build(Markers::AsWritten);
        let sm = s.mount_strata_with("metacopy=on");
        let mut held = None;
        let got = changes(&s.mnt, &mut held);
        assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
        // An fd opened before the data copy-up reads the new data, as on
        // the kernel.
        let fd = held.expect("held fd");
        assert_eq!(sys::pread(&fd, 5, 0), Ok(b"Rdata".to_vec()));
        drop(fd);
        check_alone(&s, &s.mnt, "stratafs");
        drop(sm);
        assert_eq!(records(s.upper()), EXPECTED_RECORDS);
        let up = assert_ok(sys::lstat(&s.u("big")), "upper big");
        assert!(
            up.st_blocks < 64,
            "data was copied: {} blocks",
            up.st_blocks
        );
        let sm = s.mount_strata_with("metacopy=on");
        check_alone(&s, &s.mnt, "after a remount");
        drop(sm);
        return;
    }
    let p = Pair::with_options(&lowers(), "metacopy=on");
    let (mut hs, mut hk) = (None, None);
    let s_res = changes(&p.s.mnt, &mut hs);
    let k_res = changes(&p.k.mnt, &mut hk);
    assert_eq!(s_res, k_res, "results: stratafs (left), kernel (right)");
    let read = |fd: Option<OwnedFd>| fd.map(|fd| sys::pread(&fd, 5, 0));
    assert_eq!(
        read(hs),
        read(hk),
        "a descriptor opened before the data copy-up"
    );
    p.assert_same_view();
    p.same("files", files);
    check_alone(&p.s, &p.s.mnt, "stratafs");
    let Pair { sm, km, s, k } = p;
    drop((sm, km));
    assert_eq!(
        records(s.upper()),
        records(k.upper()),
        "records: stratafs (left), kernel (right)"
    );
    assert_eq!(records(s.upper()), EXPECTED_RECORDS);
    let xs = sys::lgetxattr(&s.u("big"), metacopy_key());
    let xk = sys::lgetxattr(&k.u("big"), metacopy_key());
    assert_eq!(xs, xk, "the marker byte for byte");
    // Each on the other's upper.
    let want = {
        let m = s.mount_strata_with("metacopy=on");
        let f = files(&s.mnt);
        drop(m);
        f
    };
    let sk = s.mount_kernel_with("metacopy=on");
    assert_eq!(files(&s.mnt), want, "the kernel on stratafs' upper");
    drop(sk);
    let ks = try_mount_stratafs(
        &format!(
            "{},metacopy=on",
            overlay_opts(k.lowers(), Some(k.upper()), Some(k.work()))
        ),
        &k.mnt,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = files(&k.mnt);
    drop(ks);
    let km = k.mount_kernel_with("metacopy=on");
    assert_eq!(got, files(&k.mnt), "stratafs on the kernel's upper");
    drop(km);
}

/// The kernel renames and links metadata copies (relative and absolute
/// redirects); stratafs, mounted on its upper, finds their data.
#[test]
fn stratafs_reads_the_kernels_renamed_and_linked_metadata_copies() {
    if is_rootless() {
        // The kernel refuses metacopy=on rootless: the records it writes
        // for a metadata copy renamed in its directory (relative redirect)
        // and one moved into another (absolute), in this namespace's
        // names, laid out by hand; stratafs finds their data.
        let key = crate::redirect::redirect_key();
        let s = stack(
            vec![Layer::new()
                .file("g", "gdata")
                .file("h", "hdata")
                .file("d/deep", "deep")],
            Layer::new()
                .file("g2", "\0".repeat(5))
                .xattr(metacopy_key(), b"")
                .xattr(key, b"g")
                .file("d/h3", "\0".repeat(5))
                .xattr(metacopy_key(), b"")
                .xattr(key, b"/h"),
        )
        .build(Markers::AsWritten);
        shows_data_then_copies_it_up(&s, "d/h3", "hdata");
        shows_data_then_copies_it_up(&s, "g2", "gdata");
        return;
    }
    let k = lowers().build(Markers::Kernel);
    let km = k.mount_kernel_with("metacopy=on");
    let m = &k.mnt;
    assert_ok(sys::lchown(&m.join("f"), 1000, 1000), "chown");
    assert_ok(sys::rename(&m.join("g"), &m.join("g2")), "same-dir rename");
    assert_ok(
        sys::rename(&m.join("h"), &m.join("d/h3")),
        "cross-dir rename",
    );
    assert_ok(sys::chmod(&m.join("big"), 0o600), "chmod");
    assert_ok(sys::link(&m.join("big"), &m.join("big2")), "link");
    let names = ["f", "g2", "d/h3", "big", "big2", "d/deep"];
    let view = |m: &Path| with_nlink(m, &names);
    let want = view(m);
    drop(km);
    let redirect = sys::lgetxattr(&k.u("g2"), "trusted.overlay.redirect");
    assert_eq!(
        redirect,
        Ok(b"g".to_vec()),
        "the kernel wrote a relative redirect"
    );
    let sm = try_mount_stratafs(
        &format!(
            "{},metacopy=on",
            overlay_opts(k.lowers(), Some(k.upper()), Some(k.work()))
        ),
        m,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(view(m), want, "stratafs on the kernel's upper");
    // The first write copies the data up under the new name.
    assert_ok(append(&m.join("g2"), b"!"), "append");
    assert_eq!(read_string(&m.join("g2")), "gdata!");
    drop(sm);
    assert_errno(
        sys::lgetxattr(&k.u("g2"), "trusted.overlay.metacopy"),
        libc::ENODATA,
        "marker after the data copy-up",
    );
}

/// With metacopy=off a metadata copy is refused (EPERM), as the kernel
/// refuses to follow one; metacopy=on conflicts with other explicit
/// redirect_dir values at mount.
#[test]
fn metacopy_off_refuses_a_metadata_copy_and_conflicts_are_refused() {
    let s = lowers().build(Markers::AsWritten);
    let sm = s.mount_strata_with("metacopy=on");
    assert_ok(sys::chmod(&s.m("f"), 0o600), "chmod");
    drop(sm);
    let sm = s.mount_strata();
    assert_errno(sys::lstat(&s.m("f")), libc::EPERM, "metacopy=off");
    assert_eq!(read_string(&s.m("g")), "gdata");
    let log = sm.daemon_stderr();
    drop(sm);
    assert!(log.contains("metacopy=off"), "{log}");
    let e = try_mount_stratafs(
        &format!("{},metacopy=on,redirect_dir=off", s.overlay_opts()),
        &s.mnt,
    )
    .err()
    .unwrap_or_default();
    assert!(
        e.contains("conflicting options: metacopy=on,redirect_dir=off"),
        "{e}"
    );
}

/// Crafted markers and redirects on metadata copies: a marker the kernel
/// refuses, redirects that point outside the layers, at `..`, through a
/// symlink, at a directory or at nothing, are refused (EIO, logged) and
/// never followed outside a layer root; one naming the file's own name is
/// just its own lower file.
#[test]
fn hostile_metacopy_records_are_refused() {
    const NAMES: [&str; 8] = [
        "badmark", "dotdot", "slash", "viasym", "isdir", "nothing", "self", "ok",
    ];
    let mut lower = Layer::new()
        .file("a", "a")
        .dir("adir")
        .symlink("link", "/etc");
    for n in NAMES {
        lower = lower.file(n, format!("{n}-data"));
    }
    let s = stack(vec![lower], Layer::new()).build(Markers::AsWritten);
    // Metadata copies with real origin records first.
    let sm = s.mount_strata_with("metacopy=on");
    for n in NAMES {
        assert_ok(sys::chmod(&s.m(n), 0o600), n);
    }
    drop(sm);
    let mark = metacopy_key();
    let key = crate::redirect::redirect_key();
    assert_ok(
        sys::lsetxattr(&s.u("badmark"), mark, b"\x01\x04\x00\x00", 0),
        "badmark",
    );
    for (n, v) in [
        ("dotdot", "/../../etc/passwd"),
        ("slash", "a/b"),
        ("viasym", "/link/passwd"),
        ("isdir", "/adir"),
        ("nothing", "/none"),
        ("self", "self"),
    ] {
        assert_ok(sys::lsetxattr(&s.u(n), key, v.as_bytes(), 0), n);
    }
    let sm = s.mount_strata_with("metacopy=on");
    assert_eq!(read_string(&s.m("ok")), "ok-data");
    assert_eq!(read_string(&s.m("self")), "self-data");
    for n in ["badmark", "dotdot", "slash", "viasym", "isdir", "nothing"] {
        assert_errno(sys::lstat(&s.m(n)), libc::EIO, n);
    }
    let log = sm.daemon_stderr();
    drop(sm);
    for want in [
        "invalid metacopy marker",
        "invalid redirect",
        "no lower data file found",
    ] {
        assert!(log.contains(want), "{want}: {log}");
    }
}

/// Renames and links of lower files and of metadata copies: a redirect
/// relative within the parent, absolute across directories and for a
/// link (and for a lower hard link, whose copy is in the index), the data
/// still found after a remount, the first write copying the data under
/// the new name; as the kernel does.
#[test]
fn renamed_and_linked_metadata_copies_match_the_kernel() {
    let desc = stack(
        vec![Layer::new()
            .file("a", "adata")
            .file("b", "bdata")
            .file("c", "cdata")
            .file("e", "edata")
            .file("h1", "hdata")
            .hard_link("h2", "h1")
            .dir("D")],
        Layer::new(),
    );
    let ops = |m: &Path| -> Vec<(&'static str, Result<(), i32>)> {
        let p = |r: &str| m.join(r);
        vec![
            ("chmod a", sys::chmod(&p("a"), 0o600)),
            ("a -> a2", sys::rename(&p("a"), &p("a2"))),
            ("a2 -> D/a3", sys::rename(&p("a2"), &p("D/a3"))),
            ("b -> b2", sys::rename(&p("b"), &p("b2"))),
            ("c -> D/c2", sys::rename(&p("c"), &p("D/c2"))),
            ("link e e2", sys::link(&p("e"), &p("e2"))),
            ("h1 -> h3", sys::rename(&p("h1"), &p("h3"))),
            ("append b2", append(&p("b2"), b"!")),
        ]
    };
    let names = ["D/a3", "b2", "D/c2", "e", "e2", "h3", "h2"];
    let view = |m: &Path| -> Vec<(String, i64, i64, Vec<u8>)> {
        names
            .iter()
            .map(|n| {
                let st = assert_ok(sys::lstat(&m.join(n)), n);
                let data = assert_ok(sys::read_all(&m.join(n)), n);
                (n.to_string(), st.st_size, st.st_nlink as i64, data)
            })
            .collect()
    };
    let records = |u: &Path| -> Vec<String> {
        let mut out = Vec::new();
        for n in names {
            for x in sys::llistxattr(&u.join(n)).unwrap_or_default() {
                if x.ends_with("overlay.metacopy") || x.ends_with("overlay.redirect") {
                    let v = sys::lgetxattr(&u.join(n), &x).unwrap_or_default();
                    let short = x.rsplit('.').next().unwrap_or_default().to_string();
                    out.push(format!("{n}: {short}={}", String::from_utf8_lossy(&v)));
                }
            }
        }
        out
    };
    let want_records = [
        "D/a3: metacopy=",
        "D/a3: redirect=/a",
        "b2: redirect=b",
        "D/c2: metacopy=",
        "D/c2: redirect=/c",
        "e: metacopy=",
        "e: redirect=/e",
        "e2: metacopy=",
        "e2: redirect=/e",
        "h3: metacopy=",
        "h3: redirect=/h1",
    ];
    let want_view = vec![
        ("D/a3".to_string(), 5, 1, b"adata".to_vec()),
        ("b2".to_string(), 6, 1, b"bdata!".to_vec()),
        ("D/c2".to_string(), 5, 1, b"cdata".to_vec()),
        ("e".to_string(), 5, 2, b"edata".to_vec()),
        ("e2".to_string(), 5, 2, b"edata".to_vec()),
        ("h3".to_string(), 5, 2, b"hdata".to_vec()),
        ("h2".to_string(), 5, 2, b"hdata".to_vec()),
    ];
    if is_rootless() {
        let s = desc.build(Markers::AsWritten);
        let sm = s.mount_strata_with("metacopy=on");
        let got = ops(&s.mnt);
        assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
        assert_eq!(view(&s.mnt), want_view);
        drop(sm);
        let mut recs = records(s.upper());
        // Rootless stacks have no index: the lower hard link is copied
        // whole.
        recs.retain(|r| !r.starts_with("h3"));
        let mut want: Vec<String> = want_records.iter().map(|r| r.to_string()).collect();
        want.retain(|r| !r.starts_with("h3"));
        recs.sort();
        want.sort();
        assert_eq!(recs, want);
        let sm = s.mount_strata_with("metacopy=on");
        assert_eq!(view(&s.mnt), want_view, "after a remount");
        drop(sm);
        return;
    }
    let p = Pair::with_options(&desc, "metacopy=on");
    let (rs, rk) = p.both(ops);
    assert_eq!(rs, rk, "results: stratafs (left), kernel (right)");
    p.assert_same_view();
    assert_eq!(p.same("view", view), want_view);
    let Pair { sm, km, s, k } = p;
    drop((sm, km));
    let (mut rs, mut rk) = (records(s.upper()), records(k.upper()));
    rs.sort();
    rk.sort();
    assert_eq!(rs, rk, "records: stratafs (left), kernel (right)");
    let mut want: Vec<String> = want_records.iter().map(|r| r.to_string()).collect();
    want.sort();
    assert_eq!(rs, want);
    let sm = s.mount_strata_with("metacopy=on");
    assert_eq!(view(&s.mnt), want_view, "stratafs after a remount");
    drop(sm);
    let sk = s.mount_kernel_with("metacopy=on");
    assert_eq!(view(&s.mnt), want_view, "the kernel on stratafs' upper");
    drop(sk);
}

/// Metadata copy-ups and data copy-ups of metadata copies while the daemon
/// is killed with SIGKILL at a random moment: after a remount every file
/// shows its lower data or its whole new data (never a partial copy or
/// the sparse upper), with its old or new mode.
#[test]
fn sigkill_during_metadata_and_data_copy_ups_shows_the_old_or_the_new_state() {
    const N: usize = 12;
    let body = |i: usize| format!("{i:02}").repeat(300_000);
    let mut lower = Layer::new();
    for i in 0..N {
        lower = lower.file(&format!("f{i}"), body(i));
    }
    let s = stack(vec![lower], Layer::new()).build(Markers::AsWritten);
    let mut appended = [0usize; N];
    let mut rng = Rng::new(env_u64("STRATAFS_METACOPY_CRASH_SEED", 0x4d43_5059));
    for round in 0..6 {
        let m = s.mount_strata_with("metacopy=on");
        let killer = m.sigkill_after(std::time::Duration::from_millis(1 + rng.below(40) as u64));
        let mut under_way = None;
        for n in 0.. {
            let i = rng.below(N);
            let f = s.m(&format!("f{i}"));
            if sys::chmod(&f, 0o600 + (n % 2) as u32 * 0o40).is_err() {
                break;
            }
            under_way = Some(i);
            if append(&f, b"!").is_err() {
                break;
            }
            appended[i] += 1;
            under_way = None;
        }
        let _ = killer.join();
        drop(m);
        let m = s.mount_strata_with("metacopy=on");
        for (i, done) in appended.iter_mut().enumerate() {
            let got = assert_ok(sys::read_all(&s.m(&format!("f{i}"))), "read");
            let want = |k: usize| {
                let mut v = body(i).into_bytes();
                v.extend(std::iter::repeat_n(b'!', k));
                v
            };
            if got == want(*done) {
                continue;
            }
            assert!(
                under_way == Some(i) && got == want(*done + 1),
                "round {round}: f{i} ({} bytes) is neither state",
                got.len()
            );
            *done += 1;
        }
        drop(m);
    }
}

/// File contents for an assertion message: short ones as they are, long
/// ones by size and hash.
fn short(data: Vec<u8>) -> Vec<u8> {
    use std::hash::{Hash, Hasher};
    if data.len() <= 64 {
        return data;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    format!("<{} bytes, hash {:016x}>", data.len(), h.finish()).into_bytes()
}

/// The files `names` below `m` as stat(2) and read(2) show them, with the
/// link count in place of the mtime (long contents by size and hash).
fn with_nlink(m: &Path, names: &[&str]) -> Vec<Shown> {
    names
        .iter()
        .map(|n| {
            let st = assert_ok(sys::lstat(&m.join(n)), n);
            let data = short(assert_ok(sys::read_all(&m.join(n)), n));
            (
                n.to_string(),
                st.st_size,
                st.st_blocks,
                st.st_mode,
                st.st_uid,
                st.st_nlink as i64,
                data,
            )
        })
        .collect()
}

/// An upper the kernel left with metadata copies (a chown, renames),
/// used as the top lower layer of a new stack: reads come from the data
/// files below, `st_blocks` is theirs, and changes copy the metadata or
/// the data (from the data file) up, as the kernel mounted the same way
/// does. A metadata copy in the bottom layer, with no data below, is EIO on
/// both.
#[test]
fn metadata_copies_in_a_lower_layer_show_their_data_as_on_the_kernel() {
    if is_rootless() {
        // The kernel refuses metacopy=on rootless: stratafs alone, on a
        // lower metadata copy (its own namespace's marker) over data.
        let s = stack(
            vec![
                Layer::new()
                    .file("m", "\0\0\0\0\0")
                    .xattr(metacopy_key(), b""),
                Layer::new().file("m", "mdata"),
            ],
            Layer::new(),
        )
        .build(Markers::AsWritten);
        shows_data_then_copies_it_up(&s, "m", "mdata");
        return;
    }
    let k = lowers().build(Markers::Kernel);
    let km = k.mount_kernel_with("metacopy=on");
    let m = &k.mnt;
    assert_ok(sys::lchown(&m.join("f"), 1000, 1000), "chown");
    assert_ok(sys::chmod(&m.join("t"), 0o600), "chmod");
    assert_ok(sys::chmod(&m.join("o"), 0o600), "chmod");
    assert_ok(sys::rename(&m.join("g"), &m.join("g2")), "same-dir rename");
    assert_ok(
        sys::rename(&m.join("h"), &m.join("d/h3")),
        "cross-dir rename",
    );
    assert_ok(sys::chmod(&m.join("big"), 0o600), "chmod");
    drop(km);
    assert_eq!(
        sys::lgetxattr(&k.u("t"), "trusted.overlay.metacopy"),
        Ok(Vec::new()),
        "the kernel left a metadata copy"
    );
    // The kernel's upper is the top lower layer now.
    let mut lowers = vec![k.upper().to_path_buf()];
    lowers.extend(k.lowers().iter().cloned());
    let dirs = tempdir();
    let d = |n: &str| {
        let p = dirs.path().join(n);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        p
    };
    let (sm_dir, km_dir) = (d("sm"), d("km"));
    // Both mounted with metacopy=on on `lowers`, each with a fresh upper
    // and work dir named after `tag`.
    let mount_both = |lowers: &[std::path::PathBuf], tag: &str| {
        let (su, sw) = (d(&format!("su{tag}")), d(&format!("sw{tag}")));
        let (ku, kw) = (d(&format!("ku{tag}")), d(&format!("kw{tag}")));
        let sm = try_mount_stratafs(
            &format!("{},metacopy=on", overlay_opts(lowers, Some(&su), Some(&sw))),
            &sm_dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let km = mount_kernel_with(
            lowers,
            Some(&ku),
            Some(&kw),
            &km_dir,
            "redirect_dir=on,metacopy=on",
        );
        (sm, km, su, ku)
    };
    let (sm, km, su, ku) = mount_both(&lowers, "");
    let names = ["f", "g2", "d/h3", "big", "t", "o", "x", "d/deep"];
    let view = |m: &Path| with_nlink(m, &names);
    let before = view(&km_dir);
    assert_eq!(view(&sm_dir), before, "stratafs (left), kernel (right)");
    assert!(
        before.iter().any(|s| s.0 == "t" && s.6 == b"tdata"),
        "{before:?}"
    );
    // A metadata change of a lower metadata copy, data copy-ups from the
    // data file through a redirect, a truncate.
    let change = |m: &Path| {
        vec![
            sys::lchown(&m.join("f"), 1001, 1001),
            append(&m.join("g2"), b"!"),
            append(&m.join("t"), b"+"),
            sys::truncate(&m.join("big"), 7),
            sys::chmod(&m.join("d/h3"), 0o640),
        ]
    };
    assert_eq!(change(&sm_dir), change(&km_dir), "results");
    assert_eq!(view(&sm_dir), view(&km_dir), "after the changes");
    assert_eq!(read_string(&sm_dir.join("t")), "tdata+");
    assert_eq!(read_string(&sm_dir.join("big")), "bbbbbbb");
    drop((sm, km));
    let (mut s, mut k2) = (snapshot_upper(&su), snapshot_upper(&ku));
    normalise_upper(&mut s, &lowers);
    normalise_upper(&mut k2, &lowers);
    let diff = diff_snapshots(&s, &k2, &CmpOpts::with_dir_nlink());
    assert!(
        diff.is_empty(),
        "upper: stratafs (left), kernel (right):\n{}\n{}--\n{}",
        diff.join("\n"),
        fmt_snapshot(&s),
        fmt_snapshot(&k2)
    );
    // Three layers: the kernel's upper of that stack on top. Its metadata
    // copies lead through those of the layer below (one with an absolute
    // redirect, one with a relative one) to the data.
    let mut three = vec![ku.clone()];
    three.extend(lowers.iter().cloned());
    let (sm, km, _, _) = mount_both(&three, "3");
    let shown = view(&km_dir);
    assert_eq!(
        view(&sm_dir),
        shown,
        "three layers: stratafs (left), kernel (right)"
    );
    assert!(
        shown.iter().any(|s| s.0 == "d/h3" && s.6 == b"hdata"),
        "{shown:?}"
    );
    assert_eq!(read_string(&sm_dir.join("f")), "lowerdata");
    assert_ok(append(&sm_dir.join("d/h3"), b"!"), "append");
    assert_eq!(read_string(&sm_dir.join("d/h3")), "hdata!");
    drop((sm, km));
    // A metadata copy with no data below it: EIO on both.
    let bottom = d("bottom");
    std::fs::write(bottom.join("m"), b"").unwrap_or_else(|e| panic!("{e}"));
    assert_ok(sys::truncate(&bottom.join("m"), 5), "truncate");
    assert_ok(
        sys::lsetxattr(&bottom.join("m"), "trusted.overlay.metacopy", b"", 0),
        "marker",
    );
    let (sm, km, _, _) = mount_both(&[bottom], "2");
    assert_errno(sys::lstat(&sm_dir.join("m")), libc::EIO, "stratafs");
    assert_errno(sys::lstat(&km_dir.join("m")), libc::EIO, "kernel");
    drop((sm, km));
}

/// A metadata copy without an origin record (the kernel writes none where
/// the lower layers give no file handles; here the record is removed from
/// one the kernel made): with metacopy=on its data is found at its name,
/// as the kernel finds it, and a write copies that data up.
#[test]
fn a_metadata_copy_without_an_origin_record_shows_its_data() {
    if is_rootless() {
        // The kernel refuses metacopy=on rootless: the same metadata copy
        // without an origin record, in this namespace's names, laid out by
        // hand.
        let s = stack(
            vec![Layer::new().file("f", "lowerdata")],
            Layer::new()
                .file("f", "\0".repeat(9))
                .xattr(metacopy_key(), b""),
        )
        .build(Markers::AsWritten);
        shows_data_then_copies_it_up(&s, "f", "lowerdata");
        return;
    }
    let k = lowers().build(Markers::Kernel);
    let km = k.mount_kernel_with("metacopy=on");
    assert_ok(sys::lchown(&k.mnt.join("f"), 1000, 1000), "chown");
    assert_ok(sys::chmod(&k.mnt.join("big"), 0o600), "chmod");
    drop(km);
    for n in ["f", "big"] {
        assert_ok(
            sys::lremovexattr(&k.u(n), "trusted.overlay.origin"),
            "remove the origin record",
        );
    }
    let names = ["f", "big"];
    let km = k.mount_kernel_with("metacopy=on");
    let want = with_nlink(&k.mnt, &names);
    drop(km);
    assert_eq!(read_string(&k.l(0, "f")), "lowerdata");
    assert!(
        want.iter().any(|s| s.0 == "f" && s.6 == b"lowerdata"),
        "{want:?}"
    );
    let sm = try_mount_stratafs(&format!("{},metacopy=on", k.overlay_opts()), &k.mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        with_nlink(&k.mnt, &names),
        want,
        "stratafs (left), kernel (right)"
    );
    assert_ok(append(&k.mnt.join("f"), b"!"), "append");
    assert_eq!(read_string(&k.mnt.join("f")), "lowerdata!");
    drop(sm);
    assert_eq!(read_string(&k.u("f")), "lowerdata!");
    assert_errno(
        sys::lgetxattr(&k.u("f"), "trusted.overlay.metacopy"),
        libc::ENODATA,
        "marker after the data copy-up",
    );
}

/// Ask for an xattr of every file (the daemon then knows which have
/// none), then change them: metadata copies of `plain` and `tagged`,
/// complete copies of `plainw` and `taggedw`.
fn ask_then_change(m: &Path) -> Vec<(&'static str, Result<(), i32>)> {
    let p = |r: &str| m.join(r);
    for f in ["plain", "tagged", "plainw", "taggedw"] {
        let _ = sys::lgetxattr(&p(f), "security.capability");
    }
    vec![
        ("chmod plain", sys::chmod(&p("plain"), 0o600)),
        ("chmod tagged", sys::chmod(&p("tagged"), 0o600)),
        ("append plainw", append(&p("plainw"), b"+")),
        ("append taggedw", append(&p("taggedw"), b"+")),
    ]
}

/// The xattrs clients set, of `name` in the upper layer.
fn upper_user_xattrs(upper: &Path, name: &str) -> Vec<(String, Vec<u8>)> {
    let p = upper.join(name);
    sys::llistxattr(&p)
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x.starts_with("user.") && !is_private_xattr(x))
        .map(|x| {
            let v = sys::lgetxattr(&p, &x).unwrap_or_default();
            (x, v)
        })
        .collect()
}

/// A copy-up skips listing the xattrs of a lower file known to have none
/// that clients see: the copies still carry exactly the lower files'
/// xattrs, as the kernel's do.
#[test]
fn copy_ups_of_files_whose_xattrs_were_asked_for_carry_them() {
    let spec = stack(
        vec![Layer::new()
            .file("plain", "p")
            .file("tagged", "t")
            .xattr("user.tag", "kept")
            .file("plainw", "pw")
            .file("taggedw", "tw")
            .xattr("user.tag", "kept too")],
        Layer::new(),
    );
    let expect = |upper: &Path| {
        assert_eq!(upper_user_xattrs(upper, "plain"), []);
        assert_eq!(upper_user_xattrs(upper, "plainw"), []);
        assert_eq!(
            upper_user_xattrs(upper, "tagged"),
            [("user.tag".to_string(), b"kept".to_vec())]
        );
        assert_eq!(
            upper_user_xattrs(upper, "taggedw"),
            [("user.tag".to_string(), b"kept too".to_vec())]
        );
    };
    if is_rootless() {
        let s = spec.build(Markers::AsWritten);
        let sm = s.mount_strata_with("metacopy=on");
        let got = ask_then_change(&s.mnt);
        assert!(got.iter().all(|(_, r)| r.is_ok()), "{got:?}");
        drop(sm);
        expect(s.upper());
        return;
    }
    let p = Pair::with_options(&spec, "metacopy=on");
    let s_res = ask_then_change(&p.s.mnt);
    let k_res = ask_then_change(&p.k.mnt);
    assert_eq!(s_res, k_res, "results: stratafs (left), kernel (right)");
    p.assert_same_view();
    p.assert_same_upper();
    expect(p.s.upper());
}
