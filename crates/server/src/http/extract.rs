//! Who is calling: the guard extractors of auth.md §3.
//!
//! Every guard verifies the token and then re-reads the user row (§3.2): the row must exist,
//! be active, not be `system`, and carry the token's epoch. The identity's role comes from the
//! row, never from the token. The guards differ only in wording and in single-user behaviour:
//!
//! | extractor     | flavour | single-user |
//! |---------------|---------|-------------|
//! | `StrictUser`  | strict  | still needs a token |
//! | `StrictAdmin` | strict  | still needs a token, then 403 for non-admins |
//! | `CurrentUser` | default | synthetic `system` admin |
//! | `AdminUser`   | default | synthetic `system` admin |
//! | `MediaUser`   | media   | synthetic `system` admin; also reads the media cookie |

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::token::Claims;
use atelier_domain::{Identity, UserId};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;

/// Name of the cookie that carries the token for `<img>` and `<video>` requests.
pub const MEDIA_COOKIE: &str = "invokeai_media_token";

/// The bearer token of `Authorization`: scheme compared case-insensitively, rest trimmed.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The media cookie's value, if the request carries one.
pub fn media_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == MEDIA_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Why a presented token was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Signature, format or expiry.
    Invalid,
    /// Verified, but rule §3.2 failed (system, missing, inactive, old epoch).
    Rejected,
}

/// A verified token and the identity it resolves to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Identity,
    pub claims: Claims,
}

/// Verifies `token` and applies rule §3.2 against the current row.
pub async fn resolve_token(state: &AppState, token: &str) -> Result<Authenticated, ApiErrorOr> {
    let now = chrono::Utc::now().timestamp();
    let claims = state
        .signer
        .verify(token, now)
        .map_err(|_| ApiErrorOr::Refused(Refusal::Invalid))?;
    let id = UserId::new(claims.user_id.clone());
    if id.is_system() {
        return Err(ApiErrorOr::Refused(Refusal::Rejected));
    }
    let user = state
        .store
        .get_user(&id)
        .await
        .map_err(|e| ApiErrorOr::Error(e.into()))?
        .ok_or(ApiErrorOr::Refused(Refusal::Rejected))?;
    if !user.is_active || user.token_epoch != claims.token_epoch {
        return Err(ApiErrorOr::Refused(Refusal::Rejected));
    }
    Ok(Authenticated {
        identity: Identity::from_row(&user, claims.remember_me),
        claims,
    })
}

/// A refusal, or a failure of the server itself while checking.
#[derive(Debug)]
pub enum ApiErrorOr {
    Refused(Refusal),
    Error(ApiError),
}

/// The wording of each guard flavour (§3.3).
#[derive(Clone, Copy)]
struct Wording {
    missing: &'static str,
    invalid: &'static str,
    rejected: &'static str,
    bearer: bool,
}

const STRICT: Wording = Wording {
    missing: "Missing authentication credentials",
    invalid: "Invalid or expired authentication token",
    rejected: "User account is inactive or does not exist",
    bearer: true,
};

const DEFAULT: Wording = Wording {
    missing: "Authentication required",
    invalid: "Invalid or expired token",
    rejected: "User not found or inactive",
    bearer: false,
};

impl Wording {
    fn error(self, detail: &str) -> ApiError {
        if self.bearer {
            ApiError::unauthorized_bearer(detail)
        } else {
            ApiError::unauthorized(detail)
        }
    }

    async fn authenticate(
        self,
        state: &AppState,
        token: Option<&str>,
    ) -> Result<Authenticated, ApiError> {
        let token = token.ok_or_else(|| self.error(self.missing))?;
        resolve_token(state, token).await.map_err(|e| match e {
            ApiErrorOr::Refused(Refusal::Invalid) => self.error(self.invalid),
            ApiErrorOr::Refused(Refusal::Rejected) => self.error(self.rejected),
            ApiErrorOr::Error(err) => err,
        })
    }
}

fn require_admin(identity: Identity) -> Result<Identity, ApiError> {
    if identity.is_admin() {
        Ok(identity)
    } else {
        Err(ApiError::forbidden("Admin privileges required"))
    }
}

/// Strict guard: a valid token in both modes.
#[derive(Debug, Clone)]
pub struct StrictUser(pub Authenticated);

impl FromRequestParts<AppState> for StrictUser {
    type Rejection = ApiError;

    #[tracing::instrument(name = "auth.strict", skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        STRICT
            .authenticate(state, bearer_token(&parts.headers))
            .await
            .map(StrictUser)
    }
}

/// Strict guard, then administrators only.
#[derive(Debug, Clone)]
pub struct StrictAdmin(pub Authenticated);

impl FromRequestParts<AppState> for StrictAdmin {
    type Rejection = ApiError;

    #[tracing::instrument(name = "auth.strict_admin", skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let StrictUser(auth) = StrictUser::from_request_parts(parts, state).await?;
        let identity = require_admin(auth.identity)?;
        Ok(StrictAdmin(Authenticated {
            identity,
            claims: auth.claims,
        }))
    }
}

/// Default guard: the synthetic `system` admin in single-user mode, a valid token otherwise.
/// `claims` is `None` for the synthetic identity.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub identity: Identity,
    pub claims: Option<Claims>,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    #[tracing::instrument(name = "auth.default", skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.multiuser() {
            return Ok(CurrentUser {
                identity: Identity::system_admin(),
                claims: None,
            });
        }
        let auth = DEFAULT
            .authenticate(state, bearer_token(&parts.headers))
            .await?;
        Ok(CurrentUser {
            identity: auth.identity,
            claims: Some(auth.claims),
        })
    }
}

/// Default guard, then administrators only.
#[derive(Debug, Clone)]
pub struct AdminUser(pub Identity);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    #[tracing::instrument(name = "auth.default_admin", skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        require_admin(user.identity).map(AdminUser)
    }
}

/// Media guard: like the default guard, but the media cookie also counts. A present Bearer
/// header wins, and an invalid one is not retried with the cookie.
#[derive(Debug, Clone)]
pub struct MediaUser(pub Identity);

impl FromRequestParts<AppState> for MediaUser {
    type Rejection = ApiError;

    #[tracing::instrument(name = "auth.media", skip_all)]
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.multiuser() {
            return Ok(MediaUser(Identity::system_admin()));
        }
        let token = bearer_token(&parts.headers).or_else(|| media_cookie(&parts.headers));
        DEFAULT
            .authenticate(state, token)
            .await
            .map(|auth| MediaUser(auth.identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn bearer_parsing_follows_the_contract() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bEaReR  abc  ")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer_token(&headers(&[])), None);
    }

    #[test]
    fn media_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; invokeai_media_token=tok; b=2")]);
        assert_eq!(media_cookie(&h), Some("tok"));
        assert_eq!(
            media_cookie(&headers(&[("cookie", "invokeai_media_token=")])),
            None
        );
    }
}
