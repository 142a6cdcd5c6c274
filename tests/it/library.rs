//! The library API as a CI harness uses it (the example of docs/LIBRARY.md).

use std::process::Command;

use stratafs::api::{Layer, OverlayBuilder, TempStack};

use crate::common::skip;

/// Whether FUSE can be mounted here; if not, `test` is skipped.
fn fuse_usable(test: &str) -> bool {
    let usable = std::path::Path::new("/dev/fuse").exists();
    if !usable {
        skip(test, "no /dev/fuse");
    }
    usable
}

#[test]
fn build_in_a_layered_tree() -> Result<(), Box<dyn std::error::Error>> {
    if !fuse_usable("build_in_a_layered_tree") {
        return Ok(());
    }
    if Command::new("make").arg("--version").output().is_err() {
        skip("build_in_a_layered_tree", "no make");
        return Ok(());
    }
    // The "base image": sources and a Makefile in a read-only lower layer.
    let stack = TempStack::new(&[Layer::new()
        .file("src/main.c", "int main(void) { return 0; }\n")
        .file("src/Makefile", "app: main.c\n\tcc -o app main.c\n")])?;
    let mount = stack.mount()?;

    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(mount.path().join("src"))
        .status()?;
    assert!(status.success());

    // The build wrote only to the upper layer.
    assert!(stack.upper().join("src/app").exists());
    assert!(!stack.lowers()[0].join("src/app").exists());
    let mountpoint = mount.path().to_path_buf();
    mount.unmount()?;
    // Unmounted: the mount point is an empty directory again.
    assert_eq!(std::fs::read_dir(&mountpoint)?.count(), 0);
    Ok(())
}

#[test]
fn guard_unmounts_when_a_test_panics() -> Result<(), Box<dyn std::error::Error>> {
    if !fuse_usable("guard_unmounts_when_a_test_panics") {
        return Ok(());
    }
    let stack = TempStack::new(&[Layer::new().file("f", "x")])?;
    let mnt = stack.mountpoint();
    let r = std::panic::catch_unwind(|| {
        let _mount = stack.mount().expect("mount");
        assert!(mnt.join("f").exists());
        panic!("test failure inside the mount");
    });
    assert!(r.is_err());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&format!(" {} ", mnt.display())),
        "still mounted after the panic"
    );
    Ok(())
}

/// Dropping a mount while a file in it is still open leaves no mount
/// behind (it is detached, and goes when the file is closed); the data
/// written before is in the upper layer.
#[test]
fn dropping_a_busy_mount_leaves_no_mount_behind() -> Result<(), Box<dyn std::error::Error>> {
    if !fuse_usable("dropping_a_busy_mount_leaves_no_mount_behind") {
        return Ok(());
    }
    let stack = TempStack::new(&[Layer::new().file("f", "lower")])?;
    let mnt = stack.mountpoint();
    let mount = stack.mount()?;
    let mut held = std::fs::File::open(mount.path().join("f"))?;
    std::fs::write(mount.path().join("w"), "upper")?;
    drop(mount);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&format!(" {} ", mnt.display())),
        "still mounted after the drop"
    );
    // The open file still reads until it is closed.
    let mut got = String::new();
    std::io::Read::read_to_string(&mut held, &mut got)?;
    assert_eq!(got, "lower");
    drop(held);
    assert_eq!(std::fs::read_to_string(stack.upper().join("w"))?, "upper");
    Ok(())
}

#[test]
fn layers_read_only_mounts_and_options() -> Result<(), Box<dyn std::error::Error>> {
    if !fuse_usable("layers_read_only_mounts_and_options") {
        return Ok(());
    }
    let stack = TempStack::new(&[
        Layer::new()
            .opaque("etc")
            .file("etc/only", "top")
            .whiteout("bin/gone")
            .symlink("link", "etc/only"),
        Layer::new()
            .file("etc/hidden", "h")
            .file("bin/gone", "g")
            .file_mode("bin/tool", "t", 0o755),
    ])?;
    // Read-only: lowers only.
    let mut ro = OverlayBuilder::new();
    for l in stack.lowers() {
        ro = ro.lower(l);
    }
    let mount = ro.mount(stack.mountpoint())?;
    let m = mount.path();
    assert!(m.join("etc/only").exists());
    assert!(
        !m.join("etc/hidden").exists(),
        "opaque dir hides the layer below"
    );
    assert!(!m.join("bin/gone").exists(), "whiteout hides the file");
    assert_eq!(std::fs::read_to_string(m.join("link"))?, "top");
    let err = std::fs::write(m.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    mount.unmount()?;

    // A bad option is a one-line error, and nothing is mounted.
    let e = stack
        .builder()
        .option("timeout=soon")
        .mount(stack.mountpoint())
        .unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
    Ok(())
}
