//! Client state (workflows-and-state.md §2): strictly per user, no admin override.

use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/api/v1/client_state/default";

async fn set(s: &TestServer, token: Option<&str>, key: &str, value: &str) -> Resp {
    s.send_raw(
        Method::POST,
        &format!("{BASE}/set_by_key?key={key}"),
        token,
        Some("text/plain"),
        value.as_bytes().to_vec(),
    )
    .await
}

async fn get(s: &TestServer, token: Option<&str>, key: &str) -> Value {
    let r = s.get(&format!("{BASE}/get_by_key?key={key}"), token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[tokio::test]
async fn values_round_trip_as_text_or_json_strings() {
    let s = TestServer::single_user().await;
    let r = set(&s, None, "ui", r#"{"theme":"dark"}"#).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!(r#"{"theme":"dark"}"#))
    );
    assert_eq!(get(&s, None, "ui").await, json!(r#"{"theme":"dark"}"#));
    let r = s
        .post(
            &format!("{BASE}/set_by_key?key=json"),
            None,
            &json!("a json string"),
        )
        .await;
    assert_eq!((r.status, r.body.clone()), (200, json!("a json string")));
    let r = s
        .post(
            &format!("{BASE}/set_by_key?key=json"),
            None,
            &json!({"not": "a string"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["detail"][0]["type"].clone()),
        (422, json!("string_type"))
    );
    let r = s
        .send_raw(
            Method::POST,
            &format!("{BASE}/set_by_key?key=k"),
            None,
            Some("text/plain"),
            Vec::new(),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    let r = set(&s, None, "", "x").await;
    assert_eq!(r.status, 200, "an empty key is still a key");
    let r = s
        .send_raw(
            Method::POST,
            &format!("{BASE}/set_by_key"),
            None,
            Some("text/plain"),
            b"v".to_vec(),
        )
        .await;
    assert_eq!(r.body["detail"][0]["loc"], json!(["query", "key"]));
    assert_eq!(get(&s, None, "absent").await, Value::Null);
    assert_eq!(s.get(&format!("{BASE}/get_by_key"), None).await.status, 422);
}

#[tokio::test]
async fn prefixes_ordering_and_deletion() {
    let s = TestServer::single_user().await;
    for key in ["canvas.a", "canvas_b", "gen.x"] {
        set(&s, None, key, "v").await;
    }
    set(&s, None, "canvas.a", "newer").await;
    let r = s
        .get(&format!("{BASE}/get_keys_by_prefix?prefix=canvas"), None)
        .await;
    assert_eq!(
        r.body,
        json!(["canvas.a", "canvas_b"]),
        "most recently updated first"
    );
    let r = s
        .get(&format!("{BASE}/get_keys_by_prefix?prefix=canvas_"), None)
        .await;
    assert_eq!(r.body, json!(["canvas_b"]), "`_` matches literally");
    let r = s
        .post_empty(&format!("{BASE}/delete_by_key?key=canvas_b"), None)
        .await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    assert_eq!(
        s.post_empty(&format!("{BASE}/delete_by_key?key=never"), None)
            .await
            .status,
        200
    );
    let r = s.post_empty(&format!("{BASE}/delete"), None).await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    assert_eq!(
        s.get(&format!("{BASE}/get_keys_by_prefix?prefix="), None)
            .await
            .body,
        json!([])
    );
}

#[tokio::test]
async fn state_is_strictly_per_user() {
    // Saved in single-user mode: belongs to `system`, invisible to everyone afterwards.
    let s = TestServer::single_user().await;
    set(&s, None, "shared-key", "system value").await;
    let root = s.stop().await;
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    assert_eq!(get(&s, Some(&admin), "shared-key").await, Value::Null);

    set(&s, Some(&alice), "shared-key", "alice value").await;
    set(&s, Some(&bob), "shared-key", "bob value").await;
    assert_eq!(
        get(&s, Some(&alice), "shared-key").await,
        json!("alice value")
    );
    assert_eq!(get(&s, Some(&bob), "shared-key").await, json!("bob value"));
    assert_eq!(
        get(&s, Some(&admin), "shared-key").await,
        Value::Null,
        "no admin override"
    );
    // Deleting all of mine leaves everyone else's.
    s.post_empty(&format!("{BASE}/delete"), Some(&bob)).await;
    assert_eq!(
        get(&s, Some(&alice), "shared-key").await,
        json!("alice value")
    );
    // The queue id in the path addresses nothing.
    let r = s
        .get(
            &format!("/api/v1/client_state/{alice_id}/get_by_key?key=shared-key"),
            Some(&bob),
        )
        .await;
    assert_eq!(r.body, Value::Null);
    // Anonymous callers are refused; deleting a user removes their state.
    s.get(&format!("{BASE}/get_by_key?key=shared-key"), None)
        .await
        .assert_detail(401, "Authentication required");
    s.delete(&format!("/api/v1/auth/users/{alice_id}"), Some(&admin))
        .await;
    let keys = s
        .state()
        .store
        .client_state_keys(&atelier_domain::UserId::new(alice_id), "")
        .await
        .unwrap();
    assert!(keys.is_empty());
}

#[tokio::test]
async fn no_caller_can_list_or_overwrite_another_users_keys_across_mode_switches() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    set(&s, Some(&alice), "canvas.tool", "brush").await;
    // The admin writes the same key: that is the admin's own key, not Alice's.
    set(&s, Some(&admin), "canvas.tool", "eraser").await;
    for (token, expected) in [(&alice, "brush"), (&admin, "eraser")] {
        assert_eq!(get(&s, Some(token), "canvas.tool").await, json!(expected));
        let keys = s
            .get(
                &format!("{BASE}/get_keys_by_prefix?prefix=canvas"),
                Some(token),
            )
            .await;
        assert_eq!(keys.body, json!(["canvas.tool"]));
    }
    s.post_empty(
        &format!("{BASE}/delete_by_key?key=canvas.tool"),
        Some(&admin),
    )
    .await;
    assert_eq!(get(&s, Some(&alice), "canvas.tool").await, json!("brush"));
    let root = s.stop().await;

    // Single-user mode acts as `system`, which sees none of the users' state.
    let s = TestServer::builder_at(root).start().await;
    assert_eq!(get(&s, None, "canvas.tool").await, Value::Null);
    set(&s, None, "canvas.tool", "system value").await;
    s.post_empty(&format!("{BASE}/delete"), None).await;
    let root = s.stop().await;

    // Back in multi-user mode, Alice's state is intact.
    let s = TestServer::builder_at(root).multiuser(true).start().await;
    let alice = s.login("alice@example.com", "User-Pass-1").await;
    assert_eq!(get(&s, Some(&alice), "canvas.tool").await, json!("brush"));
    let r = s
        .get(
            &format!("{BASE}/get_keys_by_prefix?prefix=canvas"),
            Some("not-a-token"),
        )
        .await;
    r.assert_detail(401, "Invalid or expired token");
    let r = s
        .get(&format!("{BASE}/get_keys_by_prefix"), Some(&alice))
        .await;
    assert_eq!(
        r.body,
        json!({"detail": [{"type": "missing", "loc": ["query", "prefix"], "msg": "Field required", "input": null}]})
    );
}
