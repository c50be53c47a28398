//! Embedded, numbered migrations, run at start-up before anything else touches the database.
//!
//! Each migration runs in its own write-locked transaction together with the row that records
//! it, so a crash leaves the schema at a whole version and two processes starting at once
//! (a server and an admin command) never apply one twice. A database recorded at a version
//! newer than this binary knows is refused rather than guessed at.

use crate::{Result, Store, StoreError};
use chrono::Utc;
use sqlx::Row;

/// One migration: its number, a short name, and its SQL for each backend.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every migration this binary knows, in order. Released entries are never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sqlite: include_str!("../migrations/sqlite/0001_foundation.sql"),
        postgres: include_str!("../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "boards_images",
        sqlite: include_str!("../migrations/sqlite/0002_boards_images.sql"),
        postgres: include_str!("../migrations/postgres/0002_boards_images.sql"),
    },
    Migration {
        version: 3,
        name: "workflows_state",
        sqlite: include_str!("../migrations/sqlite/0003_workflows_state.sql"),
        postgres: include_str!("../migrations/postgres/0003_workflows_state.sql"),
    },
    Migration {
        version: 4,
        name: "session_queue",
        sqlite: include_str!("../migrations/sqlite/0004_session_queue.sql"),
        postgres: include_str!("../migrations/postgres/0004_session_queue.sql"),
    },
    Migration {
        version: 5,
        name: "models",
        sqlite: include_str!("../migrations/sqlite/0005_models.sql"),
        postgres: include_str!("../migrations/postgres/0005_models.sql"),
    },
    Migration {
        version: 6,
        name: "queue_fifo_index",
        sqlite: include_str!("../migrations/sqlite/0006_queue_fifo_index.sql"),
        postgres: include_str!("../migrations/postgres/0006_queue_fifo_index.sql"),
    },
];

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub from_version: i64,
    pub to_version: i64,
}

impl Store {
    /// The newest schema version this binary knows.
    pub fn known_schema_version() -> i64 {
        MIGRATIONS.last().map_or(0, |m| m.version)
    }

    /// Applies every pending migration. Refuses a schema newer than this binary.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS atelier_schema_migrations (
                version INTEGER NOT NULL PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;

        let known = Self::known_schema_version();
        let from_version = self.schema_version().await?;
        if from_version > known {
            return Err(StoreError::SchemaTooNew {
                found: from_version,
                known,
            });
        }
        for migration in MIGRATIONS {
            let mut tx = self.begin_write().await?;
            // Re-read under the write lock: another process may have migrated meanwhile.
            let current: i64 =
                sqlx::query("SELECT COALESCE(MAX(version), 0) FROM atelier_schema_migrations")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            if current >= migration.version {
                continue;
            }
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applying migration"
            );
            sqlx::raw_sql(migration.sqlite).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO atelier_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(crate::format_db_time(Utc::now()))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(MigrationReport {
            from_version,
            to_version: self.schema_version().await?,
        })
    }

    /// The version recorded in the database (0 for a fresh file).
    pub async fn schema_version(&self) -> Result<i64> {
        let exists: i64 = sqlx::query(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'atelier_schema_migrations'",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        if exists == 0 {
            return Ok(0);
        }
        let version: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM atelier_schema_migrations")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn versions_are_consecutive_and_both_backends_have_each() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
            assert!(!m.sqlite.trim().is_empty() && !m.postgres.trim().is_empty());
        }
        let list = |dir: &str| -> BTreeSet<String> {
            std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                .expect("migrations dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(list("sqlite"), list("postgres"));
        assert_eq!(list("sqlite").len(), MIGRATIONS.len());
    }

    #[tokio::test]
    async fn migrate_is_idempotent_and_seeds_system_and_secret() {
        let (store, _dir) = crate::test_support::migrated_store().await;
        let again = store.migrate().await.expect("second migrate");
        assert_eq!(again.from_version, again.to_version);
        let system = store
            .get_user(&"system".into())
            .await
            .expect("read")
            .expect("system row");
        assert!(!system.is_admin && system.password_hash.is_empty());
        let secret = store
            .get_setting(crate::JWT_SECRET_KEY)
            .await
            .expect("read")
            .expect("secret");
        assert_eq!(secret.len(), 64);
        assert!(secret
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let (store, _dir) = crate::test_support::migrated_store().await;
        sqlx::query("INSERT INTO atelier_schema_migrations VALUES (999, 'future', 'x')")
            .execute(&store.pool)
            .await
            .expect("insert");
        match store.migrate().await {
            Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}
