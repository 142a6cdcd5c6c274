//! Overlay2 layer stores (`stratafs mount --store`, `stratafs inspect`) and
//! very deep stacks.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// A Docker/containers-storage style store: base <- mid <- cont-init <- cont.
fn make_store(root: &Path) {
    let layer = |id: &str, link: &str, lower: Option<&str>| {
        let d = root.join(id);
        std::fs::create_dir_all(d.join("diff")).unwrap();
        std::fs::write(d.join("link"), link).unwrap();
        if let Some(l) = lower {
            std::fs::write(d.join("lower"), l).unwrap();
        }
        std::fs::create_dir_all(root.join("l")).unwrap();
        symlink(format!("../{id}/diff"), root.join("l").join(link)).unwrap();
        d.join("diff")
    };
    let base = layer("base", "AAAA", None);
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/os-release"), "base").unwrap();
    std::fs::write(base.join("etc/removed"), "old").unwrap();
    std::fs::write(base.join("etc/hosts"), "base hosts").unwrap();
    let mid = layer("mid", "BBBB", Some("l/AAAA"));
    std::fs::create_dir_all(mid.join("etc")).unwrap();
    std::fs::write(mid.join("etc/os-release"), "mid").unwrap();
    std::fs::write(mid.join("etc/.wh.removed"), "").unwrap();
    let init = layer("cont-init", "CCCC", Some("l/BBBB:l/AAAA"));
    std::fs::create_dir_all(init.join("etc")).unwrap();
    std::fs::write(init.join("etc/hosts"), "container hosts").unwrap();
    layer("cont", "DDDD", Some("l/CCCC:l/BBBB:l/AAAA"));
    std::fs::create_dir_all(root.join("cont/work")).unwrap();
}

fn stratafs() -> Command {
    Command::new(stratafs_bin())
}

fn run(args: &[&str]) -> std::process::Output {
    stratafs().args(args).output().unwrap()
}

#[test]
fn mount_a_store_layer_by_id() {
    let tmp = tempdir();
    let store = tmp.path().join("overlay2");
    make_store(&store);
    let mnt = tmp.path().join("merged");
    std::fs::create_dir(&mnt).unwrap();
    let s = store.to_str().unwrap();
    let guard = ExternalMount::run(
        stratafs().args(["mount", "--store", s, "cont", mnt.to_str().unwrap()]),
        &mnt,
    );
    assert_eq!(read_string(&mnt.join("etc/os-release")), "mid");
    assert_eq!(read_string(&mnt.join("etc/hosts")), "container hosts");
    assert!(!mnt.join("etc/removed").exists(), "AUFS whiteout of mid");
    std::fs::write(mnt.join("etc/new"), "w").unwrap();
    drop(guard);
    assert_eq!(
        std::fs::read_to_string(store.join("cont/diff/etc/new")).unwrap(),
        "w"
    );

    // Read-only: the layer's own diff on top of its chain.
    let guard = ExternalMount::run(
        stratafs().args([
            "mount",
            "--store",
            s,
            "--read-only",
            "mid",
            mnt.to_str().unwrap(),
        ]),
        &mnt,
    );
    assert_eq!(read_string(&mnt.join("etc/os-release")), "mid");
    assert_eq!(read_string(&mnt.join("etc/hosts")), "base hosts");
    let e = std::fs::write(mnt.join("x"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    drop(guard);
}

#[test]
fn store_errors_name_what_is_missing() {
    let tmp = tempdir();
    let store = tmp.path().join("overlay2");
    make_store(&store);
    let mnt = tmp.path().join("merged");
    std::fs::create_dir(&mnt).unwrap();
    let s = store.to_str().unwrap();
    let m = mnt.to_str().unwrap();
    let check = |args: &[&str], needle: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should name {needle}"
        );
    };
    check(&["mount", "--store", s, "nosuch", m], "nosuch");
    std::fs::remove_file(store.join("l/BBBB")).unwrap();
    check(&["mount", "--store", s, "cont", m], "l/BBBB");
    check(&["mount", "--store", s, "../etc", m], "not a layer id");
    assert_eq!(tree_listing(&mnt).len(), 1, "nothing mounted or created");
}

#[test]
fn inspect_reports_layers_and_what_they_hide() {
    let tmp = tempdir();
    let store = tmp.path().join("overlay2");
    make_store(&store);
    std::fs::write(store.join("cont/diff/big"), vec![0u8; 3 << 20]).unwrap();
    let s = store.to_str().unwrap();
    let out = run(&["inspect", "--store", s, "cont"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("ENTRIES"), "{text}");
    assert!(
        lines[1].contains("upper") && lines[1].contains("cont") && lines[1].contains("3.0 MiB"),
        "{text}"
    );
    assert!(text.contains("cont-init (init)"), "{text}");
    assert!(text.contains("deletes 1: etc/removed"), "{text}");
    assert!(text.contains("overrides 1: etc/os-release"), "{text}");

    let out = run(&["inspect", "--store", s, "cont", "--json"]);
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    for key in [
        "\"LowerDir\":",
        "\"UpperDir\":",
        "\"WorkDir\":",
        "\"MergedDir\":",
        "\"deletes\":[\"etc/removed\"]",
    ] {
        assert!(json.contains(key), "{key} in {json}");
    }
    // Valid JSON, when a parser is at hand.
    if let Ok(mut py) = Command::new("python3")
        .args([
            "-c",
            "import json,sys; d=json.load(sys.stdin); print(len(d['Layers']))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        py.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
        let o = py.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "4",
            "json: {json}"
        );
    }

    // The -o form.
    let lower = format!(
        "lowerdir={}:{}",
        store.join("mid/diff").display(),
        store.join("base/diff").display()
    );
    let out = run(&["inspect", "-o", &lower]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("deletes 1: etc/removed"));
}

#[test]
fn a_stack_of_600_layers_mounts_and_works() {
    let tmp = tempdir();
    let n = 600;
    let mut lowers = Vec::new();
    for i in 0..n {
        let d = tmp.path().join(format!("layer{i:03}"));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join(format!("etc/file{i:03}")), format!("{i}")).unwrap();
        std::fs::write(d.join("etc/version"), format!("{i}")).unwrap();
        lowers.push(d);
    }
    let (u, w, m) = (
        tmp.path().join("u"),
        tmp.path().join("w"),
        tmp.path().join("m"),
    );
    for d in [&u, &w, &m] {
        std::fs::create_dir(d).unwrap();
    }
    let opts = overlay_opts(&lowers, Some(&u), Some(&w));
    assert!(
        opts.len() > 20_000,
        "the option string is long: {}",
        opts.len()
    );
    let _mount = try_mount_stratafs(&opts, &m).unwrap_or_else(|e| panic!("{e}"));
    let names = std::fs::read_dir(m.join("etc")).unwrap().count();
    assert_eq!(names, n + 1);
    assert_eq!(read_string(&m.join("etc/version")), "0", "top layer wins");
    assert_eq!(
        read_string(&m.join("etc/file599")),
        "599",
        "bottom layer visible"
    );
    std::fs::write(m.join("etc/file599"), "changed").unwrap();
    assert_eq!(
        std::fs::read_to_string(u.join("etc/file599")).unwrap(),
        "changed"
    );
    std::fs::remove_file(m.join("etc/file300")).unwrap();
    assert!(!m.join("etc/file300").exists());
}
