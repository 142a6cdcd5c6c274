//! The library API: mount a layer stack from a Rust program or test, and
//! build throwaway stacks in temporary directories.
//!
//! ```
//! use stratafs::api::{Layer, TempStack};
//!
//! // Two lower layers (top first) and an empty upper, in a temporary directory.
//! let stack = TempStack::new(&[
//!     Layer::new().file("etc/motd", "hello\n").whiteout("etc/old"),
//!     Layer::new().file("etc/motd", "base\n").file("etc/old", "x").dir("var/empty"),
//! ])?;
//! let mount = stack.mount()?; // unmounted when `mount` is dropped
//! let m = mount.path();
//! assert_eq!(std::fs::read_to_string(m.join("etc/motd"))?, "hello\n");
//! assert!(!m.join("etc/old").exists()); // hidden by the whiteout
//! std::fs::write(m.join("etc/new"), "written")?;
//! drop(mount);
//! assert_eq!(std::fs::read_to_string(stack.upper().join("etc/new"))?, "written");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Any directories can be mounted the same way:
//!
//! ```no_run
//! use stratafs::api::OverlayBuilder;
//!
//! let mount = OverlayBuilder::new()
//!     .lower("/srv/layers/app")
//!     .lower("/srv/layers/base")
//!     .upper("/srv/c1/upper")
//!     .work("/srv/c1/work")
//!     .option("uidmapping=0:100000:65536")
//!     .mount("/srv/c1/merged")?;
//! // ... run a build in /srv/c1/merged ...
//! mount.unmount()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use crate::error::SetupError;
use crate::fuse::daemon::spawn_mount;
pub use crate::fuse::daemon::BackgroundMount;
pub use crate::setup::options::escape_path;
use crate::setup::options::parse_mount_args;

/// Describes a stack to mount: lower directories (top first), an optional
/// upper and work directory, and extra `-o` options.
#[derive(Debug, Clone, Default)]
pub struct OverlayBuilder {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    options: Vec<String>,
}

impl OverlayBuilder {
    /// An empty description.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a lower directory below the ones added before.
    pub fn lower(mut self, dir: impl AsRef<Path>) -> Self {
        self.lowers.push(dir.as_ref().to_path_buf());
        self
    }

    /// The writable upper directory (without one the mount is read-only).
    pub fn upper(mut self, dir: impl AsRef<Path>) -> Self {
        self.upper = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The work directory, on the upper's filesystem.
    pub fn work(mut self, dir: impl AsRef<Path>) -> Self {
        self.work = Some(dir.as_ref().to_path_buf());
        self
    }

    /// An extra mount option, as given to `-o` (e.g. `uidmapping=0:1000:1`).
    pub fn option(mut self, opt: impl Into<String>) -> Self {
        self.options.push(opt.into());
        self
    }

    /// The `-o` argument this description stands for.
    pub fn options_string(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|p| escape_path(p)).collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let Some(u) = &self.upper {
            o.push_str(&format!(",upperdir={}", escape_path(u)));
        }
        if let Some(w) = &self.work {
            o.push_str(&format!(",workdir={}", escape_path(w)));
        }
        for extra in &self.options {
            o.push(',');
            o.push_str(extra);
        }
        o
    }

    /// Mount at `mountpoint`, served by threads of this process; the guard
    /// unmounts when dropped, also when a test panics.
    pub fn mount(&self, mountpoint: impl AsRef<Path>) -> Result<BackgroundMount, SetupError> {
        let mnt = mountpoint.as_ref().to_string_lossy().into_owned();
        let opts = parse_mount_args(&[self.options_string()], &[mnt], true, false)?;
        for w in &opts.warnings {
            log::warn!("{w}");
        }
        spawn_mount(&opts)
    }
}

/// One entry of a [`Layer`].
#[derive(Debug, Clone)]
enum Item {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Symlink(String, String),
    Whiteout(String),
    Opaque(String),
}

/// A compact description of one layer's contents.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    items: Vec<Item>,
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A regular file (mode 0644); parent directories are created.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.file_mode(path, content, 0o644)
    }

    /// A regular file with the given permission bits.
    pub fn file_mode(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.items
            .push(Item::File(path.into(), content.as_ref().to_vec(), mode));
        self
    }

    /// A directory (mode 0755).
    pub fn dir(mut self, path: &str) -> Self {
        self.items.push(Item::Dir(path.into(), 0o755));
        self
    }

    /// A symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.items.push(Item::Symlink(path.into(), target.into()));
        self
    }

    /// A whiteout: hides `path` of the layers below.
    pub fn whiteout(mut self, path: &str) -> Self {
        self.items.push(Item::Whiteout(path.into()));
        self
    }

    /// An opaque directory: hides the contents of same-named directories
    /// below.
    pub fn opaque(mut self, path: &str) -> Self {
        self.items.push(Item::Opaque(path.into()));
        self
    }

    /// Write the layer into `dir`. Whiteouts are character devices 0/0 where
    /// `mknod` allows it, else `.wh.NAME` files; opaque directories carry
    /// `trusted.overlay.opaque` (root) or `user.overlay.opaque`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for item in &self.items {
            match item {
                Item::File(p, data, mode) => {
                    let path = dir.join(p);
                    make_parent(&path)?;
                    std::fs::write(&path, data)?;
                    set_mode(&path, *mode)?;
                }
                Item::Dir(p, mode) => {
                    let path = dir.join(p);
                    std::fs::create_dir_all(&path)?;
                    set_mode(&path, *mode)?;
                }
                Item::Symlink(p, target) => {
                    let path = dir.join(p);
                    make_parent(&path)?;
                    std::os::unix::fs::symlink(target, &path)?;
                }
                Item::Whiteout(p) => {
                    let path = dir.join(p);
                    make_parent(&path)?;
                    write_whiteout(&path)?;
                }
                Item::Opaque(p) => {
                    let path = dir.join(p);
                    std::fs::create_dir_all(&path)?;
                    write_opaque(&path)?;
                }
            }
        }
        Ok(())
    }
}

fn make_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p),
        None => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn write_whiteout(path: &Path) -> std::io::Result<()> {
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    );
    if made.is_ok() {
        return Ok(());
    }
    let name = path.file_name().unwrap_or_else(|| OsStr::new(""));
    let mut wh = b".wh.".to_vec();
    wh.extend_from_slice(name.as_bytes());
    let target = path.with_file_name(OsStr::from_bytes(&wh));
    std::fs::write(target, b"")
}

fn write_opaque(path: &Path) -> std::io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    if rustix::fs::setxattr(path, "trusted.overlay.opaque", b"y", flags).is_ok() {
        return Ok(());
    }
    rustix::fs::setxattr(path, "user.overlay.opaque", b"y", flags).map_err(std::io::Error::from)
}

/// A throwaway stack in a temporary directory: `lower0..N`, `upper`,
/// `work` and `merged`, removed when dropped.
#[derive(Debug)]
pub struct TempStack {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

impl TempStack {
    /// Write `layers` (top first) as lower directories, with an empty upper
    /// and work directory.
    pub fn new(layers: &[Layer]) -> std::io::Result<TempStack> {
        let dir = tempfile::Builder::new()
            .prefix("stratafs-stack.")
            .tempdir()?;
        let mut lowers = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let p = dir.path().join(format!("lower{i}"));
            l.write_to(&p)?;
            lowers.push(p);
        }
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(d))?;
        }
        Ok(TempStack { dir, lowers })
    }

    /// The temporary directory holding everything.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The lower directories, top first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// The upper directory.
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    /// The work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The default mount point.
    pub fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    /// The description of this stack, to add options or mount elsewhere.
    pub fn builder(&self) -> OverlayBuilder {
        let mut b = OverlayBuilder::new();
        for l in &self.lowers {
            b = b.lower(l);
        }
        b.upper(self.upper()).work(self.work())
    }

    /// Mount at [`TempStack::mountpoint`].
    pub fn mount(&self) -> Result<BackgroundMount, SetupError> {
        self.builder().mount(self.mountpoint())
    }
}
