//! On-disk formats: the one place where each rule about what is written in
//! a layer is stated, used alike by the mount, `stratafs check` and
//! `stratafs inspect`.
//!
//! * `whiteout`: deletion markers (char device 0/0, `.wh.NAME` files) and
//!   how a `.wh.` entry name is read;
//! * `opaque`: opaque directories (xattrs equal to exactly `y`,
//!   `.wh..wh..opq`);
//! * `origin`: the record of where a copied-up object came from, and the
//!   names of index entries;
//! * `nlink`: the merged link count of an indexed inode;
//! * `redirect`: where a renamed directory's lower part is (absolute or
//!   relative path), checked before it is followed;
//! * `metacopy`: the marker of a regular file whose data is in a lower
//!   layer (empty, or a header and an fs-verity digest);
//! * `override_stat`: owner and mode kept in an xattr;
//! * `idmap`: how on-disk ids are shown (`uidmapping=`, `squash_to_*`);
//! * `xattr_names`: which xattrs are the overlay's own (never shown) and
//!   where the containers override mode keeps `security.*`;
//! * `upper`: which of the formats the upper filesystem accepts, probed at
//!   mount, and the writers that fall back accordingly.
pub(crate) mod idmap;
pub(crate) mod metacopy;
pub(crate) mod nlink;
pub(crate) mod opaque;
pub(crate) mod origin;
pub(crate) mod override_stat;
pub(crate) mod redirect;
pub(crate) mod upper;
pub(crate) mod whiteout;
pub(crate) mod xattr_names;
