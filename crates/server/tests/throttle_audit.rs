//! Login throttling and the audit log: Atelier extensions (README decision 4; the reference
//! has neither, auth.md §9.10). See `service/throttle.rs` and `http/audit.rs`.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const LOGIN: &str = "/api/v1/auth/login";
const AUDIT: &str = "/api/v1/auth/audit";
const THROTTLED: &str = "Too many failed login attempts. Try again later.";
const WINDOW_S: u64 = 900;

async fn login_from(s: &TestServer, email: &str, password: &str, forwarded: Option<&str>) -> Resp {
    let body = json!({"email": email, "password": password});
    let mut headers = Vec::new();
    if let Some(ip) = forwarded {
        headers.push(("x-forwarded-for", ip));
    }
    s.send(Method::POST, LOGIN, None, Some(&body), &headers)
        .await
}

async fn attempt(s: &TestServer, email: &str, password: &str) -> Resp {
    login_from(s, email, password, None).await
}

/// Asserts a throttling answer and returns its `Retry-After` in seconds.
#[track_caller]
fn assert_throttled(r: &Resp) -> u64 {
    r.assert_detail(429, THROTTLED);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=WINDOW_S).contains(&retry), "Retry-After {retry}");
    assert!(r.header("www-authenticate").is_none());
    assert!(r.header("set-cookie").is_none());
    retry
}

/// Header names and values, except those that legitimately differ between two answers.
fn stable_headers(r: &Resp) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "retry-after"))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

async fn throttled_server(account_max: u32, client_max: u32) -> (TestServer, String) {
    let s = TestServer::builder()
        .multiuser(true)
        .set("login_throttle_account_max", json!(account_max))
        .set("login_throttle_client_max", json!(client_max))
        .start()
        .await;
    let admin = s.setup_admin().await;
    (s, admin)
}

// ---- throttling -----------------------------------------------------------------------------

#[tokio::test]
async fn an_account_is_throttled_after_its_limit_even_with_the_right_password() {
    let (s, admin) = throttled_server(3, 0).await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    // Interleave a real and a made-up account so both answers are taken at the same moment.
    for _ in 0..3 {
        attempt(&s, "u@example.com", "wrong")
            .await
            .assert_detail(401, "Incorrect email or password");
        attempt(&s, "ghost@example.com", "wrong")
            .await
            .assert_detail(401, "Incorrect email or password");
    }
    let real = attempt(&s, "u@example.com", "User-Pass-1").await;
    let ghost = attempt(&s, "ghost@example.com", "User-Pass-1").await;
    let (a, b) = (assert_throttled(&real), assert_throttled(&ghost));
    // No existence leak: same status, body and headers.
    assert_eq!((real.status, &real.text), (ghost.status, &ghost.text));
    assert_eq!(stable_headers(&real), stable_headers(&ghost));
    assert!(a.abs_diff(b) <= 1, "{a} vs {b}");

    // Throttled attempts are not counted as failures and do not touch other accounts.
    attempt(&s, "u@example.com", "User-Pass-1").await;
    s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // The account key is the normalised email: a different domain case is the same account.
    assert_throttled(&attempt(&s, "u@EXAMPLE.com", "User-Pass-1").await);
    // The body is still validated first.
    let r = s
        .post(LOGIN, None, &json!({"email": "u@example.com"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
}

#[tokio::test]
async fn a_successful_login_resets_the_account_counter() {
    let (s, admin) = throttled_server(3, 0).await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    for _ in 0..2 {
        assert_eq!(attempt(&s, "u@example.com", "wrong").await.status, 401);
    }
    s.login("u@example.com", "User-Pass-1").await;
    for _ in 0..2 {
        assert_eq!(attempt(&s, "u@example.com", "wrong").await.status, 401);
    }
    // Four failures in the window, but only two since the success.
    s.login("u@example.com", "User-Pass-1").await;
    for _ in 0..3 {
        assert_eq!(attempt(&s, "u@example.com", "wrong").await.status, 401);
    }
    assert_throttled(&attempt(&s, "u@example.com", "User-Pass-1").await);
}

#[tokio::test]
async fn a_forwarded_client_is_throttled_across_accounts() {
    let (s, admin) = throttled_server(0, 3).await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    let bad = Some("203.0.113.7");
    for i in 0..3 {
        login_from(&s, &format!("x{i}@example.com"), "wrong", bad)
            .await
            .assert_detail(401, "Incorrect email or password");
    }
    // Any account, even with the right password, from that address.
    assert_throttled(&login_from(&s, "u@example.com", "User-Pass-1", bad).await);
    assert_throttled(&login_from(&s, "x9@example.com", "wrong", bad).await);
    // The proxy chain's right-most untrusted address is the client.
    assert_throttled(
        &login_from(
            &s,
            "u@example.com",
            "User-Pass-1",
            Some("198.51.100.1, 203.0.113.7"),
        )
        .await,
    );
    // Another forwarded address and the proxy (loopback) itself are still allowed.
    let other = login_from(&s, "u@example.com", "User-Pass-1", Some("203.0.113.8")).await;
    assert_eq!(other.status, 200, "{}", other.text);
    login_from(&s, "x0@example.com", "wrong", Some("203.0.113.8"))
        .await
        .assert_detail(401, "Incorrect email or password");
    s.login("u@example.com", "User-Pass-1").await;
    // A success does not clear the client counter.
    assert_throttled(&login_from(&s, "x0@example.com", "wrong", bad).await);
}

#[tokio::test]
async fn loopback_clients_are_never_throttled_per_address() {
    let (s, admin) = throttled_server(0, 1).await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    for forwarded in [None, Some("127.0.0.1"), Some("::1")] {
        for i in 0..4 {
            login_from(&s, &format!("x{i}@example.com"), "wrong", forwarded)
                .await
                .assert_detail(401, "Incorrect email or password");
        }
        let r = login_from(&s, "u@example.com", "User-Pass-1", forwarded).await;
        assert_eq!(r.status, 200, "{forwarded:?}: {}", r.text);
    }
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    // With base_url set, only forwarded_allow_ips are trusted; 127.0.0.1 is not listed here,
    // so X-Forwarded-For is ignored and every attempt is the (loopback) peer's own.
    let s = TestServer::builder()
        .multiuser(true)
        .set("base_url", json!("/invoke"))
        .set("forwarded_allow_ips", json!("10.0.0.1"))
        .set("login_throttle_account_max", json!(0))
        .set("login_throttle_client_max", json!(1))
        .start()
        .await;
    s.setup_admin().await;
    for i in 0..3 {
        let body = json!({"email": format!("x{i}@example.com"), "password": "wrong"});
        s.send(
            Method::POST,
            "/invoke/api/v1/auth/login",
            None,
            Some(&body),
            &[("x-forwarded-for", "203.0.113.7")],
        )
        .await
        .assert_detail(401, "Incorrect email or password");
    }
}

#[tokio::test]
async fn zero_turns_each_limit_off() {
    let (s, admin) = throttled_server(0, 0).await;
    s.create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    for _ in 0..12 {
        login_from(&s, "u@example.com", "wrong", Some("203.0.113.7"))
            .await
            .assert_detail(401, "Incorrect email or password");
    }
    let r = login_from(&s, "u@example.com", "User-Pass-1", Some("203.0.113.7")).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn the_default_account_limit_is_ten() {
    let s = TestServer::multiuser().await;
    s.setup_admin().await;
    for _ in 0..10 {
        assert_eq!(attempt(&s, ADMIN_EMAIL, "wrong").await.status, 401);
    }
    assert_throttled(&attempt(&s, ADMIN_EMAIL, ADMIN_PASSWORD).await);
}

// ---- audit log ------------------------------------------------------------------------------

async fn audit(s: &TestServer, token: &str, query: &str) -> Value {
    let r = s.get(&format!("{AUDIT}{query}"), Some(token)).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.body
}

fn actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap().to_owned())
        .collect()
}

fn find<'a>(page: &'a Value, action: &str) -> &'a Value {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {page}"))
}

#[tokio::test]
async fn the_audit_log_is_for_admins_only() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "u@example.com").await;
    let r = s.get(AUDIT, None).await;
    r.assert_detail(401, "Missing authentication credentials");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    s.get(AUDIT, Some("garbage"))
        .await
        .assert_detail(401, "Invalid or expired authentication token");
    s.get(AUDIT, Some(&user))
        .await
        .assert_detail(403, "Admin privileges required");
    // The strict guard holds in single-user mode as well.
    let root = s.stop().await;
    let s = TestServer::builder_at(root).start().await;
    s.get(AUDIT, None)
        .await
        .assert_detail(401, "Missing authentication credentials");
    assert_eq!(s.get(AUDIT, Some(&admin)).await.status, 200);
}

#[tokio::test]
async fn every_action_through_the_api_is_recorded_newest_first() {
    let (s, admin) = throttled_server(3, 0).await;
    let admin_id = s.get("/api/v1/auth/me", Some(&admin)).await.body["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    attempt(&s, ADMIN_EMAIL, "wrong").await;
    for _ in 0..3 {
        attempt(&s, "ghost@example.com", "wrong").await;
    }
    assert_throttled(&attempt(&s, "ghost@example.com", "wrong").await);

    let user = s
        .create_user(&admin, "u@example.com", "User-Pass-1", false)
        .await;
    let id = user["user_id"].as_str().unwrap().to_owned();
    let user_path = format!("/api/v1/auth/users/{id}");
    for body in [
        json!({"is_admin": true}),
        json!({"is_admin": false}),
        json!({"is_active": false}),
        json!({"is_active": true}),
        json!({"password": "User-Pass-2"}),
        json!({"display_name": "Renamed"}),
    ] {
        let r = s.patch(&user_path, Some(&admin), &body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
    }
    let user_token = s.login("u@example.com", "User-Pass-2").await;
    let r = s
        .patch(
            "/api/v1/auth/me",
            Some(&user_token),
            &json!({"current_password": "User-Pass-2", "new_password": "User-Pass-3"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.delete(&user_path, Some(&admin)).await;
    assert_eq!(r.status, 204, "{}", r.text);

    let page = audit(&s, &admin, "?limit=500").await;
    let mut expected = vec![
        "setup",
        "login_succeeded",
        "login_failed",
        "login_failed",
        "login_failed",
        "login_failed",
        "login_throttled",
        "user_created",
        "user_promoted",
        "user_demoted",
        "user_deactivated",
        "user_activated",
        "password_reset",
        "user_updated",
        "login_succeeded",
        "password_changed",
        "user_deleted",
    ];
    expected.reverse();
    assert_eq!(actions(&page), expected);
    assert_eq!(
        (&page["offset"], &page["limit"], &page["total"]),
        (&json!(0), &json!(500), &json!(expected.len()))
    );
    let items = page["items"].as_array().unwrap();
    let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let times: Vec<&str> = items
        .iter()
        .map(|i| i["created_at"].as_str().unwrap())
        .collect();
    assert!(
        times.iter().all(|t| t.ends_with('Z') && t.contains('T')),
        "{times:?}"
    );
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    let mut keys: Vec<&str> = items[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "action",
            "actor_email",
            "actor_user_id",
            "client",
            "created_at",
            "detail",
            "id",
            "subject_email",
            "subject_user_id"
        ]
    );

    let failed = items
        .iter()
        .find(|i| i["action"] == "login_failed" && i["subject_email"] == ADMIN_EMAIL)
        .expect("the admin's failed login");
    assert_eq!(
        (
            &failed["actor_user_id"],
            &failed["subject_user_id"],
            &failed["client"],
            &failed["detail"]
        ),
        (
            &Value::Null,
            &json!(admin_id),
            &json!("127.0.0.1"),
            &json!("wrong password")
        )
    );
    let ghost = find(&page, "login_throttled");
    assert_eq!(
        (
            &ghost["subject_email"],
            &ghost["subject_user_id"],
            &ghost["client"]
        ),
        (
            &json!("ghost@example.com"),
            &Value::Null,
            &json!("127.0.0.1")
        )
    );
    let setup = find(&page, "setup");
    assert_eq!(
        (&setup["actor_user_id"], &setup["subject_email"]),
        (&Value::Null, &json!(ADMIN_EMAIL))
    );
    let created = find(&page, "user_created");
    assert_eq!(
        (
            &created["actor_user_id"],
            &created["actor_email"],
            &created["subject_user_id"],
            &created["subject_email"]
        ),
        (
            &json!(admin_id),
            &json!(ADMIN_EMAIL),
            &json!(id),
            &json!("u@example.com")
        )
    );
    let changed = find(&page, "password_changed");
    assert_eq!(
        (&changed["actor_user_id"], &changed["subject_user_id"]),
        (&json!(id), &json!(id))
    );
    for item in items {
        assert!(
            !item.to_string().contains("User-Pass") && !item.to_string().contains("wrong\""),
            "no passwords in the log: {item}"
        );
    }
}

#[tokio::test]
async fn the_audit_log_filters_and_pages() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (user_id, _) = s.user_with_token(&admin, "u@example.com").await;
    for _ in 0..3 {
        attempt(&s, "u@example.com", "wrong").await;
    }
    attempt(&s, "ghost@example.com", "wrong").await;

    let page = audit(&s, &admin, "?action=login_failed").await;
    assert_eq!(actions(&page), vec!["login_failed"; 4]);
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"][0]["subject_email"], "ghost@example.com");
    assert_eq!(page["items"][0]["detail"], "unknown account");

    // The user's own records: created, logged in, three failures (as subject).
    let page = audit(&s, &admin, &format!("?user_id={user_id}")).await;
    assert_eq!(
        actions(&page),
        [
            "login_failed",
            "login_failed",
            "login_failed",
            "login_succeeded",
            "user_created"
        ]
    );
    let page = audit(
        &s,
        &admin,
        &format!("?user_id={user_id}&action=user_created"),
    )
    .await;
    assert_eq!(
        (actions(&page), &page["total"]),
        (vec!["user_created".to_owned()], &json!(1))
    );
    let page = audit(&s, &admin, "?user_id=nobody").await;
    assert_eq!((&page["items"], &page["total"]), (&json!([]), &json!(0)));

    let all = audit(&s, &admin, "").await;
    let total = all["total"].as_i64().unwrap();
    assert_eq!(total, 8, "{}", all);
    assert_eq!(all["limit"], 50);
    let page = audit(&s, &admin, "?limit=2&offset=1").await;
    assert_eq!(
        (&page["offset"], &page["limit"], &page["total"]),
        (&json!(1), &json!(2), &json!(total))
    );
    assert_eq!(
        page["items"].as_array().unwrap().as_slice(),
        &all["items"].as_array().unwrap()[1..3]
    );
    let page = audit(&s, &admin, "?limit=2&offset=100").await;
    assert_eq!(
        (&page["items"], &page["total"]),
        (&json!([]), &json!(total))
    );
}

#[tokio::test]
async fn bad_audit_queries_are_client_errors() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    s.get(&format!("{AUDIT}?action=nope"), Some(&admin))
        .await
        .assert_detail(400, "Unknown audit action 'nope'");
    for query in ["?limit=abc", "?offset=1.5", "?limit=99999999999999999999"] {
        let r = s.get(&format!("{AUDIT}{query}"), Some(&admin)).await;
        assert_eq!(r.status, 422, "{query}: {}", r.text);
        let issues = r.detail().as_array().expect("a list of issues");
        assert_eq!(issues.len(), 1, "{}", r.text);
        assert!(issues[0]["msg"].is_string() && issues[0]["type"].is_string());
        assert_eq!(issues[0]["loc"][0], "query", "{}", r.text);
    }
    // The guard comes before the query check.
    s.get(&format!("{AUDIT}?limit=abc"), None)
        .await
        .assert_detail(401, "Missing authentication credentials");
}
