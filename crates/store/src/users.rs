//! The `users` aggregate.
//!
//! Invariant kept here: at least one active administrator remains once one exists. Every write
//! that could remove the last one (demote, deactivate, delete) counts and writes inside a
//! single write-locked transaction, so concurrent requests or an admin command running beside
//! the server cannot jointly remove the last two.

use crate::{parse_db_time, Result, Store, StoreError};
use atelier_domain::{User, UserId};
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

/// The reference reads at most this many rows when listing users (auth.md §7).
pub const USER_LIST_CAP: i64 = 100;

const USER_COLUMNS: &str = "user_id, email, display_name, password_hash, is_admin, is_active, \
     created_at, updated_at, last_login_at, token_epoch";

/// A user to insert; the email is already normalised and the password already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub is_admin: bool,
}

/// Changes to a user; `None` leaves a field as it is. A new password hash also bumps
/// `token_epoch`, revoking every token issued before.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub display_name: Option<String>,
    pub password_hash: Option<String>,
    pub is_admin: Option<bool>,
    pub is_active: Option<bool>,
}

impl UserUpdate {
    /// Whether applying this to `user` would take away an active administrator.
    pub fn removes_active_admin(&self, user: &User) -> bool {
        user.is_active_admin() && (self.is_admin == Some(false) || self.is_active == Some(false))
    }
}

fn user_from_row(row: &SqliteRow) -> Result<User> {
    let time = |name: &str| -> Result<chrono::NaiveDateTime> {
        let text: String = row.try_get(name)?;
        parse_db_time(&text)
    };
    let last_login: Option<String> = row.try_get("last_login_at")?;
    Ok(User {
        user_id: UserId::new(row.try_get::<String, _>("user_id")?),
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        is_admin: row.try_get("is_admin")?,
        is_active: row.try_get("is_active")?,
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
        last_login_at: last_login.as_deref().map(parse_db_time).transpose()?,
        token_epoch: row.try_get("token_epoch")?,
    })
}

async fn fetch_user(conn: &mut SqliteConnection, id: &UserId) -> Result<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(user_from_row).transpose()
}

async fn count_active_admins(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query("SELECT COUNT(*) FROM users WHERE is_admin = TRUE AND is_active = TRUE")
            .fetch_one(conn)
            .await?
            .try_get(0)?,
    )
}

async fn insert(conn: &mut SqliteConnection, new: &NewUser) -> Result<UserId> {
    let id = UserId::new(uuid::Uuid::new_v4().to_string());
    sqlx::query(
        "INSERT INTO users (user_id, email, display_name, password_hash, is_admin, is_active)
         VALUES ($1, $2, $3, $4, $5, TRUE)",
    )
    .bind(id.as_str())
    .bind(&new.email)
    .bind(&new.display_name)
    .bind(&new.password_hash)
    .bind(new.is_admin)
    .execute(conn)
    .await
    .map_err(StoreError::from_write)?;
    Ok(id)
}

impl Store {
    pub async fn get_user(&self, id: &UserId) -> Result<Option<User>> {
        let mut conn = self.pool.acquire().await?;
        fetch_user(&mut conn, id).await
    }

    /// Exact, case-sensitive lookup of an already-normalised email.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Users newest first, `system` included, at most `limit` rows.
    pub async fn list_users(&self, limit: i64) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at DESC, rowid DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn count_active_admins(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        count_active_admins(&mut conn).await
    }

    /// Inserts a user. A taken email is [`StoreError::Conflict`].
    pub async fn insert_user(&self, new: &NewUser) -> Result<User> {
        let mut tx = self.begin_write().await?;
        let id = insert(&mut tx, new).await?;
        let user = fetch_user(&mut tx, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(user)
    }

    /// Inserts the first administrator, unless an active one exists by the time the write lock
    /// is held ([`StoreError::AdminExists`]): concurrent setups create exactly one.
    pub async fn insert_first_admin(&self, new: &NewUser) -> Result<User> {
        let mut tx = self.begin_write().await?;
        if count_active_admins(&mut tx).await? > 0 {
            return Err(StoreError::AdminExists);
        }
        let id = insert(&mut tx, new).await?;
        let user = fetch_user(&mut tx, &id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(user)
    }

    /// Applies `update`, refusing with [`StoreError::LastAdmin`] when it would leave no active
    /// administrator. Returns the row as stored.
    pub async fn update_user(&self, id: &UserId, update: &UserUpdate) -> Result<User> {
        let mut tx = self.begin_write().await?;
        let current = fetch_user(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        if update.removes_active_admin(&current) && count_active_admins(&mut tx).await? <= 1 {
            return Err(StoreError::LastAdmin);
        }
        // COALESCE keeps unchanged fields; the epoch is bumped in SQL, never read-modify-write.
        sqlx::query(
            "UPDATE users SET
                display_name = COALESCE($2, display_name),
                password_hash = COALESCE($3, password_hash),
                is_admin = COALESCE($4, is_admin),
                is_active = COALESCE($5, is_active),
                token_epoch = token_epoch + (CASE WHEN $3 IS NULL THEN 0 ELSE 1 END)
             WHERE user_id = $1",
        )
        .bind(id.as_str())
        .bind(&update.display_name)
        .bind(&update.password_hash)
        .bind(update.is_admin)
        .bind(update.is_active)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        let user = fetch_user(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(user)
    }

    /// Deletes a user, refusing with [`StoreError::LastAdmin`] for the last active admin.
    /// Foreign keys cascade to the user's sessions, invitations and per-user state.
    pub async fn delete_user(&self, id: &UserId) -> Result<User> {
        let mut tx = self.begin_write().await?;
        let current = fetch_user(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        if current.is_active_admin() && count_active_admins(&mut tx).await? <= 1 {
            return Err(StoreError::LastAdmin);
        }
        sqlx::query("DELETE FROM users WHERE user_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(current)
    }

    /// Records a successful password check: `last_login_at` as ISO-8601 with `+00:00`.
    pub async fn record_login(&self, id: &UserId, at: DateTime<Utc>) -> Result<User> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET last_login_at = $2 WHERE user_id = $1")
            .bind(id.as_str())
            .bind(at.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
            .execute(&mut *tx)
            .await?;
        let user = fetch_user(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::migrated_store;

    fn new_user(email: &str, admin: bool) -> NewUser {
        NewUser {
            email: email.into(),
            display_name: None,
            password_hash: "$2b$12$x".into(),
            is_admin: admin,
        }
    }

    #[tokio::test]
    async fn duplicate_email_is_a_conflict_and_changes_nothing() {
        let (store, _dir) = migrated_store().await;
        store
            .insert_user(&new_user("a@x.com", false))
            .await
            .expect("insert");
        match store.insert_user(&new_user("a@x.com", true)).await {
            Err(StoreError::Conflict(msg)) => assert!(msg.contains("UNIQUE"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.list_users(100).await.expect("list").len(), 2);
        // Case-sensitive uniqueness: a different case is another account.
        store
            .insert_user(&new_user("A@x.com", false))
            .await
            .expect("insert");
    }

    #[tokio::test]
    async fn last_admin_cannot_be_removed_but_others_can() {
        let (store, _dir) = migrated_store().await;
        let a = store
            .insert_user(&new_user("a@x.com", true))
            .await
            .expect("a");
        let b = store
            .insert_user(&new_user("b@x.com", true))
            .await
            .expect("b");
        let demote = UserUpdate {
            is_admin: Some(false),
            ..UserUpdate::default()
        };
        store
            .update_user(&a.user_id, &demote)
            .await
            .expect("demote a");
        assert!(matches!(
            store.update_user(&b.user_id, &demote).await,
            Err(StoreError::LastAdmin)
        ));
        assert!(matches!(
            store.delete_user(&b.user_id).await,
            Err(StoreError::LastAdmin)
        ));
        let rename = UserUpdate {
            display_name: Some("B".into()),
            ..UserUpdate::default()
        };
        assert_eq!(
            store
                .update_user(&b.user_id, &rename)
                .await
                .expect("rename")
                .display_name
                .as_deref(),
            Some("B")
        );
    }

    #[tokio::test]
    async fn password_change_bumps_epoch_and_updated_at() {
        let (store, _dir) = migrated_store().await;
        let a = store
            .insert_user(&new_user("a@x.com", false))
            .await
            .expect("a");
        let changed = store
            .update_user(
                &a.user_id,
                &UserUpdate {
                    password_hash: Some("$2b$12$y".into()),
                    ..UserUpdate::default()
                },
            )
            .await
            .expect("update");
        assert_eq!(changed.token_epoch, a.token_epoch + 1);
        assert!(changed.updated_at >= a.updated_at);
    }

    #[tokio::test]
    async fn concurrent_first_admins_make_exactly_one() {
        let (store, _dir) = migrated_store().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .insert_first_admin(&new_user(&format!("a{i}@x.com"), true))
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.expect("join").is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(store.count_active_admins().await.expect("count"), 1);
    }
}
