//! Lookup, readdir, inode numbers, names and read-only behaviour of the
//! merged view. Where the kernel overlay defines the behaviour the test
//! checks concrete values and that the kernel overlay agrees on the same
//! stack.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Compares two name sets and reports only the differences.
#[track_caller]
fn assert_name_sets(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    let extra: Vec<_> = got.difference(want).collect();
    let missing: Vec<_> = want.difference(got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: unexpected names {extra:?}, missing names {missing:?}"
    );
}

fn ino(p: &Path) -> u64 {
    assert_ok(sys::lstat(p), &format!("lstat {p:?}")).st_ino
}

#[test]
fn lookup_precedence_upper_over_lowers_leftmost_lower_on_top() {
    let spec = stack(
        vec![
            Layer::new()
                .file("all", "lower0")
                .file("l01", "lower0")
                .file("d/x", "lower0"),
            Layer::new()
                .file("all", "lower1")
                .file("l01", "lower1")
                .file("l12", "lower1")
                .file("d/x", "lower1")
                .file("d/y", "lower1"),
            Layer::new()
                .file("all", "lower2")
                .file("l12", "lower2")
                .file("only2", "lower2")
                .file("d/z", "lower2"),
        ],
        Layer::new().file("all", "upper").file("d/u", "upper"),
    );
    let p = Pair::new(&spec);
    let m = |r: &str| p.s.m(r);
    assert_eq!(read_string(&m("all")), "upper");
    assert_eq!(read_string(&m("l01")), "lower0");
    assert_eq!(read_string(&m("l12")), "lower1");
    assert_eq!(read_string(&m("only2")), "lower2");
    assert_eq!(read_string(&m("d/x")), "lower0");
    assert_eq!(list_dir(&m("d")).unwrap(), ["u", "x", "y", "z"]);
    p.assert_same_view();
}

#[test]
fn non_dir_hides_dirs_below_and_stops_the_merge() {
    let spec = stack(
        vec![
            Layer::new()
                .file("f", "file in lower0")
                .symlink("s", "f")
                .dir("d2")
                .file("d2/from0", "0")
                .file("f2", "lower0 file"),
            Layer::new()
                .file("f/below", "hidden")
                .file("s/below", "hidden")
                .file("d2/from1", "1")
                .file("f2/deep", "hidden"),
            Layer::new().file("d2/from2", "2"),
        ],
        // An upper dir over a lower0 file: lower1/lower2 dirs below that file
        // are not merged in.
        Layer::new().dir("f2").file("f2/up", "u"),
    );
    let p = Pair::new(&spec);
    assert_eq!(read_string(&p.s.m("f")), "file in lower0");
    assert_errno(
        sys::lstat(&p.s.m("f/below")),
        libc::ENOTDIR,
        "lstat f/below",
    );
    assert_eq!(
        sys::readlink(&p.s.m("s")).unwrap(),
        b"f".to_vec(),
        "symlink from lower0"
    );
    assert_eq!(list_dir(&p.s.m("f2")).unwrap(), ["up"]);
    assert_errno(sys::lstat(&p.s.m("f2/deep")), libc::ENOENT, "lstat f2/deep");
    assert_eq!(list_dir(&p.s.m("d2")).unwrap(), ["from0", "from1", "from2"]);
    p.assert_same_view();
}

fn opaque_spec_lower(form: OpaqueForm) -> TempStackBuilder {
    stack(
        vec![
            Layer::new()
                .opaque_as("d", form)
                .file("d/top", "t")
                .dir("keep")
                .file("keep/k0", "0"),
            Layer::new()
                .file("d/hidden", "h")
                .dir("d/sub")
                .file("d/sub/x", "x")
                .file("keep/k1", "1"),
        ],
        Layer::new().file("d/up", "u"),
    )
}

#[test]
fn opaque_dir_in_a_lower_stops_the_merge_for_every_form() {
    for form in OpaqueForm::usable() {
        let p = Pair::new(&opaque_spec_lower(form));
        assert_eq!(
            list_dir(&p.s.m("d")).unwrap(),
            ["top", "up"],
            "opaque form {form:?} in lower0"
        );
        assert_errno(
            sys::lstat(&p.s.m("d/hidden")),
            libc::ENOENT,
            "lstat d/hidden",
        );
        assert_errno(sys::lstat(&p.s.m("d/sub/x")), libc::ENOENT, "lstat d/sub/x");
        assert_eq!(list_dir(&p.s.m("keep")).unwrap(), ["k0", "k1"]);
        p.assert_same_view();
    }
}

#[test]
fn opaque_dir_in_the_upper_stops_the_merge_for_every_form() {
    for form in OpaqueForm::usable() {
        let spec = stack(
            vec![
                Layer::new().file("d/l0", "0").file("d/sub/x", "x"),
                Layer::new().file("d/l1", "1"),
            ],
            Layer::new().opaque_as("d", form).file("d/up", "u"),
        );
        let p = Pair::new(&spec);
        assert_eq!(
            list_dir(&p.s.m("d")).unwrap(),
            ["up"],
            "opaque form {form:?} in upper"
        );
        assert_errno(sys::lstat(&p.s.m("d/l0")), libc::ENOENT, "lstat d/l0");
        assert_errno(sys::lstat(&p.s.m("d/sub")), libc::ENOENT, "lstat d/sub");
        p.assert_same_view();
    }
}

#[test]
fn whiteouts_of_every_form_hide_files_and_dirs_in_lowers_and_upper() {
    for form in WhiteoutForm::ALL {
        for in_upper in [false, true] {
            let marks = Layer::new()
                .whiteout_as("f", form)
                .whiteout_as("d", form)
                .whiteout_as("sub/g", form)
                .file("sub/keep", "k");
            let below = Layer::new()
                .file("f", "hidden")
                .file("d/x", "hidden")
                .file("sub/g", "hidden")
                .file("sub/h", "h")
                .file("other", "o");
            let spec = if in_upper {
                stack(vec![below], marks)
            } else {
                stack(vec![marks, below], Layer::new())
            };
            let what = format!(
                "{form:?} whiteout in {}",
                if in_upper { "upper" } else { "lower0" }
            );
            let p = Pair::new(&spec);
            for hidden in ["f", "d", "d/x", "sub/g"] {
                assert_errno(
                    sys::lstat(&p.s.m(hidden)),
                    libc::ENOENT,
                    &format!("{what}: lstat {hidden}"),
                );
                assert_errno(
                    sys::open(&p.s.m(hidden), libc::O_RDONLY, 0),
                    libc::ENOENT,
                    &format!("{what}: open {hidden}"),
                );
            }
            assert_eq!(list_dir(&p.s.m("")).unwrap(), ["other", "sub"], "{what}");
            assert_eq!(list_dir(&p.s.m("sub")).unwrap(), ["h", "keep"], "{what}");
            p.assert_same_view();
        }
    }
}

#[test]
fn marker_names_stay_hidden_for_stat_open_and_readdir() {
    let spec = stack(
        vec![
            Layer::new()
                .whiteout_as("gone", WhiteoutForm::WhFile)
                .opaque_as("o", OpaqueForm::WhOpqFile)
                .file("o/in", "i"),
            Layer::new()
                .file("gone", "g")
                .file("o/below", "b")
                .file("gone2", "g2"),
        ],
        Layer::new()
            .whiteout_as("gone2", WhiteoutForm::WhFile)
            .opaque_as("uo", OpaqueForm::WhOpqFile)
            .file("uo/f", "f"),
    );
    let st = spec.build(Markers::AsWritten);
    let _m = st.mount_strata();
    for name in [
        ".wh.gone",
        "o/.wh..wh..opq",
        ".wh.gone2",
        "uo/.wh..wh..opq",
        "gone",
        "gone2",
    ] {
        assert_errno(
            sys::lstat(&st.m(name)),
            libc::ENOENT,
            &format!("lstat {name}"),
        );
        assert_errno(
            sys::open(&st.m(name), libc::O_RDONLY, 0),
            libc::ENOENT,
            &format!("open {name}"),
        );
    }
    assert_eq!(list_dir(&st.m("")).unwrap(), ["o", "uo"]);
    assert_eq!(list_dir(&st.m("o")).unwrap(), ["in"]);
    assert_eq!(list_dir(&st.m("uo")).unwrap(), ["f"]);
    let mut d = LibcDir::open(&st.m("o")).unwrap();
    let names: Vec<String> = d.all().into_iter().map(|e| e.name).collect();
    assert!(!names.iter().any(|n| n.starts_with(".wh.")), "{names:?}");
}

#[test]
fn creating_wh_prefixed_names_is_rejected() {
    // Accepted divergence from the kernel overlay (docs/COMPAT.md).
    let st = stack(vec![Layer::new().file("f", "x")], Layer::new()).build(Markers::Kernel);
    let _m = st.mount_strata();
    assert_errno(
        sys::write_file(&st.m(".wh.f"), b"", 0o644),
        libc::EINVAL,
        "create .wh.f",
    );
    assert_errno(
        sys::mkdir(&st.m(".wh.d"), 0o755),
        libc::EINVAL,
        "mkdir .wh.d",
    );
    assert_errno(
        sys::symlink("f", &st.m(".wh.l")),
        libc::EINVAL,
        "symlink .wh.l",
    );
    assert_errno(
        sys::rename(&st.m("f"), &st.m(".wh.g")),
        libc::EINVAL,
        "rename to .wh.g",
    );
    assert_eq!(read_string(&st.m("f")), "x");
    assert_eq!(list_dir(&st.m("")).unwrap(), ["f"]);
}

fn big_merged_spec(n: usize) -> TempStackBuilder {
    let mut l0 = Layer::new().dir("d");
    let mut l1 = Layer::new().dir("d");
    let mut up = Layer::new().dir("d");
    for i in 0..n {
        let name = format!("d/entry-with-a-longish-name-{i:05}");
        match i % 5 {
            0 => l0 = l0.file(&name, "0"),
            1 => l1 = l1.file(&name, "1"),
            2 => up = up.file(&name, "u"),
            3 => {
                // Present in every layer: must be listed once.
                l0 = l0.file(&name, "0");
                l1 = l1.file(&name, "1");
                up = up.file(&name, "u");
            }
            _ => {
                // Deleted: lower1 has it, the upper whites it out.
                l1 = l1.file(&name, "1");
                up = up.whiteout(&name);
            }
        }
    }
    stack(vec![l0, l1], up)
}

fn expected_names(n: usize) -> BTreeSet<String> {
    (0..n)
        .filter(|i| i % 5 != 4)
        .map(|i| format!("entry-with-a-longish-name-{i:05}"))
        .collect()
}

#[test]
fn readdir_lists_each_name_once_with_dot_entries_and_d_ino() {
    let n = 60;
    let spec = big_merged_spec(n);
    let p = Pair::with_markers(&spec, Markers::Mixed(7));
    for root in [&p.s.mnt, &p.k.mnt] {
        let mut d = LibcDir::open(&root.join("d")).unwrap();
        let ents = d.all();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in &ents {
            *counts.entry(e.name.clone()).or_default() += 1;
        }
        let dup: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            dup.is_empty(),
            "{root:?}: names listed more than once: {dup:?}"
        );
        assert_eq!(counts.get("."), Some(&1), "{root:?}: '.' missing");
        assert_eq!(counts.get(".."), Some(&1), "{root:?}: '..' missing");
        let names: BTreeSet<String> = counts
            .into_keys()
            .filter(|n| n != "." && n != "..")
            .collect();
        assert_name_sets(&names, &expected_names(n), &format!("{root:?}"));
        for e in ents.iter().filter(|e| e.name != "." && e.name != "..") {
            let st = sys::lstat(&root.join("d").join(&e.name)).unwrap();
            assert_eq!(e.ino, st.st_ino, "{root:?}: d_ino of {} != st_ino", e.name);
            assert_eq!(e.dtype, libc::DT_REG, "{root:?}: d_type of {}", e.name);
        }
    }
}

#[test]
fn readdir_in_small_getdents_chunks_sees_each_entry_once() {
    let n = 300;
    let spec = big_merged_spec(n);
    let p = Pair::with_markers(&spec, Markers::Mixed(11));
    for bufsize in [64usize, 100, 256, 1000] {
        for root in [&p.s.mnt, &p.k.mnt] {
            let (ents, calls) = getdents_all(&root.join("d"), bufsize).unwrap_or_else(|e| {
                panic!(
                    "{root:?}: getdents64 with {bufsize} bytes: {}",
                    errno_name(e)
                )
            });
            let names: Vec<String> = ents
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n != "." && n != "..")
                .collect();
            let set: BTreeSet<String> = names.iter().cloned().collect();
            assert_eq!(names.len(), set.len(), "{root:?} buf {bufsize}: duplicates");
            assert_name_sets(&set, &expected_names(n), &format!("{root:?} buf {bufsize}"));
            assert!(
                calls > 5,
                "{root:?} buf {bufsize}: only {calls} getdents calls"
            );
        }
    }
}

#[test]
fn telldir_seekdir_resume_at_the_same_entry() {
    let n = 2500; // several getdents batches inside glibc's readdir buffer
    let spec = big_merged_spec(n);
    let p = Pair::with_markers(&spec, Markers::Mixed(13));
    for root in [&p.s.mnt, &p.k.mnt] {
        let mut d = LibcDir::open(&root.join("d")).unwrap();
        let full: Vec<String> = d.all().into_iter().map(|e| e.name).collect();
        assert_eq!(
            full.len(),
            expected_names(n).len() + 2,
            "{root:?}: full listing size"
        );
        d.rewind();
        let mut marks = Vec::new();
        let mut seen = Vec::new();
        loop {
            let pos = d.tell();
            match d.next_entry().unwrap() {
                Some(e) => {
                    if seen.len() % 397 == 0 {
                        marks.push((pos, seen.len()));
                    }
                    seen.push(e.name);
                }
                None => break,
            }
        }
        assert!(
            seen == full,
            "{root:?}: second pass after rewinddir differs ({} vs {} entries)",
            seen.len(),
            full.len()
        );
        for (pos, idx) in marks.into_iter().rev() {
            d.seek(pos);
            let rest: Vec<String> = d.all().into_iter().map(|e| e.name).collect();
            let want = &full[idx..];
            let first_diff = rest.iter().zip(want).position(|(a, b)| a != b);
            assert!(
                rest == want,
                "{root:?}: seekdir to telldir() of entry #{idx}: got {} entries, want {}, first difference at {first_diff:?} (got first {:?})",
                rest.len(),
                want.len(),
                rest.first()
            );
        }
    }
}

#[test]
fn readdir_sees_untouched_entries_exactly_once_while_the_dir_changes() {
    untouched_entries_once_while_changing(false);
}

/// The same with the listing in the kernel's directory cache: the reader
/// starts from the cache, and after each change another reader lists the
/// directory from the start, which drops the cache and fills it again from
/// a newer listing; the first reader then goes on at an offset the old
/// cache handed out.
#[test]
fn readdir_from_the_kernel_cache_sees_untouched_entries_once_while_the_dir_changes() {
    untouched_entries_once_while_changing(true);
}

fn untouched_entries_once_while_changing(warm: bool) {
    let n = 2000;
    let spec = big_merged_spec(n);
    let p = Pair::with_markers(&spec, Markers::Mixed(17));
    for root in [&p.s.mnt, &p.k.mnt] {
        let dir = root.join("d");
        let original = expected_names(n);
        if warm {
            for _ in 0..2 {
                let all = LibcDir::open(&dir).unwrap().all();
                assert_eq!(all.len(), original.len() + 2, "{root:?}: warm-up listing");
            }
        }
        let mut d = LibcDir::open(&dir).unwrap();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut deleted = BTreeSet::new();
        let mut created = BTreeSet::new();
        let victims: Vec<String> = original.iter().rev().step_by(7).cloned().collect();
        let mut vi = 0;
        let mut i = 0;
        while let Some(e) = d.next_entry().unwrap() {
            *counts.entry(e.name.clone()).or_default() += 1;
            i += 1;
            if i % 25 == 0 {
                // Two in, one out: positions of later entries move.
                for k in 0..2 {
                    let new = format!("zz-new-{i}-{k}");
                    sys::write_file(&dir.join(&new), b"n", 0o644).unwrap();
                    created.insert(new);
                }
                if vi < victims.len() {
                    let v = &victims[vi];
                    vi += 1;
                    sys::unlink(&dir.join(v)).unwrap();
                    deleted.insert(v.clone());
                }
                if warm {
                    LibcDir::open(&dir).unwrap().all();
                }
            }
        }
        for name in &original {
            let c = counts.get(name).copied().unwrap_or(0);
            if deleted.contains(name) {
                assert!(c <= 1, "{root:?}: deleted {name} listed {c} times");
            } else {
                assert_eq!(c, 1, "{root:?}: untouched {name} listed {c} times");
            }
        }
        for name in &created {
            let c = counts.get(name).copied().unwrap_or(0);
            assert!(c <= 1, "{root:?}: new {name} listed {c} times");
        }
        for (name, c) in &counts {
            assert!(
                original.contains(name) || created.contains(name) || name == "." || name == "..",
                "{root:?}: unexpected entry {name} ({c})"
            );
        }
    }
}

#[test]
fn internal_xattrs_are_never_shown() {
    let mut lower = Layer::new().dir("d").xattr("user.keep", "1");
    for name in ["user.overlay.opaque", "user.fuseoverlayfs.opaque"] {
        lower = lower.xattr(name, "y");
    }
    lower = lower
        .file("d/f", "x")
        .xattr("user.keep", "2")
        .xattr("user.overlay.origin", "junk")
        .xattr("user.fuseoverlayfs.origin", "junk");
    if !is_rootless() {
        lower = lower
            .dir("t")
            .xattr("trusted.overlay.opaque", "y")
            .xattr("trusted.overlay.foo", "bar")
            .xattr("user.keep", "3");
    }
    let spec = stack(vec![lower, Layer::new().file("d/below", "b")], Layer::new());
    let st = spec.build(Markers::AsWritten);
    let _m = st.mount_strata();
    let check = |rel: &str, expect: &str| {
        let names = sys::llistxattr(&st.m(rel)).unwrap();
        assert_eq!(names, ["user.keep"], "listxattr {rel}");
        assert_eq!(
            sys::lgetxattr(&st.m(rel), "user.keep").unwrap(),
            expect.as_bytes()
        );
        for hidden in [
            "user.overlay.opaque",
            "user.overlay.origin",
            "user.fuseoverlayfs.opaque",
            "user.fuseoverlayfs.origin",
            "trusted.overlay.opaque",
            "trusted.overlay.foo",
        ] {
            assert_errno(
                sys::lgetxattr(&st.m(rel), hidden),
                libc::ENODATA,
                &format!("getxattr {hidden} on {rel}"),
            );
        }
    };
    check("d", "1");
    check("d/f", "2");
    if !is_rootless() {
        check("t", "3");
    }
    // The xattr opaque markers are honoured even though they are hidden.
    assert_eq!(list_dir(&st.m("d")).unwrap(), ["f"]);
    // After copy-up the upper gets the stratafs opaque marker; still hidden.
    sys::chmod(&st.m("d"), 0o750).unwrap();
    sys::chmod(&st.m("d/f"), 0o600).unwrap();
    check("d", "1");
    check("d/f", "2");
    // The raw size query must agree with the filtered list.
    let size = sys::llistxattr_sized(&st.m("d"), 0).unwrap();
    assert!(
        size as usize >= "user.keep\0".len(),
        "listxattr size query on d too small: {size}"
    );
}

#[test]
fn st_ino_is_stable_across_copy_up_and_equals_d_ino() {
    let spec = stack(
        vec![Layer::new()
            .file("d/f", "data")
            .file("d/g", "g")
            .symlink("d/l", "f")
            .dir("d/sub")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    for root in [&p.s.mnt, &p.k.mnt] {
        let before: BTreeMap<&str, u64> = ["d", "d/f", "d/g", "d/l", "d/sub"]
            .into_iter()
            .map(|r| (r, ino(&root.join(r))))
            .collect();
        sys::chmod(&root.join("d/f"), 0o600).unwrap();
        let fd = sys::open(&root.join("d/g"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
        sys::write(&fd, b"+").unwrap();
        drop(fd);
        sys::lchown(&root.join("d/l"), 0, 0).unwrap();
        sys::chmod(&root.join("d/sub"), 0o700).unwrap();
        for (r, i) in &before {
            assert_eq!(
                ino(&root.join(r)),
                *i,
                "{root:?}: st_ino of {r} changed by copy-up"
            );
        }
        let mut d = LibcDir::open(&root.join("d")).unwrap();
        for e in d.all() {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let r = format!("d/{}", e.name);
            assert_eq!(e.ino, ino(&root.join(&r)), "{root:?}: d_ino of {r}");
        }
        let fd = sys::open(&root.join("d/f"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(
            sys::fstat(&fd).unwrap().st_ino,
            before["d/f"],
            "{root:?}: fstat ino"
        );
    }
}

#[test]
fn st_ino_is_stable_across_remount() {
    let spec = stack(
        vec![Layer::new()
            .file("lower", "l")
            .file("copied", "c")
            .dir("dir")],
        Layer::new().file("upper", "u"),
    );
    let st = spec.build(Markers::Kernel);
    let names = ["", "lower", "copied", "dir", "upper", "new"];
    let first = {
        let _m = st.mount_strata();
        sys::chmod(&st.m("copied"), 0o600).unwrap();
        sys::write_file(&st.m("new"), b"n", 0o644).unwrap();
        names.map(|r| ino(&st.m(r)))
    };
    let _m = st.mount_strata();
    let second = names.map(|r| ino(&st.m(r)));
    assert_eq!(first, second, "st_ino of {names:?} before/after remount");
}

#[test]
fn st_ino_is_unique_across_layers_on_different_filesystems() {
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let (t1, t2) = match (
        TmpfsMount::new(&root.join("fs1")),
        TmpfsMount::new(&root.join("fs2")),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let e = a.err().or(b.err()).unwrap_or(0);
            return skip(
                "st_ino_is_unique_across_layers_on_different_filesystems",
                &format!("cannot mount tmpfs: {}", errno_name(e)),
            );
        }
    };
    let (l1, l2) = (t1.path.join("layer"), t2.path.join("layer"));
    std::fs::create_dir(&l1).unwrap();
    std::fs::create_dir(&l2).unwrap();
    for i in 0..20 {
        std::fs::write(l1.join(format!("a{i}")), "1").unwrap();
        std::fs::write(l2.join(format!("b{i}")), "2").unwrap();
    }
    // Pairs of files on different layers whose real inode numbers collide.
    let ino1: BTreeMap<u64, String> = (0..20)
        .map(|i| {
            (
                std::fs::metadata(l1.join(format!("a{i}"))).unwrap().ino(),
                format!("a{i}"),
            )
        })
        .collect();
    let pairs: Vec<(String, String)> = (0..20)
        .filter_map(|i| {
            let b = format!("b{i}");
            let n = std::fs::metadata(l2.join(&b)).unwrap().ino();
            ino1.get(&n).map(|a| (a.clone(), b))
        })
        .collect();
    assert!(
        !pairs.is_empty(),
        "fresh tmpfs mounts did not produce colliding inode numbers"
    );
    let upper = root.join("upper");
    let work = root.join("work");
    let mnt = root.join("mnt");
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let m = mount_stratafs(&[l1.clone(), l2.clone()], Some(&upper), Some(&work), &mnt);
    let mut seen: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for e in std::fs::read_dir(&mnt).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(prev) = seen.insert((md.dev(), md.ino()), name.clone()) {
            panic!(
                "{prev} and {name} share st_dev/st_ino {:?}",
                (md.dev(), md.ino())
            );
        }
    }
    for (a, b) in &pairs {
        assert_ne!(
            ino(&mnt.join(a)),
            ino(&mnt.join(b)),
            "{a} (layer 1) and {b} (layer 2)"
        );
    }
    drop(m);
}

#[test]
fn names_of_255_bytes_work_and_256_give_enametoolong() {
    let long255 = "n".repeat(255);
    let long256 = "n".repeat(256);
    let lower_name = "l".repeat(255);
    let spec = stack(
        vec![Layer::new().file(&lower_name, "lower").file("x", "x")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    assert_eq!(
        p.same("create 255", |r| sys::write_file(
            &r.join(&long255),
            b"ok",
            0o644
        )),
        Ok(())
    );
    assert_eq!(
        p.same("create 256", |r| sys::write_file(
            &r.join(&long256),
            b"no",
            0o644
        )),
        Err(libc::ENAMETOOLONG)
    );
    assert_eq!(
        p.same("mkdir 256", |r| sys::mkdir(&r.join(&long256), 0o755)),
        Err(libc::ENAMETOOLONG)
    );
    assert_eq!(
        p.same("lstat 256", |r| sys::lstat(&r.join(&long256)).map(|_| ())),
        Err(libc::ENAMETOOLONG)
    );
    assert_eq!(
        p.same("rename to 256", |r| sys::rename(
            &r.join("x"),
            &r.join(&long256)
        )),
        Err(libc::ENAMETOOLONG)
    );
    assert_eq!(
        p.same("symlink 256", |r| sys::symlink("x", &r.join(&long256))),
        Err(libc::ENAMETOOLONG)
    );
    assert_errno(
        sys::write_file(&p.s.m(&long256), b"no", 0o644),
        libc::ENAMETOOLONG,
        "create 256-byte name",
    );
    assert_errno(
        sys::lstat(&p.s.m(&long256)),
        libc::ENAMETOOLONG,
        "lstat 256-byte name",
    );
    assert_eq!(read_string(&p.s.m(&long255)), "ok");
    // Deleting a lower file with a 255-byte name needs a whiteout that cannot
    // be spelled as `.wh.NAME`.
    assert_eq!(
        p.same("unlink 255 lower", |r| sys::unlink(&r.join(&lower_name))),
        Ok(())
    );
    assert_errno(
        sys::lstat(&p.s.m(&lower_name)),
        libc::ENOENT,
        "lstat deleted 255-byte lower name",
    );
    p.assert_same_view();
    p.assert_same_upper();
    let Pair { sm, s, .. } = p;
    drop(sm);
    let _m = s.mount_strata();
    assert_errno(sys::lstat(&s.m(&lower_name)), libc::ENOENT, "after remount");
    assert_eq!(list_dir(&s.m("")).unwrap(), [long255.as_str(), "x"]);
}

/// mkdir -p below `base` through *at calls (the path may exceed PATH_MAX
/// as an absolute path).
fn mkdirs_at(base: &Path, comps: &[String]) {
    let mut fd = sys::open(base, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    for c in comps {
        let cn = cstr(c);
        let r = unsafe { libc::mkdirat(fd.as_raw_fd(), cn.as_ptr(), 0o755) };
        assert!(
            r == 0 || errno() == libc::EEXIST,
            "mkdirat {c}: {}",
            errno_name(errno())
        );
        let nfd = unsafe {
            libc::openat(
                fd.as_raw_fd(),
                cn.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(nfd >= 0);
        fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(nfd) };
    }
}

fn at_root<T>(root: &Path, f: impl FnOnce(i32) -> T) -> T {
    let fd = sys::open(root, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    f(fd.as_raw_fd())
}

#[test]
fn deep_paths_near_path_max_behave_like_the_kernel_overlay() {
    // 20 components of 200 bytes: 4019 bytes relative to the mount root, so
    // the absolute path of anything inside exceeds PATH_MAX.
    let comps: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{}", "d".repeat(198)))
        .collect();
    let rel_dir = comps.join("/");
    let spec = stack(vec![Layer::new(), Layer::new()], Layer::new());
    let p = Pair::new(&spec);
    for st in [&p.s, &p.k] {
        mkdirs_at(&st.lowers()[1], &comps);
    }
    // Remount so both see the lower tree from a clean cache.
    let Pair { sm, km, s, k, .. } = p;
    drop(sm);
    drop(km);
    let _sm = s.mount_strata();
    let _km = k.mount_kernel();
    let fits = format!("{rel_dir}/{}", "f".repeat(4095 - rel_dir.len() - 1));
    assert_eq!(fits.len(), 4095);
    let too_long = format!("{fits}x");
    let run = |root: &Path| -> Vec<Result<i64, i32>> {
        at_root(root, |dfd| {
            let c = |s: &str| cstr(s);
            let mut out = Vec::new();
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            out.push(
                cvt(unsafe { libc::fstatat(dfd, c(&rel_dir).as_ptr(), &mut st, 0) }).map(|_| 0),
            );
            // Create a file whose relative path is exactly 4095 bytes: copies
            // up the whole chain of 20 directories.
            let fd = unsafe {
                libc::openat(
                    dfd,
                    c(&fits).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            out.push(cvt(fd).map(|_| 0));
            if fd >= 0 {
                out.push(
                    cvt(unsafe { libc::write(fd, b"deep".as_ptr().cast(), 4) }).map(|n| n as i64),
                );
                unsafe { libc::close(fd) };
            }
            out.push(
                cvt(unsafe { libc::fstatat(dfd, c(&fits).as_ptr(), &mut st, 0) })
                    .map(|_| st.st_size),
            );
            let fd = unsafe {
                libc::openat(
                    dfd,
                    c(&too_long).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            out.push(cvt(fd).map(|_| 0));
            let sub = format!("{rel_dir}/sub");
            out.push(cvt(unsafe { libc::mkdirat(dfd, c(&sub).as_ptr(), 0o700) }).map(|_| 0));
            let moved = format!("{rel_dir}/moved");
            out.push(
                cvt(unsafe { libc::renameat(dfd, c(&sub).as_ptr(), dfd, c(&moved).as_ptr()) })
                    .map(|_| 0),
            );
            out.push(cvt(unsafe { libc::unlinkat(dfd, c(&fits).as_ptr(), 0) }).map(|_| 0));
            out
        })
    };
    let rs = run(&s.mnt);
    let rk = run(&k.mnt);
    assert_eq!(rs, rk, "stratafs (left) vs kernel overlay (right)");
    assert_eq!(rs[0], Ok(0), "fstatat of the deep lower dir");
    assert_eq!(rs[1], Ok(0), "create at 4095 bytes");
    assert_eq!(rs[3], Ok(4), "size of the deep file");
    assert_eq!(rs[4], Err(libc::ENAMETOOLONG), "create at 4096 bytes");
    let su = snapshot_upper_at(s.upper(), &rel_dir);
    let ku = snapshot_upper_at(k.upper(), &rel_dir);
    assert_eq!(
        su, ku,
        "deep upper entries: stratafs (left) vs kernel (right)"
    );
}

/// (name, kind, is-whiteout) of the entries of a deep upper directory.
fn snapshot_upper_at(upper: &Path, rel: &str) -> Vec<(String, String)> {
    at_root(upper, |dfd| {
        let fd = unsafe {
            libc::openat(
                dfd,
                cstr(rel).as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "open deep upper dir: {}", errno_name(errno()));
        let path = format!("/proc/self/fd/{fd}");
        let mut v: Vec<(String, String)> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let kind = if md.file_type().is_dir() {
                    "dir".to_string()
                } else if md.rdev() == 0 && !md.is_file() {
                    "whiteout".to_string()
                } else if let Some(n) = name.strip_prefix(".wh.") {
                    return (n.to_string(), "whiteout".to_string());
                } else {
                    format!("{:?}", kind_of(&md))
                };
                (name, kind)
            })
            .collect();
        unsafe { libc::close(fd) };
        v.sort();
        v
    })
}

#[test]
fn lower_symlinks_fifos_and_hard_links_are_visible_as_such() {
    let spec = stack(
        vec![
            Layer::new()
                .file("f", "content")
                .hard_link("h", "f")
                .symlink("s", "f")
                .symlink("dangling", "nowhere")
                .fifo("p"),
            Layer::new().file("below", "b"),
        ],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    let snap = snapshot_view(&p.s.mnt);
    assert_eq!(meta_of(&snap, "f").nlink, 2);
    assert_eq!(meta_of(&snap, "h").nlink, 2);
    assert_eq!(
        meta_of(&snap, "f").ino,
        meta_of(&snap, "h").ino,
        "hard links share st_ino"
    );
    assert_eq!(meta_of(&snap, "s").target.as_deref(), Some("f"));
    assert_eq!(
        meta_of(&snap, "dangling").target.as_deref(),
        Some("nowhere")
    );
    assert_eq!(meta_of(&snap, "p").kind, Kind::Fifo);
    assert_eq!(read_string(&p.s.m("s")), "content");
    assert_errno(
        sys::stat(&p.s.m("dangling")),
        libc::ENOENT,
        "stat dangling symlink",
    );
    p.assert_same_view();
}

#[test]
fn merged_dir_nlink_matches_the_kernel_overlay() {
    let spec = stack(
        vec![
            Layer::new()
                .dir("m/a")
                .dir("m/b")
                .dir("only0/x")
                .dir("only0/y"),
            Layer::new().dir("m/c").dir("m/a"),
        ],
        Layer::new().dir("m/u").dir("up/x"),
    );
    let p = Pair::new(&spec);
    let snap = snapshot_view(&p.k.mnt);
    // Kernel: merged dirs report 1, unmerged ones their real count.
    assert_eq!(meta_of(&snap, "m").nlink, 1);
    assert_eq!(meta_of(&snap, "").nlink, 1);
    assert_eq!(meta_of(&snap, "only0").nlink, 4);
    assert_eq!(meta_of(&snap, "up").nlink, 3);
    p.assert_same_view();
}

#[test]
fn read_only_mount_rejects_every_change_with_erofs() {
    let spec = read_only_stack(vec![
        Layer::new()
            .file("f", "data")
            .xattr("user.a", "1")
            .dir("d")
            .dir("e")
            .file("e/x", "x"),
        Layer::new().file("g", "g"),
    ]);
    let p = Pair::new(&spec);
    type Op = (&'static str, fn(&Path) -> Result<(), i32>);
    let ops: Vec<Op> = vec![
        ("create", |r| sys::write_file(&r.join("new"), b"x", 0o644)),
        ("open O_WRONLY", |r| {
            sys::open(&r.join("f"), libc::O_WRONLY, 0).map(drop)
        }),
        ("open O_RDWR", |r| {
            sys::open(&r.join("g"), libc::O_RDWR, 0).map(drop)
        }),
        ("truncate", |r| sys::truncate(&r.join("f"), 0)),
        ("mkdir", |r| sys::mkdir(&r.join("nd"), 0o755)),
        ("rmdir", |r| sys::rmdir(&r.join("d"))),
        ("unlink", |r| sys::unlink(&r.join("f"))),
        ("rename", |r| sys::rename(&r.join("f"), &r.join("f2"))),
        ("link", |r| sys::link(&r.join("f"), &r.join("f3"))),
        ("symlink", |r| sys::symlink("f", &r.join("s"))),
        ("mkfifo", |r| sys::mkfifo(&r.join("p"), 0o644)),
        ("chmod", |r| sys::chmod(&r.join("f"), 0o600)),
        ("chown", |r| sys::lchown(&r.join("f"), 0, 0)),
        ("utimes", |r| sys::lutimes(&r.join("f"), (1, 0), (2, 0))),
        ("setxattr", |r| {
            sys::lsetxattr(&r.join("f"), "user.b", b"2", 0)
        }),
        ("removexattr", |r| sys::lremovexattr(&r.join("f"), "user.a")),
    ];
    for (name, op) in &ops {
        let (a, b) = p.both(op);
        assert_eq!(a, Err(libc::EROFS), "{name} on read-only stratafs");
        assert_eq!(a, b, "{name}: stratafs vs kernel");
    }
    assert_eq!(read_string(&p.s.m("f")), "data");
    assert_eq!(read_string(&p.s.m("g")), "g");
    p.assert_same_view();
}

#[test]
fn read_only_mount_is_flagged_read_only() {
    let spec = read_only_stack(vec![Layer::new().file("f", "x"), Layer::new()]);
    let st = spec.build(Markers::Kernel);
    let _m = st.mount_strata();
    let v = sys::statvfs(&st.mnt).unwrap();
    assert_ne!(
        v.f_flag & libc::ST_RDONLY,
        0,
        "statvfs f_flag lacks ST_RDONLY"
    );
    let mi = mount_at(&st.mnt).expect("mountinfo entry");
    assert!(
        mi.mount_opts.split(',').any(|o| o == "ro"),
        "mount options {:?} lack ro",
        mi.mount_opts
    );
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    let spec = stack(vec![Layer::new().file("f", "x")], Layer::new());
    let p = Pair::new(&spec);
    let up = sys::statvfs(p.s.upper()).unwrap();
    let sv = sys::statvfs(&p.s.mnt).unwrap();
    let kv = sys::statvfs(&p.k.mnt).unwrap();
    assert_eq!(sv.f_namemax, 255, "f_namemax");
    assert_eq!(sv.f_namemax, kv.f_namemax);
    assert_eq!(
        sv.f_blocks * sv.f_frsize,
        up.f_blocks * up.f_frsize,
        "total size"
    );
    assert_eq!(sv.f_files, up.f_files, "f_files");
    assert_eq!(
        kv.f_blocks * kv.f_frsize,
        up.f_blocks * up.f_frsize,
        "kernel total size"
    );
    assert_eq!(
        sv.f_flag & libc::ST_RDONLY,
        0,
        "writable mount flagged read-only"
    );
}

#[test]
fn lower_hard_links_stay_linked_across_copy_up_and_remount() {
    // As the kernel overlay with index=on: the copy is made once, in the
    // index; the name written through gets a link to it, the other names
    // show it through the index (docs/COMPAT.md item 3).
    let spec = stack(
        vec![Layer::new()
            .file("d1/a", "original")
            .hard_link("d2/b", "d1/a")
            .hard_link("c", "d1/a")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    // Look two of the names up first, so the kernel knows them as one
    // inode; "c" is first seen after the copy-up.
    let before = ino(&p.s.m("d1/a"));
    assert_eq!(ino(&p.s.m("d2/b")), before, "one inode before copy-up");
    // Rootless the kernel overlay keeps no index (it breaks the link on
    // copy-up): compare with it as root only.
    let kernel = !is_rootless();
    let append = |r: &Path| {
        let fd = sys::open(&r.join("d2/b"), libc::O_WRONLY | libc::O_APPEND, 0)?;
        sys::write(&fd, b"+more").map(|_| ())
    };
    let appended = if kernel {
        p.same("append through d2/b", append)
    } else {
        append(&p.s.mnt)
    };
    assert_eq!(appended, Ok(()));
    for name in ["d1/a", "d2/b", "c"] {
        assert_eq!(read_string(&p.s.m(name)), "original+more", "{name}");
        assert_eq!(ino(&p.s.m(name)), before, "{name} keeps the inode number");
        assert_eq!(
            sys::lstat(&p.s.m(name)).map(|st| st.st_nlink),
            Ok(3),
            "{name}"
        );
        if kernel {
            let n = p.same(name, |r| sys::lstat(&r.join(name)).map(|st| st.st_nlink));
            assert_eq!(n, Ok(3), "{name}");
        }
    }
    if kernel {
        p.assert_same_view();
        p.assert_same_upper();
    }
    // The upper holds the name written through, a link of the index entry;
    // the lower is untouched.
    let ub = sys::lstat(&p.s.u("d2/b")).unwrap();
    assert_eq!(ub.st_nlink, 2, "d2/b and its index entry");
    assert_errno(
        sys::lstat(&p.s.u("d1/a")),
        libc::ENOENT,
        "d1/a not linked up",
    );
    assert_eq!(
        std::fs::read_to_string(p.s.l(0, "d1/a")).unwrap(),
        "original"
    );
    // And a remount shows the same.
    let Pair { sm, km, s, k } = p;
    drop((sm, km, k));
    let _m = s.mount_strata();
    // As root the lower file's number stays, rootless too where the lower
    // filesystem's handles name the inode; otherwise (no file handles to
    // open) the copy in the index is numbered by itself after a remount,
    // the same through every name (docs/COMPAT.md, item 4).
    let want = if is_rootless() && !sys::handles_name_inodes(&s.l(0, "")) {
        let copy = ino(&s.m("d1/a"));
        assert_ne!(copy, before, "rootless: the copy's own number");
        copy
    } else {
        before
    };
    for name in ["d1/a", "d2/b", "c"] {
        assert_eq!(
            read_string(&s.m(name)),
            "original+more",
            "{name} after remount"
        );
        assert_eq!(ino(&s.m(name)), want, "{name} inode after remount");
        assert_eq!(
            sys::lstat(&s.m(name)).unwrap().st_nlink,
            3,
            "{name} nlink after remount"
        );
    }
}
