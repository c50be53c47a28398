//! Setup, login, logout, media cookie and the signed-in user's own account (auth.md §5–6).

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn fresh_multiuser_server_requires_setup_then_not() {
    let s = TestServer::multiuser().await;
    let r = s.get("/api/v1/auth/status", None).await;
    assert_eq!(
        r.body,
        json!({"setup_required": true, "multiuser_enabled": true,
               "strict_password_checking": false, "admin_email": null})
    );
    let r = s
        .post(
            "/api/v1/auth/setup",
            None,
            &json!({"email": "Admin@Example.COM", "password": "x", "display_name": "Boss"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["success"], true);
    let user = &r.body["user"];
    assert_eq!(user["email"], "Admin@example.com");
    assert_eq!(user["is_admin"], true);
    assert_eq!(user["is_active"], true);
    assert_eq!(user["token_epoch"], 0);
    assert_eq!(user["last_login_at"], serde_json::Value::Null);
    assert!(r.header("set-cookie").is_none(), "setup issues no cookie");
    let created = user["created_at"].as_str().unwrap();
    assert!(
        !created.ends_with('Z') && created.contains('T'),
        "{created}"
    );

    let r = s.get("/api/v1/auth/status", None).await;
    assert_eq!(r.body["setup_required"], false);
    let r = s
        .post(
            "/api/v1/auth/setup",
            None,
            &json!({"email": "b@example.com", "password": "x"}),
        )
        .await;
    r.assert_detail(400, "Administrator account already configured");
}

#[tokio::test]
async fn login_returns_token_user_and_cookie() {
    let s = TestServer::multiuser().await;
    s.setup_admin().await;
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "remember_me": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["expires_in"], 604_800);
    let token = r.body["token"].as_str().unwrap();
    let last = r.body["user"]["last_login_at"].as_str().unwrap();
    assert!(last.ends_with('Z'), "{last}");
    let cookie = r.header("set-cookie").unwrap();
    assert_eq!(
        cookie,
        format!(
            "invokeai_media_token={token}; HttpOnly; Max-Age=604800; Path=/api/v1; SameSite=lax"
        )
    );
    assert!(r.header("x-refreshed-token").is_none());
    let me = s.get("/api/v1/auth/me", Some(token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], ADMIN_EMAIL);
}

#[tokio::test]
async fn login_failures_follow_the_contract_order() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let user = s.create_user(&admin, "u@example.com", "pw", false).await;
    let wrong = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "u@example.com", "password": "nope"}),
        )
        .await;
    wrong.assert_detail(401, "Incorrect email or password");
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let unknown = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "x@example.com", "password": "pw"}),
        )
        .await;
    unknown.assert_detail(401, "Incorrect email or password");
    let system = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "system@system.invokeai", "password": ""}),
        )
        .await;
    system.assert_detail(401, "Incorrect email or password");
    // Case matters in the local part.
    let case = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "U@example.com", "password": "pw"}),
        )
        .await;
    assert_eq!(case.status, 401);

    // Deactivated: wrong password is still 401, right password is 403 and stamps the login.
    let id = user["user_id"].as_str().unwrap();
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{id}"),
            Some(&admin),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let before = s
        .get(&format!("/api/v1/auth/users/{id}"), Some(&admin))
        .await;
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "u@example.com", "password": "nope"}),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "u@example.com", "password": "pw"}),
        )
        .await;
    r.assert_detail(403, "User account is disabled");
    let after = s
        .get(&format!("/api/v1/auth/users/{id}"), Some(&admin))
        .await;
    assert_ne!(before.body["last_login_at"], after.body["last_login_at"]);
    assert!(after.body["last_login_at"].is_string());
}

#[tokio::test]
async fn logout_clears_cookie_but_token_stays_valid() {
    let s = TestServer::multiuser().await;
    let token = s.setup_admin().await;
    let r = s.post_empty("/api/v1/auth/logout", Some(&token)).await;
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("invokeai_media_token=\"\"; expires="),
        "{cookie}"
    );
    assert!(
        cookie.ends_with("; Max-Age=0; Path=/api/v1; SameSite=lax"),
        "{cookie}"
    );
    assert!(r.header("x-refreshed-token").is_none());
    // Nothing is revoked server-side.
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);
    let r = s.post_empty("/api/v1/auth/logout", None).await;
    r.assert_detail(401, "Missing authentication credentials");
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test]
async fn media_cookie_uses_remaining_token_life() {
    let s = TestServer::multiuser().await;
    let token = s.setup_admin().await;
    let r = s
        .post_empty("/api/v1/auth/media-cookie", Some(&token))
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"success": true})));
    let cookie = r.header("set-cookie").unwrap();
    let max_age: i64 = cookie
        .split("; ")
        .find_map(|p| p.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((86_390..=86_400).contains(&max_age), "{cookie}");
    assert!(cookie.starts_with(&format!("invokeai_media_token={token};")));
    assert!(r.header("x-refreshed-token").is_none());
    s.post_empty("/api/v1/auth/media-cookie", None)
        .await
        .assert_detail(401, "Authentication required");
    s.post_empty("/api/v1/auth/media-cookie", Some("garbage"))
        .await
        .assert_detail(401, "Invalid or expired token");
}

#[tokio::test]
async fn password_change_revokes_other_sessions_and_returns_a_replacement() {
    let s = TestServer::multiuser().await;
    let first = s.setup_admin().await;
    let second = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&first),
            &json!({"new_password": "New-Pass-2"}),
        )
        .await;
    r.assert_detail(400, "Current password is required to set a new password");
    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&first),
            &json!({"new_password": "New-Pass-2", "current_password": "wrong"}),
        )
        .await;
    r.assert_detail(400, "Current password is incorrect");

    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&first),
            &json!({"new_password": "New-Pass-2", "current_password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token_epoch"], 1);
    let replacement = r.header("x-refreshed-token").unwrap().to_owned();
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.contains(&replacement) && cookie.contains("Max-Age=86400"));

    for old in [&first, &second] {
        s.get("/api/v1/auth/me", Some(old))
            .await
            .assert_detail(401, "User account is inactive or does not exist");
    }
    assert_eq!(
        s.get("/api/v1/auth/me", Some(&replacement)).await.status,
        200
    );
    s.login(ADMIN_EMAIL, "New-Pass-2").await;
}

#[tokio::test]
async fn display_name_change_keeps_sessions_and_gets_sliding_refresh() {
    let s = TestServer::multiuser().await;
    let token = s.setup_admin().await;
    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&token),
            &json!({"display_name": "New"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["display_name"], "New");
    assert_eq!(r.body["token_epoch"], 0);
    assert!(r.header("x-refreshed-token").is_some());
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);
    let r = s.patch("/api/v1/auth/me", Some(&token), &json!({})).await;
    assert_eq!((r.status, &r.body["display_name"]), (200, &json!("New")));
}

#[tokio::test]
async fn generate_password_is_strong_and_needs_a_user() {
    let s = TestServer::multiuser().await;
    let token = s.setup_admin().await;
    let r = s.get("/api/v1/auth/generate-password", Some(&token)).await;
    let p = r.body["password"].as_str().unwrap();
    assert_eq!(p.chars().count(), 16);
    assert!(p.chars().any(|c| c.is_ascii_uppercase()) && p.chars().any(|c| c.is_ascii_digit()));
    s.get("/api/v1/auth/generate-password", None)
        .await
        .assert_detail(401, "Missing authentication credentials");
}

#[tokio::test]
async fn production_hashes_are_bcrypt_2b_cost_12() {
    let s = TestServer::builder().multiuser(true).cost(12).start().await;
    s.setup_admin().await;
    let user = s
        .state()
        .store
        .find_user_by_email(ADMIN_EMAIL)
        .await
        .unwrap()
        .unwrap();
    assert!(
        user.password_hash.starts_with("$2b$12$"),
        "{}",
        user.password_hash
    );
    assert_eq!(user.password_hash.len(), 60);
}

#[tokio::test]
async fn concurrent_setups_create_exactly_one_admin() {
    let s = TestServer::multiuser().await;
    let mut handles = Vec::new();
    for i in 0..6 {
        let client = s.client.clone();
        let url = s.url("/api/v1/auth/setup");
        handles.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"email": format!("a{i}@example.com"), "password": "pw"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for h in handles {
        if h.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.state().store.count_active_admins().await.unwrap(), 1);
}

#[tokio::test]
async fn tokens_survive_a_restart_on_the_same_root() {
    let s = TestServer::multiuser().await;
    let token = s.setup_admin().await;
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);
}
