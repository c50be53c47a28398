//! The one error type of the server and its single mapping to an HTTP response.
//!
//! Every variant has a status and a stable snake_case code. Bodies follow the compatibility
//! contract: `{"detail": "<message>"}`, or for request validation (422) a list of
//! pydantic-shaped issues. 5xx bodies never carry internals: the source is logged inside the
//! request's span and the client gets a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

/// One entry of a 422 body, as FastAPI/pydantic report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationIssue {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401. `bearer` adds `WWW-Authenticate: Bearer` (strict guard and login failures).
    #[error("{detail}")]
    Unauthorized { detail: String, bearer: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// 424: what the operation depends on is missing (`PUT /convert/{key}` on an unknown key).
    #[error("{0}")]
    FailedDependency(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request validation failed")]
    Validation(Vec<ValidationIssue>),
    /// A 422 whose detail is a plain string (the reference raises some after validation).
    #[error("{0}")]
    Validation422Detail(String),
    /// 429 with `Retry-After` in whole seconds.
    #[error("Too many failed login attempts. Try again later.")]
    TooManyRequests { retry_after_s: u64 },
    #[error("internal error: {0}")]
    Internal(String),
    /// A handled server-side failure whose message the contract shows clients
    /// (`Failed to create board`, `Error getting client state`, …); 500.
    #[error("{0}")]
    Failed(String),
}

impl ApiError {
    pub fn unauthorized(detail: &str) -> Self {
        Self::Unauthorized {
            detail: detail.to_owned(),
            bearer: false,
        }
    }

    pub fn unauthorized_bearer(detail: &str) -> Self {
        Self::Unauthorized {
            detail: detail.to_owned(),
            bearer: true,
        }
    }

    pub fn forbidden(detail: &str) -> Self {
        Self::Forbidden(detail.to_owned())
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(detail.into())
    }

    pub fn not_found(detail: &str) -> Self {
        Self::NotFound(detail.to_owned())
    }

    /// A 500 with the contract's message for a failure the route handles (logged as an error).
    pub fn failed(message: &str) -> Self {
        Self::Failed(message.to_owned())
    }

    /// Logs `source` and returns a generic 500; use for failures no client input can cause.
    pub fn internal(source: impl std::fmt::Display) -> Self {
        Self::Internal(source.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::FailedDependency(_) => StatusCode::FAILED_DEPENDENCY,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) | Self::Validation422Detail(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) | Self::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable name for logs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Conflict(_) => "conflict",
            Self::FailedDependency(_) => "failed_dependency",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Validation(_) | Self::Validation422Detail(_) => "validation_failed",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Internal(_) => "internal",
            Self::Failed(_) => "failed",
        }
    }

    /// The message a person reads (also what the admin commands print).
    pub fn detail(&self) -> String {
        match self {
            Self::Internal(_) => "Internal Server Error".to_owned(),
            Self::Validation(issues) => issues
                .iter()
                .map(|i| i.msg.clone())
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }
}

impl From<atelier_store::StoreError> for ApiError {
    fn from(err: atelier_store::StoreError) -> Self {
        use atelier_store::StoreError as E;
        match err {
            E::LastAdmin => Self::bad_request("Cannot remove the last administrator"),
            E::AdminExists => Self::bad_request("Admin user already exists"),
            E::NotFound => Self::not_found("User not found"),
            e @ (E::ModelPathTaken(_) | E::ModelKeyTaken(_)) => Self::Conflict(e.to_string()),
            other => Self::internal(other),
        }
    }
}

impl From<atelier_domain::DomainError> for ApiError {
    fn from(err: atelier_domain::DomainError) -> Self {
        Self::BadRequest(err.to_string())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::Validation(vec![ValidationIssue {
            kind: "query_invalid",
            loc: vec![json!("query")],
            msg: rejection.body_text(),
            input: Value::Null,
            ctx: None,
        }])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Validation(issues) => json!({ "detail": issues }),
            Self::Internal(source) => {
                tracing::error!(error = %source, "request failed");
                json!({ "detail": self.detail() })
            }
            Self::Failed(message) => {
                tracing::error!(%message, "request failed");
                json!({ "detail": message })
            }
            other => json!({ "detail": other.detail() }),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized { bearer: true, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests { retry_after_s } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(err: ApiError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("json"),
        )
    }

    #[tokio::test]
    async fn maps_each_variant_to_status_and_detail() {
        let (s, h, b) = body_of(ApiError::unauthorized_bearer(
            "Missing authentication credentials",
        ))
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(h.get("www-authenticate").expect("header"), "Bearer");
        assert_eq!(b, json!({"detail": "Missing authentication credentials"}));

        let (s, h, _) = body_of(ApiError::unauthorized("Authentication required")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(h.get("www-authenticate").is_none());

        let (s, h, _) = body_of(ApiError::TooManyRequests { retry_after_s: 42 }).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h.get("retry-after").expect("header"), "42");

        let (s, _, b) = body_of(ApiError::internal("db exploded at /secret/path")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b, json!({"detail": "Internal Server Error"}));

        let (s, _, b) = body_of(ApiError::failed("Failed to create board")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b, json!({"detail": "Failed to create board"}));

        let (s, _, b) = body_of(ApiError::from(atelier_store::StoreError::LastAdmin)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(b, json!({"detail": "Cannot remove the last administrator"}));
    }
}
