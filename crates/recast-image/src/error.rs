//! The error type of image operations: what failed, on what, and what recast was doing.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or network read/write failed while recast was doing `doing`.
    #[error("{doing}: {source}")]
    Io { doing: String, source: io::Error },
    /// Anything else, already phrased for people (may carry a `hint:` line).
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(s: impl Into<String>) -> Error {
        Error::Msg(s.into())
    }
}

/// Attach "what recast was doing" to I/O results.
pub trait Context<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| {
            // A verification failure inside a reader is already a complete sentence.
            if source.kind() == io::ErrorKind::InvalidData
                && source.get_ref().is_some_and(|e| e.is::<Corrupt>())
            {
                return Error::Msg(source.to_string());
            }
            Error::Io {
                doing: what(),
                source,
            }
        })
    }
}

/// A blob whose content does not match its digest (carried inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);
