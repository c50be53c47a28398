//! `POST /api/v1/content/reassign` (admins; an Atelier extension).

use crate::http::body::{Body, Fields, FromBody};
use crate::http::client::ClientInfo;
use crate::http::error::ApiError;
use crate::http::extract::AdminUser;
use crate::service::{self, AdminProof};
use crate::state::AppState;
use atelier_domain::UserId;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/content/reassign", post(reassign))
}

pub struct ReassignBody {
    from_user_id: String,
    to_user_id: String,
}

impl FromBody for ReassignBody {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let from = f.required_str("from_user_id");
        let to = f.required_str("to_user_id");
        Some(Self {
            from_user_id: from?,
            to_user_id: to?,
        })
    }
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the body for OpenAPI; parsing goes through `FromBody`
pub struct ReassignRequest {
    /// A user id, `system`, or the id of a deleted user.
    from_user_id: String,
    /// An existing user's id.
    to_user_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReassignResult {
    pub boards: u64,
    pub images: u64,
    pub workflows: u64,
    pub style_presets: u64,
}

/// Moves every board, image, workflow and style preset of one owner to another user, in one
/// transaction. Admins only.
#[utoipa::path(post, path = "/api/v1/content/reassign", tag = "content", request_body = ReassignRequest,
    responses((status = 200, body = ReassignResult), (status = 400), (status = 401), (status = 403), (status = 404), (status = 422)))]
pub async fn reassign(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    client: ClientInfo,
    Body(body): Body<ReassignBody>,
) -> Result<Json<ReassignResult>, ApiError> {
    let proof = AdminProof::from_admin(&admin);
    let counts = service::content::reassign(
        &state,
        &proof,
        &UserId::new(body.from_user_id),
        &UserId::new(body.to_user_id),
        client.addr.map(|a| a.to_string()),
        Utc::now(),
    )
    .await?;
    Ok(Json(ReassignResult {
        boards: counts.boards,
        images: counts.images,
        workflows: counts.workflows,
        style_presets: counts.style_presets,
    }))
}
