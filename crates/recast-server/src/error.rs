//! The control plane's errors: what went wrong, as a value. Each kind maps to one HTTP status,
//! and only the API edge (`api.rs`) asks for it; everything below it returns `ServerError`.

/// Why a control-plane operation failed. The message names what and where.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request itself is wrong (a bad spec, a bad parameter): 400.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done in the current state (another apply runs, no rollout in
    /// progress, a project owned by another directory): 409.
    #[error("{0}")]
    Conflict(String),
    /// The state store failed to read or write: 500.
    #[error(transparent)]
    State(#[from] recast_state::Error),
    /// Starting, stopping or checking instances failed: 500.
    #[error("{0}")]
    Runtime(String),
    /// Anything else the server could not do (files of its data directory, tasks): 500.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The HTTP status the API answers with (used by `api.rs` only).
    pub fn status(&self) -> u16 {
        match self {
            ServerError::Invalid(_) => 400,
            ServerError::NotFound(_) => 404,
            ServerError::Conflict(_) => 409,
            ServerError::State(_) | ServerError::Runtime(_) | ServerError::Internal(_) => 500,
        }
    }
}

/// For the code that still carries errors as text (the rollout strategies): the message.
impl From<ServerError> for String {
    fn from(e: ServerError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_and_keeps_its_message() {
        let cases = [
            (ServerError::Invalid("bad spec".into()), 400),
            (ServerError::NotFound("no service \"web\"".into()), 404),
            (ServerError::Conflict("no rollout".into()), 409),
            (ServerError::Runtime("runc failed".into()), 500),
            (ServerError::Internal("disk full".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e:?}");
            assert!(!e.to_string().is_empty());
        }
        let dir = tempfile::tempdir().expect("tmp");
        // A directory is not a database: the store's own error, named, is a 500.
        let e: ServerError = recast_state::State::open(dir.path())
            .err()
            .expect("a directory cannot be opened as the state")
            .into();
        assert_eq!(e.status(), 500);
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }
}
