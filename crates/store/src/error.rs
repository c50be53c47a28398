//! The store's error type. Constraint violations become variants callers can match on, so no
//! caller ever needs to read a database message to decide what happened.

use thiserror::Error;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A UNIQUE constraint refused the write; carries the database's own message, which the
    /// contract echoes in `Failed to create user: <message>`.
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// The write would leave no active administrator (auth.md §9.7).
    #[error("Cannot remove the last administrator")]
    LastAdmin,
    /// `/setup` lost the race against another setup.
    #[error("Admin user already exists")]
    AdminExists,
    /// The database was migrated by a newer Atelier.
    #[error("the database schema is at version {found}, newer than this binary knows ({known}); upgrade Atelier")]
    SchemaTooNew { found: i64, known: i64 },
    /// Another model record already has this path (models.md §1.7, `UNIQUE(path)`).
    #[error("A model with path '{0}' is already installed")]
    ModelPathTaken(String),
    /// Another model record already has this key.
    #[error("A model with key '{0}' already exists")]
    ModelKeyTaken(String),
    /// A row the store cannot read back (hand-edited, or written by something else).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Maps a UNIQUE violation to [`StoreError::Conflict`]; anything else stays a database error.
    pub(crate) fn from_write(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                return Self::Conflict(db.message().to_owned());
            }
        }
        Self::Database(err)
    }
}
