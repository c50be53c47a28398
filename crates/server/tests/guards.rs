//! Token verification across the guard flavours (auth.md §3.2–3.3, §9.1): forged, tampered,
//! expired and revoked tokens, and the role read from the row rather than the token.

use crate::common::*;
use atelier_server::token::{Claims, TokenSigner};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

const STRICT_INVALID: &str = "Invalid or expired authentication token";
const STRICT_REJECTED: &str = "User account is inactive or does not exist";

async fn signer(s: &TestServer) -> TokenSigner {
    TokenSigner::new(
        &s.state()
            .store
            .get_setting("jwt_secret")
            .await
            .unwrap()
            .unwrap(),
    )
}

fn claims(user_id: &str, epoch: i64, exp: Option<i64>, admin: bool) -> Claims {
    Claims {
        user_id: user_id.to_owned(),
        email: "whoever@example.com".to_owned(),
        is_admin: admin,
        remember_me: false,
        token_epoch: epoch,
        exp,
    }
}

/// Asserts the strict wording on /auth/me and the default wording on /app/app_deps.
async fn refused(s: &TestServer, token: &str, strict: &str, default: &str) {
    let r = s.get("/api/v1/auth/me", Some(token)).await;
    r.assert_detail(401, strict);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = s.get("/api/v1/app/app_deps", Some(token)).await;
    r.assert_detail(401, default);
    assert!(r.header("www-authenticate").is_none());
    let r = s.post_empty("/api/v1/auth/media-cookie", Some(token)).await;
    r.assert_detail(401, default);
    assert!(r.header("www-authenticate").is_none() && r.header("set-cookie").is_none());
}

#[tokio::test]
async fn bad_tokens_get_each_guards_wording() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, _) = s.user_with_token(&admin, "u@example.com").await;
    let signer = signer(&s).await;
    let now = chrono::Utc::now().timestamp();

    let other_key =
        TokenSigner::new("not the secret").sign(&claims(&uid, 0, Some(now + 60), false));
    refused(&s, &other_key, STRICT_INVALID, "Invalid or expired token").await;

    let valid = signer.sign(&claims(&uid, 0, Some(now + 60), false));
    let parts: Vec<&str> = valid.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    refused(
        &s,
        &format!("{none_header}.{}.", parts[1]),
        STRICT_INVALID,
        "Invalid or expired token",
    )
    .await;
    let forged = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"user_id":"{uid}","email":"e","is_admin":true}}"#
    ));
    refused(
        &s,
        &format!("{}.{forged}.{}", parts[0], parts[2]),
        STRICT_INVALID,
        "Invalid or expired token",
    )
    .await;

    let expired = signer.sign(&claims(&uid, 0, Some(now - 1), false));
    refused(&s, &expired, STRICT_INVALID, "Invalid or expired token").await;
    let expiring_now = signer.sign(&claims(&uid, 0, Some(now), false));
    refused(
        &s,
        &expiring_now,
        STRICT_INVALID,
        "Invalid or expired token",
    )
    .await;
    refused(&s, "garbage", STRICT_INVALID, "Invalid or expired token").await;

    let system = signer.sign(&claims("system", 0, Some(now + 60), true));
    refused(&s, &system, STRICT_REJECTED, "User not found or inactive").await;
    let old_epoch = signer.sign(&claims(&uid, 7, Some(now + 60), false));
    refused(
        &s,
        &old_epoch,
        STRICT_REJECTED,
        "User not found or inactive",
    )
    .await;
    let nobody = signer.sign(&claims(
        "00000000-0000-4000-8000-000000000000",
        0,
        Some(now + 60),
        false,
    ));
    refused(&s, &nobody, STRICT_REJECTED, "User not found or inactive").await;

    // Correctly signed tokens work, including ones without `exp` (the reference accepts them;
    // Atelier never mints one). Tokens lacking `token_epoch`/`remember_me` are covered by the
    // token module's unit tests.
    assert_eq!(s.get("/api/v1/auth/me", Some(&valid)).await.status, 200);
    let forever = signer.sign(&claims(&uid, 0, None, false));
    assert_eq!(s.get("/api/v1/auth/me", Some(&forever)).await.status, 200);
}

#[tokio::test]
async fn schemes_and_missing_credentials() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    for header in ["Basic abc", "Bearer", "Bearer ", "Token abc"] {
        let r = s
            .send(
                reqwest::Method::GET,
                "/api/v1/auth/me",
                None,
                None,
                &[("authorization", header)],
            )
            .await;
        r.assert_detail(401, "Missing authentication credentials");
        let r = s
            .send(
                reqwest::Method::GET,
                "/api/v1/app/app_deps",
                None,
                None,
                &[("authorization", header)],
            )
            .await;
        r.assert_detail(401, "Authentication required");
    }
    let lower = format!("bearer {admin}");
    let r = s
        .send(
            reqwest::Method::GET,
            "/api/v1/auth/me",
            None,
            None,
            &[("authorization", &lower)],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the scheme is case-insensitive for the guards"
    );
}

#[tokio::test]
async fn the_role_comes_from_the_row_not_the_token() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, _) = s.user_with_token(&admin, "u@example.com").await;
    let signer = signer(&s).await;
    let now = chrono::Utc::now().timestamp();
    let claims_admin = signer.sign(&claims(&uid, 0, Some(now + 60), true));
    s.get("/api/v1/auth/users", Some(&claims_admin))
        .await
        .assert_detail(403, "Admin privileges required");
    s.get("/api/v1/app/runtime_config", Some(&claims_admin))
        .await
        .assert_detail(403, "Admin privileges required");
    let r = s.get("/api/v1/auth/me", Some(&claims_admin)).await;
    assert_eq!(
        (
            r.status,
            r.body["is_admin"].clone(),
            r.body["email"].clone()
        ),
        (200, json!(false), json!("u@example.com"))
    );
}

#[tokio::test]
async fn a_rotated_secret_invalidates_every_token() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    s.state()
        .store
        .set_setting("jwt_secret", "rotated-by-the-operator")
        .await
        .unwrap();
    // Read once at start-up: still valid until the restart.
    assert_eq!(s.get("/api/v1/auth/me", Some(&admin)).await.status, 200);
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    s.get("/api/v1/auth/me", Some(&admin))
        .await
        .assert_detail(401, STRICT_INVALID);
    let fresh = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(s.get("/api/v1/auth/me", Some(&fresh)).await.status, 200);
}

/// Signs an arbitrary payload with `secret` (HS256), for claims `Claims` cannot express.
fn sign_raw(key: &[u8], header: &str, payload: &str) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

async fn secret(s: &TestServer) -> String {
    s.state()
        .store
        .get_setting("jwt_secret")
        .await
        .unwrap()
        .unwrap()
}

/// Sends `Authorization: <value>` verbatim.
async fn with_authorization(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    value: &str,
) -> Resp {
    s.send(method, path, None, None, &[("authorization", value)])
        .await
}

#[tokio::test]
async fn malformed_and_foreign_tokens_fail_verification_on_every_guard() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, _) = s.user_with_token(&admin, "u@example.com").await;
    let key = secret(&s).await;
    let exp = chrono::Utc::now().timestamp() + 3600;
    let good_payload =
        format!(r#"{{"user_id":"{uid}","email":"u@example.com","is_admin":false,"exp":{exp}}}"#);
    let valid = sign_raw(key.as_bytes(), HS256, &good_payload);
    assert_eq!(s.get("/api/v1/auth/me", Some(&valid)).await.status, 200);
    let (head, body, sig) = {
        let p: Vec<&str> = valid.split('.').collect();
        (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
    };
    let bad = [
        // Not a JWT at all.
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        "..".to_owned(),
        "x.y".to_owned(),
        format!("{valid}.extra"),
        format!("{head}.{body}"),
        // Signature damaged or stripped.
        format!("{head}.{body}."),
        format!("{head}.{body}.{}", &sig[..sig.len() - 2]),
        format!("{valid}x"),
        // Right key, other algorithms.
        sign_raw(
            key.as_bytes(),
            r#"{"alg":"HS512","typ":"JWT"}"#,
            &good_payload,
        ),
        sign_raw(
            key.as_bytes(),
            r#"{"alg":"hs256","typ":"JWT"}"#,
            &good_payload,
        ),
        sign_raw(key.as_bytes(), r#"{"typ":"JWT"}"#, &good_payload),
        // The hex secret decoded to bytes is not the key (the key is the string's bytes).
        sign_raw(&hex_decode(&key), HS256, &good_payload),
        // Correctly signed, but the claims do not fit.
        sign_raw(
            key.as_bytes(),
            HS256,
            &format!(r#"{{"user_id":"{uid}","email":"u@example.com","exp":{exp}}}"#),
        ),
        sign_raw(
            key.as_bytes(),
            HS256,
            &format!(r#"{{"user_id":"{uid}","is_admin":false,"exp":{exp}}}"#),
        ),
        sign_raw(
            key.as_bytes(),
            HS256,
            &format!(r#"{{"email":"u@example.com","is_admin":false,"exp":{exp}}}"#),
        ),
        sign_raw(
            key.as_bytes(),
            HS256,
            &format!(r#"{{"user_id":"{uid}","email":"e","is_admin":"no","exp":{exp}}}"#),
        ),
        sign_raw(key.as_bytes(), HS256, "not json"),
        sign_raw(key.as_bytes(), HS256, "[]"),
    ];
    for token in &bad {
        refused(&s, token, STRICT_INVALID, "Invalid or expired token").await;
        // Admin guards word it the same way as their flavour.
        s.get("/api/v1/auth/users", Some(token))
            .await
            .assert_detail(401, STRICT_INVALID);
        s.get("/api/v1/app/runtime_config", Some(token))
            .await
            .assert_detail(401, "Invalid or expired token");
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn tokens_without_epoch_or_remember_me_claims_default_to_zero() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, _) = s.user_with_token(&admin, "u@example.com").await;
    let key = secret(&s).await;
    let exp = chrono::Utc::now().timestamp() + 3600;
    // A token from before the epoch column: extra claims are ignored too.
    let legacy = sign_raw(
        key.as_bytes(),
        HS256,
        &format!(
            r#"{{"user_id":"{uid}","email":"stale@example.com","is_admin":true,"exp":{exp},"iss":"x","sub":"y"}}"#
        ),
    );
    let r = s.get("/api/v1/auth/me", Some(&legacy)).await;
    assert_eq!(
        (
            r.status,
            r.body["email"].clone(),
            r.body["is_admin"].clone()
        ),
        (200, json!("u@example.com"), json!(false)),
        "{}",
        r.text
    );
    assert_eq!(
        s.get("/api/v1/app/app_deps", Some(&legacy)).await.status,
        200
    );
    // Its sliding refresh carries the row's values and remember_me = false.
    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&legacy),
            &json!({"display_name": "Legacy"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let refreshed = s
        .state()
        .signer
        .verify(
            r.header("x-refreshed-token").unwrap(),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    assert_eq!(
        (
            refreshed.email.as_str(),
            refreshed.is_admin,
            refreshed.remember_me,
            refreshed.token_epoch
        ),
        ("u@example.com", false, false, 0)
    );
    // Once the epoch moves, the claim-less token is an old-epoch token.
    s.patch(
        &format!("/api/v1/auth/users/{uid}"),
        Some(&admin),
        &json!({"password": "Changed-1"}),
    )
    .await;
    refused(&s, &legacy, STRICT_REJECTED, "User not found or inactive").await;
}

#[tokio::test]
async fn revoked_tokens_get_each_guards_wording() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let signer = signer(&s).await;
    let now = chrono::Utc::now().timestamp();

    // An old epoch: the user's real login token after an admin password reset.
    let (reset_id, reset_token) = s.user_with_token(&admin, "reset@example.com").await;
    s.patch(
        &format!("/api/v1/auth/users/{reset_id}"),
        Some(&admin),
        &json!({"password": "Changed-1"}),
    )
    .await;
    refused(
        &s,
        &reset_token,
        STRICT_REJECTED,
        "User not found or inactive",
    )
    .await;
    // A token from the future epoch is refused as well: the epochs must be equal.
    let ahead = signer.sign(&claims(&reset_id, 2, Some(now + 60), false));
    refused(&s, &ahead, STRICT_REJECTED, "User not found or inactive").await;
    let current = signer.sign(&claims(&reset_id, 1, Some(now + 60), false));
    assert_eq!(s.get("/api/v1/auth/me", Some(&current)).await.status, 200);

    // A deactivated user.
    let (off_id, off_token) = s.user_with_token(&admin, "off@example.com").await;
    s.patch(
        &format!("/api/v1/auth/users/{off_id}"),
        Some(&admin),
        &json!({"is_active": false}),
    )
    .await;
    refused(
        &s,
        &off_token,
        STRICT_REJECTED,
        "User not found or inactive",
    )
    .await;

    // A deleted user.
    let (gone_id, gone_token) = s.user_with_token(&admin, "gone@example.com").await;
    assert_eq!(
        s.delete(&format!("/api/v1/auth/users/{gone_id}"), Some(&admin))
            .await
            .status,
        204
    );
    refused(
        &s,
        &gone_token,
        STRICT_REJECTED,
        "User not found or inactive",
    )
    .await;

    // `system`, even with a matching epoch and the admin claim; on the admin guards too.
    let system = signer.sign(&claims("system", 0, Some(now + 60), true));
    s.get("/api/v1/auth/users", Some(&system))
        .await
        .assert_detail(401, STRICT_REJECTED);
    s.get("/api/v1/app/runtime_config", Some(&system))
        .await
        .assert_detail(401, "User not found or inactive");

    // Revocation wins over expiry only when the token still verifies: an expired token of a
    // deleted user reads as invalid.
    let expired_gone = signer.sign(&claims(&gone_id, 0, Some(now - 10), false));
    refused(
        &s,
        &expired_gone,
        STRICT_INVALID,
        "Invalid or expired token",
    )
    .await;
}

#[tokio::test]
async fn scheme_parsing_is_shared_by_every_guard() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let basic = format!("Basic {admin}");
    let token_scheme = format!("Token {admin}");
    let no_space = format!("Bearer{admin}");
    for header in [
        basic.as_str(),
        token_scheme.as_str(),
        no_space.as_str(),
        "Bearer",
        "Bearer    ",
        "",
    ] {
        let r = with_authorization(&s, get.clone(), "/api/v1/auth/me", header).await;
        r.assert_detail(401, "Missing authentication credentials");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{header:?}");
        let r = with_authorization(&s, get.clone(), "/api/v1/app/app_deps", header).await;
        r.assert_detail(401, "Authentication required");
        assert!(r.header("www-authenticate").is_none());
        let r = with_authorization(&s, post.clone(), "/api/v1/auth/media-cookie", header).await;
        r.assert_detail(401, "Authentication required");
        assert!(r.header("set-cookie").is_none());
    }
    // No header at all.
    s.post_empty("/api/v1/auth/media-cookie", None)
        .await
        .assert_detail(401, "Authentication required");
    // The scheme is case-insensitive and the token is trimmed, for every guard.
    for header in [
        format!("bearer {admin}"),
        format!("BEARER {admin}"),
        format!("Bearer    {admin}   "),
    ] {
        let r = with_authorization(&s, get.clone(), "/api/v1/auth/me", &header).await;
        assert_eq!(
            (r.status, r.body["email"].clone()),
            (200, json!(ADMIN_EMAIL))
        );
        let r = with_authorization(&s, get.clone(), "/api/v1/app/app_deps", &header).await;
        assert_eq!(r.status, 200, "{header}: {}", r.text);
        let r = with_authorization(&s, get.clone(), "/api/v1/app/runtime_config", &header).await;
        assert_eq!(r.status, 200, "{header}: {}", r.text);
        let r = with_authorization(&s, post.clone(), "/api/v1/auth/media-cookie", &header).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!({"success": true})),
            "{header}"
        );
        assert!(r
            .header("set-cookie")
            .unwrap()
            .starts_with(&format!("invokeai_media_token={admin}; HttpOnly; Max-Age=")));
    }
}

#[tokio::test]
async fn a_non_admin_with_an_admin_claim_is_still_not_an_admin() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, _) = s.user_with_token(&admin, "u@example.com").await;
    let key = secret(&s).await;
    let exp = chrono::Utc::now().timestamp() + 3600;
    // Claims naming the admin's email and role: only `user_id` and `token_epoch` matter.
    let forged_role = sign_raw(
        key.as_bytes(),
        HS256,
        &format!(
            r#"{{"user_id":"{uid}","email":"{ADMIN_EMAIL}","is_admin":true,"remember_me":true,"token_epoch":0,"exp":{exp}}}"#
        ),
    );
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/auth/users".to_owned()),
        (reqwest::Method::GET, format!("/api/v1/auth/users/{uid}")),
        (reqwest::Method::DELETE, format!("/api/v1/auth/users/{uid}")),
        (
            reqwest::Method::GET,
            "/api/v1/app/runtime_config".to_owned(),
        ),
    ] {
        s.send(method, &path, Some(&forged_role), None, &[])
            .await
            .assert_detail(403, "Admin privileges required");
    }
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&forged_role),
            &json!({"email": "x@example.com", "password": "pw", "is_admin": true}),
        )
        .await;
    r.assert_detail(403, "Admin privileges required");
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{uid}"),
            Some(&forged_role),
            &json!({"is_admin": true}),
        )
        .await;
    r.assert_detail(403, "Admin privileges required");
    let r = s.get("/api/v1/auth/me", Some(&forged_role)).await;
    assert_eq!(
        (
            r.status,
            r.body["email"].clone(),
            r.body["is_admin"].clone()
        ),
        (200, json!("u@example.com"), json!(false))
    );
    assert_eq!(s.state().store.count_active_admins().await.unwrap(), 1);
}
