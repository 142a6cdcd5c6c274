//! Errors.
//!
//! Every request handler returns [`Result`], whose error is a plain errno
//! ([`Errno`], `Copy`, no allocation). The only place an errno is turned into
//! a FUSE reply is `fuse::adapter`. Set-up code (option parsing, opening
//! layers) and the offline tools return [`SetupError`], a one-line message
//! for the user.

use std::fmt;

/// The error of every filesystem operation: an errno value.
pub(crate) type Errno = rustix::io::Errno;

/// Result of a filesystem operation.
pub(crate) type Result<T> = std::result::Result<T, Errno>;

/// A set-up failure: the message is printed as one line and the program
/// exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError(pub(crate) String);

impl SetupError {
    /// Build an error from anything printable.
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        SetupError(msg.into())
    }

    /// An error about `path`, with the system error that caused it.
    pub(crate) fn path(what: &str, path: &std::path::Path, err: impl fmt::Display) -> Self {
        SetupError(format!("{what} {}: {err}", path.display()))
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always one line of printable text, whatever the cause carried:
        // newlines become spaces, other control characters are escaped.
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str(" ")?,
                c if c.is_control() => write!(f, "{}", c.escape_default())?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for SetupError {}

/// Human text of an errno, as `strerror` would print it.
pub(crate) fn describe(e: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(e.raw_os_error()).to_string();
    // Drop the " (os error N)" that std appends.
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A name or other bytes from disk as one line of text for messages: not
/// UTF-8 shown lossily, control characters escaped.
pub(crate) fn show_bytes(b: &[u8]) -> String {
    one_line(&String::from_utf8_lossy(b))
}

/// Text as one line: control characters as `\xNN`.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Errno names and values; the first name of a value is its name in
/// traces and rule lists (`ENOTSUP`, `EWOULDBLOCK` and `EDEADLOCK` are
/// accepted as aliases).
const ERRNO_NAMES: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("ENOTBLK", libc::ENOTBLK),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOTTY", libc::ENOTTY),
    ("ETXTBSY", libc::ETXTBSY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("EPIPE", libc::EPIPE),
    ("EDOM", libc::EDOM),
    ("ERANGE", libc::ERANGE),
    ("EDEADLK", libc::EDEADLK),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOLCK", libc::ENOLCK),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("ENOMSG", libc::ENOMSG),
    ("EIDRM", libc::EIDRM),
    ("ENOSTR", libc::ENOSTR),
    ("ENODATA", libc::ENODATA),
    ("ETIME", libc::ETIME),
    ("ENOSR", libc::ENOSR),
    ("EREMOTE", libc::EREMOTE),
    ("ENOLINK", libc::ENOLINK),
    ("EPROTO", libc::EPROTO),
    ("EMULTIHOP", libc::EMULTIHOP),
    ("EBADMSG", libc::EBADMSG),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("EILSEQ", libc::EILSEQ),
    ("EUSERS", libc::EUSERS),
    ("ENOTSOCK", libc::ENOTSOCK),
    ("EDESTADDRREQ", libc::EDESTADDRREQ),
    ("EMSGSIZE", libc::EMSGSIZE),
    ("EPROTOTYPE", libc::EPROTOTYPE),
    ("ENOPROTOOPT", libc::ENOPROTOOPT),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("ESOCKTNOSUPPORT", libc::ESOCKTNOSUPPORT),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("EPFNOSUPPORT", libc::EPFNOSUPPORT),
    ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ENETRESET", libc::ENETRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ECONNRESET", libc::ECONNRESET),
    ("ENOBUFS", libc::ENOBUFS),
    ("EISCONN", libc::EISCONN),
    ("ENOTCONN", libc::ENOTCONN),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("ETOOMANYREFS", libc::ETOOMANYREFS),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EALREADY", libc::EALREADY),
    ("EINPROGRESS", libc::EINPROGRESS),
    ("ESTALE", libc::ESTALE),
    ("EUCLEAN", libc::EUCLEAN),
    ("EDQUOT", libc::EDQUOT),
    ("ENOMEDIUM", libc::ENOMEDIUM),
    ("EMEDIUMTYPE", libc::EMEDIUMTYPE),
    ("ECANCELED", libc::ECANCELED),
    ("ENOKEY", libc::ENOKEY),
    ("EKEYEXPIRED", libc::EKEYEXPIRED),
    ("EKEYREVOKED", libc::EKEYREVOKED),
    ("EKEYREJECTED", libc::EKEYREJECTED),
    ("EOWNERDEAD", libc::EOWNERDEAD),
    ("ENOTRECOVERABLE", libc::ENOTRECOVERABLE),
    ("ERFKILL", libc::ERFKILL),
    ("EHWPOISON", libc::EHWPOISON),
    ("ENOTSUP", libc::ENOTSUP),
    ("EWOULDBLOCK", libc::EWOULDBLOCK),
    ("EDEADLOCK", libc::EDEADLOCK),
];

/// The symbolic name of an errno (`ENOSPC`); `None` for a value without one.
pub(crate) fn errno_name(e: Errno) -> Option<&'static str> {
    let raw = e.raw_os_error();
    ERRNO_NAMES.iter().find(|(_, v)| *v == raw).map(|(n, _)| *n)
}

/// The errno a name stands for: `ENOSPC`, `enospc`, or a number (`28`).
pub(crate) fn errno_by_name(name: &str) -> Option<Errno> {
    let raw = match name.parse::<i32>() {
        Ok(n) => n,
        Err(_) => ERRNO_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)?,
    };
    (1..4096)
        .contains(&raw)
        .then(|| Errno::from_raw_os_error(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\nb"), "a\\x0ab");
        assert_eq!(show_bytes(b"x\xffy\t"), "x\u{fffd}y\\x09");
        let e = SetupError::new("bad\nthing\x07");
        assert_eq!(e.to_string(), "bad thing\\u{7}");
        assert_eq!(describe(Errno::NOENT), "No such file or directory");
    }

    #[test]
    fn errno_names_both_ways() {
        assert_eq!(errno_name(Errno::NOSPC), Some("ENOSPC"));
        assert_eq!(errno_name(Errno::NOTSUP), Some("EOPNOTSUPP"));
        assert_eq!(errno_by_name("ENOSPC"), Some(Errno::NOSPC));
        assert_eq!(errno_by_name("eio"), Some(Errno::IO));
        assert_eq!(errno_by_name("ENOTSUP"), Some(Errno::NOTSUP));
        assert_eq!(errno_by_name("5"), Some(Errno::IO));
        assert_eq!(errno_by_name("EBOGUS"), None);
        assert_eq!(errno_by_name("0"), None);
        for (name, v) in ERRNO_NAMES {
            assert_eq!(errno_by_name(name).map(|e| e.raw_os_error()), Some(*v));
        }
    }
}
