//! Users and the identity a request acts as.
//!
//! Invariants kept here: the `system` user never counts as an administrator and never
//! authenticates; an identity's role always comes from the database row, never from a token.

use crate::ids::UserId;
use chrono::NaiveDateTime;

/// Id of the internal user that owns content created before multi-user mode.
pub const SYSTEM_USER_ID: &str = "system";
/// Email of the internal `system` user (auth.md §9.8).
pub const SYSTEM_EMAIL: &str = "system@system.invokeai";

/// A row of the `users` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: UserId,
    pub email: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub is_admin: bool,
    pub is_active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub last_login_at: Option<NaiveDateTime>,
    pub token_epoch: i64,
}

impl User {
    /// "Active admin" in the sense of the last-admin invariant (auth.md §9.7).
    pub fn is_active_admin(&self) -> bool {
        self.is_admin && self.is_active
    }

    pub fn is_system(&self) -> bool {
        self.user_id.is_system()
    }
}

/// Who a request acts as, once its credentials were checked against the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub email: String,
    pub is_admin: bool,
    pub remember_me: bool,
    pub token_epoch: i64,
}

impl Identity {
    /// The synthetic administrator every default-guarded route acts as in single-user mode.
    pub fn system_admin() -> Self {
        Self {
            user_id: UserId::new(SYSTEM_USER_ID),
            email: SYSTEM_EMAIL.to_owned(),
            is_admin: true,
            remember_me: false,
            token_epoch: 0,
        }
    }

    /// Builds the identity from the database row; only `remember_me` comes from the token.
    pub fn from_row(user: &User, remember_me: bool) -> Self {
        Self {
            user_id: user.user_id.clone(),
            email: user.email.clone(),
            is_admin: user.is_admin,
            remember_me,
            token_epoch: user.token_epoch,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.is_admin
    }

    /// Whether this identity may read or change something owned by `owner`.
    pub fn owns_or_admin(&self, owner: &UserId) -> bool {
        self.is_admin || &self.user_id == owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_admin_is_admin_and_owns_everything() {
        let id = Identity::system_admin();
        assert!(id.is_admin());
        assert!(id.owns_or_admin(&UserId::new("someone")));
    }

    #[test]
    fn non_admin_owns_only_own() {
        let id = Identity {
            user_id: UserId::new("a"),
            email: "a@x.com".into(),
            is_admin: false,
            remember_me: false,
            token_epoch: 0,
        };
        assert!(id.owns_or_admin(&UserId::new("a")));
        assert!(!id.owns_or_admin(&UserId::new("b")));
    }
}
