//! One error type for every handler: `{"error":{"code","message",…}}` with the right status.
//! Client errors keep their message; internal ones are logged and answered generically, so
//! nothing about the server's insides (or a secret in an error chain) reaches a caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer TOKEN` header is required",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(error: anyhow::Error) -> Self {
        tracing::error!(message = "Request failed.", error = %format!("{error:#}"));
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request",
        )
    }

    /// A body over the server's limit (`--max-body`).
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is over the server's size limit",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<tellify_core::rule::RuleError> for ApiError {
    fn from(e: tellify_core::rule::RuleError) -> Self {
        if !e.failures.is_empty() {
            let failures = serde_json::to_value(&e.failures).unwrap_or_default();
            return ApiError::bad_request("invalid_params", e.message).with("failures", failures);
        }
        let mut err = ApiError::bad_request("invalid_rule", e.to_string());
        if let Some(field) = e.field {
            err = err.with("field", field);
        }
        if let Some(line) = e.line {
            err = err.with("line", line);
        }
        if let Some(column) = e.column {
            err = err.with("column", column);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
