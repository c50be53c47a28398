//! User administration (auth.md §7, §9.3, §9.7, §9.8): every error row, revocation by role,
//! status, password and deletion, the system user's protections, and the last-admin
//! invariant under concurrent requests.

use crate::common::*;
use atelier_store::NewUser;
use serde_json::{json, Value};

fn id(user: &Value) -> &str {
    user["user_id"].as_str().unwrap()
}

#[tokio::test]
async fn create_get_and_list_users() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "New@Example.COM", "password": "pw", "display_name": "N"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        (
            r.body["email"].clone(),
            r.body["is_admin"].clone(),
            r.body["is_active"].clone(),
            r.body["token_epoch"].clone()
        ),
        (
            json!("New@example.com"),
            json!(false),
            json!(true),
            json!(0)
        )
    );
    let new_id = id(&r.body).to_owned();
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "new@EXAMPLE.com", "password": "pw"}),
        )
        .await;
    assert_eq!(r.status, 201, "local-part case makes another account");
    s.post(
        "/api/v1/auth/users",
        Some(&admin),
        &json!({"email": "New@example.com", "password": "pw"}),
    )
    .await
    .assert_detail(400, "User with email New@example.com already exists");
    // Policy before the duplicate check.
    s.post(
        "/api/v1/auth/users",
        Some(&admin),
        &json!({"email": "New@example.com", "password": ""}),
    )
    .await
    .assert_detail(400, "Password cannot be empty");

    let r = s
        .get(&format!("/api/v1/auth/users/{new_id}"), Some(&admin))
        .await;
    assert_eq!(
        (r.status, r.body["display_name"].clone()),
        (200, json!("N"))
    );
    let r = s.get("/api/v1/auth/users/system", Some(&admin)).await;
    assert_eq!(
        (
            r.status,
            r.body["email"].clone(),
            r.body["is_admin"].clone()
        ),
        (200, json!("system@system.invokeai"), json!(false))
    );
    s.get("/api/v1/auth/users/nope", Some(&admin))
        .await
        .assert_detail(404, "User not found");

    let r = s.get("/api/v1/auth/users", Some(&admin)).await;
    let emails: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        ["new@example.com", "New@example.com", ADMIN_EMAIL],
        "newest first, system hidden"
    );
}

#[tokio::test]
async fn listing_reads_at_most_a_hundred_rows() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    for i in 0..105 {
        s.state()
            .store
            .insert_user(&NewUser {
                email: format!("bulk{i}@example.com"),
                display_name: None,
                password_hash: "$2b$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinva"
                    .into(),
                is_admin: false,
            })
            .await
            .unwrap();
    }
    let r = s.get("/api/v1/auth/users", Some(&admin)).await;
    assert_eq!(r.body.as_array().unwrap().len(), 100);
    assert_eq!(r.body[0]["email"], "bulk104@example.com");
}

#[tokio::test]
async fn non_admins_and_anonymous_callers_are_refused_everywhere() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, user) = s.user_with_token(&admin, "u@example.com").await;
    let routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/api/v1/auth/users".into(), None),
        (
            reqwest::Method::POST,
            "/api/v1/auth/users".into(),
            Some(json!({"email": "x@example.com", "password": "p"})),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/auth/users/{uid}"),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/auth/users/{uid}"),
            Some(json!({})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/auth/users/{uid}"),
            None,
        ),
        (reqwest::Method::GET, "/api/v1/auth/audit".into(), None),
    ];
    for (method, path, body) in &routes {
        let r = s
            .send(method.clone(), path, Some(&user), body.as_ref(), &[])
            .await;
        r.assert_detail(403, "Admin privileges required");
        let r = s.send(method.clone(), path, None, body.as_ref(), &[]).await;
        r.assert_detail(401, "Missing authentication credentials");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
    }
    // The guard runs before body validation: a bad body from a non-admin is still 403.
    let r = s
        .post("/api/v1/auth/users", Some(&user), &json!({"email": 1}))
        .await;
    r.assert_detail(403, "Admin privileges required");
}

#[tokio::test]
async fn patch_rules_in_order() {
    let s = TestServer::builder()
        .multiuser(true)
        .strict(true)
        .start()
        .await;
    let admin = s.setup_admin().await;
    let user = s
        .create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    let path = format!("/api/v1/auth/users/{}", id(&user));
    s.patch("/api/v1/auth/users/nope", Some(&admin), &json!({}))
        .await
        .assert_detail(404, "User not found");
    for body in [
        json!({"is_active": false}),
        json!({"is_admin": true}),
        json!({"password": "Abcdefg1"}),
    ] {
        s.patch("/api/v1/auth/users/system", Some(&admin), &body).await.assert_detail(
            400,
            "The system user cannot be deleted, deactivated, promoted to administrator, or given a password",
        );
    }
    // Renaming the system user is allowed.
    let r = s
        .patch(
            "/api/v1/auth/users/system",
            Some(&admin),
            &json!({"display_name": "Legacy"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["display_name"].clone()),
        (200, json!("Legacy"))
    );
    s.patch(&path, Some(&admin), &json!({"password": "short"}))
        .await
        .assert_detail(400, "Password must be at least 8 characters long");
    s.patch(&path, Some(&admin), &json!({"password": "alllowercase1"}))
        .await
        .assert_detail(
            400,
            "Password must contain uppercase, lowercase, and numbers",
        );
    let r = s.patch(&path, Some(&admin), &json!({})).await;
    assert_eq!(
        (r.status, r.body["email"].clone()),
        (200, json!("u@example.com"))
    );
    let r = s
        .send(reqwest::Method::PATCH, &path, Some(&admin), None, &[])
        .await;
    assert_eq!(
        (r.status, r.body["detail"][0]["type"].clone()),
        (422, json!("missing"))
    );
    // Strict mode on create as well; Unicode classes count.
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "v@example.com", "password": "Äbcdefg1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn revocation_by_password_role_status_and_deletion() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let user = s.create_user(&admin, "u@example.com", "pw", true).await;
    let path = format!("/api/v1/auth/users/{}", id(&user));
    let token = s.login("u@example.com", "pw").await;
    assert_eq!(s.get("/api/v1/auth/users", Some(&token)).await.status, 200);

    // Demotion applies on the next request, without re-login, on strict and default guards.
    s.patch(&path, Some(&admin), &json!({"is_admin": false}))
        .await;
    s.get("/api/v1/auth/users", Some(&token))
        .await
        .assert_detail(403, "Admin privileges required");
    s.get("/api/v1/app/runtime_config", Some(&token))
        .await
        .assert_detail(403, "Admin privileges required");
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);

    // Deactivation: every guard refuses; reactivation restores the same token (no epoch bump).
    s.patch(&path, Some(&admin), &json!({"is_active": false}))
        .await;
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.get("/api/v1/app/app_deps", Some(&token))
        .await
        .assert_detail(401, "User not found or inactive");
    s.patch(&path, Some(&admin), &json!({"is_active": true}))
        .await;
    assert_eq!(s.get("/api/v1/auth/me", Some(&token)).await.status, 200);

    // An admin password reset bumps the epoch and revokes the target's tokens.
    let r = s
        .patch(&path, Some(&admin), &json!({"password": "new"}))
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(1)));
    assert!(
        r.header("x-refreshed-token").is_some(),
        "the caller still gets the ordinary refresh"
    );
    assert!(
        r.header("set-cookie").is_none(),
        "no replacement for someone else's password"
    );
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    let token = s.login("u@example.com", "new").await;

    // Deletion: 204 with no body; the token dies; login fails.
    let r = s.delete(&path, Some(&admin)).await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.post(
        "/api/v1/auth/login",
        None,
        &json!({"email": "u@example.com", "password": "new"}),
    )
    .await
    .assert_detail(401, "Incorrect email or password");
    s.delete(&path, Some(&admin))
        .await
        .assert_detail(404, "User not found");
}

#[tokio::test]
async fn an_admin_resetting_their_own_password_gets_a_replacement() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let me = s.get("/api/v1/auth/me", Some(&admin)).await;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{}", id(&me.body)),
            Some(&admin),
            &json!({"password": "Another-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let replacement = r.header("x-refreshed-token").unwrap().to_owned();
    assert!(r.header("set-cookie").unwrap().contains(&replacement));
    assert_eq!(
        s.get("/api/v1/auth/me", Some(&replacement)).await.status,
        200
    );
    s.get("/api/v1/auth/me", Some(&admin))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let me = s.get("/api/v1/auth/me", Some(&admin)).await;
    let path = format!("/api/v1/auth/users/{}", id(&me.body));
    for body in [json!({"is_admin": false}), json!({"is_active": false})] {
        s.patch(&path, Some(&admin), &body)
            .await
            .assert_detail(400, "Cannot remove the last administrator");
    }
    s.delete(&path, Some(&admin))
        .await
        .assert_detail(400, "Cannot remove the last administrator");
    s.delete("/api/v1/auth/users/system", Some(&admin)).await.assert_detail(
        400,
        "The system user cannot be deleted, deactivated, promoted to administrator, or given a password",
    );
    // With a second admin, self-removal is allowed; setup stays closed.
    s.create_user(&admin, "second@example.com", "pw", true)
        .await;
    let r = s.delete(&path, Some(&admin)).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        s.get("/api/v1/auth/status", None).await.body["setup_required"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let other = s.create_user(&admin, "b@example.com", "pw", true).await;
    let other_token = s.login("b@example.com", "pw").await;
    let me = s.get("/api/v1/auth/me", Some(&admin)).await;
    let (a_id, b_id) = (id(&me.body).to_owned(), id(&other).to_owned());
    for round in 0..10 {
        let demote = |token: String, target: String| {
            let client = s.client.clone();
            let url = s.url(&format!("/api/v1/auth/users/{target}"));
            tokio::spawn(async move {
                client
                    .patch(url)
                    .bearer_auth(token)
                    .json(&json!({"is_admin": false}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        let (x, y) = (
            demote(admin.clone(), b_id.clone()),
            demote(other_token.clone(), a_id.clone()),
        );
        let mut statuses = vec![x.await.unwrap(), y.await.unwrap()];
        statuses.sort_unstable();
        assert_eq!(
            s.state().store.count_active_admins().await.unwrap(),
            1,
            "round {round}: {statuses:?}"
        );
        // One demotion won; the other lost: 400 (last admin) or 403 (already demoted itself).
        assert!(
            statuses == [200, 400] || statuses == [200, 403],
            "round {round}: {statuses:?}"
        );
        // Re-promote whoever lost their role, through the remaining admin's token.
        let remaining = if s.get("/api/v1/auth/users", Some(&admin)).await.status == 200 {
            &admin
        } else {
            &other_token
        };
        for target in [&a_id, &b_id] {
            s.patch(
                &format!("/api/v1/auth/users/{target}"),
                Some(remaining),
                &json!({"is_admin": true}),
            )
            .await;
        }
        assert_eq!(s.state().store.count_active_admins().await.unwrap(), 2);
    }
    // Concurrent deletes of both admins: exactly one succeeds.
    let del = |token: String, target: String| {
        let client = s.client.clone();
        let url = s.url(&format!("/api/v1/auth/users/{target}"));
        tokio::spawn(async move {
            client
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let (x, y) = (
        del(admin.clone(), b_id.clone()),
        del(other_token.clone(), a_id.clone()),
    );
    let statuses = [x.await.unwrap(), y.await.unwrap()];
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(s.state().store.count_active_admins().await.unwrap(), 1);
}

#[tokio::test]
async fn the_documented_sqlite_password_reset_recipe_works() {
    let s = TestServer::multiuser().await;
    s.setup_admin().await;
    // What an operator does with sqlite3: write a bcrypt hash (any cost, $2b$ or $2a$).
    let hash = atelier_server::passwords::hash_sync(b"Recovered-1", 4)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    let url = format!(
        "sqlite://{}",
        s.root.path().join("databases/atelier.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE email = $2")
        .bind(&hash)
        .bind(ADMIN_EMAIL)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    s.login(ADMIN_EMAIL, "Recovered-1").await;
}
