//! The link-count record of an indexed inode (`overlay.nlink`).
//!
//! An upper copy of a lower hard-linked file is one inode with a name in
//! the index and a name for every alias that was changed through the mount
//! (as the kernel overlay keeps it with `index=on`); other aliases still
//! show through their lower names. The merged view's link count is kept
//! relative to the inode's own count, as text: `U` (relative to the upper
//! inode's link count) or `L` (to the lower one's), then a signed number
//! with its sign always written (`U+0`, `U-1`, `L+1`).

/// Which count the record is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// The upper (index) inode's link count.
    Upper,
    /// The lower inode's link count.
    Lower,
}

/// The record for a merged count of `upper` + `diff`.
pub(crate) fn encode(diff: i64) -> Vec<u8> {
    format!("U{diff:+}").into_bytes()
}

/// Read a record: its base and the signed difference.
pub(crate) fn decode(v: &[u8]) -> Option<(Base, i64)> {
    let base = match v.first()? {
        b'U' => Base::Upper,
        b'L' => Base::Lower,
        _ => return None,
    };
    let rest = v.get(1..)?;
    if !matches!(rest.first(), Some(b'+' | b'-')) || rest.len() > 11 {
        return None;
    }
    let n: i64 = std::str::from_utf8(rest).ok()?.parse().ok()?;
    Some((base, n))
}

/// The merged link count of an inode with `upper_nlink` links and the
/// record `v`; `None` when the record cannot say (malformed, relative to
/// the lower count, or not positive): the inode's own count applies then.
pub(crate) fn merged(v: &[u8], upper_nlink: u64) -> Option<u64> {
    match decode(v)? {
        (Base::Upper, d) => u64::try_from(i64::try_from(upper_nlink).ok()? + d)
            .ok()
            .filter(|n| *n > 0),
        (Base::Lower, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_spellings() {
        assert_eq!(encode(0), b"U+0");
        assert_eq!(encode(-1), b"U-1");
        assert_eq!(encode(2), b"U+2");
        assert_eq!(decode(b"U+0"), Some((Base::Upper, 0)));
        assert_eq!(decode(b"L-2"), Some((Base::Lower, -2)));
        for bad in [
            &b""[..],
            b"U",
            b"U0",
            b"X+1",
            b"U+x",
            b"U+1\0",
            b"U+123456789012",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(merged(b"U-1", 2), Some(1));
        assert_eq!(merged(b"U-2", 2), None, "not positive");
        assert_eq!(merged(b"L+0", 2), None);
    }
}
