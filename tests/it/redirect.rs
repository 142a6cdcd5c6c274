//! `redirect_dir=`: renaming directories that have lower content, the
//! `overlay.redirect` records that keep track of it, and reading such
//! records (written by stratafs or by the kernel overlay), next to the
//! kernel overlay mounted with `index=on,redirect_dir=on`. Rootless, where
//! the kernel refuses `redirect_dir=on` with `userxattr`, the same sequences
//! run on stratafs alone and are checked against the expected tree.

use crate::common::*;
use std::path::Path;

/// Lower directories with content, the names the cases move around.
fn lowers() -> TempStackBuilder {
    stack(
        vec![Layer::new()
            .file("A/B/f", "f")
            .file("C/g", "g")
            .file("D/h", "h")
            .file("E/e", "e")
            .file("F/x", "x")
            .file("G/y", "y")
            .file("H/z", "z")
            .file("I/i", "i")
            .file("J/j", "j")
            .file("X/deep/q", "q")
            .file("plain", "p")],
        Layer::new(),
    )
}

/// Every case of the rename: same directory, across directories, renamed
/// twice, back to the old name, into a new and into a renamed directory,
/// removed after a rename, `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
fn cases(m: &Path) -> Vec<(&'static str, Result<(), i32>)> {
    let p = |r: &str| m.join(r);
    vec![
        ("C -> C2", sys::rename(&p("C"), &p("C2"))),
        ("A/B -> D/B2", sys::rename(&p("A/B"), &p("D/B2"))),
        ("E -> A/E", sys::rename(&p("E"), &p("A/E"))),
        ("A/E -> A/E3", sys::rename(&p("A/E"), &p("A/E3"))),
        ("mkdir P", sys::mkdir(&p("P"), 0o755)),
        ("D -> P/D", sys::rename(&p("D"), &p("P/D"))),
        ("X -> P/D/X", sys::rename(&p("X"), &p("P/D/X"))),
        ("C2 -> C2b", sys::rename(&p("C2"), &p("C2b"))),
        ("C2b -> C", sys::rename(&p("C2b"), &p("C"))),
        ("F -> F2", sys::rename(&p("F"), &p("F2"))),
        ("rm F2/x", sys::unlink(&p("F2/x"))),
        ("rmdir F2", sys::rmdir(&p("F2"))),
        (
            "G -> G2 noreplace",
            sys::rename2(&p("G"), &p("G2"), sys::RENAME_NOREPLACE),
        ),
        (
            "G2 -> H noreplace",
            sys::rename2(&p("G2"), &p("H"), sys::RENAME_NOREPLACE),
        ),
        (
            "I <-> J",
            sys::rename2(&p("I"), &p("J"), sys::RENAME_EXCHANGE),
        ),
        ("mkdir K", sys::mkdir(&p("K"), 0o755)),
        (
            "H <-> K",
            sys::rename2(&p("H"), &p("K"), sys::RENAME_EXCHANGE),
        ),
        (
            "write P/D/X/deep/n",
            sys::write_file(&p("P/D/X/deep/n"), b"n", 0o644),
        ),
        ("mkdir C", sys::mkdir(&p("C"), 0o755)),
    ]
}

/// What `cases` leaves: the merged tree (path, kind, size).
const EXPECTED: &[&str] = &[
    " Dir",
    "A Dir",
    "A/E3 Dir",
    "A/E3/e File 1",
    "C Dir",
    "C/g File 1",
    "G2 Dir",
    "G2/y File 1",
    "H Dir",
    "I Dir",
    "I/j File 1",
    "J Dir",
    "J/i File 1",
    "K Dir",
    "K/z File 1",
    "P Dir",
    "P/D Dir",
    "P/D/B2 Dir",
    "P/D/B2/f File 1",
    "P/D/X Dir",
    "P/D/X/deep Dir",
    "P/D/X/deep/n File 1",
    "P/D/X/deep/q File 1",
    "P/D/h File 1",
    "plain File 1",
];

/// The merged tree, sizes of directories left out (they depend on the
/// filesystem).
fn tree(m: &Path) -> Vec<String> {
    tree_listing(m)
        .into_iter()
        .map(|l| match l.rsplit_once(' ') {
            Some((head, _)) if head.ends_with(" Dir") => head.to_string(),
            _ => l,
        })
        .collect()
}

/// The redirect record's name in the namespace the tests' stacks use.
pub(crate) fn redirect_key() -> &'static str {
    if OpaqueForm::kernel() == OpaqueForm::Trusted {
        "trusted.overlay.redirect"
    } else {
        "user.overlay.redirect"
    }
}

/// The overlay's redirect and opaque records below `upper`, by path.
fn records(upper: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(upper.to_path_buf(), String::new())];
    while let Some((p, rel)) = todo.pop() {
        for n in sys::llistxattr(&p).unwrap_or_default() {
            if n.ends_with("overlay.redirect") || n.ends_with("overlay.opaque") {
                let v = sys::lgetxattr(&p, &n).unwrap_or_default();
                let short = n.rsplit('.').next().unwrap_or_default().to_string();
                out.push(format!("{rel}: {short}={}", String::from_utf8_lossy(&v)));
            }
        }
        if sys::lstat(&p).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
            for name in list_dir(&p).unwrap_or_default() {
                todo.push((p.join(&name), format!("{rel}/{name}")));
            }
        }
    }
    out.sort();
    out
}

/// What `cases` must answer: all succeed but a NOREPLACE rename onto an
/// existing directory and a mkdir over the directory renamed back.
fn expected_results(
    got: &[(&'static str, Result<(), i32>)],
) -> Vec<(&'static str, Result<(), i32>)> {
    got.iter()
        .map(|(w, _)| {
            let r = match *w {
                "G2 -> H noreplace" | "mkdir C" => Err(libc::EEXIST),
                _ => Ok(()),
            };
            (*w, r)
        })
        .collect()
}

#[test]
fn renamed_lower_directories_match_the_kernel() {
    if is_rootless() {
        // The kernel refuses redirect_dir=on with userxattr: stratafs
        // alone, against the expected outcome (the root run checks the
        // same outcome against the kernel).
        let s = lowers().build(Markers::AsWritten);
        let sm = s.mount_strata_with("redirect_dir=on");
        let got = cases(&s.mnt);
        assert_eq!(got, expected_results(&got));
        assert_eq!(tree(&s.mnt), EXPECTED);
        drop(sm);
        let sm = s.mount_strata();
        assert_eq!(tree(&s.mnt), EXPECTED, "after a remount");
        drop(sm);
        let recs = records(s.upper());
        assert!(
            recs.contains(&"/P/D/B2: redirect=/A/B".to_string()),
            "{recs:?}"
        );
        return;
    }
    let p = Pair::with_options(&lowers(), "redirect_dir=on");
    let (s, k) = p.both(cases);
    assert_eq!(s, k, "results: stratafs (left), kernel (right)");
    assert_eq!(s, expected_results(&s));
    p.assert_same_view();
    assert_eq!(tree(&p.s.mnt), EXPECTED);
    let Pair { sm, km, s, k } = p;
    drop((sm, km));
    assert_eq!(
        records(s.upper()),
        records(k.upper()),
        "records: stratafs (left), kernel (right)"
    );
    // Each reads the other's upper, and stratafs its own after a remount
    // without redirect_dir=on (redirects are followed by default).
    let sm = s.mount_strata();
    assert_eq!(tree(&s.mnt), EXPECTED, "stratafs remounted");
    drop(sm);
    let km = k.mount_kernel_with("redirect_dir=on");
    let kernel_tree = tree(&k.mnt);
    drop(km);
    assert_eq!(kernel_tree, EXPECTED);
    let sk = mount_kernel_with(
        s.lowers(),
        Some(s.upper()),
        Some(s.work()),
        &s.mnt,
        "redirect_dir=on",
    );
    assert_eq!(tree(&s.mnt), EXPECTED, "the kernel on stratafs' upper");
    drop(sk);
    let ks = try_mount_stratafs(
        &overlay_opts(k.lowers(), Some(k.upper()), Some(k.work())),
        &k.mnt,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree(&k.mnt), EXPECTED, "stratafs on the kernel's upper");
    drop(ks);
}

#[test]
fn without_redirect_dir_on_a_lower_directory_cannot_be_renamed() {
    let s = lowers().build(Markers::AsWritten);
    for opt in [
        "",
        "redirect_dir=off",
        "redirect_dir=follow",
        "redirect_dir=nofollow",
    ] {
        let sm = if opt.is_empty() {
            s.mount_strata()
        } else {
            s.mount_strata_with(opt)
        };
        assert_errno(
            sys::rename(&s.m("C"), &s.m("C2")),
            libc::EXDEV,
            &format!("rename of a lower dir with {opt:?}"),
        );
        drop(sm);
    }
    assert!(records(s.upper()).is_empty());
}

#[test]
fn nofollow_refuses_a_redirect_and_off_follows_it() {
    let s = lowers().build(Markers::AsWritten);
    let sm = s.mount_strata_with("redirect_dir=on");
    assert_ok(sys::rename(&s.m("C"), &s.m("C2")), "rename");
    drop(sm);
    let sm = s.mount_strata_with("redirect_dir=nofollow");
    assert_errno(sys::lstat(&s.m("C2")), libc::EPERM, "lookup with nofollow");
    drop(sm);
    let sm = s.mount_strata_with("redirect_dir=off");
    assert_eq!(read_string(&s.m("C2/g")), "g");
    assert_errno(sys::lstat(&s.m("C")), libc::ENOENT, "old name");
    drop(sm);
}

/// A crafted upper whose redirects point outside the layers, through a
/// symlink, at nothing or at themselves: refused or harmless, never
/// followed outside a layer root.
#[test]
fn hostile_redirects_are_refused() {
    let s = stack(
        vec![Layer::new()
            .file("secret/inside", "in")
            .symlink("link", "/etc")
            .dir("self")
            .file("self/own", "o")],
        Layer::new()
            .dir("dotdot")
            .dir("slash")
            .dir("empty")
            .dir("viasym")
            .dir("self")
            .dir("missing")
            .dir("long"),
    )
    .build(Markers::AsWritten);
    let key = redirect_key();
    let long = format!("/{}", "a".repeat(300));
    for (dir, v) in [
        ("dotdot", "/../../etc"),
        ("slash", "a/b"),
        ("empty", "//secret"),
        ("viasym", "/link"),
        ("self", "/self"),
        ("missing", "/nothing/here"),
        ("long", long.as_str()),
    ] {
        assert_ok(sys::lsetxattr(&s.u(dir), key, v.as_bytes(), 0), dir);
    }
    let sm = s.mount_strata();
    for bad in ["dotdot", "slash", "empty", "long"] {
        assert_errno(sys::lstat(&s.m(bad)), libc::EINVAL, bad);
    }
    // A symlink on the path is not followed: nothing below merges.
    assert_eq!(list_dir(&s.m("viasym")), Ok(vec![]));
    // Pointing at itself is just its own lower directory.
    assert_eq!(list_dir(&s.m("self")), Ok(vec!["own".to_string()]));
    assert_eq!(list_dir(&s.m("missing")), Ok(vec![]));
    let log = sm.daemon_stderr();
    drop(sm);
    assert!(log.contains("invalid redirect"), "{log}");
}

/// A crash between the steps of a directory rename (the copy-up of the
/// directory, its redirect, the rename with its whiteout) shows the old
/// or the new state: the redirect written before the rename names what
/// the old name already shows.
#[test]
fn a_redirect_written_before_the_rename_shows_the_old_state() {
    let s = lowers().build(Markers::AsWritten);
    let sm = s.mount_strata_with("redirect_dir=on");
    // Copy C and A up (as the rename does first) without renaming.
    assert_ok(sys::chmod(&s.m("C"), 0o755), "copy-up C");
    assert_ok(sys::mkdir(&s.m("A/new"), 0o755), "copy-up A");
    drop(sm);
    let key = redirect_key();
    assert_ok(sys::lsetxattr(&s.u("C"), key, b"C", 0), "relative");
    assert_ok(sys::lsetxattr(&s.u("A"), key, b"/A", 0), "absolute");
    let sm = s.mount_strata();
    assert_eq!(read_string(&s.m("C/g")), "g");
    assert_eq!(
        list_dir(&s.m("A")),
        Ok(vec!["B".to_string(), "new".to_string()])
    );
    drop(sm);
}

/// Directory renames (within a directory, into one and back out) while the
/// daemon is killed with SIGKILL at a random moment: after a remount every
/// directory shows up exactly once, at its name before or after the
/// rename that was under way, with its lower content.
#[test]
fn sigkill_during_directory_renames_shows_the_old_or_the_new_name() {
    const IDS: [&str; 4] = ["d0", "d1", "d2", "d3"];
    let mut lower = Layer::new().file("Q/keep", "k");
    for id in IDS {
        lower = lower.file(&format!("{id}/id"), id);
    }
    let s = stack(vec![lower], Layer::new()).build(Markers::AsWritten);
    let mut at: std::collections::BTreeMap<&str, String> =
        IDS.iter().map(|id| (*id, id.to_string())).collect();
    let mut rng = Rng::new(env_u64("STRATAFS_REDIRECT_CRASH_SEED", 0x5244_4952));
    for round in 0..8 {
        let m = s.mount_strata_with("redirect_dir=on");
        let killer = m.sigkill_after(std::time::Duration::from_millis(1 + rng.below(30) as u64));
        let mut under_way = None;
        for n in 0.. {
            let id = *rng.pick(&IDS);
            let from = at[id].clone();
            let to = if from.starts_with("Q/") || rng.chance(50) {
                format!("{id}-{round}-{n}")
            } else {
                format!("Q/{id}-{round}-{n}")
            };
            under_way = Some((id, to.clone()));
            if sys::rename(&s.m(&from), &s.m(&to)).is_err() {
                break;
            }
            at.insert(id, to);
            under_way = None;
        }
        let _ = killer.join();
        drop(m);
        let m = s.mount_strata();
        for id in IDS {
            let shows = |p: &str| std::fs::read_to_string(s.m(&format!("{p}/id"))).ok();
            let old = shows(&at[id]);
            let new = match &under_way {
                Some((u, to)) if *u == id => shows(to),
                _ => None,
            };
            match (old.as_deref(), new.as_deref()) {
                (Some(v), None) => assert_eq!(v, id),
                (None, Some(v)) => {
                    assert_eq!(v, id);
                    let to = under_way.as_ref().map(|(_, t)| t.clone());
                    at.insert(id, to.unwrap_or_default());
                }
                other => panic!(
                    "round {round}: {id} at {} / {under_way:?}: {other:?}",
                    at[id]
                ),
            }
        }
        let mut want_top: Vec<String> = vec!["Q".to_string()];
        let mut want_q: Vec<String> = vec!["keep".to_string()];
        for p in at.values() {
            match p.strip_prefix("Q/") {
                Some(n) => want_q.push(n.to_string()),
                None => want_top.push(p.clone()),
            }
        }
        want_top.sort();
        want_q.sort();
        assert_eq!(list_dir(&s.mnt), Ok(want_top), "round {round}");
        assert_eq!(list_dir(&s.m("Q")), Ok(want_q), "round {round}");
        drop(m);
    }
}

/// A whiteout of either form on the path an absolute redirect names ends
/// the search there: nothing of a lower layer below it shows through.
#[test]
fn a_whiteout_on_a_redirect_path_hides_the_layers_below() {
    for form in WhiteoutForm::ALL {
        let s = stack(
            vec![
                Layer::new().file("c/g", "g"),
                Layer::new().whiteout_as("c", form),
                Layer::new().file("c/hidden", "h"),
            ],
            Layer::new().dir("P"),
        )
        .build(Markers::AsWritten);
        let m = s.mount_strata_with("redirect_dir=on");
        assert_ok(sys::rename(&s.m("c"), &s.m("P/moved")), "rename");
        assert_eq!(
            list_dir(&s.m("P/moved")),
            Ok(vec!["g".to_string()]),
            "{form:?}"
        );
        drop(m);
        let m = s.mount_strata();
        assert_eq!(
            list_dir(&s.m("P/moved")),
            Ok(vec!["g".to_string()]),
            "{form:?} after a remount"
        );
        drop(m);
    }
}

/// A rename that fails with ENOTEMPTY still copies the source up and marks
/// the target's parent impure (as the kernel does); the next listing of
/// that parent, which holds nothing with an origin, drops the mark again
/// on both, also when the parent's listing had been read (and could be
/// cached by the kernel) before the failed rename.
#[test]
fn a_failed_rename_leaves_no_impure_mark_after_the_next_listing() {
    let desc = stack(
        vec![Layer::new().file("C/g", "g")],
        Layer::new().file("A/D/x", "x"),
    );
    let impure = |upper: &Path| {
        let key = redirect_key().replace("redirect", "impure");
        sys::lgetxattr(&upper.join("A"), &key).ok()
    };
    let run = |m: &Path| {
        let before = list_dir(&m.join("A"));
        let r = sys::rename(&m.join("C"), &m.join("A/D"));
        let after = list_dir(&m.join("A"));
        (before, r, after)
    };
    let want = (
        Ok(vec!["D".to_string()]),
        Err(libc::ENOTEMPTY),
        Ok(vec!["D".to_string()]),
    );
    if is_rootless() {
        // The kernel refuses redirect_dir=on with userxattr.
        let s = desc.build(Markers::AsWritten);
        let sm = s.mount_strata_with("redirect_dir=on");
        assert_eq!(run(&s.mnt), want);
        drop(sm);
        assert_eq!(impure(s.upper()), None);
        return;
    }
    let p = Pair::with_options(&desc, "redirect_dir=on");
    let (s, k) = p.both(run);
    assert_eq!(s, k, "stratafs (left), kernel (right)");
    assert_eq!(s, want);
    p.assert_same_upper();
    assert_eq!(impure(p.s.upper()), None, "stratafs' upper");
    assert_eq!(impure(p.k.upper()), None, "the kernel's upper");
}
