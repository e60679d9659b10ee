//! The one error type of the library. Each variant is a `Ready=False` reason and a
//! metric label. No message ever carries a secret value: messages name keys, paths and
//! sizes, and backend errors are reduced to their status and the backend's own words.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource asks for something that cannot work; fixing the spec is the way out.
    #[error("{0}")]
    InvalidSpec(String),
    /// The source's data cannot be written as the requested Secret.
    #[error("{0}")]
    InvalidData(String),
    /// The target Secret exists and belongs to someone else.
    #[error("{0}")]
    Conflict(String),
    /// The source does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The backend refused the identity or its permissions.
    #[error("{0}")]
    AuthFailed(String),
    /// The backend is down, slow or throttling; `retry_after` honours its request.
    #[error("{message}")]
    BackendUnavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// The `Ready` condition reason, also used as the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::InvalidData(_) => "InvalidData",
            Error::Conflict(_) => "Conflict",
            Error::NotFound(_) => "NotFound",
            Error::AuthFailed(_) => "AuthFailed",
            Error::BackendUnavailable { .. } => "BackendUnavailable",
            Error::Kube(_) => "KubernetesError",
        }
    }

    /// How long the backend asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::BackendUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error with its message rewritten, for context a caller adds.
    pub fn with_context(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Error::InvalidSpec(m) => Error::InvalidSpec(f(m)),
            Error::InvalidData(m) => Error::InvalidData(f(m)),
            Error::Conflict(m) => Error::Conflict(f(m)),
            Error::NotFound(m) => Error::NotFound(f(m)),
            Error::AuthFailed(m) => Error::AuthFailed(f(m)),
            Error::BackendUnavailable {
                message,
                retry_after,
            } => Error::BackendUnavailable {
                message: f(message),
                retry_after,
            },
            Error::Kube(e) => Error::Kube(e),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::BackendUnavailable {
            message: message.into(),
            retry_after: None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
