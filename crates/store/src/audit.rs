//! The audit log: append-only records of authentication and administrative events.

use crate::{format_db_time, Result, Store};
use atelier_domain::audit::{Actor, AuditEvent};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub created_at: String,
    pub action: String,
    pub actor_user_id: Option<String>,
    pub actor_email: Option<String>,
    pub subject_user_id: Option<String>,
    pub subject_email: Option<String>,
    pub client: Option<String>,
    pub detail: Option<String>,
}

/// Which records to list. Empty filter fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    /// Matches records where the user is either the actor or the subject.
    pub user_id: Option<String>,
}

/// A page of records, newest first, and how many match in all.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub total: i64,
}

impl Store {
    pub async fn append_audit(&self, at: DateTime<Utc>, event: &AuditEvent) -> Result<()> {
        let (actor_id, actor_email) = match &event.actor {
            Actor::User { user_id, email } => (Some(user_id.clone()), Some(email.clone())),
            Actor::Cli => (None, Some("cli".to_owned())),
            Actor::Anonymous => (None, None),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_log (created_at, action, actor_user_id, actor_email,
                 subject_user_id, subject_email, client, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(format_db_time(at))
        .bind(event.action.as_str())
        .bind(actor_id)
        .bind(actor_email)
        .bind(&event.subject_user_id)
        .bind(&event.subject_email)
        .bind(&event.client)
        .bind(&event.detail)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<AuditPage> {
        const WHERE: &str = "WHERE ($1 IS NULL OR action = $1)
              AND ($2 IS NULL OR actor_user_id = $2 OR subject_user_id = $2)";
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM audit_log {WHERE}"))
            .bind(&filter.action)
            .bind(&filter.user_id)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT id, created_at, action, actor_user_id, actor_email, subject_user_id,
                    subject_email, client, detail
             FROM audit_log {WHERE} ORDER BY id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(&filter.action)
        .bind(&filter.user_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    created_at: r.try_get("created_at")?,
                    action: r.try_get("action")?,
                    actor_user_id: r.try_get("actor_user_id")?,
                    actor_email: r.try_get("actor_email")?,
                    subject_user_id: r.try_get("subject_user_id")?,
                    subject_email: r.try_get("subject_email")?,
                    client: r.try_get("client")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AuditPage { items, total })
    }
}
