//! CORS (config.md §7) and the sliding-window `X-Refreshed-Token` (auth.md §3.5).

use crate::common::*;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

const ORIGIN: &str = "https://a.example";
const STATUS: &str = "/api/v1/auth/status";
const ME: &str = "/api/v1/auth/me";
const ALL_METHODS: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT";

fn cors_headers(r: &Resp) -> Vec<String> {
    r.headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-") || k == "vary")
        .collect()
}

async fn with_origins(origins: Value) -> TestServer {
    TestServer::builder()
        .multiuser(true)
        .set("allow_origins", origins)
        .start()
        .await
}

async fn preflight(s: &TestServer, origin: &str, method: &str, headers: Option<&str>) -> Resp {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(requested) = headers {
        h.push(("access-control-request-headers", requested));
    }
    s.send(Method::OPTIONS, ME, None, None, &h).await
}

/// The payload of a JWT, decoded.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json payload")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---- CORS ---------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_an_origin_get_no_cors_headers() {
    let s = with_origins(json!(["*"])).await;
    let r = s.get(STATUS, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    // An OPTIONS without Origin is not a preflight either.
    let r = s
        .send(
            Method::OPTIONS,
            ME,
            None,
            None,
            &[("access-control-request-method", "GET")],
        )
        .await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
}

#[tokio::test]
async fn the_default_config_allows_no_origin_but_still_exposes_the_refresh_header() {
    let s = TestServer::multiuser().await;
    let r = s
        .send(Method::GET, STATUS, None, None, &[("origin", ORIGIN)])
        .await;
    assert_eq!(r.status, 200, "the request still runs");
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Refreshed-Token")
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = preflight(&s, ORIGIN, "GET", None).await;
    assert_eq!((r.status, r.text.as_str()), (400, "Disallowed CORS origin"));
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_listed_origin_is_echoed_with_vary() {
    let s = with_origins(json!([ORIGIN])).await;
    let r = s
        .send(Method::GET, STATUS, None, None, &[("origin", ORIGIN)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Refreshed-Token")
    );
    // Exact match only: another port, scheme or a trailing slash is a different origin.
    for other in [
        "https://a.example:8443",
        "http://a.example",
        "https://a.example/",
    ] {
        let r = s
            .send(Method::GET, STATUS, None, None, &[("origin", other)])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{other}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
}

#[tokio::test]
async fn a_wildcard_answers_star_unless_a_cookie_is_sent() {
    let s = with_origins(json!(["*"])).await;
    let r = s
        .send(Method::GET, STATUS, None, None, &[("origin", ORIGIN)])
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = s
        .send(
            Method::GET,
            STATUS,
            None,
            None,
            &[("origin", ORIGIN), ("cookie", "invokeai_media_token=x")],
        )
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn an_allowed_preflight_lists_methods_headers_and_max_age() {
    for origins in [json!([ORIGIN]), json!(["*"])] {
        let s = with_origins(origins.clone()).await;
        let r = preflight(
            &s,
            ORIGIN,
            "PATCH",
            Some("authorization, content-type, x-custom"),
        )
        .await;
        assert_eq!((r.status, r.text.as_str()), (200, "OK"), "{origins}");
        // Credentials are on, so even "*" echoes the origin.
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(r.header("vary"), Some("Origin"));
        assert_eq!(r.header("access-control-allow-methods"), Some(ALL_METHODS));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type, x-custom")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        // Answered by the CORS layer: the strict guard never saw it.
        assert!(r.header("www-authenticate").is_none());
        // Without requested headers there is nothing to echo.
        let r = preflight(&s, ORIGIN, "GET", None).await;
        assert_eq!(
            (r.status, r.header("access-control-allow-headers")),
            (200, None)
        );
        // "*" stands for the seven standard methods, not for any method at all.
        let r = preflight(&s, ORIGIN, "PURGE", None).await;
        assert_eq!((r.status, r.text.as_str()), (400, "Disallowed CORS method"));
        assert_eq!(r.header("access-control-allow-origin"), None);
        assert_eq!(r.header("access-control-allow-methods"), Some(ALL_METHODS));
    }
}

#[tokio::test]
async fn without_credentials_a_wildcard_preflight_answers_star() {
    let s = TestServer::builder()
        .multiuser(true)
        .set("allow_origins", json!(["*"]))
        .set("allow_credentials", json!(false))
        .start()
        .await;
    let r = preflight(&s, ORIGIN, "GET", None).await;
    assert_eq!((r.status, r.text.as_str()), (200, "OK"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let r = s
        .send(Method::GET, STATUS, None, None, &[("origin", ORIGIN)])
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Refreshed-Token")
    );
}

#[tokio::test]
async fn a_preflight_from_an_unlisted_origin_is_refused_as_text() {
    let s = with_origins(json!([ORIGIN])).await;
    let r = preflight(&s, "https://evil.example", "POST", Some("content-type")).await;
    assert_eq!((r.status, r.text.as_str()), (400, "Disallowed CORS origin"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn restricted_methods_and_headers_are_enforced_on_preflight() {
    let s = TestServer::builder()
        .multiuser(true)
        .set("allow_origins", json!([ORIGIN]))
        .set("allow_methods", json!(["GET", "POST"]))
        .set("allow_headers", json!(["X-Custom"]))
        .start()
        .await;
    let refused = |r: &Resp, text: &str| {
        assert_eq!((r.status, r.text.as_str()), (400, text));
        assert_eq!(r.header("access-control-allow-origin"), None, "{text}");
    };
    refused(
        &preflight(&s, ORIGIN, "PATCH", None).await,
        "Disallowed CORS method",
    );
    refused(
        &preflight(&s, ORIGIN, "POST", Some("x-other")).await,
        "Disallowed CORS headers",
    );
    refused(
        &preflight(&s, ORIGIN, "DELETE", Some("x-custom, authorization")).await,
        "Disallowed CORS method, headers",
    );
    refused(
        &preflight(&s, "https://evil.example", "PUT", Some("x-other")).await,
        "Disallowed CORS origin, method, headers",
    );
    refused(
        &preflight(&s, "https://evil.example", "GET", Some("x-other")).await,
        "Disallowed CORS origin, headers",
    );

    // Listed headers and the safelisted ones pass, compared case-insensitively.
    let r = preflight(&s, ORIGIN, "POST", Some("X-CUSTOM, content-type, accept")).await;
    assert_eq!((r.status, r.text.as_str()), (200, "OK"));
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    let mut allowed: Vec<&str> = r
        .header("access-control-allow-headers")
        .unwrap()
        .split(", ")
        .collect();
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        [
            "Accept",
            "Accept-Language",
            "Content-Language",
            "Content-Type",
            "X-Custom"
        ]
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    // Actual requests with an unlisted method still run (browsers enforce CORS, not us).
    let r = s
        .send(Method::GET, STATUS, None, None, &[("origin", ORIGIN)])
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn cors_headers_are_on_error_responses_too() {
    let s = with_origins(json!([ORIGIN])).await;
    s.setup_admin().await;
    let origin = [("origin", ORIGIN)];
    let cases = [
        (Method::GET, ME, 401),
        (Method::GET, "/api/v1/nope", 404),
        (Method::DELETE, STATUS, 405),
        (Method::POST, "/api/v1/auth/login", 422),
    ];
    for (method, path, status) in cases {
        let r = s.send(method, path, None, None, &origin).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(ORIGIN),
            "{path}"
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("X-Refreshed-Token")
        );
    }
    let r = s.send(Method::GET, ME, None, None, &origin).await;
    r.assert_detail(401, "Missing authentication credentials");
}

// ---- X-Refreshed-Token ----------------------------------------------------------------------

#[tokio::test]
async fn successful_mutations_with_a_bearer_token_are_refreshed() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;

    let r = s
        .patch(ME, Some(&admin), &json!({"display_name": "Boss"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = r.header("x-refreshed-token").expect("refreshed").to_owned();
    assert!(
        r.header("set-cookie").is_none(),
        "refresh never sets the cookie"
    );
    let me = s.get(ME, Some(&fresh)).await;
    assert_eq!((me.status, &me.body["display_name"]), (200, &json!("Boss")));

    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "u@example.com", "password": "pw"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_some());
    let id = r.body["user_id"].as_str().unwrap().to_owned();

    let r = s
        .patch(
            &format!("/api/v1/auth/users/{id}"),
            Some(&admin),
            &json!({"display_name": "U"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_some());

    let r = s
        .delete(&format!("/api/v1/auth/users/{id}"), Some(&admin))
        .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    assert!(r.header("x-refreshed-token").is_some());

    let r = s
        .send(
            Method::PATCH,
            "/api/v1/app/runtime_config",
            Some(&admin),
            Some(&json!({})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_some());
}

#[tokio::test]
async fn no_refresh_on_reads_failures_or_the_excluded_auth_paths() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let none = |r: &Resp, what: &str| {
        assert!(
            r.header("x-refreshed-token").is_none(),
            "{what}: {} {}",
            r.status,
            r.text
        );
    };

    let r = s.get(ME, Some(&admin)).await;
    assert_eq!(r.status, 200);
    none(&r, "GET");
    let r = s.send(Method::HEAD, STATUS, Some(&admin), None, &[]).await;
    none(&r, "HEAD");

    // Status >= 400: validation, a service error, an unknown route.
    let r = s.patch(ME, Some(&admin), &json!({"display_name": 5})).await;
    assert_eq!(r.status, 422);
    none(&r, "422");
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": ADMIN_EMAIL, "password": "pw"}),
        )
        .await;
    r.assert_detail(400, "User with email admin@example.com already exists");
    none(&r, "400");
    let r = s
        .delete("/api/v1/auth/users/no-such-user", Some(&admin))
        .await;
    r.assert_detail(404, "User not found");
    none(&r, "404");
    let r = s.post_empty("/api/v1/nope", Some(&admin)).await;
    r.assert_detail(404, "Not Found");
    none(&r, "unknown route");

    // Login, logout and media-cookie never refresh, even with a valid Bearer token.
    let r = s
        .post(
            "/api/v1/auth/login",
            Some(&admin),
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200);
    none(&r, "login");
    let r = s
        .post_empty("/api/v1/auth/media-cookie", Some(&admin))
        .await;
    assert_eq!(r.status, 200);
    none(&r, "media-cookie");
    let r = s.post_empty("/api/v1/auth/logout", Some(&admin)).await;
    assert_eq!(r.status, 200);
    none(&r, "logout");
    // ...but the paths are matched exactly.
    let r = s
        .patch(ME, Some(&admin), &json!({"display_name": "still"}))
        .await;
    assert!(r.header("x-refreshed-token").is_some());
}

#[tokio::test]
async fn only_the_exact_bearer_scheme_is_refreshed() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {admin}");
        let r = s
            .send(
                Method::PATCH,
                ME,
                None,
                Some(&json!({"display_name": scheme})),
                &[("authorization", &auth)],
            )
            .await;
        // The guard accepts any case; the refresh does not.
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.header("x-refreshed-token").is_none(), "{scheme}");
    }
}

#[tokio::test]
async fn the_refreshed_token_reflects_the_current_row_and_keeps_remember_me() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let user = s
        .create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    let id = user["user_id"].as_str().unwrap().to_owned();
    // Reset the password (epoch 1), then log in with remember_me.
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{id}"),
            Some(&admin),
            &json!({"password": "User-Pass-2"}),
        )
        .await;
    assert_eq!((r.status, &r.body["token_epoch"]), (200, &json!(1)));
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "u@example.com", "password": "User-Pass-2", "remember_me": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&token)["is_admin"], false);

    // Promotion changes the row but not the epoch: the old token keeps working.
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{id}"),
            Some(&admin),
            &json!({"is_admin": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let before = now();
    let r = s
        .patch(ME, Some(&token), &json!({"display_name": "Promoted"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = r.header("x-refreshed-token").unwrap().to_owned();
    let c = claims(&fresh);
    let exp = c["exp"].as_i64().unwrap();
    assert!(
        (before + 604_800..=now() + 604_800).contains(&exp),
        "a full 7-day lifetime: {c}"
    );
    let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "email",
            "exp",
            "is_admin",
            "remember_me",
            "token_epoch",
            "user_id"
        ]
    );
    assert_eq!(
        (
            &c["user_id"],
            &c["email"],
            &c["is_admin"],
            &c["remember_me"],
            &c["token_epoch"]
        ),
        (
            &json!(id),
            &json!("u@example.com"),
            &json!(true),
            &json!(true),
            &json!(1)
        )
    );
    // It verifies with the server's key and works as a credential.
    let verified = s.state().signer.verify(&fresh, now()).expect("verifies");
    assert_eq!(verified.exp, Some(exp));
    let me = s.get(ME, Some(&fresh)).await;
    assert_eq!((me.status, &me.body["is_admin"]), (200, &json!(true)));

    // Without remember_me the refresh lasts one day.
    let short = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let before = now();
    let r = s.patch(ME, Some(&short), &json!({})).await;
    let c = claims(r.header("x-refreshed-token").unwrap());
    assert_eq!(c["remember_me"], false);
    let exp = c["exp"].as_i64().unwrap();
    assert!((before + 86_400..=now() + 86_400).contains(&exp), "{c}");
}

#[tokio::test]
async fn a_password_change_keeps_the_routes_replacement_token() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let r = s
        .patch(
            ME,
            Some(&admin),
            &json!({"current_password": ADMIN_PASSWORD, "new_password": "New-Pass-2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let replacement = r.header("x-refreshed-token").unwrap();
    assert_eq!(r.headers.get_all("x-refreshed-token").iter().count(), 1);
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("invokeai_media_token={replacement};")));
    assert_eq!(claims(replacement)["token_epoch"], 1);
    assert_eq!(s.get(ME, Some(replacement)).await.status, 200);
    s.get(ME, Some(&admin))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
}

#[tokio::test]
async fn revoked_tokens_are_never_refreshed_and_single_user_mode_refreshes_valid_ones() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (user_id, user) = s.user_with_token(&admin, "u@example.com").await;
    // Revoke the admin's first token by a password change; deactivate the user.
    let r = s
        .patch(
            ME,
            Some(&admin),
            &json!({"current_password": ADMIN_PASSWORD, "new_password": "New-Pass-2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let current = r.header("x-refreshed-token").unwrap().to_owned();
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{user_id}"),
            Some(&current),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Restart in single-user mode: routes ignore the token, the refresh does not.
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;
    let patch_config = |token: String| {
        let s = &s;
        async move {
            s.send(
                Method::PATCH,
                "/api/v1/app/runtime_config",
                Some(&token),
                Some(&json!({})),
                &[],
            )
            .await
        }
    };
    for (what, token) in [
        ("revoked", admin.clone()),
        ("deactivated", user),
        ("garbage", "x.y.z".to_owned()),
    ] {
        let r = patch_config(token).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        assert!(r.header("x-refreshed-token").is_none(), "{what}");
    }
    let r = patch_config(current.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = r.header("x-refreshed-token").expect("refreshed").to_owned();
    assert_eq!(claims(&fresh)["token_epoch"], 1);
    // The strict routes accept a valid multi-user token in single-user mode.
    let me = s.get(ME, Some(&fresh)).await;
    assert_eq!((me.status, &me.body["email"]), (200, &json!(ADMIN_EMAIL)));
    // Without any token: nothing to refresh.
    let r = s
        .send(
            Method::PATCH,
            "/api/v1/app/runtime_config",
            None,
            Some(&json!({})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-refreshed-token").is_none());
}

#[tokio::test]
async fn behind_a_base_url_the_excluded_paths_are_matched_without_the_prefix() {
    let s = TestServer::builder()
        .multiuser(true)
        .set("base_url", json!("/invoke"))
        .set("allow_origins", json!([ORIGIN]))
        .start()
        .await;
    let admin = s.setup_admin().await;
    let r = s
        .send(
            Method::POST,
            "/invoke/api/v1/auth/login",
            Some(&admin),
            Some(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})),
            &[("origin", ORIGIN)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_none());
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    let r = s
        .post_empty("/invoke/api/v1/auth/logout", Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_none());
    let r = s
        .patch(
            "/invoke/api/v1/auth/me",
            Some(&admin),
            &json!({"display_name": "B"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-refreshed-token").is_some());
}
