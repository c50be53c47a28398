//! Recording and reading the audit log.
//!
//! Recording never fails the action it describes: the action already happened, so a failure
//! to record is logged loudly instead.

use crate::http::error::ApiError;
use crate::service::AdminProof;
use crate::state::AppState;
use atelier_domain::audit::AuditEvent;
use atelier_store::{AuditFilter, AuditPage, Store};
use chrono::{DateTime, Utc};

pub async fn record(store: &Store, now: DateTime<Utc>, event: AuditEvent) {
    if let Err(err) = store.append_audit(now, &event).await {
        tracing::error!(error = %err, action = %event.action, "could not write the audit log");
    }
}

/// Largest page the API and CLI return.
pub const MAX_PAGE: i64 = 500;

pub async fn list(
    state: &AppState,
    _admin: &AdminProof,
    filter: &AuditFilter,
    offset: i64,
    limit: i64,
) -> Result<AuditPage, ApiError> {
    list_in(&state.store, filter, offset, limit).await
}

pub async fn list_in(
    store: &Store,
    filter: &AuditFilter,
    offset: i64,
    limit: i64,
) -> Result<AuditPage, ApiError> {
    Ok(store
        .list_audit(filter, offset.max(0), limit.clamp(1, MAX_PAGE))
        .await?)
}
