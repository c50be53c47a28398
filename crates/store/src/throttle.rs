//! Failed-login counters for login throttling, kept in the database so that every API node of
//! a scaled-out install sees the same counts.

use crate::{Result, Store};
use sqlx::Row;

/// What a counter is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleScope {
    /// The normalised email that was tried, whether or not such an account exists.
    Account,
    /// The client's address.
    Client,
}

impl ThrottleScope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Client => "client",
        }
    }
}

impl Store {
    /// How many failures `key` had at or after `since_ms`, and the time of the oldest of them.
    pub async fn login_failures_since(
        &self,
        scope: ThrottleScope,
        key: &str,
        since_ms: i64,
    ) -> Result<(i64, Option<i64>)> {
        let row = sqlx::query(
            "SELECT COUNT(*), MIN(at_ms) FROM login_failures
             WHERE scope = $1 AND key = $2 AND at_ms >= $3",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Records one failure for each `(scope, key)` and forgets failures older than `prune_before_ms`.
    pub async fn record_login_failure(
        &self,
        keys: &[(ThrottleScope, &str)],
        at_ms: i64,
        prune_before_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (scope, key) in keys {
            sqlx::query("INSERT INTO login_failures (scope, key, at_ms) VALUES ($1, $2, $3)")
                .bind(scope.as_str())
                .bind(*key)
                .bind(at_ms)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM login_failures WHERE at_ms < $1")
            .bind(prune_before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the failures of one key (after a successful login to that account).
    pub async fn clear_login_failures(&self, scope: ThrottleScope, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM login_failures WHERE scope = $1 AND key = $2")
            .bind(scope.as_str())
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
