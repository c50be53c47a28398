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

/// Runs one SQL statement against the server's database file, as an operator with sqlite3 would.
async fn exec_sql(s: &TestServer, sql: &str) {
    let url = format!("sqlite://{}", s.state().config.database_path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn create_returns_the_full_row_and_honours_is_admin() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "Boss@Example.ORG", "password": "pw", "is_admin": true,
                    "unknown": "ignored"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.body.clone();
    assert_eq!(
        (
            created["email"].clone(),
            created["display_name"].clone(),
            created["is_admin"].clone(),
            created["is_active"].clone(),
            created["last_login_at"].clone(),
            created["token_epoch"].clone(),
        ),
        (
            json!("Boss@example.org"),
            Value::Null,
            json!(true),
            json!(true),
            Value::Null,
            json!(0)
        )
    );
    let uid = id(&created);
    assert!(
        uuid::Uuid::parse_str(uid).is_ok() && uid == uid.to_lowercase(),
        "{uid}"
    );
    // GET returns exactly what POST returned; the new admin can use admin routes.
    let r = s
        .get(&format!("/api/v1/auth/users/{uid}"), Some(&admin))
        .await;
    assert_eq!((r.status, &r.body), (200, &created));
    let boss = s.login("Boss@example.org", "pw").await;
    assert_eq!(s.get("/api/v1/auth/users", Some(&boss)).await.status, 200);
    // The duplicate detail names the normalised email, whatever the request's domain case.
    s.post(
        "/api/v1/auth/users",
        Some(&admin),
        &json!({"email": "Boss@EXAMPLE.org", "password": "pw"}),
    )
    .await
    .assert_detail(400, "User with email Boss@example.org already exists");
    // The special-use fallback lower-cases the whole address.
    let r = s
        .post(
            "/api/v1/auth/users",
            Some(&admin),
            &json!({"email": "Someone@Test.Local", "password": "pw"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["email"].clone()),
        (201, json!("someone@test.local"))
    );
    s.post(
        "/api/v1/auth/users",
        Some(&admin),
        &json!({"email": "SOMEONE@test.local", "password": "pw"}),
    )
    .await
    .assert_detail(400, "User with email someone@test.local already exists");
}

#[tokio::test]
async fn the_cap_applies_before_the_system_row_is_removed() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    for i in 0..120 {
        s.state()
            .store
            .insert_user(&NewUser {
                email: format!("bulk{i}@example.com"),
                display_name: None,
                password_hash: "not-a-bcrypt-hash".into(),
                is_admin: false,
            })
            .await
            .unwrap();
    }
    // Newest first over the whole page: ties on the millisecond keep insertion order.
    let r = s.get("/api/v1/auth/users", Some(&admin)).await;
    assert_eq!(r.status, 200);
    let emails: Vec<String> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (20..120)
        .rev()
        .map(|i| format!("bulk{i}@example.com"))
        .collect();
    assert_eq!(emails, expected);
    // When `system` is among the 100 newest rows, the page shrinks to 99: the reference reads
    // 100 rows and only then drops `system`.
    exec_sql(
        &s,
        "UPDATE users SET created_at = '2999-01-01 00:00:00.000' WHERE user_id = 'system'",
    )
    .await;
    let r = s.get("/api/v1/auth/users", Some(&admin)).await;
    let rows = r.body.as_array().unwrap();
    assert_eq!(rows.len(), 99, "{}", r.text);
    assert!(rows.iter().all(|u| u["user_id"] != "system"));
    assert_eq!(rows[0]["email"], "bulk119@example.com");
    assert_eq!(rows[98]["email"], "bulk21@example.com");
}

#[tokio::test]
async fn patch_checks_run_in_the_contract_order() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let me = s.get("/api/v1/auth/me", Some(&admin)).await.body;
    let my_path = format!("/api/v1/auth/users/{}", id(&me));
    // 1. Unknown id before anything else.
    s.patch(
        "/api/v1/auth/users/nope",
        Some(&admin),
        &json!({"password": "", "is_admin": false}),
    )
    .await
    .assert_detail(404, "User not found");
    // 2. The system user's protection before the policy.
    s.patch(
        "/api/v1/auth/users/system",
        Some(&admin),
        &json!({"password": ""}),
    )
    .await
    .assert_detail(
        400,
        "The system user cannot be deleted, deactivated, promoted to administrator, or given a password",
    );
    // 3. The last-admin check before the policy.
    s.patch(
        &my_path,
        Some(&admin),
        &json!({"is_admin": false, "password": ""}),
    )
    .await
    .assert_detail(400, "Cannot remove the last administrator");
    s.patch(
        &my_path,
        Some(&admin),
        &json!({"is_active": false, "password": ""}),
    )
    .await
    .assert_detail(400, "Cannot remove the last administrator");
    // 4. The (non-strict) policy; nothing was written by any refused request.
    s.patch(&my_path, Some(&admin), &json!({"password": ""}))
        .await
        .assert_detail(400, "Password cannot be empty");
    let after = s.get("/api/v1/auth/me", Some(&admin)).await;
    assert_eq!((after.status, &after.body), (200, &me));

    // Harmless changes to `system` are allowed: nulls, demoting, activating, renaming.
    let r = s
        .patch(
            "/api/v1/auth/users/system",
            Some(&admin),
            &json!({"password": null, "is_admin": false, "is_active": true,
                    "display_name": "Legacy owner"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["display_name"].clone(),
            r.body["is_admin"].clone(),
            r.body["is_active"].clone(),
            r.body["token_epoch"].clone()
        ),
        (json!("Legacy owner"), json!(false), json!(true), json!(0))
    );
    // The last admin may be renamed and given a new password.
    let r = s
        .patch(&my_path, Some(&admin), &json!({"display_name": "Chief"}))
        .await;
    assert_eq!(
        (r.status, r.body["display_name"].clone()),
        (200, json!("Chief"))
    );
    let r = s
        .patch(&my_path, Some(&admin), &json!({"password": "x"}))
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(1)));
}

#[tokio::test]
async fn an_empty_patch_changes_nothing() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let user = s.create_user(&admin, "u@example.com", "pw", false).await;
    let path = format!("/api/v1/auth/users/{}", id(&user));
    for body in [
        json!({}),
        json!({"display_name": null, "password": null, "is_admin": null, "is_active": null}),
        json!({"email": "other@example.com"}),
    ] {
        let r = s.patch(&path, Some(&admin), &body).await;
        assert_eq!((r.status, &r.body), (200, &user), "{body}");
    }
    assert_eq!(s.get(&path, Some(&admin)).await.body, user);
    // An empty display name is a value, not "unchanged".
    let r = s
        .patch(&path, Some(&admin), &json!({"display_name": ""}))
        .await;
    assert_eq!((r.status, r.body["display_name"].clone()), (200, json!("")));
    // Missing body: 422 in the framework's shape.
    let r = s
        .send(reqwest::Method::PATCH, &path, Some(&admin), None, &[])
        .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (
            422,
            json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required",
                               "input": null}]})
        )
    );
}

#[tokio::test]
async fn password_policy_without_strict_checking_only_refuses_empty() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    s.post(
        "/api/v1/auth/users",
        Some(&admin),
        &json!({"email": "u@example.com", "password": ""}),
    )
    .await
    .assert_detail(400, "Password cannot be empty");
    let user = s.create_user(&admin, "u@example.com", "a", false).await;
    let path = format!("/api/v1/auth/users/{}", id(&user));
    s.patch(&path, Some(&admin), &json!({"password": ""}))
        .await
        .assert_detail(400, "Password cannot be empty");
    let r = s
        .patch(&path, Some(&admin), &json!({"password": "b"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.login("u@example.com", "b").await;
}

#[tokio::test]
async fn strict_password_policy_on_create_and_patch() {
    let s = TestServer::builder()
        .multiuser(true)
        .strict(true)
        .start()
        .await;
    let admin = s.setup_admin().await;
    let create = |email: &'static str, password: &'static str| {
        let admin = admin.clone();
        let s = &s;
        async move {
            s.post(
                "/api/v1/auth/users",
                Some(&admin),
                &json!({"email": email, "password": password}),
            )
            .await
        }
    };
    let short = "Password must be at least 8 characters long";
    let classes = "Password must contain uppercase, lowercase, and numbers";
    for (password, detail) in [
        ("", short),
        ("Abcde1", short),
        // 7 code points, 8 bytes: length counts characters.
        ("Äbcdef1", short),
        ("abcdefg1", classes),
        ("ABCDEFG1", classes),
        ("Abcdefgh", classes),
        ("ÄÖÜABCD1", classes),
    ] {
        create("x@example.com", password)
            .await
            .assert_detail(400, detail);
    }
    // Policy before the duplicate check, under strict mode too.
    create(ADMIN_EMAIL, "short").await.assert_detail(400, short);
    create(ADMIN_EMAIL, "Valid-Pass-1").await.assert_detail(
        400,
        &format!("User with email {ADMIN_EMAIL} already exists"),
    );
    // Unicode classes count: `Ä` is upper, `ß` lower, `²` a digit.
    for (email, password) in [
        ("a@example.com", "Äbcdefg1"),
        ("b@example.com", "ÄBCDEFß1"),
        ("c@example.com", "Abcdefg²"),
    ] {
        let r = create(email, password).await;
        assert_eq!(r.status, 201, "{password}: {}", r.text);
        s.login(email, password).await;
    }
    let user = s.get("/api/v1/auth/users", Some(&admin)).await.body[0].clone();
    let path = format!("/api/v1/auth/users/{}", id(&user));
    s.patch(&path, Some(&admin), &json!({"password": ""}))
        .await
        .assert_detail(400, short);
    s.patch(&path, Some(&admin), &json!({"password": "alllower1"}))
        .await
        .assert_detail(400, classes);
    let r = s
        .patch(&path, Some(&admin), &json!({"password": "Ünïcödé9"}))
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(1)));
    // Login never applies the policy.
    let weak = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": "c@example.com", "password": "weak"}),
        )
        .await;
    weak.assert_detail(401, "Incorrect email or password");
}

#[tokio::test]
async fn an_admin_resetting_their_own_password_keeps_remember_me() {
    let s = TestServer::multiuser().await;
    s.setup_admin().await;
    let r = s
        .post(
            "/api/v1/auth/login",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "remember_me": true}),
        )
        .await;
    let token = r.body["token"].as_str().unwrap().to_owned();
    let me = s.get("/api/v1/auth/me", Some(&token)).await.body;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{}", id(&me)),
            Some(&token),
            &json!({"password": "Another-1"}),
        )
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(1)));
    let replacement = r.header("x-refreshed-token").unwrap().to_owned();
    assert_ne!(replacement, token);
    assert_eq!(
        r.header("set-cookie"),
        Some(
            format!(
                "invokeai_media_token={replacement}; HttpOnly; Max-Age=604800; Path=/api/v1; SameSite=lax"
            )
            .as_str()
        )
    );
    let claims = s
        .state()
        .signer
        .verify(&replacement, chrono::Utc::now().timestamp())
        .unwrap();
    assert_eq!(
        (claims.remember_me, claims.token_epoch, claims.is_admin),
        (true, 1, true)
    );
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.login(ADMIN_EMAIL, "Another-1").await;
}

#[tokio::test]
async fn an_admin_resetting_and_deactivating_themself_gets_no_token() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    s.create_user(&admin, "second@example.com", "pw", true)
        .await;
    let me = s.get("/api/v1/auth/me", Some(&admin)).await.body;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{}", id(&me)),
            Some(&admin),
            &json!({"password": "Another-1", "is_active": false}),
        )
        .await;
    assert_eq!(
        (
            r.status,
            r.body["is_active"].clone(),
            r.body["token_epoch"].clone()
        ),
        (200, json!(false), json!(1))
    );
    assert!(r.header("x-refreshed-token").is_none(), "revoked caller");
    assert!(r.header("set-cookie").is_none());
    s.get("/api/v1/auth/me", Some(&admin))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
}

#[tokio::test]
async fn resetting_someone_elses_password_refreshes_only_the_caller() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, token) = s.user_with_token(&admin, "u@example.com").await;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{uid}"),
            Some(&admin),
            &json!({"password": "Reset-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let refreshed = r.header("x-refreshed-token").unwrap();
    let claims = s
        .state()
        .signer
        .verify(refreshed, chrono::Utc::now().timestamp())
        .unwrap();
    assert_eq!(
        (claims.email.as_str(), claims.token_epoch),
        (ADMIN_EMAIL, 0)
    );
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.get("/api/v1/app/app_deps", Some(&token))
        .await
        .assert_detail(401, "User not found or inactive");
    // Re-activation does not resurrect a token revoked by the epoch.
    s.patch(
        &format!("/api/v1/auth/users/{uid}"),
        Some(&admin),
        &json!({"is_active": true}),
    )
    .await;
    s.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
}

#[tokio::test]
async fn role_changes_apply_on_the_next_request() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, token) = s.user_with_token(&admin, "u@example.com").await;
    let path = format!("/api/v1/auth/users/{uid}");
    s.get("/api/v1/auth/users", Some(&token))
        .await
        .assert_detail(403, "Admin privileges required");
    // Promotion: the same token now passes both admin guards.
    let r = s
        .patch(&path, Some(&admin), &json!({"is_admin": true}))
        .await;
    assert_eq!((r.status, r.body["token_epoch"].clone()), (200, json!(0)));
    assert_eq!(s.get("/api/v1/auth/users", Some(&token)).await.status, 200);
    assert_eq!(
        s.get("/api/v1/app/runtime_config", Some(&token))
            .await
            .status,
        200
    );
    assert_eq!(
        s.get("/api/v1/auth/me", Some(&token)).await.body["is_admin"],
        true
    );
    // The promoted user demotes the original admin, who loses admin routes at once.
    let original = id(&s.get("/api/v1/auth/me", Some(&admin)).await.body).to_owned();
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{original}"),
            Some(&token),
            &json!({"is_admin": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for path in ["/api/v1/auth/users", "/api/v1/app/runtime_config"] {
        s.get(path, Some(&admin))
            .await
            .assert_detail(403, "Admin privileges required");
    }
    s.patch(
        &format!("/api/v1/auth/users/{uid}"),
        Some(&admin),
        &json!({"is_admin": false}),
    )
    .await
    .assert_detail(403, "Admin privileges required");
    // Still signed in as an ordinary user.
    assert_eq!(s.get("/api/v1/auth/me", Some(&admin)).await.status, 200);
    assert_eq!(
        s.get("/api/v1/app/app_deps", Some(&admin)).await.status,
        200
    );
}

#[tokio::test]
async fn deactivation_and_deletion_revoke_on_every_guard() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (uid, token) = s.user_with_token(&admin, "u@example.com").await;
    let path = format!("/api/v1/auth/users/{uid}");
    let refused = |token: String| {
        let s = &s;
        async move {
            let r = s.get("/api/v1/auth/me", Some(&token)).await;
            r.assert_detail(401, "User account is inactive or does not exist");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let r = s.get("/api/v1/app/app_deps", Some(&token)).await;
            r.assert_detail(401, "User not found or inactive");
            assert!(r.header("www-authenticate").is_none());
            s.post_empty("/api/v1/auth/media-cookie", Some(&token))
                .await
                .assert_detail(401, "User not found or inactive");
            s.post_empty("/api/v1/auth/logout", Some(&token))
                .await
                .assert_detail(401, "User account is inactive or does not exist");
        }
    };
    let r = s
        .patch(&path, Some(&admin), &json!({"is_active": false}))
        .await;
    assert_eq!(
        (
            r.status,
            r.body["is_active"].clone(),
            r.body["token_epoch"].clone()
        ),
        (200, json!(false), json!(0))
    );
    refused(token.clone()).await;
    // A deactivated account cannot log in (correct password: 403).
    s.post(
        "/api/v1/auth/login",
        None,
        &json!({"email": "u@example.com", "password": "User-Pass-1"}),
    )
    .await
    .assert_detail(403, "User account is disabled");
    // Re-activation: the old token works again (status changes do not bump the epoch).
    s.patch(&path, Some(&admin), &json!({"is_active": true}))
        .await;
    assert_eq!(
        s.get("/api/v1/app/app_deps", Some(&token)).await.status,
        200
    );

    let r = s.delete(&path, Some(&admin)).await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    refused(token).await;
    s.get(&path, Some(&admin))
        .await
        .assert_detail(404, "User not found");
    s.patch(&path, Some(&admin), &json!({}))
        .await
        .assert_detail(404, "User not found");
    s.delete(&path, Some(&admin))
        .await
        .assert_detail(404, "User not found");
}

#[tokio::test]
async fn inactive_admins_do_not_count_toward_the_last_admin() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let me = id(&s.get("/api/v1/auth/me", Some(&admin)).await.body).to_owned();
    let my_path = format!("/api/v1/auth/users/{me}");
    let other = s.create_user(&admin, "b@example.com", "pw", true).await;
    let other_path = format!("/api/v1/auth/users/{}", id(&other));
    let r = s
        .patch(&other_path, Some(&admin), &json!({"is_active": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The inactive admin does not count: I am still the last one.
    for body in [json!({"is_admin": false}), json!({"is_active": false})] {
        s.patch(&my_path, Some(&admin), &body)
            .await
            .assert_detail(400, "Cannot remove the last administrator");
    }
    s.delete(&my_path, Some(&admin))
        .await
        .assert_detail(400, "Cannot remove the last administrator");
    // Changes to the already-inactive admin are not counted either.
    let r = s
        .patch(&other_path, Some(&admin), &json!({"is_admin": false}))
        .await;
    assert_eq!((r.status, r.body["is_admin"].clone()), (200, json!(false)));
    let r = s
        .patch(&other_path, Some(&admin), &json!({"is_admin": true}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.delete(&other_path, Some(&admin)).await.status,
        204,
        "deleting an inactive admin"
    );
    assert_eq!(s.state().store.count_active_admins().await.unwrap(), 1);
}

#[tokio::test]
async fn an_admin_may_remove_themself_while_another_admin_exists() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let me = id(&s.get("/api/v1/auth/me", Some(&admin)).await.body).to_owned();
    let my_path = format!("/api/v1/auth/users/{me}");
    s.create_user(&admin, "b@example.com", "pw", true).await;
    let b = s.login("b@example.com", "pw").await;

    // Self-demotion, then re-promotion by the other admin.
    let r = s
        .patch(&my_path, Some(&admin), &json!({"is_admin": false}))
        .await;
    assert_eq!((r.status, r.body["is_admin"].clone()), (200, json!(false)));
    s.get("/api/v1/auth/users", Some(&admin))
        .await
        .assert_detail(403, "Admin privileges required");
    assert_eq!(
        s.patch(&my_path, Some(&b), &json!({"is_admin": true}))
            .await
            .status,
        200
    );
    // Self-deactivation: the caller's own token dies with it.
    let r = s
        .patch(&my_path, Some(&admin), &json!({"is_active": false}))
        .await;
    assert_eq!((r.status, r.body["is_active"].clone()), (200, json!(false)));
    s.get("/api/v1/auth/users", Some(&admin))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    assert_eq!(
        s.patch(&my_path, Some(&b), &json!({"is_active": true}))
            .await
            .status,
        200
    );
    // Self-deletion.
    let r = s.delete(&my_path, Some(&admin)).await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    s.get("/api/v1/auth/users", Some(&admin))
        .await
        .assert_detail(401, "User account is inactive or does not exist");
    s.get("/api/v1/app/app_deps", Some(&admin))
        .await
        .assert_detail(401, "User not found or inactive");
    // The survivor is now the last admin.
    let b_id = id(&s.get("/api/v1/auth/me", Some(&b)).await.body).to_owned();
    s.delete(&format!("/api/v1/auth/users/{b_id}"), Some(&b))
        .await
        .assert_detail(400, "Cannot remove the last administrator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_and_deactivations_never_remove_the_last_admin() {
    let s = TestServer::multiuser().await;
    let mut survivor = s.setup_admin().await;
    let send = |method: reqwest::Method, token: String, target: String, body: Option<Value>| {
        let client = s.client.clone();
        let url = s.url(&format!("/api/v1/auth/users/{target}"));
        tokio::spawn(async move {
            let mut req = client.request(method, url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send().await.unwrap().status().as_u16()
        })
    };
    for round in 0..10 {
        let email = format!("admin{round}@example.com");
        let newcomer = s.create_user(&survivor, &email, "pw", true).await;
        let newcomer_token = s.login(&email, "pw").await;
        let survivor_id = id(&s.get("/api/v1/auth/me", Some(&survivor)).await.body).to_owned();
        // Odd rounds: each deactivates the other; even rounds: each deletes the other.
        let (method, body) = if round % 2 == 1 {
            (reqwest::Method::PATCH, Some(json!({"is_active": false})))
        } else {
            (reqwest::Method::DELETE, None)
        };
        let x = send(
            method.clone(),
            survivor.clone(),
            id(&newcomer).to_owned(),
            body.clone(),
        );
        let y = send(method, newcomer_token.clone(), survivor_id, body);
        let statuses = [x.await.unwrap(), y.await.unwrap()];
        assert_eq!(
            s.state().store.count_active_admins().await.unwrap(),
            1,
            "round {round}: {statuses:?}"
        );
        let wins = statuses.iter().filter(|c| matches!(c, 200 | 204)).count();
        assert_eq!(wins, 1, "round {round}: {statuses:?}");
        // The loser got the last-admin refusal or, if the winner acted first, lost access.
        assert!(
            statuses.iter().all(|c| matches!(c, 200 | 204 | 400 | 401)),
            "round {round}: {statuses:?}"
        );
        if s.get("/api/v1/auth/me", Some(&newcomer_token)).await.status == 200 {
            survivor = newcomer_token;
        }
        assert_eq!(
            s.get("/api/v1/auth/users", Some(&survivor)).await.status,
            200
        );
    }
}
