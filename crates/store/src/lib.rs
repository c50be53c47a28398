//! Atelier's storage layer: the only place SQL lives.
//!
//! One [`Store`] handle is opened at start-up and shared by the HTTP server and the admin
//! commands. Each public method is one use of the database: reads go straight to the pool,
//! writes run in one explicit transaction that takes SQLite's write lock at `BEGIN`
//! (`BEGIN IMMEDIATE`), so checks and writes that belong together (the last-admin invariant,
//! the one-admin setup) cannot interleave with another process's. Services never see SQL or a
//! transaction, which is what lets a PostgreSQL backend slot in behind the same methods (the
//! SQL is written in the subset both engines accept; see `migrations/postgres`).
//!
//! Times are UTC. Row times use SQLite's `STRFTIME('%Y-%m-%d %H:%M:%f')` text form, as the
//! reference schema does, so that documented sqlite3 recipes keep working.

mod audit;
mod boards;
mod client_state;
mod content;
mod error;
mod images;
mod migrate;
mod models;
mod queue;
mod settings;
mod style_presets;
mod throttle;
mod time;
mod users;
mod workflows;

pub use audit::{AuditEntry, AuditFilter, AuditPage};
pub use boards::{BoardChanges, BoardOrder, BoardQuery, BoardRecord, BoardScope};
pub use content::ReassignCounts;
pub use error::{Result, StoreError};
pub use images::{BoardFilter, DayGroup, ImageChanges, ImageQuery, ImageRecord, NewImage};
pub use migrate::{MigrationReport, MIGRATIONS};
pub use models::{ModelFilter, ModelOrder, ModelRow};
pub use queue::{
    DequeueMode, Enqueued, NewBatch, NewQueueItem, QueueRow, QueueScope, StatusCounts,
};
pub use style_presets::{NewStylePreset, StylePresetRecord};
pub use throttle::ThrottleScope;
pub use time::{format_db_time, parse_db_time};
pub use users::{NewUser, UserUpdate, USER_LIST_CAP};
pub use workflows::{WorkflowOrder, WorkflowQuery, WorkflowRecord};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// SQLite waits this long for another writer (another connection, or the CLI while a server
/// runs) before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Key of the JWT signing secret in `app_settings` (auth.md §9.2).
pub const JWT_SECRET_KEY: &str = "jwt_secret";

/// A handle on the database. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Writers of this process take turns here before `BEGIN IMMEDIATE`, instead of racing
    /// for SQLite's lock and sleeping in its busy-handler backoff (which put the p99 of
    /// concurrent enqueues near a second). Other processes still meet the busy timeout.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction that also holds this process's write turn until it ends.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl WriteTx {
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` with WAL, foreign keys and a busy
    /// timeout. Does not migrate: call [`Store::migrate`].
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            write_gate: Default::default(),
        })
    }

    /// Opens a private in-memory database (`use_memory_db: true`). One connection, since each
    /// SQLite in-memory connection would otherwise be its own empty database.
    pub async fn open_in_memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            write_gate: Default::default(),
        })
    }

    /// Closes every pooled connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction holding SQLite's write lock from its first statement.
    async fn begin_write(&self) -> Result<WriteTx> {
        // A turn that takes longer than SQLite itself would wait falls back to SQLite's own
        // locking, so a mistake (a writer waiting on another) ends in an error, not a hang.
        let turn = tokio::time::timeout(BUSY_TIMEOUT, self.write_gate.clone().lock_owned())
            .await
            .ok();
        // sqlx's custom-statement `begin_with` awaits once more after SQLite acknowledged the
        // BEGIN; a caller cancelled at that point (a dropped request, an aborted task) would
        // hand the connection back to the pool still inside the transaction, holding the write
        // lock for good. Run the BEGIN as its own task so it always finishes: if nobody waits
        // for it any more, the transaction it made is dropped there and rolls back.
        let pool = self.pool.clone();
        let tx = tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
            .await
            .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))??;
        Ok(WriteTx { tx, _turn: turn })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;

    pub async fn migrated_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(&dir.path().join("atelier.db"))
            .await
            .expect("open store");
        store.migrate().await.expect("migrate");
        (store, dir)
    }
}
