//! Entry names.

use std::sync::Arc;

/// An entry name, shared by a node's state, its by-name object and its
/// entry in the name map (one allocation per name). Names are bytes: Linux
/// names need not be UTF-8.
pub(crate) type Name = Arc<[u8]>;

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
}
