//! Entry names.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest name kept inside a `Name` itself.
const INLINE: usize = 22;

/// An entry name. Names are bytes: Linux names need not be UTF-8. Most
/// names are short and are kept inside the value (24 bytes, no allocation);
/// a longer one is one shared allocation, so that a node, its by-name
/// object and the listings share it.
#[derive(Clone)]
pub(crate) struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(a) => a,
        }
    }
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Name {
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..b.len()].copy_from_slice(b);
                Name(Repr::Inline { len, bytes })
            }
            _ => Name(Repr::Shared(Arc::from(b))),
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(v: Vec<u8>) -> Name {
        Name::from(v.as_slice())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// The longest name a layer filesystem takes (`NAME_MAX`).
pub(crate) const NAME_MAX: usize = 255;

/// A 64-bit FNV-1a hash of an entry name (listing offsets, directory
/// indexes).
pub(crate) fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(name_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(name_hash(b"ab"), name_hash(b"ba"));
    }

    #[test]
    fn short_names_are_kept_inline_and_all_compare_by_bytes() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        let short = Name::from(&b"libc.so.6"[..]);
        assert!(matches!(short.0, Repr::Inline { len: 9, .. }));
        assert_eq!(&*short, b"libc.so.6");
        let edge = Name::from(&[b'x'; INLINE][..]);
        assert!(matches!(edge.0, Repr::Inline { .. }));
        let long = Name::from(&[b'x'; INLINE + 1][..]);
        assert!(matches!(long.0, Repr::Shared(_)));
        assert_eq!(long.len(), INLINE + 1);
        let empty = Name::from(&b""[..]);
        assert!(empty.is_empty());
        assert_ne!(edge, long);
        assert_eq!(long, Name::from(&[b'x'; INLINE + 1][..]));
        assert!(edge < long && empty < short);
        let max = Name::from(&[b'y'; NAME_MAX][..]);
        assert_eq!(max.len(), NAME_MAX);
    }
}
