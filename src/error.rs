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
}
