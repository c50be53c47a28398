//! Sliding-window session refresh (auth.md §3.5): successful mutating requests made with a
//! still-valid Bearer token get `X-Refreshed-Token` with a fresh full-lifetime token.

use crate::http::extract::{resolve_token, Authenticated};
use crate::state::AppState;
use crate::token::{lifetime_s, Claims};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;

pub const REFRESHED_TOKEN: HeaderName = HeaderName::from_static("x-refreshed-token");

const EXCLUDED: [&str; 3] = [
    "/api/v1/auth/login",
    "/api/v1/auth/logout",
    "/api/v1/auth/media-cookie",
];

pub async fn sliding_refresh(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    // Case-sensitive `Bearer ` prefix, unlike the guards' parsing.
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    // The base_url prefix was already stripped before this layer runs.
    let excluded = EXCLUDED.contains(&request.uri().path());
    let mut response = next.run(request).await;
    let (true, false, Some(token)) = (mutating, excluded, token) else {
        return response;
    };
    if response.status().as_u16() >= 400 || response.headers().contains_key(&REFRESHED_TOKEN) {
        return response;
    }
    // Re-checked after the route ran, so a token the route just revoked is never renewed;
    // the identity carries the row's current email, role and epoch.
    if let Ok(Authenticated { identity, claims }) = resolve_token(&state, &token).await {
        let fresh = state.signer.sign(&Claims {
            user_id: identity.user_id.to_string(),
            email: identity.email,
            is_admin: identity.is_admin,
            remember_me: claims.remember_me,
            token_epoch: identity.token_epoch,
            exp: Some(Utc::now().timestamp() + lifetime_s(claims.remember_me)),
        });
        if let Ok(value) = HeaderValue::from_str(&fresh) {
            response.headers_mut().insert(REFRESHED_TOKEN, value);
        }
    }
    response
}
