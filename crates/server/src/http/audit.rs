//! `GET /api/v1/auth/audit`: the audit log, newest first, paged. Admins only (strict guard,
//! like the rest of `/auth`). An Atelier extension.

use crate::http::error::ApiError;
use crate::http::extract::StrictAdmin;
use crate::service::{self, AdminProof};
use crate::state::AppState;
use atelier_domain::audit::AuditAction;
use atelier_store::{AuditEntry, AuditFilter};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/auth/audit", get(list))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Records to skip.
    #[serde(default)]
    pub offset: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Only this action (e.g. `login_failed`).
    #[serde(default)]
    pub action: Option<String>,
    /// Only records where this user acted or was acted upon.
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    /// UTC, ISO-8601 with `Z`.
    pub created_at: String,
    pub action: String,
    pub actor_user_id: Option<String>,
    pub actor_email: Option<String>,
    pub subject_user_id: Option<String>,
    pub subject_email: Option<String>,
    pub client: Option<String>,
    pub detail: Option<String>,
}

impl From<AuditEntry> for AuditRecord {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            created_at: format!("{}Z", e.created_at.replacen(' ', "T", 1)),
            action: e.action,
            actor_user_id: e.actor_user_id,
            actor_email: e.actor_email,
            subject_user_id: e.subject_user_id,
            subject_email: e.subject_email,
            client: e.client,
            detail: e.detail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogPage {
    pub items: Vec<AuditRecord>,
    pub offset: i64,
    pub limit: i64,
    pub total: i64,
}

/// The audit log, newest first. Admins only.
#[utoipa::path(get, path = "/api/v1/auth/audit", tag = "auth", params(AuditQuery),
    responses((status = 200, body = AuditLogPage), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    StrictAdmin(auth): StrictAdmin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditLogPage>, ApiError> {
    let Query(query) = query.map_err(ApiError::from)?;
    if let Some(action) = &query.action {
        if AuditAction::parse(action).is_none() {
            return Err(ApiError::bad_request(format!(
                "Unknown audit action '{action}'"
            )));
        }
    }
    let offset = query.offset.unwrap_or(0).max(0);
    let limit = query.limit.unwrap_or(50).clamp(1, service::audit::MAX_PAGE);
    let filter = AuditFilter {
        action: query.action,
        user_id: query.user_id,
    };
    let proof = AdminProof::from_admin(&auth.identity);
    let page = service::audit::list(&state, &proof, &filter, offset, limit).await?;
    Ok(Json(AuditLogPage {
        items: page.items.into_iter().map(AuditRecord::from).collect(),
        offset,
        limit,
        total: page.total,
    }))
}
