//! Setup, login and the signed-in user's own account (auth.md §5–6).

use crate::http::error::ApiError;
use crate::service::{actor_of, audit, throttle};
use crate::state::AppState;
use crate::token::{lifetime_s, Claims};
use atelier_domain::audit::{Actor, AuditAction, AuditEvent};
use atelier_domain::password::PasswordPolicy;
use atelier_domain::{Identity, User};
use atelier_store::UserUpdate;
use chrono::{DateTime, Utc};
use std::net::IpAddr;

/// A hash no password matches, verified for unknown accounts so that a wrong email costs as
/// much time as a wrong password and response times do not tell which accounts exist.
const DUMMY_HASH: &str = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5eT1aF2Vx9fxw3W1/hMzGu1Zu3gDXC2";

/// `GET /auth/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupStatus {
    pub setup_required: bool,
    pub multiuser_enabled: bool,
    pub strict_password_checking: bool,
}

pub async fn status(state: &AppState) -> Result<SetupStatus, ApiError> {
    let multiuser = state.multiuser();
    let setup_required = multiuser && state.store.count_active_admins().await? == 0;
    Ok(SetupStatus {
        setup_required,
        multiuser_enabled: multiuser,
        strict_password_checking: state.config.strict_password_checking(),
    })
}

pub fn policy(state: &AppState) -> PasswordPolicy {
    PasswordPolicy::from_strict(state.config.strict_password_checking())
}

pub struct SetupInput {
    pub email: String,
    pub display_name: Option<String>,
    pub password: String,
}

/// `POST /auth/setup`: the first administrator. Exactly one wins concurrent calls.
pub async fn setup(
    state: &AppState,
    input: SetupInput,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<User, ApiError> {
    if !state.multiuser() {
        return Err(ApiError::forbidden(
            "Multiuser mode is disabled. Admin setup is not required in single-user mode.",
        ));
    }
    if state.store.count_active_admins().await? > 0 {
        return Err(ApiError::bad_request(
            "Administrator account already configured",
        ));
    }
    let new = crate::service::users::prepare(
        state,
        policy(state),
        input.email,
        input.display_name,
        &input.password,
        true,
    )
    .await?;
    let user = state
        .store
        .insert_first_admin(&new)
        .await
        .map_err(crate::service::users::insert_failure)?;
    let event = AuditEvent::new(AuditAction::Setup, Actor::Anonymous)
        .subject(Some(user.user_id.as_str()), &user.email)
        .client(client.map(|c| c.to_string()));
    audit::record(&state.store, now, event).await;
    Ok(user)
}

pub struct LoginInput {
    pub email: String,
    pub password: String,
    pub remember_me: bool,
}

pub struct LoginOutcome {
    pub token: String,
    pub user: User,
    pub expires_in: i64,
}

/// Mints a token for `user` from its current row.
pub fn issue_token(state: &AppState, user: &User, remember_me: bool, now: DateTime<Utc>) -> String {
    state.signer.sign(&Claims {
        user_id: user.user_id.to_string(),
        email: user.email.clone(),
        is_admin: user.is_admin,
        remember_me,
        token_epoch: user.token_epoch,
        exp: Some(now.timestamp() + lifetime_s(remember_me)),
    })
}

/// `POST /auth/login`.
pub async fn login(
    state: &AppState,
    input: LoginInput,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<LoginOutcome, ApiError> {
    if !state.multiuser() {
        return Err(ApiError::forbidden(
            "Multiuser mode is disabled. Authentication is not required in single-user mode.",
        ));
    }
    let client_text = client.map(|c| c.to_string());
    let fail_event = |detail: &str, user: Option<&User>| {
        AuditEvent::new(AuditAction::LoginFailed, Actor::Anonymous)
            .subject(user.map(|u| u.user_id.as_str()), &input.email)
            .client(client_text.clone())
            .detail(detail)
    };
    if let Err(err) = throttle::check(state, &input.email, client, now).await {
        let event = AuditEvent::new(AuditAction::LoginThrottled, Actor::Anonymous)
            .subject(None, &input.email)
            .client(client_text.clone());
        audit::record(&state.store, now, event).await;
        return Err(err);
    }
    let user = state
        .store
        .find_user_by_email(&input.email)
        .await?
        .filter(|u| !u.is_system());
    let hash = user
        .as_ref()
        .map_or(DUMMY_HASH, |u| u.password_hash.as_str());
    let matches = state.hasher.verify(&input.password, hash).await?;
    let user = match user {
        Some(user) if matches => user,
        other => {
            throttle::record_failure(state, &input.email, client, now).await?;
            let detail = if other.is_some() {
                "wrong password"
            } else {
                "unknown account"
            };
            audit::record(&state.store, now, fail_event(detail, other.as_ref())).await;
            return Err(ApiError::unauthorized_bearer("Incorrect email or password"));
        }
    };
    // The timestamp moves even for a disabled account, before the status check (§5).
    let user = state.store.record_login(&user.user_id, now).await?;
    if !user.is_active {
        audit::record(
            &state.store,
            now,
            fail_event("account disabled", Some(&user)),
        )
        .await;
        return Err(ApiError::forbidden("User account is disabled"));
    }
    throttle::record_success(state, &input.email).await?;
    let event = AuditEvent::new(
        AuditAction::LoginSucceeded,
        actor_of(&Identity::from_row(&user, false)),
    )
    .subject(Some(user.user_id.as_str()), &user.email)
    .client(client_text);
    audit::record(&state.store, now, event).await;
    Ok(LoginOutcome {
        token: issue_token(state, &user, input.remember_me, now),
        expires_in: lifetime_s(input.remember_me),
        user,
    })
}

/// `GET /auth/me`.
pub async fn me(state: &AppState, caller: &Identity) -> Result<User, ApiError> {
    state
        .store
        .get_user(&caller.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found"))
}

pub struct UpdateMeInput {
    pub display_name: Option<String>,
    pub current_password: Option<String>,
    pub new_password: Option<String>,
}

/// `PATCH /auth/me`. Returns the row and, after a password change, the caller's replacement
/// token (every other token of the account is revoked by the epoch bump).
pub async fn update_me(
    state: &AppState,
    caller: &Identity,
    input: UpdateMeInput,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<(User, Option<String>), ApiError> {
    if input.new_password.is_some() && input.current_password.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::bad_request(
            "Current password is required to set a new password",
        ));
    }
    let user = me(state, caller).await?;
    let mut update = UserUpdate {
        display_name: input.display_name,
        ..UserUpdate::default()
    };
    if let Some(new_password) = &input.new_password {
        let current = input.current_password.as_deref().unwrap_or_default();
        if !state.hasher.verify(current, &user.password_hash).await? {
            return Err(ApiError::bad_request("Current password is incorrect"));
        }
        // The reference verifies through its login routine, which stamps the login time.
        state.store.record_login(&user.user_id, now).await?;
        policy(state).check(new_password)?;
        update.password_hash = Some(state.hasher.hash(new_password).await?);
    }
    if crate::service::users::changes_nothing(&update) {
        return Ok((user, None));
    }
    let password_changed = update.password_hash.is_some();
    let updated = state.store.update_user(&user.user_id, &update).await?;
    let actor = actor_of(caller);
    let client = client.map(|c| c.to_string());
    if password_changed {
        let event = AuditEvent::new(AuditAction::PasswordChanged, actor.clone())
            .subject(Some(updated.user_id.as_str()), &updated.email)
            .client(client.clone());
        audit::record(&state.store, now, event).await;
    }
    if update.display_name.is_some() {
        let event = AuditEvent::new(AuditAction::UserUpdated, actor)
            .subject(Some(updated.user_id.as_str()), &updated.email)
            .client(client)
            .detail("display_name");
        audit::record(&state.store, now, event).await;
    }
    if password_changed {
        crate::socket::recheck_user(state, &updated.user_id).await;
    }
    let token = password_changed.then(|| issue_token(state, &updated, caller.remember_me, now));
    Ok((updated, token))
}

#[cfg(test)]
mod tests {
    use super::DUMMY_HASH;

    #[test]
    fn the_dummy_hash_is_a_real_cost_12_hash() {
        // A malformed hash would fail fast and let timing reveal unknown accounts.
        assert!(DUMMY_HASH.starts_with("$2b$12$"));
        assert_eq!(bcrypt::verify("anything", DUMMY_HASH).ok(), Some(false));
    }
}
