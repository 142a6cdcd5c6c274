//! Errors.
//!
//! Every request handler returns [`Result`], whose error is a plain errno
//! ([`Errno`], `Copy`, no allocation). The only place an errno is turned into
//! a FUSE reply is `fuse.rs`. Set-up code (option parsing, opening layers)
//! returns [`SetupError`], a one-line message for the user.

use std::fmt;

/// The error of every filesystem operation: an errno value.
pub type Errno = rustix::io::Errno;

/// Result of a filesystem operation.
pub type Result<T> = std::result::Result<T, Errno>;

/// A set-up failure: the message is printed as one line and the program
/// exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError(pub String);

impl SetupError {
    /// Build an error from anything printable.
    pub fn new(msg: impl Into<String>) -> Self {
        SetupError(msg.into())
    }

    /// An error about `path`, with the system error that caused it.
    pub fn path(what: &str, path: &std::path::Path, err: impl fmt::Display) -> Self {
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
pub fn describe(e: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(e.raw_os_error()).to_string();
    // Drop the " (os error N)" that std appends.
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
