//! Daemon lifecycle: signals, descriptor use.

use std::time::Duration;

use crate::common::*;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn sigterm_sigint_and_sighup_unmount_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let spec = stack(vec![Layer::new().file("f", "x")], Layer::new());
        let st = spec.build(Markers::Kernel);
        let mut m = st.mount_strata();
        std::fs::write(st.m("g"), "y").unwrap();
        let pid = m.daemon_pid().unwrap();
        unsafe { libc::kill(pid as i32, sig) };
        let status = m
            .wait_daemon(Duration::from_secs(10))
            .expect("daemon exits after the signal");
        assert_eq!(status.code(), Some(0), "signal {sig}: exit status");
        assert!(mount_at(&st.mnt).is_none(), "signal {sig}: still mounted");
        assert_eq!(std::fs::read_to_string(st.u("g")).unwrap(), "y");
    }
}

#[test]
fn descriptors_do_not_leak() {
    let spec = stack(
        vec![Layer::new().file("d/lower", "l").dir("e")],
        Layer::new(),
    );
    let st = spec.build(Markers::Kernel);
    let m = st.mount_strata();
    let pid = m.daemon_pid().unwrap();
    // Warm up: the layer roots and the first nodes.
    std::fs::read_dir(st.m("d")).unwrap().count();
    let before = fd_count(pid);
    for i in 0..400 {
        let d = st.m(&format!("e/dir{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::remove_dir(&d).unwrap();
        let f = st.m(&format!("d/file{i}"));
        std::fs::write(&f, vec![b'x'; 5000]).unwrap();
        // mmap and close before unmapping.
        let fd = sys::open(&f, libc::O_RDONLY, 0).unwrap();
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                5000,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        drop(fd);
        assert_eq!(unsafe { *(p as *const u8) }, b'x');
        unsafe { libc::munmap(p, 5000) };
        std::fs::remove_file(&f).unwrap();
    }
    // Copy-up of the lower file and removal of everything.
    std::fs::write(st.m("d/lower"), "changed").unwrap();
    std::fs::remove_file(st.m("d/lower")).unwrap();
    // The kernel sends the last RELEASEs a moment after `close` and
    // `munmap` returned (later still on a busy machine): wait for them. A
    // leak would keep hundreds open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut after = fd_count(pid);
    while after > before + 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        after = fd_count(pid);
    }
    assert!(
        after <= before + 4,
        "daemon descriptors grew from {before} to {after} over 400 rounds"
    );
}

#[test]
fn works_when_installed_as_fuse_overlayfs() {
    // Engines look for `fuse-overlayfs` on PATH.
    let tmp = tempdir();
    let bin = tmp.path().join("fuse-overlayfs");
    std::fs::copy(stratafs_bin(), &bin).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        first
            .split_whitespace()
            .any(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "{first}"
    );
    let spec = stack(vec![Layer::new().file("f", "x")], Layer::new());
    let st = spec.build(Markers::Kernel);
    let _guard = ExternalMount::run(
        std::process::Command::new(&bin)
            .arg("-o")
            .arg(st.overlay_opts())
            .arg(&st.mnt),
        &st.mnt,
    );
    assert_eq!(read_string(&st.m("f")), "x");
    let info = mount_at(&st.mnt).expect("mounted");
    assert!(info.fstype.starts_with("fuse"), "{info:?}");
}

/// A walk over more directories than the descriptor budget allows: every
/// entry is seen, twice, and the daemon stays within `max_fds=` by letting
/// the kernel drop old directories from its cache.
#[test]
fn a_walk_over_more_directories_than_the_fd_budget_stays_within_it() {
    let max_fds = 200;
    let (n_top, n_sub) = (20, 60); // 1,220 directories
    let mut lower = Layer::new();
    for i in 0..n_top {
        for j in 0..n_sub {
            lower = lower.file(&format!("a{i}/b{j}/f"), "x");
        }
    }
    let spec = stack(vec![lower, Layer::new().dir("a0")], Layer::new());
    let st = spec.build(Markers::Kernel);
    let m = st.mount_strata_with(&format!("max_fds={max_fds}"));
    let pid = m.daemon_pid().unwrap();
    let mut most = 0;
    for pass in 0..2 {
        let mut files = 0;
        for i in 0..n_top {
            for e in std::fs::read_dir(st.m(&format!("a{i}"))).unwrap() {
                let sub = e.unwrap().path();
                for f in std::fs::read_dir(&sub)
                    .unwrap_or_else(|e| panic!("pass {pass}: read_dir {sub:?}: {e}"))
                {
                    let f = f.unwrap().path();
                    assert_eq!(std::fs::read_to_string(&f).unwrap(), "x", "{f:?}");
                    files += 1;
                }
                most = most.max(fd_count(pid));
            }
        }
        assert_eq!(files, n_top * n_sub, "pass {pass}: files seen");
    }
    // The budget is kept by asking the kernel to forget old directories,
    // which it does a moment later: a busy machine sees more open
    // meanwhile (up to 262 with max_fds=200 at a load of 12 on 2 CPUs).
    // The default budget (3/4 of the open-file limit) leaves a quarter of
    // the limit for that; without the budget the walk would hold one
    // descriptor per directory (1,220 here).
    let slack = max_fds / 2;
    assert!(
        most <= max_fds + slack,
        "daemon held up to {most} descriptors with max_fds={max_fds}"
    );
}

#[test]
fn a_daemon_unmounted_from_outside_leaves_the_next_mount_there_alone() {
    // A container engine unmounts a container's `merged` directory and
    // mounts it again at once; the old daemon, ending after that, must not
    // unmount the new mount by its path.
    let spec = stack(vec![Layer::new().file("f", "x")], Layer::new());
    let st = spec.build(Markers::Kernel);
    let mut m = st.mount_strata();
    assert_eq!(std::fs::read_to_string(st.m("f")).unwrap(), "x");
    let pid = m.daemon_pid().unwrap() as i32;
    let next = tempdir();
    std::fs::write(next.path().join("marker"), "next").unwrap();
    // The daemon is stopped until the next mount is in place, so that it
    // sees its session end only then.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let umounted = sys::umount2(&st.mnt, 0);
    let bound = umounted.and_then(|()| {
        sys::mount(
            next.path().to_str().unwrap(),
            &st.mnt,
            "",
            libc::MS_BIND,
            "",
        )
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    if let Err(e) = bound {
        skip(
            "lifecycle::a_daemon_unmounted_from_outside_leaves_the_next_mount_there_alone",
            &format!("cannot unmount and bind-mount here (errno {e})"),
        );
        return;
    }
    let status = m.wait_daemon(Duration::from_secs(10));
    let still = std::fs::read_to_string(st.mnt.join("marker"));
    let _ = sys::umount2(&st.mnt, 0);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "daemon exit after the unmount"
    );
    assert_eq!(
        still.ok().as_deref(),
        Some("next"),
        "the mount placed after the unmount was unmounted by the old daemon"
    );
}
