//! `POST /api/v1/generate` (generation.md §12): the simple generation endpoint.

use crate::http::body::{Body, Fields, FromBody};
use crate::http::error::ApiError;
use crate::http::extract::CurrentUser;
use crate::service::generate::{self as service, Outcome, Request};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/generate", post(generate))
}

/// The request body, checked field by field (unknown fields refused).
pub struct GenerateBody(Request);

impl FromBody for GenerateBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        match service::parse(f.whole()) {
            Ok(req) => Some(GenerateBody(req)),
            Err(ApiError::Validation(issues)) => {
                for i in issues {
                    f.push_issue(i.kind, i.loc, &i.msg, i.input, i.ctx);
                }
                None
            }
            Err(_) => None,
        }
    }
}

/// Builds the graph the web UI would build for these settings and enqueues it; with `wait`,
/// answers when the images are ready (as PNG bytes for `Accept: image/png` and one image).
#[utoipa::path(post, path = "/api/v1/generate", tag = "generate",
    responses((status = 200, body = Object), (status = 202, body = Object), (status = 401), (status = 403),
        (status = 404), (status = 409), (status = 422)))]
pub async fn generate(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Body(GenerateBody(req)): Body<GenerateBody>,
) -> Result<Response, ApiError> {
    let wants_png = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("image/png"));
    Ok(
        match service::generate(&state, &user.identity, req, wants_png).await? {
            Outcome::Png(bytes) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
            Outcome::Json(code, body) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
                Json(body),
            )
                .into_response(),
        },
    )
}
