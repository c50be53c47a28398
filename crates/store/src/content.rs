//! Moving content between owners (Atelier's extension: InvokeAI promises it for "a future
//! release"). Everything a user owns changes hands in one write transaction.

use crate::{Result, Store};
use atelier_domain::UserId;
use sqlx::Row;

/// How many rows of each kind changed owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReassignCounts {
    pub boards: u64,
    pub images: u64,
    pub workflows: u64,
    pub style_presets: u64,
}

/// Tables with a `user_id` owner column that take part, with the count each fills. Tables a
/// later migration adds are included once they exist.
const OWNED_TABLES: [&str; 4] = ["boards", "images", "workflow_library", "style_presets"];

/// Bundled defaults (default workflows and style presets) belong to `system` and never move.
fn user_content_only(table: &str) -> &'static str {
    match table {
        "workflow_library" => " AND COALESCE(category, 'user') <> 'default'",
        "style_presets" => " AND type <> 'default'",
        _ => "",
    }
}

impl Store {
    /// Gives everything `from` owns to `to`, atomically.
    pub async fn reassign_content(&self, from: &UserId, to: &UserId) -> Result<ReassignCounts> {
        let mut tx = self.begin_write().await?;
        let mut counts = ReassignCounts::default();
        for table in OWNED_TABLES {
            let exists: i64 = sqlx::query(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if exists == 0 {
                continue;
            }
            let done = sqlx::query(&format!(
                "UPDATE {table} SET user_id = $2 WHERE user_id = $1{}",
                user_content_only(table)
            ))
            .bind(from.as_str())
            .bind(to.as_str())
            .execute(&mut *tx)
            .await?;
            let n = done.rows_affected();
            match table {
                "boards" => counts.boards = n,
                "images" => counts.images = n,
                "workflow_library" => counts.workflows = n,
                _ => counts.style_presets = n,
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// How much content `owner` has, without changing anything.
    pub async fn count_content(&self, owner: &UserId) -> Result<ReassignCounts> {
        let mut counts = ReassignCounts::default();
        for table in OWNED_TABLES {
            let exists: i64 = sqlx::query(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
            if exists == 0 {
                continue;
            }
            let n: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) FROM {table} WHERE user_id = $1{}",
                user_content_only(table)
            ))
            .bind(owner.as_str())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
            let n = u64::try_from(n).unwrap_or(0);
            match table {
                "boards" => counts.boards = n,
                "images" => counts.images = n,
                "workflow_library" => counts.workflows = n,
                _ => counts.style_presets = n,
            }
        }
        Ok(counts)
    }
}
