//! Reassigning content between owners: an administrator moves everything one owner has
//! (boards, images, workflows, style presets) to another user in one transaction, and the
//! move is audited. The source may be a current user, `system` (legacy single-user content),
//! or the id of a deleted user whose content was left behind.

use crate::http::error::ApiError;
use crate::service::{audit, AdminProof};
use crate::state::AppState;
use atelier_domain::audit::{AuditAction, AuditEvent};
use atelier_domain::UserId;
use atelier_store::ReassignCounts;
use chrono::{DateTime, Utc};

pub async fn reassign(
    state: &AppState,
    admin: &AdminProof,
    from: &UserId,
    to: &UserId,
    client: Option<String>,
    now: DateTime<Utc>,
) -> Result<ReassignCounts, ApiError> {
    let target = state
        .store
        .get_user(to)
        .await?
        .filter(|u| !u.is_system())
        .ok_or_else(|| ApiError::not_found("Target user not found"))?;
    if from == to {
        return Err(ApiError::bad_request("Source and target are the same user"));
    }
    let counts = state.store.reassign_content(from, to).await?;
    let detail = format!(
        "from {from}: {} boards, {} images, {} workflows, {} style presets",
        counts.boards, counts.images, counts.workflows, counts.style_presets
    );
    let event = AuditEvent::new(AuditAction::ContentReassigned, admin.actor().clone())
        .subject(Some(target.user_id.as_str()), &target.email)
        .client(client)
        .detail(detail);
    audit::record(&state.store, now, event).await;
    Ok(counts)
}
