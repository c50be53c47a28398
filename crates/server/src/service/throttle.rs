//! Login throttling (an Atelier extension; the reference has none, auth.md §9.10).
//!
//! Failed logins are counted per tried account (the normalised email, whether or not it
//! exists) and per client address, in a sliding window. Past either limit, login answers 429
//! with `Retry-After` before the password is even checked, so the answer is the same for real
//! and made-up accounts. A successful login clears its account's counter; the client counter
//! only ages out. Limits come from `login_throttle_account_max`, `login_throttle_client_max`
//! and `login_throttle_window_s`; a maximum of 0 turns that counter off.
//!
//! Clients on the loopback address are not counted per address: on one box they are either
//! the local user or a reverse proxy in front of everyone, and throttling the proxy's address
//! would lock every user out at once. Their per-account counters still apply.

use crate::http::error::ApiError;
use crate::state::AppState;
use atelier_store::ThrottleScope;
use chrono::{DateTime, Utc};
use std::net::IpAddr;

struct Limits {
    account_max: i64,
    client_max: i64,
    window_ms: i64,
}

fn limits(state: &AppState) -> Limits {
    Limits {
        account_max: i64::from(state.config.login_throttle_account_max()),
        client_max: i64::from(state.config.login_throttle_client_max()),
        window_ms: i64::from(state.config.login_throttle_window_s()) * 1000,
    }
}

fn client_key(client: Option<IpAddr>) -> Option<String> {
    client
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
}

/// Refuses with 429 when the account or the client is over its limit.
pub async fn check(
    state: &AppState,
    email: &str,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let l = limits(state);
    let now_ms = now.timestamp_millis();
    let since = now_ms - l.window_ms;
    let mut retry_after_ms: i64 = 0;
    let mut checks = vec![(ThrottleScope::Account, email.to_owned(), l.account_max)];
    if let Some(key) = client_key(client) {
        checks.push((ThrottleScope::Client, key, l.client_max));
    }
    for (scope, key, max) in checks {
        if max == 0 {
            continue;
        }
        let (count, oldest) = state.store.login_failures_since(scope, &key, since).await?;
        if count >= max {
            let free_at = oldest.unwrap_or(now_ms) + l.window_ms;
            retry_after_ms = retry_after_ms.max(free_at - now_ms);
        }
    }
    if retry_after_ms > 0 {
        let retry_after_s = u64::try_from((retry_after_ms + 999) / 1000)
            .unwrap_or(1)
            .max(1);
        return Err(ApiError::TooManyRequests { retry_after_s });
    }
    Ok(())
}

pub async fn record_failure(
    state: &AppState,
    email: &str,
    client: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let l = limits(state);
    let now_ms = now.timestamp_millis();
    let client = client_key(client);
    let mut keys = vec![(ThrottleScope::Account, email)];
    if let Some(client) = client.as_deref() {
        keys.push((ThrottleScope::Client, client));
    }
    state
        .store
        .record_login_failure(&keys, now_ms, now_ms - l.window_ms)
        .await?;
    Ok(())
}

pub async fn record_success(state: &AppState, email: &str) -> Result<(), ApiError> {
    state
        .store
        .clear_login_failures(ThrottleScope::Account, email)
        .await?;
    Ok(())
}
