//! The one error type every backend returns, whatever the capability: the
//! key-value [`StoreError`](super::keyvalue::StoreError) and the messaging
//! [`BrokerError`](super::messaging::BrokerError) are made from it, and the
//! capability maps its kind onto the WIT error a guest sees.
//!
//! A guest never sees a backend's own message: it may name a server
//! address or quote a sidecar's response, and the services copy error
//! text into the problem details their clients get. At the WIT seam a
//! capability logs the full error with [`BackendError::log_for_guest`]
//! (with the request's trace id) and hands the guest a fixed text per
//! kind; the client quotes the problem's `traceId` to find the log line.

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

    /// Logs this error in full (warning) with what the guest was doing and
    /// the trace id of `traceparent` (the request or delivery the instance
    /// serves), before the capability hands the guest only a fixed text.
    /// The trace id is what a client quotes from a problem's `traceId`.
    pub fn log_for_guest(&self, component: &str, operation: &str, traceparent: Option<&str>) {
        tracing::warn!(
            component,
            operation,
            backend = self.backend(),
            trace_id = traceparent.and_then(trace_id_of).unwrap_or("-"),
            error = %self,
            "a backend call failed; the component was told only the kind of failure"
        );
    }
}

/// The trace id (32 hex digits) of a W3C `traceparent`
/// (`version-traceid-spanid-flags`), if it has that shape.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn the_trace_id_is_the_second_field_of_a_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-short-00f067aa0ba902b7-01"), None);
    }
}
