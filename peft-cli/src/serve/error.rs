//! The server's errors as OpenAI's API writes them: a status and `{"error": {"message", "type", "code"}}`.
//! Every refusal of the engine, every malformed body (axum's own JSON rejections included) and every
//! failure comes back in this shape.
//!
//! ```
//! use axum::http::StatusCode;
//! use peft_cli::serve::error::ApiError;
//! let e = ApiError::not_found("model_not_found", "no adapter is loaded under the name `sql`");
//! assert_eq!(e.status, StatusCode::NOT_FOUND);
//! assert_eq!(e.body()["error"]["code"], "model_not_found");
//! assert_eq!(e.body()["error"]["type"], "invalid_request_error");
//! ```

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use peft_train::engine::EngineError;
use serde_json::{json, Value};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error` for the client's mistakes, `server_error` for ours.
    pub kind: &'static str,
    /// A short stable name of the error (`model_not_found`, `context_length_exceeded`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: "invalid_request_error",
            code,
            message: message.into(),
        }
    }

    /// 400: the request cannot be served as it is.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: no such model, adapter or route.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: the name is taken.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }

    /// 500 (or 503 where the engine is gone): the server failed.
    pub fn server(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: "server_error",
            code: "server_error",
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::UnknownAdapter(_) => ApiError::not_found("model_not_found", message),
            EngineError::AdapterExists(_) => ApiError::conflict("adapter_exists", message),
            EngineError::TooLong { .. } => {
                ApiError::bad_request("context_length_exceeded", message)
            }
            EngineError::EmptyPrompt | EngineError::TokenOutOfVocab { .. } => {
                ApiError::bad_request("invalid_prompt", message)
            }
            EngineError::BadSampling(_) => ApiError::bad_request("invalid_sampling", message),
            EngineError::Unsupported(_)
            | EngineError::Model(_)
            | EngineError::StepFailed { .. } => {
                ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let message = r.body_text();
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_content_type",
                format!("{message} (send `Content-Type: application/json`)"),
            ),
            _ => ApiError::bad_request("invalid_json", message),
        }
    }
}
