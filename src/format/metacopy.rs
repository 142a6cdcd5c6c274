//! `overlay.metacopy`: the marker of an upper regular file that holds
//! metadata only; its data is the lower file found at its name (or at its
//! `overlay.redirect`).
//!
//! The value is empty when it carries no digest (the only form written
//! here, and the kernel overlay's without `verity=`). With a digest it is
//! a 4-byte header (version 0, total length, flags 0, hash algorithm)
//! followed by the fs-verity digest of the data file; such values are
//! accepted, the digest is not checked. Any other value is refused, as the
//! kernel refuses it (`EIO`).

/// Length of the header before a digest.
const HEADER: usize = 4;
/// Longest digest (SHA-512).
const MAX_DIGEST: usize = 64;

/// Whether `v` is a marker value the kernel overlay accepts; `Err` says why
/// not.
pub(crate) fn check(v: &[u8]) -> Result<(), &'static str> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() < HEADER {
        return Err("shorter than its 4-byte header");
    }
    if v.len() > HEADER + MAX_DIGEST {
        return Err("longer than a header and a SHA-512 digest");
    }
    if v[0] != 0 {
        return Err("unknown version");
    }
    if usize::from(v[1]) != v.len() {
        return Err("length field differs from the value's size");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_digest_forms_are_accepted_others_refused() {
        assert!(check(b"").is_ok());
        let mut sha256 = vec![0u8, 36, 0, 1];
        sha256.extend_from_slice(&[7u8; 32]);
        assert!(check(&sha256).is_ok());
        assert!(check(&[0, 4, 0, 0]).is_ok());
        for bad in [
            &b"y"[..],
            &[0, 3, 0],
            &[1, 4, 0, 0],
            &[0, 5, 0, 0],
            &[0, 36, 0, 1, 9],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&[0u8; 69]).is_err());
    }
}
