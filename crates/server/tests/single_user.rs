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
