//! User administration (auth.md §7), shared by the admin API and `atelier user …`.
//!
//! Every function takes an [`AdminProof`]. The system user's protections and the friendly
//! last-admin pre-check live here; the authoritative last-admin check runs again inside the
//! store's write-locked transaction.

use crate::http::error::ApiError;
use crate::service::{audit, AdminProof};
use crate::state::AppState;
use atelier_domain::audit::{AuditAction, AuditEvent};
use atelier_domain::password::PasswordPolicy;
use atelier_domain::{User, UserId};
use atelier_store::{NewUser, StoreError, UserUpdate, USER_LIST_CAP};
use chrono::{DateTime, Utc};

pub const SYSTEM_USER_REFUSAL: &str =
    "The system user cannot be deleted, deactivated, promoted to administrator, or given a password";

/// Where an admin action came from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub client: Option<String>,
}

/// `GET /auth/users`: newest first, `system` hidden, at most 100 rows read.
pub async fn list(state: &AppState, _admin: &AdminProof) -> Result<Vec<User>, ApiError> {
    let users = state.store.list_users(USER_LIST_CAP).await?;
    Ok(users.into_iter().filter(|u| !u.is_system()).collect())
}

/// `GET /auth/users/{id}` (the `system` row is visible here).
pub async fn get(state: &AppState, _admin: &AdminProof, id: &UserId) -> Result<User, ApiError> {
    state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found"))
}

pub struct CreateUserInput {
    pub email: String,
    pub display_name: Option<String>,
    pub password: String,
    pub is_admin: bool,
}

/// The shared front half of creating an account (setup and admin create): the password
/// policy first, then the duplicate check, then the hash.
pub(crate) async fn prepare(
    state: &AppState,
    policy: PasswordPolicy,
    email: String,
    display_name: Option<String>,
    password: &str,
    is_admin: bool,
) -> Result<NewUser, ApiError> {
    policy.check(password)?;
    if state.store.find_user_by_email(&email).await?.is_some() {
        return Err(ApiError::bad_request(format!(
            "User with email {email} already exists"
        )));
    }
    Ok(NewUser {
        email,
        display_name,
        password_hash: state.hasher.hash(password).await?,
        is_admin,
    })
}

/// A refused insert: a UNIQUE violation is the client's `Failed to create user: <message>`.
pub(crate) fn insert_failure(err: StoreError) -> ApiError {
    match err {
        StoreError::Conflict(msg) => ApiError::bad_request(format!("Failed to create user: {msg}")),
        other => other.into(),
    }
}

/// `POST /auth/users`: policy first, then the duplicate check.
pub async fn create(
    state: &AppState,
    admin: &AdminProof,
    policy: PasswordPolicy,
    input: CreateUserInput,
    origin: &Origin,
    now: DateTime<Utc>,
) -> Result<User, ApiError> {
    let new = prepare(
        state,
        policy,
        input.email,
        input.display_name,
        &input.password,
        input.is_admin,
    )
    .await?;
    let user = state
        .store
        .insert_user(&new)
        .await
        .map_err(insert_failure)?;
    let detail = if user.is_admin {
        "administrator"
    } else {
        "user"
    };
    record(
        state,
        admin,
        AuditAction::UserCreated,
        &user,
        origin,
        now,
        Some(detail),
    )
    .await;
    Ok(user)
}

#[derive(Debug, Clone, Default)]
pub struct UpdateUserInput {
    pub display_name: Option<String>,
    pub password: Option<String>,
    pub is_admin: Option<bool>,
    pub is_active: Option<bool>,
}

/// `PATCH /auth/users/{id}`. Returns the row and, when an admin set their own password and is
/// still active, their replacement token.
pub async fn update(
    state: &AppState,
    admin: &AdminProof,
    policy: PasswordPolicy,
    id: &UserId,
    input: UpdateUserInput,
    origin: &Origin,
    now: DateTime<Utc>,
) -> Result<(User, Option<String>), ApiError> {
    let current = get(state, admin, id).await?;
    if current.is_system()
        && (input.is_active == Some(false)
            || input.is_admin == Some(true)
            || input.password.is_some())
    {
        return Err(ApiError::bad_request(SYSTEM_USER_REFUSAL));
    }
    let mut update = UserUpdate {
        display_name: input.display_name,
        password_hash: None,
        is_admin: input.is_admin,
        is_active: input.is_active,
    };
    if update.removes_active_admin(&current) && state.store.count_active_admins().await? <= 1 {
        return Err(ApiError::bad_request(
            "Cannot remove the last administrator",
        ));
    }
    if let Some(password) = &input.password {
        policy.check(password)?;
        update.password_hash = Some(state.hasher.hash(password).await?);
    }
    if changes_nothing(&update) {
        return Ok((current, None));
    }
    let updated = state.store.update_user(id, &update).await?;

    let changes = [
        (
            update.is_admin == Some(true) && !current.is_admin,
            AuditAction::UserPromoted,
        ),
        (
            update.is_admin == Some(false) && current.is_admin,
            AuditAction::UserDemoted,
        ),
        (
            update.is_active == Some(true) && !current.is_active,
            AuditAction::UserActivated,
        ),
        (
            update.is_active == Some(false) && current.is_active,
            AuditAction::UserDeactivated,
        ),
        (update.password_hash.is_some(), AuditAction::PasswordReset),
        (update.display_name.is_some(), AuditAction::UserUpdated),
    ];
    for (happened, action) in changes {
        if happened {
            record(state, admin, action, &updated, origin, now, None).await;
        }
    }

    crate::socket::recheck_user(state, &updated.user_id).await;
    crate::service::worker::recheck_running(state).await;
    let token = match admin.caller() {
        Some(caller)
            if update.password_hash.is_some()
                && caller.user_id == updated.user_id
                && updated.is_active =>
        {
            Some(crate::service::auth::issue_token(
                state,
                &updated,
                caller.remember_me,
                now,
            ))
        }
        _ => None,
    };
    Ok((updated, token))
}

/// Whether `update` sets no field. The reference then returns the row without writing, so
/// `updated_at` (bumped by the trigger on every UPDATE) stays as it was.
pub(crate) fn changes_nothing(update: &UserUpdate) -> bool {
    update.display_name.is_none()
        && update.password_hash.is_none()
        && update.is_admin.is_none()
        && update.is_active.is_none()
}

/// `DELETE /auth/users/{id}`. The user's content stays, owned by the dangling id.
pub async fn delete(
    state: &AppState,
    admin: &AdminProof,
    id: &UserId,
    origin: &Origin,
    now: DateTime<Utc>,
) -> Result<User, ApiError> {
    let current = get(state, admin, id).await?;
    if current.is_system() {
        return Err(ApiError::bad_request(SYSTEM_USER_REFUSAL));
    }
    if current.is_active_admin() && state.store.count_active_admins().await? <= 1 {
        return Err(ApiError::bad_request(
            "Cannot remove the last administrator",
        ));
    }
    let deleted = state.store.delete_user(id).await?;
    crate::socket::recheck_user(state, &deleted.user_id).await;
    crate::service::worker::recheck_running(state).await;
    record(
        state,
        admin,
        AuditAction::UserDeleted,
        &deleted,
        origin,
        now,
        None,
    )
    .await;
    Ok(deleted)
}

async fn record(
    state: &AppState,
    admin: &AdminProof,
    action: AuditAction,
    subject: &User,
    origin: &Origin,
    now: DateTime<Utc>,
    detail: Option<&str>,
) {
    let mut event = AuditEvent::new(action, admin.actor().clone())
        .subject(Some(subject.user_id.as_str()), &subject.email)
        .client(origin.client.clone());
    if let Some(detail) = detail {
        event = event.detail(detail);
    }
    audit::record(&state.store, now, event).await;
}
