//! The origin record: on a copied-up object, which lower object it came
//! from, in the kernel overlay's own format (`overlay.origin`), and the
//! names of index entries derived from it.
//!
//! The record is the kernel's file-handle record: version `0`, magic
//! `0xfb`, the record's length (21 + handle length), flags (`0x01` on
//! big-endian hosts, `0x04` for a handle of an upper object), the handle
//! type, the 16-byte uuid of the lower filesystem (`s_uuid`), then the
//! handle bytes exactly as `name_to_handle_at(2)` gives them. An empty value
//! means "copied up, origin unknown" (what the kernel writes when the lower
//! filesystem cannot decode handles, or when it lacks the privilege to).
//!
//! Earlier stratafs versions kept the merged view's inode number as decimal
//! text in `trusted.stratafs.origin` / `user.stratafs.origin`; those are
//! still read (`legacy`), never written.

use crate::sys::raw::FileHandle;

const VERSION: u8 = 0;
const MAGIC: u8 = 0xfb;
const HEADER: usize = 5 + 16;
/// Flag: the host that wrote the record is big-endian.
const FLAG_BIG_ENDIAN: u8 = 0x01;
/// Flag: the record is valid on hosts of either endianness.
const FLAG_ANY_ENDIAN: u8 = 0x02;
/// Flag: the handle is of an upper object (`overlay.upper`).
pub(crate) const FLAG_UPPER: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_UPPER;

/// A decoded origin record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Flags beyond the endianness bits (`FLAG_UPPER`).
    pub(crate) flags: u8,
    /// The uuid of the filesystem the handle belongs to.
    pub(crate) uuid: [u8; 16],
    /// The handle.
    pub(crate) handle: FileHandle,
}

/// What an `overlay.origin` value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Copied up, but where from is not recorded (an empty value, or one of
    /// a later version or of the other endianness, which the kernel ignores
    /// the same way).
    Unknown,
    /// The lower object's handle.
    Known(Record),
    /// Not a record at all (too short, wrong magic, wrong length).
    Invalid,
}

fn endian_flag() -> u8 {
    if cfg!(target_endian = "big") {
        FLAG_BIG_ENDIAN
    } else {
        0
    }
}

/// The record for `handle` on the filesystem with `uuid`; `flags` is 0 for
/// origins, `FLAG_UPPER` for `overlay.upper`.
pub(crate) fn encode(uuid: &[u8; 16], handle: &FileHandle, flags: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + handle.bytes.len());
    v.extend_from_slice(&[
        VERSION,
        MAGIC,
        (HEADER + handle.bytes.len()) as u8,
        flags | endian_flag(),
        handle.kind,
    ]);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&handle.bytes);
    v
}

/// Read an `overlay.origin` (or `overlay.upper`) value.
pub(crate) fn decode(v: &[u8]) -> Origin {
    if v.is_empty() {
        return Origin::Unknown;
    }
    if v.len() < HEADER || v[1] != MAGIC || usize::from(v[2]) != v.len() {
        return Origin::Invalid;
    }
    let flags = v[3];
    let endian_ok = flags & FLAG_ANY_ENDIAN != 0 || flags & FLAG_BIG_ENDIAN == endian_flag();
    if v[0] > VERSION || flags & !KNOWN_FLAGS != 0 || !endian_ok {
        return Origin::Unknown;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&v[5..HEADER]);
    Origin::Known(Record {
        flags: flags & FLAG_UPPER,
        uuid,
        handle: FileHandle {
            kind: v[4],
            bytes: v[HEADER..].to_vec(),
        },
    })
}

/// The name of the index entry for an origin record: the record's bytes in
/// lowercase hex.
pub(crate) fn index_name(record: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(record.len() * 2);
    for b in record {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out
}

/// The records of earlier stratafs versions.
pub(crate) mod legacy {
    /// Both names (trusted first).
    pub(crate) const NAMES: [&[u8]; 2] = [b"trusted.stratafs.origin", b"user.stratafs.origin"];

    /// The inode number in a recorded value, if it is one.
    pub(crate) fn decode(v: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(v).ok()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }

    /// The (device, inode number) an id of earlier versions stands for:
    /// they numbered `device index << 56 | inode number`, the devices of
    /// `devs` (the layers' devices, upper first) numbered from 1 in order of
    /// first appearance. `None` for ids outside that scheme.
    pub(crate) fn identity(id: u64, devs: &[u64]) -> Option<(u64, u64)> {
        const INO_BITS: u32 = 56;
        let d = usize::try_from(id >> INO_BITS).ok()?.checked_sub(1)?;
        let mut unique: Vec<u64> = Vec::new();
        for dev in devs {
            if !unique.contains(dev) {
                unique.push(*dev);
            }
        }
        Some((*unique.get(d)?, id & ((1 << INO_BITS) - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> FileHandle {
        FileHandle {
            kind: 1,
            bytes: vec![0xa4, 0xcd, 0x98, 0x00, 0xdc, 0xeb, 0x09, 0xe4],
        }
    }

    #[test]
    fn the_kernels_bytes() {
        // Captured from the kernel overlay on ext4 (zero uuid).
        let kernel = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa4,
            0xcd, 0x98, 0x00, 0xdc, 0xeb, 0x09, 0xe4,
        ];
        let v = encode(&[0; 16], &handle(), 0);
        if cfg!(target_endian = "little") {
            assert_eq!(v, kernel);
        }
        assert_eq!(
            decode(&kernel),
            Origin::Known(Record {
                flags: 0,
                uuid: [0; 16],
                handle: handle()
            })
        );
        assert_eq!(
            index_name(&kernel),
            b"00fb1d000100000000000000000000000000000000a4cd9800dceb09e4".to_vec()
        );
        let up = encode(&[7; 16], &handle(), FLAG_UPPER);
        assert!(
            matches!(decode(&up), Origin::Known(r) if r.flags == FLAG_UPPER && r.uuid == [7; 16])
        );
    }

    #[test]
    fn unknown_and_invalid_values() {
        assert_eq!(decode(b""), Origin::Unknown);
        assert_eq!(decode(b"12345"), Origin::Invalid);
        let mut v = encode(&[0; 16], &handle(), 0);
        v[2] += 1;
        assert_eq!(decode(&v), Origin::Invalid, "length disagrees");
        let mut v = encode(&[0; 16], &handle(), 0);
        v[0] = 1;
        assert_eq!(decode(&v), Origin::Unknown, "a later version");
        let mut v = encode(&[0; 16], &handle(), 0);
        v[3] |= 0x80;
        assert_eq!(decode(&v), Origin::Unknown, "unknown flags");
    }

    #[test]
    fn legacy_values() {
        assert_eq!(
            legacy::decode(b"72057594037927941"),
            Some(72057594037927941)
        );
        for bad in [&b""[..], b"-1", b"12a", b" 1"] {
            assert_eq!(legacy::decode(bad), None);
        }
        assert_eq!(
            legacy::identity((1 << 56) | 77, &[10, 10, 12]),
            Some((10, 77))
        );
        assert_eq!(
            legacy::identity((2 << 56) | 77, &[10, 10, 12]),
            Some((12, 77))
        );
        assert_eq!(legacy::identity((3 << 56) | 77, &[10, 10, 12]), None);
        assert_eq!(legacy::identity(77, &[10]), None);
    }
}
