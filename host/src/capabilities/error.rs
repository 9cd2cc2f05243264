//! The one error type every backend returns, whatever the capability: the
//! key-value [`StoreError`](super::keyvalue::StoreError) and the messaging
//! [`BrokerError`](super::messaging::BrokerError) are made from it, and the
//! capability maps its kind onto the WIT error a guest sees.

/// Why a backend call failed. Every variant names the backend (`"redis"`,
/// `"dapr"`, `"embedded"`) and carries a message that says what went wrong
/// and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached, or did not answer in time; retrying
    /// later may work (a 503 for a client of the services).
    #[error("{backend} backend unavailable: {message}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed and what to do.
        message: String,
    },
    /// The backend answered and refused the call (bad value, ACL,
    /// misconfiguration); retrying the same call will not help.
    #[error("{message}")]
    Rejected {
        /// The backend's name.
        backend: &'static str,
        /// What failed and what to do.
        message: String,
    },
    /// The backend has no equivalent of the operation (for example
    /// `list-keys` on the Dapr state API).
    #[error("{message}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What is missing and what to use instead.
        message: String,
    },
}

impl BackendError {
    /// An [`BackendError::Unavailable`] of `backend`.
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError::Unavailable {
            backend,
            message: message.into(),
        }
    }

    /// A [`BackendError::Rejected`] of `backend`.
    pub fn rejected(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError::Rejected {
            backend,
            message: message.into(),
        }
    }

    /// A [`BackendError::Unsupported`] of `backend`.
    pub fn unsupported(backend: &'static str, message: impl Into<String>) -> Self {
        BackendError::Unsupported {
            backend,
            message: message.into(),
        }
    }

    /// The name of the backend that failed.
    pub fn backend(&self) -> &'static str {
        match self {
            BackendError::Unavailable { backend, .. }
            | BackendError::Rejected { backend, .. }
            | BackendError::Unsupported { backend, .. } => backend,
        }
    }

    /// The message without the backend prefix.
    pub fn message(&self) -> &str {
        match self {
            BackendError::Unavailable { message, .. }
            | BackendError::Rejected { message, .. }
            | BackendError::Unsupported { message, .. } => message,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }
}
