//! Which xattr names belong to the overlay and where client xattrs are
//! kept.
//!
//! The overlay's own metadata (kernel overlayfs in both namespaces,
//! fuse-overlayfs, earlier stratafs versions) is never shown to clients nor
//! settable by them. In the containers override mode
//! (`xattr_permissions=2`), `security.*` xattrs (file capabilities, SELinux
//! labels the engine sets) are kept as `user.containers.override_security.*`,
//! which the owner may write without privilege.

/// Prefixes of xattrs that carry overlay metadata.
const PRIVATE_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"trusted.stratafs.",
    b"user.stratafs.",
];

/// The kernel overlay's own records, each kept under `trusted.overlay.` (as
/// root) or `user.overlay.` (the kernel's `userxattr`, and rootless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ovl {
    /// `overlay.origin`: where a copied-up object came from.
    Origin,
    /// `overlay.impure`: a directory holds entries with an origin.
    Impure,
    /// `overlay.nlink`: the link count of an indexed inode, relative.
    Nlink,
    /// `overlay.upper`: the handle of the upper root, on the index dir.
    Upper,
    /// `overlay.uuid`: the overlay's own uuid, on the upper root.
    Uuid,
    /// `overlay.redirect`: where a renamed directory's lower part is.
    Redirect,
    /// `overlay.metacopy`: a regular file whose data is in a lower layer.
    Metacopy,
}

impl Ovl {
    /// The xattr name in the trusted or the user namespace.
    pub(crate) fn name(self, trusted: bool) -> &'static [u8] {
        match (self, trusted) {
            (Ovl::Origin, true) => b"trusted.overlay.origin",
            (Ovl::Origin, false) => b"user.overlay.origin",
            (Ovl::Impure, true) => b"trusted.overlay.impure",
            (Ovl::Impure, false) => b"user.overlay.impure",
            (Ovl::Nlink, true) => b"trusted.overlay.nlink",
            (Ovl::Nlink, false) => b"user.overlay.nlink",
            (Ovl::Upper, true) => b"trusted.overlay.upper",
            (Ovl::Upper, false) => b"user.overlay.upper",
            (Ovl::Uuid, true) => b"trusted.overlay.uuid",
            (Ovl::Uuid, false) => b"user.overlay.uuid",
            (Ovl::Redirect, true) => b"trusted.overlay.redirect",
            (Ovl::Redirect, false) => b"user.overlay.redirect",
            (Ovl::Metacopy, true) => b"trusted.overlay.metacopy",
            (Ovl::Metacopy, false) => b"user.overlay.metacopy",
        }
    }
}

/// Prefix under which the containers override mode keeps `security.*`.
const OVERRIDE_PREFIX: &[u8] = b"user.containers.override_";

/// Whether `name` is overlay metadata.
pub(crate) fn is_private(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Where a client's xattr `name` is stored; `containers` when the layer
/// uses the containers override mode.
pub(crate) fn stored_name(containers: bool, name: &[u8]) -> Vec<u8> {
    if containers && name.starts_with(b"security.") {
        let mut v = OVERRIDE_PREFIX.to_vec();
        v.extend_from_slice(name);
        v
    } else {
        name.to_vec()
    }
}

/// The names clients see, from a layer object's NUL-separated list: no
/// private names; in the containers override mode, stored `security.*`
/// under their own names and real ones on disk not at all.
pub(crate) fn shown_names(containers: bool, all: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(all.len());
    for n in crate::sys::xattr::names(all) {
        let shown = if containers {
            match n.strip_prefix(OVERRIDE_PREFIX) {
                Some(sec) if sec.starts_with(b"security.") => sec,
                _ if n.starts_with(b"security.") => continue,
                _ => n,
            }
        } else {
            n
        };
        if !is_private(shown) {
            out.extend_from_slice(shown);
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_names_never_show() {
        let all = b"user.a\0trusted.overlay.opaque\0user.overlay.origin\0security.selinux\0user.stratafs.origin\0";
        assert_eq!(shown_names(false, all), b"user.a\0security.selinux\0");
        assert!(is_private(b"user.fuseoverlayfs.opaque"));
        assert!(!is_private(b"user.overlayx"));
    }

    #[test]
    fn containers_mode_keeps_security_in_user_names() {
        assert_eq!(
            stored_name(true, b"security.capability"),
            b"user.containers.override_security.capability"
        );
        assert_eq!(stored_name(true, b"user.x"), b"user.x");
        assert_eq!(
            stored_name(false, b"security.capability"),
            b"security.capability"
        );
        let all = b"security.selinux\0user.containers.override_security.capability\0user.containers.override_stat\0user.x\0";
        assert_eq!(
            shown_names(true, all),
            b"security.capability\0user.containers.override_stat\0user.x\0"
        );
    }
}
