//! The operations a mount serves, by their FUSE names, and sets of them
//! as bit masks (so that "does any rule care about this operation" is one
//! atomic load and an AND).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A FUSE operation, named as in the FUSE protocol (lower case in rules,
/// traces and metrics: `lookup`, `write`, `copy_file_range`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
#[allow(missing_docs)] // each variant is the FUSE request of the same name
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    /// Every operation, in protocol order.
    pub const ALL: [Op; 33] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    /// The name: `lookup`, `copy_file_range`, ...
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    /// The operation named `name` (as [`Op::name`] spells it).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Index into per-operation tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn bit(self) -> u64 {
        1 << (self as u8)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ops(pub(crate) u64);

impl Ops {
    /// Every operation (`*`).
    pub const ALL: Ops = Ops((1 << Op::ALL.len()) - 1);
    /// No operation.
    pub const NONE: Ops = Ops(0);

    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The operations in the set, in protocol order.
    pub fn iter(self) -> impl Iterator<Item = Op> {
        Op::ALL.into_iter().filter(move |o| self.contains(*o))
    }

    /// Both sets together.
    pub fn union(self, other: Ops) -> Ops {
        Ops(self.0 | other.0)
    }

    /// The operations both sets have.
    pub(crate) fn and(self, other: Ops) -> Ops {
        Ops(self.0 & other.0)
    }

    /// Parse names separated by `sep` (`*` is every operation).
    pub(crate) fn parse_list(s: &str, sep: char) -> Result<Ops, String> {
        let mut ops = Ops::NONE;
        for name in s.split(sep).map(str::trim).filter(|n| !n.is_empty()) {
            ops = ops.union(Ops::parse_one(name)?);
        }
        if ops.is_empty() {
            return Err("no operation named".to_string());
        }
        Ok(ops)
    }

    /// One name, or `*`.
    pub(crate) fn parse_one(name: &str) -> Result<Ops, String> {
        if name == "*" {
            return Ok(Ops::ALL);
        }
        Op::from_name(&name.to_ascii_lowercase())
            .map(Ops::from)
            .ok_or_else(|| format!("unknown operation {name:?}"))
    }

    /// The names, `*` for all of them.
    pub(crate) fn names(self) -> Vec<&'static str> {
        if self == Ops::ALL {
            return vec!["*"];
        }
        self.iter().map(Op::name).collect()
    }
}

impl From<Op> for Ops {
    fn from(op: Op) -> Ops {
        Ops(op.bit())
    }
}

impl<const N: usize> From<[Op; N]> for Ops {
    fn from(ops: [Op; N]) -> Ops {
        ops.into_iter().fold(Ops::NONE, |s, o| s.union(o.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_the_serde_names() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(Op::from_name(op.name()), Some(op));
            let json = serde_json::to_string(&op).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", op.name()));
        }
        assert_eq!(Op::from_name("Write"), None);
    }

    #[test]
    fn sets() {
        let s = Ops::parse_list("write:FSYNC", ':').unwrap_or_default();
        assert_eq!(s, Ops::from([Op::Write, Op::Fsync]));
        assert_eq!(s.names(), vec!["write", "fsync"]);
        assert_eq!(Ops::parse_one("*"), Ok(Ops::ALL));
        assert_eq!(Ops::ALL.iter().count(), Op::ALL.len());
        assert!(Ops::parse_list("write,bogus", ',').is_err());
        assert!(Ops::parse_list("", ',').is_err());
        assert_eq!(Ops::ALL.names(), vec!["*"]);
    }
}
