//! JSON Web Tokens as the reference mints and checks them (auth.md §9.1–9.2).
//!
//! HS256 only; the HMAC key is the stored secret string's bytes (never hex-decoded). Claims are
//! exactly `user_id`, `email`, `is_admin`, `remember_me`, `token_epoch`, `exp`; expiry is
//! `now >= exp` with no leeway. A correctly signed token without `exp` never expires (the
//! reference accepts such tokens; Atelier never mints one).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Lifetime of an ordinary token.
pub const TOKEN_LIFETIME_S: i64 = 86_400;
/// Lifetime of a "remember me" token.
pub const REMEMBER_ME_LIFETIME_S: i64 = 604_800;

pub fn lifetime_s(remember_me: bool) -> i64 {
    if remember_me {
        REMEMBER_ME_LIFETIME_S
    } else {
        TOKEN_LIFETIME_S
    }
}

/// The claims of a token. `is_admin` and `email` are informational: authorization always
/// re-reads the user row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub user_id: String,
    pub email: String,
    pub is_admin: bool,
    #[serde(default)]
    pub remember_me: bool,
    #[serde(default)]
    pub token_epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// Signs and verifies tokens with the database's secret. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSigner(***)")
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenSigner {
    pub fn new(secret: &str) -> Self {
        Self {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// Mints a token for `claims` (whose `exp` should be set).
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = mac.finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Verifies signature first, then expiry against `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed)?;
        if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        match claims.exp {
            Some(exp) if now >= exp => Err(TokenError::Expired),
            _ => Ok(claims),
        }
    }

    /// Reads `exp` from a token without trusting it (used only after [`Self::verify`]).
    pub fn seconds_left(claims: &Claims, now: i64) -> i64 {
        claims.exp.map_or(TOKEN_LIFETIME_S, |exp| exp - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: Option<i64>) -> Claims {
        Claims {
            user_id: "u".into(),
            email: "u@x.com".into(),
            is_admin: false,
            remember_me: false,
            token_epoch: 3,
            exp,
        }
    }

    #[test]
    fn round_trip_and_expiry_without_leeway() {
        let s = TokenSigner::new("secret");
        let t = s.sign(&claims(Some(100)));
        assert_eq!(s.verify(&t, 99).expect("valid").token_epoch, 3);
        assert_eq!(s.verify(&t, 100), Err(TokenError::Expired));
        let forever = s.sign(&claims(None));
        assert!(s.verify(&forever, i64::MAX).is_ok());
    }

    #[test]
    fn refuses_other_keys_alg_none_and_tampering() {
        let s = TokenSigner::new("secret");
        let t = s.sign(&claims(Some(100)));
        assert_eq!(
            TokenSigner::new("other").verify(&t, 0),
            Err(TokenError::BadSignature)
        );
        let parts: Vec<&str> = t.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            s.verify(&format!("{none_header}.{}.", parts[1]), 0),
            Err(TokenError::Malformed)
        );
        let forged = URL_SAFE_NO_PAD.encode(r#"{"user_id":"u","email":"e","is_admin":true}"#);
        assert_eq!(
            s.verify(&format!("{}.{forged}.{}", parts[0], parts[2]), 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("garbage", 0), Err(TokenError::Malformed));
    }

    #[test]
    fn missing_optional_claims_default() {
        let s = TokenSigner::new("k");
        // A token minted before the epoch column existed.
        let payload =
            URL_SAFE_NO_PAD.encode(r#"{"user_id":"u","email":"e","is_admin":false,"exp":50}"#);
        let input = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(HEADER));
        let mut mac = s.mac();
        mac.update(input.as_bytes());
        let token = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let c = s.verify(&token, 0).expect("valid");
        assert_eq!((c.token_epoch, c.remember_me), (0, false));
    }
}
