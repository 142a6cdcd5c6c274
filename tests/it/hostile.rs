//! Hostile and malformed layer contents: symlinks that point out of the
//! stack, directories replaced by symlinks, extreme and non-UTF-8 names,
//! `.wh.` names that are real files, markers with values stratafs never
//! writes, and leftovers in the work directory.
//!
//! Paths through a symlink in the *mounted* view are resolved by the
//! caller's kernel (VFS), relative to the caller's root, exactly as on the
//! kernel overlay: a client that writes `MNT/link/x` where `link -> /dir`
//! writes `/dir/x` itself. What these tests pin down is the daemon's side:
//! stratafs reaches every layer object by name relative to a directory
//! descriptor, never resolving a path through a symlink stored in a layer,
//! so operations on a link change only the link's layer or upper entry, a
//! copy-up of a link makes a link, and nothing outside the layer, upper and
//! work roots changes unless the caller's own path walks there. Every test
//! mounts stratafs and, where the kernel overlay defines the behaviour,
//! checks that it agrees on the same stack.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTAINERS_OVERRIDE: &str = "user.containers.override_stat";

/// `base/name` for a name given as raw bytes.
fn jb(base: &Path, name: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(name))
}

/// Entry names of a directory as raw bytes.
fn names(dir: &Path) -> Result<BTreeSet<Vec<u8>>, i32> {
    let mut out = BTreeSet::new();
    for e in io_errno(std::fs::read_dir(dir))? {
        out.insert(io_errno(e)?.file_name().as_bytes().to_vec());
    }
    Ok(out)
}

fn name_set(items: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|n| n.to_vec()).collect()
}

/// Every detail of a tree that a write, chown, chmod, utimes, link, rename
/// or xattr change alters (ctime included), symlinks not followed.
fn fingerprint(root: &Path) -> Vec<String> {
    fn walk(p: &Path, rel: &str, out: &mut Vec<String>) {
        let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        let kind = kind_of(&md);
        let extra = match kind {
            Kind::File => format!("hash={:016x}", fnv1a(&assert_ok(sys::read_all(p), "read"))),
            Kind::Symlink => format!("-> {:?}", assert_ok(sys::readlink(p), "readlink")),
            _ => String::new(),
        };
        out.push(format!(
            "{rel:?} {kind:?} {:o} {}:{} size={} nlink={} mtime={}.{} ctime={}.{} {extra}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.nlink(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        ));
        if kind == Kind::Dir {
            let mut children: Vec<_> = std::fs::read_dir(p)
                .unwrap_or_else(|e| panic!("readdir {p:?}: {e}"))
                .map(|e| e.expect("readdir entry").file_name())
                .collect();
            children.sort();
            for c in children {
                walk(&p.join(&c), &format!("{rel}/{}", c.to_string_lossy()), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

/// A tree beside (not inside) any layer, with fixed times: a file
/// `sentinel`, a directory `odir` holding `inner`, and `extra_files`.
fn make_outside(dir: &Path, extra_files: &[&str]) {
    assert_ok(sys::mkdir(dir, 0o755), "mkdir outside");
    assert_ok(
        sys::write_file(&dir.join("sentinel"), b"sentinel data\n", 0o644),
        "write sentinel",
    );
    assert_ok(sys::mkdir(&dir.join("odir"), 0o755), "mkdir odir");
    assert_ok(
        sys::write_file(&dir.join("odir/inner"), b"inner data\n", 0o644),
        "write odir/inner",
    );
    for f in extra_files {
        assert_ok(
            sys::write_file(&dir.join(f), format!("outside {f}\n").as_bytes(), 0o644),
            "write outside file",
        );
    }
    let t = (1_111_111_111, 0);
    let mut all: Vec<PathBuf> = extra_files.iter().map(|f| dir.join(f)).collect();
    all.extend([
        dir.join("sentinel"),
        dir.join("odir/inner"),
        dir.join("odir"),
    ]);
    all.push(dir.to_path_buf());
    for p in all {
        assert_ok(sys::lutimes(&p, t, t), "utimes outside");
    }
}

/// Fails when the stratafs daemon is no longer running.
#[track_caller]
fn assert_alive(m: &mut Mount, what: &str) {
    if let Some(st) = m.wait_daemon(Duration::ZERO) {
        panic!(
            "{what}: the stratafs daemon exited ({st}); stderr:\n{}",
            m.daemon_stderr()
        );
    }
}

/// An operation on a mount.
type Op = Box<dyn Fn(&Path) -> Result<(), i32>>;

/// One operation run on both mounts of a [`Pair`], with the result each
/// must give.
struct Attempt {
    what: &'static str,
    op: Op,
    strata: Result<(), i32>,
    kernel: Result<(), i32>,
}

fn attempt(
    what: &'static str,
    want: Result<(), i32>,
    op: impl Fn(&Path) -> Result<(), i32> + 'static,
) -> Attempt {
    Attempt {
        what,
        op: Box::new(op),
        strata: want,
        kernel: want,
    }
}

/// Runs every attempt on stratafs and on the kernel overlay, in order.
fn run_attempts(p: &Pair, attempts: &[Attempt]) {
    for a in attempts {
        let (s, k) = p.both(|m| (a.op)(m));
        assert_eq!(
            k,
            a.kernel,
            "{}: kernel overlay: got {:?}",
            a.what,
            k.map_err(errno_name)
        );
        assert_eq!(
            s,
            a.strata,
            "{}: stratafs: got {:?}",
            a.what,
            s.map_err(errno_name)
        );
    }
}

fn file_kind(p: &Path) -> Result<u32, i32> {
    sys::lstat(p).map(|s| s.st_mode & libc::S_IFMT)
}

/// `../../../...` up to 4095 bytes: the longest target a symlink can hold.
fn longest_target() -> String {
    let mut t = "../".repeat(1364);
    t.push_str("etc");
    assert_eq!(t.len(), 4095);
    t
}

// ---------------------------------------------------------------------------
// Escape attempts
// ---------------------------------------------------------------------------

#[test]
fn symlinks_out_of_the_stack_stay_links_and_are_never_followed_by_the_daemon() {
    // A sentinel outside every stack (absolute links) and one beside each
    // stack's layers (relative links `../outside/...` from a layer root).
    let ext = tempdir();
    let out = std::fs::canonicalize(ext.path())
        .expect("canonicalize")
        .join("outside");
    make_outside(&out, &[]);
    let sent = out.join("sentinel").to_str().expect("utf-8").to_string();
    let sentdir = out.join("odir").to_str().expect("utf-8").to_string();
    let long = longest_target();
    let links: Vec<(&str, String)> = vec![
        ("to_root", "/".into()),
        ("up", "..".into()),
        ("upup", "../../..".into()),
        ("abs", "/etc".into()),
        ("sent", sent.clone()),
        ("sentdir", sentdir.clone()),
        ("rel_sent", "../outside/sentinel".into()),
        ("rel_dir", "../outside/odir".into()),
        ("long", long.clone()),
    ];
    let mut lower0 = Layer::new();
    for (name, target) in &links {
        lower0 = lower0.symlink(name, target);
    }
    // What the links hide in the layer below.
    let lower1 = Layer::new()
        .file("sentdir/below", "hidden")
        .file("up", "hidden");
    let spec = stack(vec![lower0, lower1], Layer::new());
    let mut p = Pair::with_prepare(&spec, |st| make_outside(&st.root().join("outside"), &[]));
    let rel_outsides = [p.s.root().join("outside"), p.k.root().join("outside")];
    let before_ext = fingerprint(&out);
    let before_rel: Vec<_> = rel_outsides.iter().map(|d| fingerprint(d)).collect();
    let before_lowers: Vec<_> = p.s.lowers().iter().map(|l| fingerprint(l)).collect();

    // The links read back unchanged and are links.
    for (name, target) in &links {
        let got = p.same(&format!("readlink {name}"), |m| {
            sys::readlink(&m.join(name))
        });
        assert_eq!(got, Ok(target.as_bytes().to_vec()), "readlink {name}");
        let st = p.same(&format!("lstat {name}"), |m| {
            sys::lstat(&m.join(name)).map(|s| (s.st_mode & libc::S_IFMT, s.st_size))
        });
        assert_eq!(st, Ok((libc::S_IFLNK, target.len() as i64)), "lstat {name}");
    }

    // Operations on the links themselves.
    let o = other_id();
    let t = (1_000_000, 0);
    let mt = (1_000_001, 0);
    let mut attempts = vec![
        attempt("lchown sent", Ok(()), move |m| {
            sys::lchown(&m.join("sent"), o, o)
        }),
        attempt("lutimes sentdir", Ok(()), move |m| {
            sys::lutimes(&m.join("sentdir"), t, mt)
        }),
        attempt("lchown rel_sent", Ok(()), move |m| {
            sys::lchown(&m.join("rel_sent"), o, o)
        }),
        attempt("lutimes rel_dir", Ok(()), move |m| {
            sys::lutimes(&m.join("rel_dir"), t, mt)
        }),
        // user.* xattrs are not permitted on symlinks; following the link
        // would have reached a directory that takes them.
        attempt("lsetxattr user.* on rel_dir", Err(libc::EPERM), |m| {
            sys::lsetxattr(&m.join("rel_dir"), "user.hostile", b"v", 0)
        }),
        attempt("rename up", Ok(()), |m| {
            sys::rename(&m.join("up"), &m.join("up_moved"))
        }),
        attempt("rename abs", Ok(()), |m| {
            sys::rename(&m.join("abs"), &m.join("abs_moved"))
        }),
        attempt("rename long", Ok(()), |m| {
            sys::rename(&m.join("long"), &m.join("long_moved"))
        }),
        attempt("unlink upup", Ok(()), |m| sys::unlink(&m.join("upup"))),
        attempt("link to_root", Ok(()), |m| {
            sys::link(&m.join("to_root"), &m.join("to_root_link"))
        }),
        attempt("rename the copied-up sentdir", Ok(()), |m| {
            sys::rename(&m.join("sentdir"), &m.join("sentdir_moved"))
        }),
        attempt("unlink the copied-up rel_dir", Ok(()), |m| {
            sys::unlink(&m.join("rel_dir"))
        }),
    ];
    if !is_rootless() {
        attempts.push(attempt("lsetxattr trusted.* on sent", Ok(()), |m| {
            sys::lsetxattr(&m.join("sent"), "trusted.hostile", b"v", 0)
        }));
    }
    run_attempts(&p, &attempts);

    // The upper holds links (with the same targets) and whiteouts only:
    // no copy-up copied what a link points to.
    let up = snapshot_upper(p.s.upper());
    let keys: BTreeSet<&str> = up.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "",
        "abs",
        "abs_moved",
        "long",
        "long_moved",
        "rel_dir",
        "rel_sent",
        "sent",
        "sentdir",
        "sentdir_moved",
        "to_root",
        "to_root_link",
        "up",
        "up_moved",
        "upup",
    ]
    .into();
    assert_eq!(keys, want, "upper:\n{}", fmt_snapshot(&up));
    for gone in ["abs", "long", "rel_dir", "sentdir", "up", "upup"] {
        assert_eq!(up[gone], Entry::Whiteout, "upper {gone}");
    }
    let link = |k: &str, target: &str| {
        let m = meta_of(&up, k);
        assert_eq!(m.kind, Kind::Symlink, "upper {k}");
        assert_eq!(m.target.as_deref(), Some(target), "upper {k} target");
        m.clone()
    };
    let m = link("sent", &sent);
    assert_eq!((m.uid, m.gid), (o, o), "upper sent owner");
    if !is_rootless() {
        assert_eq!(
            m.xattrs.get("trusted.hostile").map(Vec::as_slice),
            Some(&b"v"[..])
        );
    }
    let m = link("rel_sent", "../outside/sentinel");
    assert_eq!((m.uid, m.gid), (o, o), "upper rel_sent owner");
    let m = link("sentdir_moved", &sentdir);
    assert_eq!(m.mtime, mt, "upper sentdir_moved mtime");
    link("up_moved", "..");
    link("abs_moved", "/etc");
    link("long_moved", &long);
    assert_eq!(link("to_root", "/").nlink, 2);
    assert_eq!(link("to_root_link", "/").nlink, 2);
    p.assert_same_upper();
    p.assert_same_view();

    // Nothing outside the layers changed: not the targets, not beside them.
    assert_eq!(fingerprint(&out), before_ext, "outside the stacks");
    for (d, before) in rel_outsides.iter().zip(&before_rel) {
        assert_eq!(&fingerprint(d), before, "{d:?}");
    }
    for (l, before) in p.s.lowers().iter().zip(&before_lowers) {
        assert_eq!(&fingerprint(l), before, "lower {l:?}");
    }
    p.assert_work_clean();
    assert_alive(&mut p.sm, "after the escape attempts");
}

#[test]
fn a_directory_replaced_by_a_symlink_is_neither_merged_nor_written_through() {
    // `a`: a lower0 directory over a lower1 symlink to a directory beside
    // the layers, over a lower2 directory. A non-directory below a
    // directory ends the merge, so `a` is lower0's directory alone.
    // `e`: the same with an upper directory on top.
    // `b`: a lower0 symlink over a lower1 directory: `b` is a symlink.
    let spec = stack(
        vec![
            Layer::new()
                .file("a/own", "own")
                .symlink("b", "../outside")
                .symlink("e", "../outside"),
            Layer::new()
                .symlink("a", "../outside")
                .file("b/hidden", "hidden")
                .file("e/deep", "deep"),
            Layer::new().file("a/deep", "deep"),
        ],
        Layer::new().file("e/up", "up"),
    );
    let mut p = Pair::with_prepare(&spec, |st| {
        make_outside(&st.root().join("outside"), &["inner", "outside_only"])
    });
    let outsides = [p.s.root().join("outside"), p.k.root().join("outside")];
    let before_lowers: Vec<_> = p.s.lowers().iter().map(|l| fingerprint(l)).collect();
    let before_files: Vec<Vec<_>> = outsides
        .iter()
        .map(|d| {
            ["inner", "outside_only", "sentinel", "odir"]
                .iter()
                .map(|f| fingerprint(&d.join(f)))
                .collect()
        })
        .collect();

    for (name, kind) in [
        ("a", libc::S_IFDIR),
        ("b", libc::S_IFLNK),
        ("e", libc::S_IFDIR),
    ] {
        let got = p.same(&format!("lstat {name}"), |m| file_kind(&m.join(name)));
        assert_eq!(got, Ok(kind), "lstat {name}");
    }
    assert_eq!(
        p.same("list a", |m| list_dir(&m.join("a"))),
        Ok(vec!["own".to_string()])
    );
    assert_eq!(
        p.same("list e", |m| list_dir(&m.join("e"))),
        Ok(vec!["up".to_string()])
    );
    for hidden in [
        "a/inner",
        "a/outside_only",
        "a/sentinel",
        "a/deep",
        "e/inner",
        "e/deep",
    ] {
        let got = p.same(&format!("lstat {hidden}"), |m| file_kind(&m.join(hidden)));
        assert_eq!(got, Err(libc::ENOENT), "lstat {hidden}");
    }
    assert_eq!(
        p.same("readlink b", |m| sys::readlink(&m.join("b"))),
        Ok(b"../outside".to_vec())
    );
    // Through the link the caller's own walk reaches the directory beside
    // the layers, on both.
    let beside: Vec<String> = ["inner", "odir", "outside_only", "sentinel"]
        .map(String::from)
        .into();
    assert_eq!(p.same("list b/", |m| list_dir(&m.join("b/"))), Ok(beside));

    let attempts = [
        attempt("create a/new", Ok(()), |m| {
            sys::write_file(&m.join("a/new"), b"new", 0o644)
        }),
        attempt("mkdir a/sub", Ok(()), |m| {
            sys::mkdir(&m.join("a/sub"), 0o755)
        }),
        attempt("create a/sub/f", Ok(()), |m| {
            sys::write_file(&m.join("a/sub/f"), b"f", 0o644)
        }),
        attempt("unlink a/own", Ok(()), |m| sys::unlink(&m.join("a/own"))),
        attempt("create e/new", Ok(()), |m| {
            sys::write_file(&m.join("e/new"), b"new", 0o644)
        }),
        attempt("rename e/up", Ok(()), |m| {
            sys::rename(&m.join("e/up"), &m.join("e/up_moved"))
        }),
        // The caller's path walks through the link: the caller writes
        // beside the layers, as on any filesystem.
        attempt("create b/via_link", Ok(()), |m| {
            sys::write_file(&m.join("b/via_link"), b"via", 0o644)
        }),
        attempt("unlink b", Ok(()), |m| sys::unlink(&m.join("b"))),
        attempt("mkdir b", Ok(()), |m| sys::mkdir(&m.join("b"), 0o755)),
        attempt("lstat b/hidden", Err(libc::ENOENT), |m| {
            sys::lstat(&m.join("b/hidden")).map(drop)
        }),
        attempt("mkdir a/outside_only", Ok(()), |m| {
            sys::mkdir(&m.join("a/outside_only"), 0o755)
        }),
    ];
    run_attempts(&p, &attempts);

    let up = snapshot_upper(p.s.upper());
    assert_eq!(meta_of(&up, "a").kind, Kind::Dir);
    assert!(!meta_of(&up, "a").opaque, "a copied up as a plain dir");
    assert_eq!(meta_of(&up, "a/new").kind, Kind::File);
    assert_eq!(meta_of(&up, "a/sub/f").kind, Kind::File);
    assert_eq!(meta_of(&up, "a/outside_only").kind, Kind::Dir);
    assert_eq!(up.get("a/own"), Some(&Entry::Whiteout));
    assert_eq!(meta_of(&up, "e/new").kind, Kind::File);
    assert!(meta_of(&up, "b").opaque, "b recreated as an opaque dir");
    assert!(
        !up.keys()
            .any(|k| k.contains("via_link") || k.contains("inner")),
        "upper:\n{}",
        fmt_snapshot(&up)
    );
    p.assert_same_upper();
    p.assert_same_view();

    // Beside the layers: only what the callers wrote through the link.
    for (d, before) in outsides.iter().zip(&before_files) {
        let now: Vec<_> = ["inner", "outside_only", "sentinel", "odir"]
            .iter()
            .map(|f| fingerprint(&d.join(f)))
            .collect();
        assert_eq!(&now, before, "{d:?}");
        assert_eq!(
            list_dir(d).unwrap(),
            ["inner", "odir", "outside_only", "sentinel", "via_link"],
            "{d:?}"
        );
        assert_eq!(read_string(&d.join("via_link")), "via");
    }
    for (l, before) in p.s.lowers().iter().zip(&before_lowers) {
        assert_eq!(&fingerprint(l), before, "lower {l:?}");
    }
    p.assert_work_clean();
    assert_alive(&mut p.sm, "after the operations");
}

#[test]
fn markers_in_the_upper_that_are_symlinks_are_removed_never_followed() {
    // `.wh.NAME` whiteouts and a `.wh..wh..opq` marker that are symlinks
    // to a sentinel file and directory beside the layers.
    let ext = tempdir();
    let out = std::fs::canonicalize(ext.path())
        .expect("canonicalize")
        .join("outside");
    make_outside(&out, &[]);
    let sent = out.join("sentinel");
    let odir = out.join("odir");
    let spec = stack(
        vec![Layer::new()
            .file("victim", "lower victim")
            .file("victim_dir/inner", "lower inner")
            .file("op/below", "below")],
        Layer::new()
            .symlink(".wh.victim", sent.to_str().expect("utf-8"))
            .symlink(".wh.victim_dir", odir.to_str().expect("utf-8"))
            .symlink("op/.wh..wh..opq", odir.to_str().expect("utf-8"))
            .file("op/up", "up"),
    );
    let st = spec.build(Markers::AsWritten);
    let before = fingerprint(&out);
    let before_lower = fingerprint(&st.lowers()[0]);
    let mut m = st.mount_strata();

    assert_eq!(list_dir(&st.mnt).unwrap(), ["op"]);
    assert_eq!(list_dir(&st.m("op")).unwrap(), ["up"]);
    for hidden in ["victim", "victim_dir", "op/below", ".wh.victim"] {
        assert_errno(sys::lstat(&st.m(hidden)), libc::ENOENT, hidden);
    }
    assert_ok(
        sys::write_file(&st.m("victim"), b"new victim", 0o644),
        "create victim",
    );
    assert_ok(sys::mkdir(&st.m("victim_dir"), 0o755), "mkdir victim_dir");
    assert_ok(
        sys::write_file(&st.m("op/new"), b"new", 0o644),
        "create op/new",
    );
    assert_ok(sys::unlink(&st.m("op/up")), "unlink op/up");

    assert_eq!(read_string(&st.m("victim")), "new victim");
    assert_eq!(list_dir(&st.m("victim_dir")).unwrap(), Vec::<String>::new());
    assert_eq!(list_dir(&st.m("op")).unwrap(), ["new"]);
    assert_eq!(list_dir(&st.mnt).unwrap(), ["op", "victim", "victim_dir"]);
    // The marker links were unlinked, not their targets.
    let up = names(st.upper()).unwrap();
    assert!(!up.contains(b".wh.victim".as_slice()), "upper: {up:?}");
    assert!(!up.contains(b".wh.victim_dir".as_slice()), "upper: {up:?}");
    assert_eq!(
        sys::readlink(&st.u("op/.wh..wh..opq")).unwrap(),
        odir.as_os_str().as_bytes()
    );
    assert_eq!(read_string(&st.u("victim")), "new victim");
    assert_eq!(fingerprint(&out), before, "outside the stack");
    assert_eq!(fingerprint(&st.lowers()[0]), before_lower, "lower");
    assert_work_clean(&st);
    assert_alive(&mut m, "after replacing the markers");
    let status = m.unmount();
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "daemon exit");
}

#[test]
fn a_wh_directory_in_the_upper_does_not_fail_a_create_of_the_name() {
    let spec = stack(
        vec![Layer::new().file("victim", "lower")],
        Layer::new().file(".wh.victim/keep", "keep"),
    );
    let st = spec.build(Markers::AsWritten);
    let mut m = st.mount_strata();
    assert_eq!(list_dir(&st.mnt).unwrap(), Vec::<String>::new());
    // The create succeeds; the marker that cannot be removed stays and
    // still hides only what the new file hides anyway.
    assert_ok(sys::write_file(&st.m("victim"), b"new", 0o644), "create");
    assert_eq!(read_string(&st.m("victim")), "new");
    assert_eq!(list_dir(&st.mnt).unwrap(), vec!["victim".to_string()]);
    assert_eq!(read_string(&st.u("victim")), "new");
    assert_ok(sys::unlink(&st.m("victim")), "unlink");
    assert_errno(sys::lstat(&st.m("victim")), libc::ENOENT, "after unlink");
    assert_eq!(list_dir(&st.mnt).unwrap(), Vec::<String>::new());
    assert_eq!(read_string(&st.u(".wh.victim/keep")), "keep");
    assert_alive(&mut m, "after the create");
}

#[test]
fn leftovers_in_the_work_dir_are_removed_without_following_symlinks() {
    let ext = tempdir();
    let out = std::fs::canonicalize(ext.path())
        .expect("canonicalize")
        .join("outside");
    make_outside(&out, &[]);
    let before = fingerprint(&out);
    let spec = stack(vec![Layer::new().file("f", "f")], Layer::new());

    // Leftovers that are links to the outside tree, also inside a
    // leftover directory.
    let st = spec.build(Markers::AsWritten);
    let wd = st.work().join("work");
    assert_ok(sys::mkdir(&wd, 0o700), "mkdir work/work");
    assert_ok(
        sys::symlink(out.to_str().unwrap(), &wd.join("to_dir")),
        "link",
    );
    assert_ok(
        sys::symlink(out.join("sentinel").to_str().unwrap(), &wd.join("to_file")),
        "link",
    );
    assert_ok(sys::mkdir(&wd.join("#old"), 0o755), "mkdir");
    assert_ok(
        sys::symlink(out.join("odir").to_str().unwrap(), &wd.join("#old/deep")),
        "link",
    );
    let mut m = st.mount_strata();
    assert_eq!(list_dir(&wd).unwrap(), Vec::<String>::new(), "work/work");
    assert_ok(sys::write_file(&st.m("f"), b"changed", 0o644), "write f");
    assert_eq!(read_string(&st.u("f")), "changed");
    assert_alive(&mut m, "after clearing the leftovers");
    drop(m);
    assert_eq!(fingerprint(&out), before, "outside after clearing work/");

    // `work/work` itself a link to the outside directory: refused.
    let st = spec.build(Markers::AsWritten);
    assert_ok(
        sys::symlink(out.join("odir").to_str().unwrap(), &st.work().join("work")),
        "link work/work",
    );
    match st.try_mount_strata() {
        Ok(_) => panic!("mounted with work/work a symlink to {:?}", out.join("odir")),
        Err(e) => {
            let wanted = format!("workdir {}:", st.work().join("work").display());
            assert!(e.contains(&wanted), "no {wanted:?} in: {e}");
        }
    }
    assert_eq!(fingerprint(&out), before, "outside after the refused mount");
    assert_eq!(
        sys::readlink(&st.work().join("work")).unwrap(),
        out.join("odir").as_os_str().as_bytes(),
        "work/work left as it was"
    );
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

const NON_UTF8: &[u8] = b"\xff\xfe-name";
const NON_UTF8_DIR: &[u8] = b"d\xe9j\xe0";
const NON_UTF8_LINK: &[u8] = b"\x80link";

#[test]
fn names_of_255_bytes_and_non_utf8_names_behave_as_on_the_kernel() {
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    let m255 = "m".repeat(255);
    let k255 = "k".repeat(255);
    let spec = stack(
        vec![
            Layer::new().file(&n255, "top 255").dir("plain"),
            Layer::new().file(&n255, "below 255"),
        ],
        Layer::new(),
    );
    let n255b = n255.clone();
    let mut p = Pair::with_prepare(&spec, move |st| {
        let (l0, l1) = (&st.lowers()[0], &st.lowers()[1]);
        assert_ok(sys::write_file(&jb(l0, NON_UTF8), b"non-utf8", 0o644), "w");
        assert_ok(sys::write_file(&jb(l1, NON_UTF8), b"below", 0o644), "w");
        assert_ok(sys::mkdir(&jb(l0, NON_UTF8_DIR), 0o755), "mkdir");
        let deep = jb(&jb(l0, NON_UTF8_DIR), n255b.as_bytes());
        assert_ok(sys::write_file(&deep, b"deep 255", 0o644), "w");
        io_errno(std::os::unix::fs::symlink(
            OsStr::from_bytes(NON_UTF8),
            jb(l0, NON_UTF8_LINK),
        ))
        .expect("symlink");
    });
    let before_lowers: Vec<_> = p.s.lowers().iter().map(|l| fingerprint(l)).collect();

    let root = p.same("readdir /", names);
    assert_eq!(
        root,
        Ok(name_set(&[
            n255.as_bytes(),
            b"plain",
            NON_UTF8,
            NON_UTF8_DIR,
            NON_UTF8_LINK
        ]))
    );
    let read = |rel: &[u8]| p.same("read", |m| sys::read_all(&jb(m, rel)));
    assert_eq!(read(n255.as_bytes()), Ok(b"top 255".to_vec()));
    assert_eq!(read(NON_UTF8), Ok(b"non-utf8".to_vec()));
    let deep = [NON_UTF8_DIR, b"/", n255.as_bytes()].concat();
    assert_eq!(read(&deep), Ok(b"deep 255".to_vec()));
    assert_eq!(
        p.same("readlink", |m| sys::readlink(&jb(m, NON_UTF8_LINK))),
        Ok(NON_UTF8.to_vec())
    );
    assert_eq!(
        p.same("lstat 256", |m| file_kind(&m.join(&n256))),
        Err(libc::ENAMETOOLONG)
    );

    let (m255c, n256c, k255c, m255d) = (m255.clone(), n256.clone(), k255.clone(), m255.clone());
    let n255c = n255.clone();
    let deep_c = deep.clone();
    let deep_d = deep.clone();
    let attempts = [
        attempt("create a 255-byte name", Ok(()), move |m| {
            sys::write_file(&m.join(&m255c), b"m", 0o644)
        }),
        attempt(
            "create a 256-byte name",
            Err(libc::ENAMETOOLONG),
            move |m| sys::write_file(&m.join(&n256c), b"x", 0o644),
        ),
        attempt("rename 255 to 255", Ok(()), move |m| {
            sys::rename(&m.join(&m255d), &m.join(&k255c))
        }),
        attempt("unlink a lower 255-byte name", Ok(()), move |m| {
            sys::unlink(&m.join(&n255c))
        }),
        attempt("rename a non-UTF-8 name", Ok(()), |m| {
            sys::rename(&jb(m, NON_UTF8), &jb(m, b"\xfe\xff-renamed"))
        }),
        attempt("mkdir a non-UTF-8 name", Ok(()), |m| {
            sys::mkdir(&jb(m, b"\xc3\x28-dir"), 0o755)
        }),
        attempt("write below a non-UTF-8 dir", Ok(()), move |m| {
            sys::write_file(&jb(m, &deep_c), b"changed", 0o644)
        }),
        attempt("link to a non-UTF-8 name", Ok(()), move |m| {
            sys::link(&jb(m, &deep_d), &jb(m, b"plain/\xff-link"))
        }),
        attempt("symlink with a non-UTF-8 target", Ok(()), |m| {
            io_errno(std::os::unix::fs::symlink(
                OsStr::from_bytes(b"\xfa\xfb-target"),
                jb(m, b"sym\xfc"),
            ))
        }),
    ];
    run_attempts(&p, &attempts);

    let root = p.same("readdir / after", names);
    assert_eq!(
        root,
        Ok(name_set(&[
            k255.as_bytes(),
            b"plain",
            b"\xfe\xff-renamed",
            b"\xc3\x28-dir",
            b"sym\xfc",
            NON_UTF8_DIR,
            NON_UTF8_LINK
        ]))
    );
    assert_eq!(read(&deep), Ok(b"changed".to_vec()));
    assert_eq!(read(b"plain/\xff-link"), Ok(b"changed".to_vec()));
    assert_eq!(read(b"\xfe\xff-renamed"), Ok(b"non-utf8".to_vec()));
    // The names reach the upper byte for byte.
    let up = names(p.s.upper()).unwrap();
    for n in [
        &b"\xfe\xff-renamed"[..],
        b"\xc3\x28-dir",
        b"sym\xfc",
        NON_UTF8_DIR,
    ] {
        assert!(
            up.contains(n),
            "upper lacks {:?}: {up:?}",
            OsStr::from_bytes(n)
        );
    }
    assert_eq!(
        sys::readlink(&jb(p.s.upper(), b"sym\xfc")).unwrap(),
        b"\xfa\xfb-target"
    );
    assert_same_tree(
        &byte_tree(&p.s.mnt, false),
        &byte_tree(&p.k.mnt, false),
        "view",
    );
    assert_same_tree(
        &byte_tree(p.s.upper(), true),
        &byte_tree(p.k.upper(), true),
        "upper",
    );
    for (l, before) in p.s.lowers().iter().zip(&before_lowers) {
        assert_eq!(&fingerprint(l), before, "lower {l:?}");
    }
    assert_alive(&mut p.sm, "after the name operations");
}

/// A tree keyed by raw path bytes (the harness's snapshots join lossy
/// names, which cannot reach into a non-UTF-8 directory): kind, mode,
/// owner, link count, content hash or target of every entry. With `upper`,
/// whiteouts of either form show as `WHITEOUT` at the name they hide.
fn byte_tree(root: &Path, upper: bool) -> BTreeMap<Vec<u8>, String> {
    fn walk(p: &Path, rel: &[u8], upper: bool, out: &mut BTreeMap<Vec<u8>, String>) {
        let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        let kind = kind_of(&md);
        if upper && kind == Kind::CharDev && md.rdev() == 0 {
            out.insert(rel.to_vec(), "WHITEOUT".into());
            return;
        }
        let what = match kind {
            Kind::File => format!("hash={:016x}", fnv1a(&assert_ok(sys::read_all(p), "read"))),
            Kind::Symlink => format!("-> {:?}", assert_ok(sys::readlink(p), "readlink")),
            _ => String::new(),
        };
        let nlink = if kind == Kind::Dir { 0 } else { md.nlink() };
        out.insert(
            rel.to_vec(),
            format!(
                "{kind:?} {:o} {}:{} nlink={nlink} {what}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid()
            ),
        );
        if kind != Kind::Dir {
            return;
        }
        for name in names(p).unwrap() {
            let child = |n: &[u8]| [rel, if rel.is_empty() { b"" } else { b"/" }, n].concat();
            match name.strip_prefix(b".wh.") {
                Some(hidden) if upper => {
                    out.insert(child(hidden), "WHITEOUT".into());
                }
                _ => walk(&jb(p, &name), &child(&name), upper, out),
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, b"", upper, &mut out);
    out
}

#[track_caller]
fn assert_same_tree(s: &BTreeMap<Vec<u8>, String>, k: &BTreeMap<Vec<u8>, String>, what: &str) {
    let fmt = |t: &BTreeMap<Vec<u8>, String>| -> String {
        t.iter()
            .map(|(p, v)| format!("  {:?}: {v}\n", OsStr::from_bytes(p)))
            .collect()
    };
    assert!(
        s == k,
        "{what}: stratafs differs from the kernel overlay\n--- stratafs ---\n{}--- kernel ---\n{}",
        fmt(s),
        fmt(k)
    );
}

/// Whether `name` in `dir` is listed, found by lstat and opened: the three
/// must agree.
#[track_caller]
fn visible(dir: &Path, name: &str) -> bool {
    let listed = names(dir).unwrap().contains(name.as_bytes());
    let found = sys::lstat(&dir.join(name)).is_ok();
    let opened = sys::open(&dir.join(name), libc::O_RDONLY | libc::O_NONBLOCK, 0).is_ok();
    assert!(
        listed == found && found == opened,
        "{name:?} in {dir:?}: listed {listed}, lstat {found}, open {opened}"
    );
    listed
}

#[test]
fn wh_names_that_are_real_files_are_markers_unlike_on_the_kernel() {
    // The kernel overlay gives `.wh.` no meaning; stratafs reads it as the
    // AUFS whiteout and opaque format (docs/COMPAT.md, difference 1).
    let spec = stack(
        vec![
            Layer::new()
                .file(".wh.lonely", "")
                .file(".wh.withdata", "data in a marker")
                .file("same", "lower0 same")
                .file(".wh.same", "")
                .file(".wh.adir/f", "a .wh. directory")
                .file("sub/.wh..wh..opq", ""),
            Layer::new()
                .file("lonely", "lonely")
                .file("same", "lower1 same")
                .file("adir/f", "f")
                .file("sub/x", "x"),
        ],
        Layer::new().file(".wh.up_marker", "upper marker"),
    );
    let mut p = Pair::new(&spec);
    let before_lowers: Vec<_> = p.s.lowers().iter().map(|l| fingerprint(l)).collect();
    let before_marker = fingerprint(&p.s.u(".wh.up_marker"));

    let (s, k) = p.both(|m| list_dir(m).unwrap());
    assert_eq!(s, ["same", "sub"]);
    assert_eq!(
        k,
        [
            ".wh.adir",
            ".wh.lonely",
            ".wh.same",
            ".wh.up_marker",
            ".wh.withdata",
            "adir",
            "lonely",
            "same",
            "sub"
        ]
    );
    for name in &k {
        let shown = visible(&p.s.mnt, name);
        assert_eq!(shown, s.contains(name), "stratafs {name}");
        assert!(visible(&p.k.mnt, name), "kernel {name}");
    }
    // A real name beside its `.wh.` file in the same layer is shown, from
    // that layer, as on the kernel.
    assert_eq!(
        p.same("read same", |m| sys::read_all(&m.join("same"))),
        Ok(b"lower0 same".to_vec())
    );
    let (s, k) = p.both(|m| list_dir(&m.join("sub")).unwrap());
    assert_eq!(
        s,
        Vec::<String>::new(),
        "stratafs: .wh..wh..opq makes sub opaque"
    );
    assert_eq!(k, [".wh..wh..opq", "x"], "kernel: sub merged");
    assert!(!visible(&p.s.m("sub"), "x"));
    assert!(!visible(&p.s.m("sub"), ".wh..wh..opq"));

    // Creating or reaching `.wh.` names: refused by stratafs, plain files
    // on the kernel.
    let marker = |what, strata, op: fn(&Path) -> Result<(), i32>| Attempt {
        what,
        op: Box::new(op),
        strata: Err(strata),
        kernel: Ok(()),
    };
    let attempts = [
        marker("create .wh.new", libc::EINVAL, |m| {
            sys::write_file(&m.join(".wh.new"), b"x", 0o644)
        }),
        marker("mkdir .wh.newdir", libc::EINVAL, |m| {
            sys::mkdir(&m.join(".wh.newdir"), 0o755)
        }),
        marker("symlink .wh.sl", libc::EINVAL, |m| {
            sys::symlink("same", &m.join(".wh.sl"))
        }),
        marker("link to .wh.link", libc::EINVAL, |m| {
            sys::link(&m.join("same"), &m.join(".wh.link"))
        }),
        marker("rename to .wh.renamed", libc::EINVAL, |m| {
            sys::rename(&m.join("same"), &m.join(".wh.renamed"))
        }),
        marker("mkfifo .wh..wh..opq in sub", libc::EINVAL, |m| {
            let _ = sys::unlink(&m.join("sub/.wh..wh..opq"));
            sys::mkfifo(&m.join("sub/.wh..wh..opq"), 0o644)
        }),
        marker("unlink .wh.lonely", libc::ENOENT, |m| {
            sys::unlink(&m.join(".wh.lonely"))
        }),
        marker("unlink .wh.up_marker", libc::ENOENT, |m| {
            sys::unlink(&m.join(".wh.up_marker"))
        }),
        marker("rename .wh.withdata", libc::ENOENT, |m| {
            sys::rename(&m.join(".wh.withdata"), &m.join("withdata"))
        }),
        marker("rmdir .wh.adir", libc::ENOENT, |m| {
            sys::unlink(&m.join(".wh.adir/f"))?;
            sys::rmdir(&m.join(".wh.adir"))
        }),
    ];
    run_attempts(&p, &attempts);

    // A name hidden by a `.wh.` file can be created again.
    assert_ok(
        sys::write_file(&p.s.m("lonely"), b"created", 0o644),
        "create lonely",
    );
    assert_eq!(read_string(&p.s.m("lonely")), "created");
    assert_eq!(list_dir(&p.s.mnt).unwrap(), ["lonely", "same", "sub"]);
    for name in ["lonely", "same", "sub", ".wh.lonely", ".wh.new", "adir"] {
        visible(&p.s.mnt, name);
    }
    // stratafs wrote no `.wh.` name of its own choosing and left the
    // upper's marker file alone.
    let up: Vec<Vec<u8>> = names(p.s.upper())
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(b".wh."))
        .collect();
    assert_eq!(up, [b".wh.up_marker".to_vec()], "upper .wh. names");
    assert_eq!(fingerprint(&p.s.u(".wh.up_marker")), before_marker);
    for (l, before) in p.s.lowers().iter().zip(&before_lowers) {
        assert_eq!(&fingerprint(l), before, "lower {l:?}");
    }
    assert_alive(&mut p.sm, "after the .wh. operations");
}

// ---------------------------------------------------------------------------
// Malformed markers
// ---------------------------------------------------------------------------

/// Whether the daemon's warnings can be checked (the default log level).
fn warnings_logged() -> bool {
    std::env::var_os("RUST_LOG").is_none()
}

#[test]
fn malformed_override_stat_values_show_the_on_disk_owner_and_mode() {
    let o = other_id();
    // Values the parser refuses: the on-disk owner and mode show.
    let malformed: [&[u8]; 17] = [
        b"garbage",
        b"",
        b"0",
        b"0:0",
        b"::",
        b"0:0:",
        b"99999999999:0:0755",
        b"0:99999999999:0755",
        b"0:0:99999999999999",
        b"-1:0:0755",
        b"0:0:0955",
        b"0:0:0755:",
        b"0:0:0755:weird",
        b"0:0:0755:char-x-y",
        b"0:0:0755:block-1",
        b"\xff\xfe",
        // Fields after TYPE.
        b"0:0:0755:file:extra",
    ];
    // Values it takes: (value, uid, gid, mode).
    let (cu, cg) = if is_rootless() { (0, 0) } else { (1, 2) };
    let control = format!("{cu}:{cg}:0600");
    let accepted: [(&[u8], u32, u32, u32); 2] = [
        (control.as_bytes(), cu, cg, 0o600),
        // A trailing NUL (C writers) is ignored.
        (b"0:0:0700\0", 0, 0, 0o700),
    ];
    let mut lower = Layer::new()
        .dir("")
        .xattr(CONTAINERS_OVERRIDE, "0:0:0755")
        .dir("dgarbage")
        .owner(o, o)
        .mode(0o750)
        .xattr(CONTAINERS_OVERRIDE, "garbage");
    for (i, v) in malformed.iter().enumerate() {
        lower = lower
            .file(&format!("bad{i:02}"), format!("bad {i}"))
            .owner(o, o)
            .mode(0o640)
            .xattr(CONTAINERS_OVERRIDE, v);
    }
    for (i, (v, ..)) in accepted.iter().enumerate() {
        lower = lower
            .file(&format!("ok{i}"), format!("ok {i}"))
            .owner(o, o)
            .mode(0o640)
            .xattr(CONTAINERS_OVERRIDE, v);
    }
    let st = stack(vec![lower], Layer::new()).build(Markers::AsWritten);
    let mut m = st.mount_strata();
    let shown = |rel: &str| {
        let s = assert_ok(sys::lstat(&st.m(rel)), rel);
        (
            s.st_mode & libc::S_IFMT,
            s.st_mode & 0o7777,
            s.st_uid,
            s.st_gid,
        )
    };
    for (i, v) in malformed.iter().enumerate() {
        let rel = format!("bad{i:02}");
        assert_eq!(
            shown(&rel),
            (libc::S_IFREG, 0o640, o, o),
            "{rel} with {:?}",
            String::from_utf8_lossy(v)
        );
        assert_eq!(read_string(&st.m(&rel)), format!("bad {i}"));
    }
    for (i, (v, uid, gid, mode)) in accepted.iter().enumerate() {
        let rel = format!("ok{i}");
        assert_eq!(
            shown(&rel),
            (libc::S_IFREG, *mode, *uid, *gid),
            "{rel} with {:?}",
            String::from_utf8_lossy(v)
        );
    }
    assert_eq!(shown("dgarbage"), (libc::S_IFDIR, 0o750, o, o));
    assert_eq!(list_dir(&st.m("dgarbage")).unwrap(), Vec::<String>::new());

    // The mount keeps working, also on the malformed objects: a chmod
    // copies up and records a well-formed override in the upper.
    assert_ok(sys::chmod(&st.m("bad00"), 0o604), "chmod bad00");
    assert_eq!(shown("bad00"), (libc::S_IFREG, 0o604, o, o));
    assert_eq!(
        sys::lgetxattr(&st.u("bad00"), CONTAINERS_OVERRIDE).unwrap(),
        format!("{o}:{o}:0604").as_bytes()
    );
    assert_eq!(read_string(&st.m("bad00")), "bad 0");
    assert_ok(
        sys::write_file(&st.m("dgarbage/new"), b"new", 0o644),
        "create in dgarbage",
    );
    assert_eq!(read_string(&st.m("dgarbage/new")), "new");
    assert_eq!(
        sys::lgetxattr(&st.l(0, "bad00"), CONTAINERS_OVERRIDE).unwrap(),
        b"garbage",
        "the lower keeps its value"
    );
    assert_alive(&mut m, "after stat of malformed overrides");

    if warnings_logged() {
        let log = m.daemon_stderr();
        for v in malformed {
            let want = format!(
                "ignoring malformed override_stat value {:?}",
                String::from_utf8_lossy(v)
            );
            assert!(log.contains(&want), "no warning {want:?} in:\n{log}");
        }
    }
    let status = m.unmount();
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "daemon exit");
}

#[test]
fn override_stat_modes_with_unknown_type_bits_are_malformed() {
    let o = other_id();
    let values: [&[u8]; 2] = [b"0:0:0170644", b"0:0:37777777777"];
    let mut lower = Layer::new().dir("").xattr(CONTAINERS_OVERRIDE, "0:0:0755");
    for (i, v) in values.iter().enumerate() {
        lower = lower
            .file(&format!("f{i}"), "data")
            .owner(o, o)
            .mode(0o640)
            .xattr(CONTAINERS_OVERRIDE, v);
    }
    let st = stack(vec![lower], Layer::new()).build(Markers::AsWritten);
    let mut m = st.mount_strata();
    for (i, v) in values.iter().enumerate() {
        let s = assert_ok(sys::lstat(&st.m(&format!("f{i}"))), "lstat");
        assert_eq!(
            (s.st_mode, s.st_uid, s.st_gid),
            (libc::S_IFREG | 0o640, o, o),
            "f{i} with {:?}: mode {:o}",
            String::from_utf8_lossy(v),
            s.st_mode
        );
    }
    assert_alive(&mut m, "after stat");
}

/// The opaque xattr the kernel overlay reads in this environment.
fn kernel_opaque_xattr() -> &'static str {
    OpaqueForm::kernel()
        .xattr_name()
        .expect("the kernel's opaque marker is an xattr")
}

/// Lower0 directories `t0..` carrying `xattr` with each of `values`, each
/// with a file `top`, over lower1 directories with a file `below`.
fn opaque_values_spec(xattr: &str, values: &[&[u8]]) -> TempStackBuilder {
    let mut l0 = Layer::new();
    let mut l1 = Layer::new();
    for (i, v) in values.iter().enumerate() {
        l0 = l0
            .dir(&format!("t{i}"))
            .xattr(xattr, v)
            .file(&format!("t{i}/top"), "top");
        l1 = l1.file(&format!("t{i}/below"), "below");
    }
    stack(vec![l0, l1], Layer::new())
}

/// Checks that each `t{i}` lists `top` (and `below` unless `opaque[i]`),
/// and that lookups agree with the listing.
#[track_caller]
fn assert_opaque_dirs(mnt: &Path, values: &[&[u8]], opaque: impl Fn(&[u8]) -> bool, what: &str) {
    for (i, v) in values.iter().enumerate() {
        let d = mnt.join(format!("t{i}"));
        let want: &[&str] = if opaque(v) {
            &["top"]
        } else {
            &["below", "top"]
        };
        assert_eq!(
            list_dir(&d).unwrap(),
            want,
            "{what}: value {:?}",
            String::from_utf8_lossy(v)
        );
        assert_eq!(visible(&d, "below"), !opaque(v), "{what}: t{i}/below");
    }
}

#[test]
fn opaque_xattr_values_other_than_y_do_not_make_a_directory_opaque() {
    let values: [&[u8]; 7] = [b"y", b"n", b"", b"x", b"Y", b" y", b"N"];
    let is_y = |v: &[u8]| v == b"y";

    // The kernel's own xattr: the same outcome as the kernel overlay.
    let mut p = Pair::new(&opaque_values_spec(kernel_opaque_xattr(), &values));
    assert_opaque_dirs(&p.s.mnt, &values, is_y, "stratafs");
    assert_opaque_dirs(&p.k.mnt, &values, is_y, "kernel");
    p.assert_same_view();
    // Copying the directories up keeps the outcome.
    run_attempts(
        &p,
        &(0..values.len())
            .map(|i| {
                attempt("create t*/new", Ok(()), move |m| {
                    sys::write_file(&m.join(format!("t{i}/new")), b"n", 0o644)
                })
            })
            .collect::<Vec<_>>(),
    );
    p.assert_same_view();
    p.assert_same_upper();
    assert_alive(&mut p.sm, "after the copy-ups");
    drop(p);

    // The names only stratafs reads: defined the same way.
    let mut names_read = vec!["user.fuseoverlayfs.opaque"];
    if !is_rootless() {
        names_read.push("user.overlay.opaque");
    }
    for xattr in names_read {
        let st = opaque_values_spec(xattr, &values).build(Markers::AsWritten);
        let mut m = st.mount_strata();
        assert_opaque_dirs(&st.mnt, &values, is_y, xattr);
        for i in 0..values.len() {
            assert_ok(
                sys::write_file(&st.m(&format!("t{i}/new")), b"n", 0o644),
                "create",
            );
        }
        let with_new = |v: &[u8]| -> Vec<String> {
            let mut want = vec!["new", "top"];
            if !is_y(v) {
                want.insert(0, "below");
            }
            want.into_iter().map(String::from).collect()
        };
        for (i, v) in values.iter().enumerate() {
            assert_eq!(list_dir(&st.m(&format!("t{i}"))).unwrap(), with_new(v));
        }
        assert_alive(&mut m, xattr);
    }
}

#[test]
fn opaque_values_that_only_begin_with_y_are_not_opaque() {
    let values: [&[u8]; 3] = [b"yes", b"y\0", b"yy"];
    let p = Pair::new(&opaque_values_spec(kernel_opaque_xattr(), &values));
    assert_opaque_dirs(&p.k.mnt, &values, |_| false, "kernel");
    assert_opaque_dirs(&p.s.mnt, &values, |_| false, "stratafs");
    p.assert_same_view();
}

#[test]
fn char_devices_other_than_0_0_are_device_nodes_not_whiteouts() {
    if is_rootless() {
        return skip(
            "char_devices_other_than_0_0_are_device_nodes_not_whiteouts",
            "mknod of real devices needs CAP_MKNOD in the initial namespace",
        );
    }
    let spec = stack(
        vec![
            Layer::new()
                .char_device("null13", 1, 3)
                .char_device("c01", 0, 1)
                .char_device("c10", 1, 0)
                .char_device("c256", 256, 0),
            Layer::new()
                .file("null13", "below")
                .file("c01", "below")
                .file("c10", "below")
                .file("c256", "below")
                .file("up13", "below"),
        ],
        Layer::new().char_device("up13", 1, 3),
    );
    let mut p = Pair::new(&spec);
    let devs = [
        ("null13", (1, 3)),
        ("c01", (0, 1)),
        ("c10", (1, 0)),
        ("c256", (256, 0)),
        ("up13", (1, 3)),
    ];
    let listed = p.same("readdir", |m| list_dir(m).unwrap());
    assert_eq!(listed, ["c01", "c10", "c256", "null13", "up13"]);
    for (name, (ma, mi)) in devs {
        let got = p.same(name, |m| {
            sys::lstat(&m.join(name)).map(|s| {
                (
                    s.st_mode & libc::S_IFMT,
                    sys::major(s.st_rdev),
                    sys::minor(s.st_rdev),
                )
            })
        });
        assert_eq!(got, Ok((libc::S_IFCHR, ma, mi)), "{name}");
    }
    // Opened as the device it names (1:3 is /dev/null). FUSE mounts are
    // `nodev` unless mounted with `-o dev`; the kernel overlay is not.
    let (s, k) = p.both(|m| sys::read_all(&m.join("null13")));
    assert_eq!(s, Err(libc::EACCES), "stratafs without -o dev");
    assert_eq!(k, Ok(Vec::new()), "kernel");
    {
        let st = spec.build(Markers::AsWritten);
        let _m = st.mount_strata_with("dev");
        assert_eq!(sys::read_all(&st.m("null13")), Ok(Vec::new()), "-o dev");
        assert_ok(
            sys::write_file(&st.m("up13"), b"into the device", 0o644),
            "write up13 with -o dev",
        );
        assert_eq!(sys::read_all(&st.m("up13")), Ok(Vec::new()), "-o dev");
        let up = snapshot_upper(st.upper());
        assert_eq!(meta_of(&up, "up13").rdev, Some((1, 3)), "no copy-up");
        assert_eq!(up.len(), 2, "nothing copied up:\n{}", fmt_snapshot(&up));
    }
    p.assert_same_view();

    let attempts = [
        attempt("rename null13", Ok(()), |m| {
            sys::rename(&m.join("null13"), &m.join("null13_moved"))
        }),
        attempt("unlink c01", Ok(()), |m| sys::unlink(&m.join("c01"))),
        attempt("chmod c10", Ok(()), |m| sys::chmod(&m.join("c10"), 0o600)),
        attempt("unlink up13", Ok(()), |m| sys::unlink(&m.join("up13"))),
        attempt("mknod c 0 1", Ok(()), |m| {
            sys::mknod(&m.join("made01"), libc::S_IFCHR | 0o644, sys::makedev(0, 1))
        }),
    ];
    run_attempts(&p, &attempts);
    let up = snapshot_upper(p.s.upper());
    assert_eq!(meta_of(&up, "null13_moved").rdev, Some((1, 3)));
    assert_eq!(meta_of(&up, "made01").rdev, Some((0, 1)));
    assert_eq!(meta_of(&up, "c10").mode, 0o600);
    for w in ["null13", "c01", "up13"] {
        assert_eq!(up.get(w), Some(&Entry::Whiteout), "upper {w}");
    }
    p.assert_same_upper();
    p.assert_same_view();
    assert_alive(&mut p.sm, "after the device operations");
}

#[test]
fn a_wh_file_beside_a_real_name_in_the_same_layer_hides_only_the_layers_below() {
    // The layer that holds a name decides (src/resolve.rs): a `.wh.NAME`
    // file hides NAME in the layers below its own, and beside a real NAME
    // in its own layer that real NAME is what shows. A directory NAME
    // there merges with the directories below as usual: the `.wh.` file
    // does not make it opaque.
    let spec = stack(
        vec![
            Layer::new()
                .file("f", "top f")
                .file(".wh.f", "")
                .file("d/top", "top")
                .file(".wh.d", "")
                .file(".wh.g", ""),
            Layer::new()
                .file("f", "below f")
                .file("d/below", "below")
                .file("g", "below g")
                .file("u", "lower u"),
        ],
        Layer::new().file("u", "upper u").file(".wh.u", ""),
    );
    let st = spec.build(Markers::AsWritten);
    let check = |what: &str| {
        assert_eq!(
            list_dir(&st.mnt).unwrap(),
            ["d", "f", "u"],
            "{what}: readdir"
        );
        for (name, shown) in [("f", true), ("d", true), ("u", true), ("g", false)] {
            assert_eq!(visible(&st.mnt, name), shown, "{what}: {name}");
        }
        assert_eq!(read_string(&st.m("f")), "top f", "{what}");
        assert_eq!(read_string(&st.m("u")), "upper u", "{what}");
        assert_eq!(list_dir(&st.m("d")).unwrap(), ["below", "top"], "{what}");
        assert!(visible(&st.m("d"), "below"), "{what}");
        assert_eq!(read_string(&st.m("d/below")), "below", "{what}");
    };
    let m = st.mount_strata();
    check("mounted");
    drop(m);
    let mut m = st.mount_strata();
    check("remounted");

    // Deleting and recreating keeps lookup, open and readdir in step.
    assert_ok(sys::unlink(&st.m("u")), "unlink u");
    assert_ok(sys::unlink(&st.m("f")), "unlink f");
    assert_ok(sys::unlink(&st.m("d/top")), "unlink d/top");
    assert_ok(sys::unlink(&st.m("d/below")), "unlink d/below");
    assert_ok(sys::rmdir(&st.m("d")), "rmdir d");
    let after = |what: &str| {
        assert_eq!(list_dir(&st.mnt).unwrap(), Vec::<String>::new(), "{what}");
        for name in ["f", "d", "u", "g"] {
            assert!(!visible(&st.mnt, name), "{what}: {name}");
        }
    };
    after("deleted");
    assert_ok(sys::write_file(&st.m("u"), b"again", 0o644), "create u");
    assert_ok(sys::mkdir(&st.m("d"), 0o755), "mkdir d");
    assert_eq!(read_string(&st.m("u")), "again");
    assert_eq!(list_dir(&st.m("d")).unwrap(), Vec::<String>::new());
    assert_alive(&mut m, "after the deletes");
    drop(m);
    let _m = st.mount_strata();
    assert_eq!(list_dir(&st.mnt).unwrap(), ["d", "u"], "remounted");
    assert!(visible(&st.mnt, "u"));
    assert!(!visible(&st.mnt, "f"));
    assert!(!visible(&st.mnt, "g"));
    assert_eq!(read_string(&st.m("u")), "again");
    assert_eq!(list_dir(&st.m("d")).unwrap(), Vec::<String>::new());
}

/// `rename` onto names `.wh.` markers in the upper layer hide: with
/// `RENAME_NOREPLACE` such a name is free where the marker hides a lower
/// name (and the marker goes with the rename), a name a lower layer shows
/// is not; in a directory without lower layers a marker hides nothing.
#[test]
fn rename_onto_names_behind_wh_markers_in_the_upper() {
    use sys::RENAME_NOREPLACE as NOREPLACE;
    let spec = stack(
        vec![Layer::new()
            .file("hidden", "lower hidden")
            .file("shown", "lower shown")],
        Layer::new()
            .file(".wh.hidden", "")
            .file("a", "a")
            .file("b", "b")
            .file("pure/f", "f")
            .file("pure/.wh.gone", "")
            .file("pure/.wh.other", ""),
    );
    let st = spec.build(Markers::Kernel);
    let _m = st.mount_strata();
    assert!(!visible(&st.mnt, "hidden"));
    assert_errno(
        sys::rename2(&st.m("a"), &st.m("shown"), NOREPLACE),
        libc::EEXIST,
        "noreplace onto a lower name",
    );
    assert_ok(
        sys::rename2(&st.m("a"), &st.m("hidden"), NOREPLACE),
        "noreplace onto a name a marker hides",
    );
    assert_eq!(read_string(&st.m("hidden")), "a");
    assert_errno(sys::lstat(&st.u(".wh.hidden")), libc::ENOENT, "marker");
    assert_ok(
        sys::rename(&st.m("b"), &st.m("hidden")),
        "rename over it again",
    );
    assert_eq!(read_string(&st.m("hidden")), "b");
    assert_ok(
        sys::rename2(&st.m("pure/f"), &st.m("pure/gone"), NOREPLACE),
        "noreplace beside a marker that hides nothing",
    );
    assert_ok(
        sys::rename(&st.m("pure/gone"), &st.m("pure/other")),
        "rename beside a marker that hides nothing",
    );
    assert_eq!(read_string(&st.m("pure/other")), "f");
    assert_eq!(list_dir(&st.m("pure")).unwrap(), ["other"]);
    assert_ok(sys::unlink(&st.m("pure/other")), "unlink");
    assert_eq!(list_dir(&st.m("pure")).unwrap(), Vec::<String>::new());
    assert_eq!(list_dir(&st.mnt).unwrap(), ["hidden", "pure", "shown"]);
}
