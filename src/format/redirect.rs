//! `overlay.redirect`: where the lower part of a renamed directory is.
//!
//! The value is a path without a trailing NUL, in one of the kernel
//! overlay's two forms: *relative*, a single name (the directory's old name
//! in the same parent), or *absolute*, `/a/b`, a path from the root of
//! every layer below the one that holds the record. A value that could
//! leave a layer root or name nothing (empty components, `.`, `..`, NUL
//! bytes, over-long values) is refused, never followed.

/// Longest value read (`PATH_MAX`).
pub(crate) const MAX_READ: usize = 4096;
/// Longest value written: the kernel's default `redirect_max`; a rename
/// that would need a longer one fails with `EXDEV`, as on the kernel.
pub(crate) const MAX_WRITE: usize = 256;
/// Longest name in a path.
const NAME_MAX: usize = 255;

/// A checked redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// A name in the same parent directory of the layers below.
    Relative(Vec<u8>),
    /// Names from the layer root, outermost first (never empty).
    Absolute(Vec<Vec<u8>>),
}

/// Read a record's value; `Err` says why it is refused.
pub(crate) fn parse(v: &[u8]) -> Result<Redirect, &'static str> {
    if v.len() > MAX_READ {
        return Err("longer than PATH_MAX");
    }
    if v.contains(&0) {
        return Err("contains a NUL byte");
    }
    match v.strip_prefix(b"/") {
        Some(rest) => {
            let parts: Vec<Vec<u8>> = rest.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            for p in &parts {
                check_name(p)?;
            }
            Ok(Redirect::Absolute(parts))
        }
        None => {
            if v.contains(&b'/') {
                return Err("relative value with a '/'");
            }
            check_name(v)?;
            Ok(Redirect::Relative(v.to_vec()))
        }
    }
}

fn check_name(n: &[u8]) -> Result<(), &'static str> {
    match n {
        b"" => Err("empty path component"),
        b"." | b".." => Err("'.' or '..' component"),
        n if n.len() > NAME_MAX => Err("component longer than NAME_MAX"),
        _ => Ok(()),
    }
}

/// The absolute value for a path from the layer root, outermost first.
pub(crate) fn absolute<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.push(b'/');
        v.extend_from_slice(p);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_read_and_round_trip() {
        assert_eq!(parse(b"C"), Ok(Redirect::Relative(b"C".to_vec())));
        let abs = parse(b"/A/B");
        assert_eq!(
            abs,
            Ok(Redirect::Absolute(vec![b"A".to_vec(), b"B".to_vec()]))
        );
        assert_eq!(absolute([&b"E"[..]]), b"/E".to_vec());
    }

    #[test]
    fn values_that_could_escape_or_name_nothing_are_refused() {
        for bad in [
            &b""[..],
            b"/",
            b"//a",
            b"/a//b",
            b"/a/",
            b"..",
            b".",
            b"/a/../b",
            b"/..",
            b"a/b",
            b"a\0b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&vec![b'a'; 256]).is_err());
        let long = [b"/".as_slice(), &[b'a'; 200]].concat().repeat(21);
        assert!(parse(&long).is_err(), "over PATH_MAX");
    }
}
