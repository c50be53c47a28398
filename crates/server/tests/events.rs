//! socket.io (queue-and-events.md §7.1–7.4): CONNECT authentication, rooms, the events this
//! server already emits (workflows, bulk downloads), and live re-authorization.

use crate::common::socket::{Connect, SocketClient};
use crate::common::*;
use serde_json::{json, Value};

fn doc(name: &str) -> Value {
    json!({"name": name, "author": "a", "description": "", "version": "1.0.0", "contact": "", "tags": "",
           "notes": "", "exposedFields": [], "meta": {"version": "3.0.0", "category": "user"},
           "nodes": [], "edges": []})
}

#[tokio::test]
async fn connect_needs_a_valid_token_in_multi_user_mode() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, outcome) = SocketClient::connect(&s.base, None, None).await;
    assert!(matches!(outcome, Connect::Refused(_)), "{outcome:?}");
    let (_, outcome) =
        SocketClient::connect(&s.base, Some(json!({"token": "garbage"})), None).await;
    assert!(matches!(outcome, Connect::Refused(_)), "{outcome:?}");
    let (_, outcome) = SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;
    assert_eq!(outcome, Connect::Accepted);
    let (_, outcome) = SocketClient::connect(&s.base, None, Some(&admin)).await;
    assert_eq!(
        outcome,
        Connect::Accepted,
        "a Bearer header on the handshake counts too"
    );
    // The Engine.IO handshake itself works with gzip accepted.
    let r = s
        .send(
            reqwest::Method::GET,
            "/ws/socket.io/?EIO=4&transport=polling",
            None,
            None,
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.starts_with("0{"), "{}", r.text);
}

#[tokio::test]
async fn single_user_sockets_need_nothing() {
    let s = TestServer::single_user().await;
    let (mut socket, outcome) = SocketClient::connect(&s.base, None, None).await;
    assert_eq!(outcome, Connect::Accepted);
    // Single-user: workflow events go to the admin room, which every socket is in.
    s.post(
        "/api/v1/workflows/",
        None,
        &json!({"workflow": doc("solo")}),
    )
    .await;
    let (name, payload) = socket.next_event().await.unwrap();
    assert_eq!(
        (name.as_str(), payload["user_id"].clone()),
        ("workflow_created", json!("system"))
    );
}

#[tokio::test]
async fn workflow_events_reach_owner_admin_and_shared_audiences_only() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let (mut a, _) = SocketClient::connect(&s.base, Some(json!({"token": alice})), None).await;
    let (mut b, _) = SocketClient::connect(&s.base, Some(json!({"token": bob})), None).await;
    let (mut adm, _) = SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;

    let r = s
        .post(
            "/api/v1/workflows/",
            Some(&alice),
            &json!({"workflow": doc("private")}),
        )
        .await;
    let id = r.body["workflow_id"].as_str().unwrap().to_owned();
    let (name, payload) = a.next_event().await.unwrap();
    assert_eq!(name, "workflow_created");
    assert_eq!(payload["workflow_id"], json!(id));
    assert_eq!(
        (payload["user_id"].clone(), payload["is_public"].clone()),
        (json!(alice_id), json!(false))
    );
    assert!(payload["timestamp"].is_i64());
    assert_eq!(adm.next_event().await.unwrap().0, "workflow_created");

    // Sharing reaches Bob through `workflows:shared`; the private creation never did: his first
    // event is the share.
    s.patch(
        &format!("/api/v1/workflows/i/{id}/is_public"),
        Some(&alice),
        &json!({"is_public": true}),
    )
    .await;
    let (name, payload) = b.next_event().await.unwrap();
    assert_eq!(name, "workflow_updated");
    assert_eq!(
        (
            payload["old_is_public"].clone(),
            payload["new_is_public"].clone()
        ),
        (json!(false), json!(true))
    );
    // Unsharing: Bob learns only that access ended.
    s.patch(
        &format!("/api/v1/workflows/i/{id}/is_public"),
        Some(&alice),
        &json!({"is_public": false}),
    )
    .await;
    let (name, payload) = b.next_event().await.unwrap();
    assert_eq!(name, "workflow_access_revoked");
    assert_eq!(payload["workflow_id"], json!(id));
}

#[tokio::test]
async fn bulk_download_events_go_to_the_initiator() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let name = s.upload_image(Some(&alice), None).await;
    let (mut a, _) = SocketClient::connect(&s.base, Some(json!({"token": alice})), None).await;
    let r = s
        .post(
            "/api/v1/images/download",
            Some(&alice),
            &json!({"image_names": [name]}),
        )
        .await;
    let item = r.body["bulk_download_item_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let (first, payload) = a.next_event().await.unwrap();
    assert_eq!(first, "bulk_download_started");
    assert_eq!(payload["bulk_download_item_name"], json!(item));
    let (second, _) = a.next_event().await.unwrap();
    assert_eq!(second, "bulk_download_complete");
}

#[tokio::test]
async fn sockets_follow_the_users_access() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (bob_id, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let (mut b, _) = SocketClient::connect(&s.base, Some(json!({"token": bob})), None).await;
    // Deactivation closes Bob's socket at once.
    s.patch(
        &format!("/api/v1/auth/users/{bob_id}"),
        Some(&admin),
        &json!({"is_active": false}),
    )
    .await;
    assert_eq!(b.next_event().await, None, "the socket was closed");
    s.patch(
        &format!("/api/v1/auth/users/{bob_id}"),
        Some(&admin),
        &json!({"is_active": true}),
    )
    .await;

    // A password change closes sockets opened under the old epoch.
    let (mut old, _) = SocketClient::connect(&s.base, Some(json!({"token": bob})), None).await;
    s.patch(
        &format!("/api/v1/auth/users/{bob_id}"),
        Some(&admin),
        &json!({"password": "new"}),
    )
    .await;
    assert_eq!(old.next_event().await, None);

    // Promotion puts an open socket into the admin room.
    let fresh = s.login("bob@example.com", "new").await;
    let (mut promoted, _) =
        SocketClient::connect(&s.base, Some(json!({"token": fresh})), None).await;
    s.patch(
        &format!("/api/v1/auth/users/{bob_id}"),
        Some(&admin),
        &json!({"is_admin": true}),
    )
    .await;
    let (_, carol) = s.user_with_token(&admin, "carol@example.com").await;
    s.post(
        "/api/v1/workflows/",
        Some(&carol),
        &json!({"workflow": doc("carol's")}),
    )
    .await;
    let (name, payload) = promoted.next_event().await.unwrap();
    assert_eq!(
        (name.as_str(), payload["is_public"].clone()),
        ("workflow_created", json!(false))
    );
}
