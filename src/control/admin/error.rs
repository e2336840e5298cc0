//! The admin API's errors: one status and one `{"code","message"}` body per failure, and
//! the mapping of every lower layer's error (operations, store, import checks, Twilio)
//! onto them. The only place the control plane meets HTTP statuses.

use crate::control::import::ImportError;
use crate::control::ops::OpError;
use crate::control::store::ChangeError;
use crate::control::vendor::{ImportVendorError, VendorError};
use crate::deadletter::DeadLetterError;
use crate::model::state::StateError;
use http::StatusCode;

/// An API failure: the HTTP status and the `{"code","message"}` body it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any error the contract names.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        self.code
    }
    /// The human message of the body.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    /// A malformed request (bad JSON, bad field value).
    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// Missing or unknown; also what another org's objects look like.
    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    /// Something on our side failed; the details are in the log, not the response.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// No valid bearer token.
    pub(super) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token",
        )
    }
    /// The token lacks the route's permission (named as configured).
    pub(super) fn forbidden(permission: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token lacks the {permission} permission"),
        )
    }
    /// With the same status and code, the message prefixed (a bulk import's position).
    fn prefixed(self, prefix: &str) -> Self {
        Self::new(self.status, self.code, format!("{prefix}{}", self.message))
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        ApiError::new(e.status(), e.code(), e.to_string())
    }
}

impl From<VendorError> for ApiError {
    /// Rejected credentials are the tenant's to fix (422); an unreachable or confused
    /// Twilio is ours to retry (503 / 502).
    fn from(e: VendorError) -> Self {
        let (status, message) = match &e {
            VendorError::CredentialsRejected => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Twilio rejected this Account SID / Auth Token; check both in the Twilio console."
                    .to_string(),
            ),
            VendorError::Unreachable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "Twilio could not be reached ({why}); nothing was changed, try again later."
                ),
            ),
            VendorError::Unexpected(_) | VendorError::BadResponse(_) => (
                StatusCode::BAD_GATEWAY,
                format!("{e}; nothing was changed, try again later."),
            ),
            VendorError::BadBase { .. } | VendorError::InsecureBase { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        };
        ApiError::new(status, e.code(), message)
    }
}

impl From<ImportVendorError> for ApiError {
    fn from(e: ImportVendorError) -> Self {
        match e {
            ImportVendorError::Vendor(v) => v.into(),
            other => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                other.code(),
                other.to_string(),
            ),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        let (status, code) = match &e {
            ChangeError::Invalid(_) => (StatusCode::CONFLICT, "state_invalid"),
            ChangeError::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "publish_failed"),
            ChangeError::FileNotWritten | ChangeError::JournalNotWritten => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ChangeError::Reloading | ChangeError::KvNotWritten => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ChangeError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        ChangeError::Invalid(e).into()
    }
}

impl From<DeadLetterError> for ApiError {
    /// A failed replay: progress so far is kept, so the caller may simply call again.
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::Interrupted { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replay_interrupted",
                e.to_string(),
            ),
            e => {
                tracing::error!(error = %e, "dead-letter replay failed");
                ApiError::internal("the dead letters could not be replayed; see the log")
            }
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(message) => ApiError::invalid_request(message),
            OpError::NotFound(what) => ApiError::not_found(what),
            OpError::Rotation(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            OpError::Import(e) => e.into(),
            OpError::At {
                index,
                sender_id,
                error,
            } => ApiError::from(*error).prefixed(&format!("numbers[{index}] ({sender_id}): ")),
            OpError::Vendor(e) => e.into(),
            OpError::VendorImport(e) => e.into(),
            OpError::Change(e) => e.into(),
            OpError::IntegrationInactive => ApiError::new(
                StatusCode::CONFLICT,
                "integration_inactive",
                OpError::IntegrationInactive.to_string(),
            ),
            OpError::Replay(e) => e.into(),
            OpError::Internal(message) => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_errors_map_to_contract() {
        let e: ApiError = ImportError::NumberUnavailable.into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "number_unavailable")
        );
    }

    #[test]
    fn store_refusals_map_to_their_codes() {
        let e: ApiError = ChangeError::Conflict(10).into();
        assert_eq!((e.status(), e.code()), (StatusCode::CONFLICT, "conflict"));
        assert_eq!(
            e.message(),
            "the records changed concurrently 10 times in a row; retry"
        );
        let e: ApiError = ChangeError::Reloading.into();
        assert_eq!(e.code(), "store_unavailable");
    }
}
