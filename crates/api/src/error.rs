use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use api_types::ApiError;

/// An error answer: status, stable code, human message.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiFailure {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiFailure {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiFailure {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }
    /// Our fault. The detail is logged; the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "control API internal error");
        ApiFailure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error in Flowers; its log has the details".into(),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                code: self.code.to_string(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<orchestrator::Error> for ApiFailure {
    fn from(error: orchestrator::Error) -> Self {
        use orchestrator::Error as E;
        match &error {
            E::UnknownOwner(_)
            | E::UnknownJob(_)
            | E::UnknownRun(_)
            | E::UnknownModel(_)
            | E::UnknownVersion(..) => ApiFailure::not_found(error.to_string()),
            E::RunEnded(_) | E::JobAlreadyRunning(..) | E::Conflict(_) => {
                ApiFailure::conflict(error.to_string())
            }
            E::Refused(_) | E::Version(orchestrator::versions::VersionError::Source { .. }) => {
                ApiFailure::bad_request(error.to_string())
            }
            E::Version(orchestrator::versions::VersionError::Write { .. }) => {
                ApiFailure::internal(error)
            }
            E::ShuttingDown => ApiFailure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "shutting_down",
                message: error.to_string(),
            },
            E::Store(_) => ApiFailure::internal(error),
        }
    }
}

impl From<store::StoreError> for ApiFailure {
    fn from(error: store::StoreError) -> Self {
        ApiFailure::internal(error)
    }
}
