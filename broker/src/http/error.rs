//! How the JSON API fails: a status and `{"error": message}` ([`ApiError`]), from the core's
//! failures and from paths and queries that do not parse, so no answer under `/api/` is plain
//! text.

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strom_protocol::ErrorCode;

use crate::core::Failure;

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<Failure> for ApiError {
    fn from((code, message): Failure) -> Self {
        let status = match code {
            ErrorCode::UnknownTopicOrPartition | ErrorCode::GroupIdNotFound => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::Busy => StatusCode::CONFLICT,
            ErrorCode::InvalidRequest | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub(super) type Answer = Result<Json<Value>, ApiError>;

/// A name from the path, or a 400 in the API's own shape (a name that is not UTF-8, say).
pub(super) fn text(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(name)| name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}
