//! The origin record: on a copied-up object, the inode number its lower
//! original had in the merged view, so that `st_ino` survives a remount
//! (the kernel overlay keeps a file handle in `overlay.origin` for the same
//! purpose). Written as decimal text in `trusted.stratafs.origin` where
//! trusted xattrs are permitted, else `user.stratafs.origin`; both are read.

/// The record's xattr name for the namespace in use.
pub(crate) fn xattr_name(trusted: bool) -> &'static [u8] {
    if trusted {
        b"trusted.stratafs.origin"
    } else {
        b"user.stratafs.origin"
    }
}

/// The value recorded for inode number `ino`.
pub(crate) fn encode(ino: u64) -> String {
    ino.to_string()
}

/// The inode number in a recorded value, if it is one.
pub(crate) fn decode(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        assert_eq!(
            decode(encode(0x0100_0000_0000_002a).as_bytes()),
            Some(0x0100_0000_0000_002a)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"12a",
            b" 1",
            b"\xff",
            b"99999999999999999999999",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_ne!(xattr_name(true), xattr_name(false));
    }
}
