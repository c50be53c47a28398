//! Single-user mode (auth.md §8): the strict auth routes keep their guard, everything else
//! acts as the synthetic `system` administrator.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn single_user_behaviour_at_a_glance() {
    let s = TestServer::single_user().await;
    let r = s.get("/api/v1/auth/status", None).await;
    assert_eq!(
        r.body,
        json!({"setup_required": false, "multiuser_enabled": false, "strict_password_checking": false, "admin_email": null})
    );
    s.post(
        "/api/v1/auth/login",
        None,
        &json!({"email": "a@example.com", "password": "x"}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Authentication is not required in single-user mode.",
    );
    s.post(
        "/api/v1/auth/setup",
        None,
        &json!({"email": "a@example.com", "password": "x"}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Admin setup is not required in single-user mode.",
    );
    // Body validation comes first on these two.
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["detail"][0]["loc"].clone()),
        (422, json!(["body", "password"]))
    );
    let r = s.post_empty("/api/v1/auth/media-cookie", None).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"success": true})));
    assert!(r.header("set-cookie").is_none());
    for path in [
        "/api/v1/auth/me",
        "/api/v1/auth/generate-password",
        "/api/v1/auth/users",
        "/api/v1/auth/audit",
    ] {
        s.get(path, None)
            .await
            .assert_detail(401, "Missing authentication credentials");
    }
    s.post_empty("/api/v1/auth/logout", None)
        .await
        .assert_detail(401, "Missing authentication credentials");
    // Other routes act as the system admin and ignore any Authorization header.
    for token in [None, Some("garbage")] {
        assert_eq!(s.get("/api/v1/app/app_deps", token).await.status, 200);
        assert_eq!(s.get("/api/v1/app/runtime_config", token).await.status, 200);
        assert_eq!(s.get("/api/v1/boards/?all=true", token).await.status, 200);
    }
}

#[tokio::test]
async fn a_multi_user_token_still_works_on_the_strict_routes_after_switching_modes() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;
    let r = s.get("/api/v1/auth/me", Some(&admin)).await;
    assert_eq!(
        (r.status, r.body["email"].clone()),
        (200, json!(ADMIN_EMAIL))
    );
    assert_eq!(s.get("/api/v1/auth/users", Some(&admin)).await.status, 200);
    // Accounts and epochs are untouched by the switch: back in multi-user mode it still works.
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    assert_eq!(s.get("/api/v1/auth/me", Some(&admin)).await.status, 200);
    assert_eq!(
        s.get("/api/v1/auth/status", None).await.body["setup_required"],
        false
    );
}

#[tokio::test]
async fn login_and_setup_check_the_body_before_refusing() {
    let s = TestServer::single_user().await;
    for path in ["/api/v1/auth/login", "/api/v1/auth/setup"] {
        let r = s.post(path, None, &json!({"email": "a@example.com"})).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (
                422,
                json!({"detail": [{"type": "missing", "loc": ["body", "password"],
                                   "msg": "Field required", "input": {"email": "a@example.com"}}]})
            ),
            "{path}"
        );
        let r = s
            .post(path, None, &json!({"email": "a@b", "password": "x"}))
            .await;
        assert_eq!(
            (r.status, r.body.clone()),
            (
                422,
                json!({"detail": [{"type": "value_error", "loc": ["body", "email"],
                                   "msg": "Email domain must contain a dot or be 'localhost'",
                                   "input": "a@b"}]})
            ),
            "{path}"
        );
        let r = s.post_empty(path, None).await;
        assert_eq!(
            (r.status, r.body["detail"][0]["loc"].clone()),
            (422, json!(["body"])),
            "{path}"
        );
    }
    // A valid body gets the mode's refusal, even with a token attached; nothing is created.
    s.post(
        "/api/v1/auth/setup",
        Some("garbage"),
        &json!({"email": "a@example.com", "password": "x", "display_name": "A"}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Admin setup is not required in single-user mode.",
    );
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "system@system.invokeai", "password": ""}),
        )
        .await;
    r.assert_detail(
        403,
        "Multiuser mode is disabled. Authentication is not required in single-user mode.",
    );
    assert!(r.header("set-cookie").is_none());
    assert!(s
        .state()
        .store
        .find_user_by_email("a@example.com")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn every_strict_route_still_needs_a_token() {
    let s = TestServer::builder().strict(true).start().await;
    assert_eq!(
        s.get("/api/v1/auth/status", None).await.body,
        json!({"setup_required": false, "multiuser_enabled": false,
               "strict_password_checking": true, "admin_email": null})
    );
    let routes: Vec<(reqwest::Method, &str, Option<serde_json::Value>)> = vec![
        (reqwest::Method::GET, "/api/v1/auth/me", None),
        (
            reqwest::Method::PATCH,
            "/api/v1/auth/me",
            Some(json!({"display_name": "x"})),
        ),
        (reqwest::Method::POST, "/api/v1/auth/logout", None),
        (reqwest::Method::GET, "/api/v1/auth/generate-password", None),
        (reqwest::Method::GET, "/api/v1/auth/users", None),
        // The guard runs before body validation.
        (reqwest::Method::POST, "/api/v1/auth/users", Some(json!({}))),
        (reqwest::Method::GET, "/api/v1/auth/users/system", None),
        (
            reqwest::Method::PATCH,
            "/api/v1/auth/users/system",
            Some(json!({"is_admin": 1})),
        ),
        (reqwest::Method::DELETE, "/api/v1/auth/users/system", None),
    ];
    for (method, path, body) in &routes {
        let r = s.send(method.clone(), path, None, body.as_ref(), &[]).await;
        r.assert_detail(401, "Missing authentication credentials");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
        // A header is not ignored here: a bad token is an invalid one.
        let r = s
            .send(method.clone(), path, Some("garbage"), body.as_ref(), &[])
            .await;
        r.assert_detail(401, "Invalid or expired authentication token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
        let r = s
            .send(
                method.clone(),
                path,
                None,
                body.as_ref(),
                &[("authorization", "Basic dXNlcjpwYXNz")],
            )
            .await;
        r.assert_detail(401, "Missing authentication credentials");
    }
}

#[tokio::test]
async fn default_routes_act_as_the_system_admin_whatever_the_header() {
    let s = TestServer::single_user().await;
    let expired = atelier_server::token::TokenSigner::new("another secret").sign(
        &atelier_server::token::Claims {
            user_id: "00000000-0000-4000-8000-000000000000".into(),
            email: "nobody@example.com".into(),
            is_admin: false,
            remember_me: false,
            token_epoch: 0,
            exp: Some(1),
        },
    );
    let baseline = s.get("/api/v1/app/app_deps", None).await;
    assert_eq!(baseline.status, 200, "{}", baseline.text);
    for header in [
        "Bearer garbage".to_owned(),
        format!("Bearer {expired}"),
        "Basic abc".to_owned(),
        "bearer".to_owned(),
    ] {
        let auth = [("authorization", header.as_str())];
        let r = s
            .send(
                reqwest::Method::GET,
                "/api/v1/app/app_deps",
                None,
                None,
                &auth,
            )
            .await;
        assert_eq!((r.status, &r.body), (200, &baseline.body), "{header}");
        // Admin-only default routes pass too: the synthetic identity is an administrator.
        let r = s
            .send(
                reqwest::Method::GET,
                "/api/v1/app/runtime_config",
                None,
                None,
                &auth,
            )
            .await;
        assert_eq!(r.status, 200, "{header}: {}", r.text);
        assert_eq!(r.body["config"]["multiuser"], false);
        // The media-cookie route answers success and sets nothing.
        let r = s
            .send(
                reqwest::Method::POST,
                "/api/v1/auth/media-cookie",
                None,
                None,
                &auth,
            )
            .await;
        assert_eq!((r.status, r.body.clone()), (200, json!({"success": true})));
        assert!(r.header("set-cookie").is_none(), "{header}");
        assert!(r.header("www-authenticate").is_none());
    }
    // Even a perfectly valid token of a real account gets no cookie here.
    let user = s
        .state()
        .store
        .insert_user(&atelier_store::NewUser {
            email: "u@example.com".into(),
            display_name: None,
            password_hash: String::new(),
            is_admin: false,
        })
        .await
        .unwrap();
    let secret = s
        .state()
        .store
        .get_setting("jwt_secret")
        .await
        .unwrap()
        .unwrap();
    let valid =
        atelier_server::token::TokenSigner::new(&secret).sign(&atelier_server::token::Claims {
            user_id: user.user_id.to_string(),
            email: user.email.clone(),
            is_admin: false,
            remember_me: false,
            token_epoch: 0,
            exp: Some(chrono::Utc::now().timestamp() + 3600),
        });
    assert_eq!(s.get("/api/v1/auth/me", Some(&valid)).await.status, 200);
    let r = s
        .post_empty("/api/v1/auth/media-cookie", Some(&valid))
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"success": true})));
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test]
async fn multi_user_accounts_keep_their_rules_on_the_strict_routes_in_single_user_mode() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, user) = s.user_with_token(&admin, "u@example.com").await;
    let (off_id, off) = s.user_with_token(&admin, "off@example.com").await;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{off_id}"),
            Some(&admin),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status, 200);
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;

    // The same tokens, strict routes: the row is re-read as in multi-user mode.
    let r = s.get("/api/v1/auth/me", Some(&user)).await;
    assert_eq!(
        (
            r.status,
            r.body["user_id"].clone(),
            r.body["is_admin"].clone()
        ),
        (200, json!(uid), json!(false))
    );
    s.get("/api/v1/auth/users", Some(&user))
        .await
        .assert_detail(403, "Admin privileges required");
    let r = s.get("/api/v1/auth/users", Some(&admin)).await;
    assert_eq!((r.status, r.body.as_array().map(Vec::len)), (200, Some(3)));
    let r = s.get("/api/v1/auth/me", Some(&off)).await;
    r.assert_detail(401, "User account is inactive or does not exist");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // Default routes ignore those same tokens: the deactivated user's and the non-admin's
    // requests run as the system administrator.
    for token in [&user, &off] {
        assert_eq!(s.get("/api/v1/app/app_deps", Some(token)).await.status, 200);
        assert_eq!(
            s.get("/api/v1/app/runtime_config", Some(token))
                .await
                .status,
            200
        );
    }
    // Login stays closed, even for a real account.
    s.post(
        "/api/v1/auth/login",
        None,
        &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
    )
    .await
    .assert_detail(
        403,
        "Multiuser mode is disabled. Authentication is not required in single-user mode.",
    );
    // The admin API still works with a valid admin token, and its rules still apply.
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{uid}"),
            Some(&admin),
            &json!({"password": "Reset-1"}),
        )
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(1)));
    assert!(
        r.header("x-refreshed-token").is_some(),
        "the sliding refresh runs in both modes"
    );
    assert!(r.header("set-cookie").is_none());
    s.get("/api/v1/auth/me", Some(&user))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
}
