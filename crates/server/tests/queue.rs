//! The session queue's HTTP API (queue-and-events.md §2–4): enqueue with expansion, capacity
//! and prepend; redaction for other users; cancel rights; scoped status, prune and clear;
//! the processor switch; `batch_enqueued` events with redacted companions.

use crate::common::socket::SocketClient;
use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};

const Q: &str = "/api/v1/queue/default";

fn graph() -> Value {
    json!({"id": "g", "nodes": {"add": {"id": "add", "type": "add", "a": 1, "b": 2}}, "edges": []})
}

async fn enqueue(s: &TestServer, token: Option<&str>, batch: Value, prepend: bool) -> Resp {
    s.post(
        &format!("{Q}/enqueue_batch"),
        token,
        &json!({"batch": batch, "prepend": prepend}),
    )
    .await
}

#[tokio::test]
async fn enqueue_expands_batches_and_respects_capacity() {
    let s = TestServer::builder()
        .paused()
        .set("max_queue_size", json!(5))
        .start()
        .await;
    let batch = json!({"graph": graph(), "runs": 2, "origin": "test", "destination": "gallery",
        "data": [[{"node_path": "add", "field_name": "a", "items": [10, 20]}]]});
    let r = enqueue(&s, None, batch, false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["requested"].clone(),
            r.body["enqueued"].clone(),
            r.body["priority"].clone()
        ),
        (json!(4), json!(4), json!(0))
    );
    let ids: Vec<i64> = r.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(r.body["batch"]["batch_id"].is_string());
    // The first item carries its substitution in the session graph and in field_values.
    let first = s.get(&format!("{Q}/i/{}", ids[3]), None).await;
    assert_eq!(first.body["status"], "pending");
    assert_eq!(
        first.body["field_values"],
        json!([{"node_path": "add", "field_name": "a", "value": 10}])
    );
    assert_eq!(first.body["session"]["graph"]["nodes"]["add"]["a"], 10);
    assert_eq!(first.body["session"]["id"], first.body["session_id"]);
    assert!(
        first.body.get("error_type").is_none(),
        "null keys are left out of GET /i/{{id}}"
    );
    // Only one more fits.
    let r = enqueue(&s, None, json!({"graph": graph(), "runs": 3}), true).await;
    assert_eq!(
        (
            r.body["requested"].clone(),
            r.body["enqueued"].clone(),
            r.body["priority"].clone()
        ),
        (json!(3), json!(1), json!(1))
    );
    let list = s.get(&format!("{Q}/list_all"), None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 5);
    assert_eq!(
        list.body[0]["priority"], 1,
        "prepended work is listed first"
    );
    let status = s.get(&format!("{Q}/status"), None).await;
    assert_eq!(
        (
            status.body["queue"]["pending"].clone(),
            status.body["queue"]["total"].clone()
        ),
        (json!(5), json!(5))
    );
    assert_eq!(
        status.body["processor"],
        json!({"is_started": false, "is_processing": false}),
        "this server was started paused"
    );
}

#[tokio::test]
async fn bad_batches_are_422() {
    let s = TestServer::builder().paused().start().await;
    let r = enqueue(&s, None, json!({"runs": 1}), false).await;
    assert_eq!(
        (r.status, r.body["detail"][0]["loc"].clone()),
        (422, json!(["body", "batch", "graph"]))
    );
    let uneven = json!({"graph": graph(), "data": [[{"node_path": "add", "field_name": "a", "items": [1]},
        {"node_path": "add", "field_name": "b", "items": [1, 2]}]]});
    assert_eq!(enqueue(&s, None, uneven, false).await.status, 422);
    let missing_node = json!({"graph": graph(), "data": [[{"node_path": "nope", "field_name": "a", "items": [1]}]]});
    let r = enqueue(&s, None, missing_node, false).await;
    assert_eq!(r.status, 422);
    assert!(r.body["detail"][0]["msg"]
        .as_str()
        .unwrap()
        .contains("nope"));
    assert_eq!(
        enqueue(&s, None, json!({"graph": graph(), "runs": 0}), false)
            .await
            .status,
        422
    );
    s.get(&format!("{Q}/i/abc"), None).await;
    let r = s.get(&format!("{Q}/i/abc"), None).await;
    assert_eq!(
        (r.status, r.body["detail"][0]["loc"].clone()),
        (422, json!(["path", "item_id"]))
    );
    s.get(&format!("{Q}/i/999"), None)
        .await
        .assert_detail(404, "Queue item with id 999 not found in queue default");
}

#[tokio::test]
async fn other_users_items_are_redacted_and_theirs_to_cancel() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let r = enqueue(
        &s,
        Some(&alice),
        json!({"graph": graph(), "origin": "secret-origin"}),
        false,
    )
    .await;
    let id = r.body["item_ids"][0].as_i64().unwrap();

    let mine = s.get(&format!("{Q}/i/{id}"), Some(&alice)).await;
    assert_eq!(
        (
            mine.body["user_id"].clone(),
            mine.body["user_email"].clone()
        ),
        (json!(alice_id), json!("alice@example.com"))
    );
    let theirs = s.get(&format!("{Q}/i/{id}"), Some(&bob)).await;
    assert_eq!(theirs.body["user_id"], "redacted");
    assert_eq!(
        (
            theirs.body["batch_id"].clone(),
            theirs.body["session_id"].clone()
        ),
        (json!("redacted"), json!("redacted"))
    );
    assert!(theirs.body.get("origin").is_none() && theirs.body.get("user_email").is_none());
    assert_eq!(theirs.body["session"]["graph"]["nodes"], json!({}));
    assert_eq!(theirs.body["status"], "pending");
    let list = s.get(&format!("{Q}/list_all"), Some(&bob)).await;
    assert_eq!(list.body[0]["user_id"], "redacted");
    assert_eq!(
        s.get(&format!("{Q}/list_all"), Some(&admin)).await.body[0]["user_id"],
        json!(alice_id)
    );
    // Status: global counts, own sub-counts.
    let st = s.get(&format!("{Q}/status"), Some(&bob)).await;
    assert_eq!(
        (
            st.body["queue"]["pending"].clone(),
            st.body["queue"]["user_pending"].clone()
        ),
        (json!(1), json!(0))
    );
    let b = s
        .get(
            &format!(
                "{Q}/b/{}/status",
                r.body["batch"]["batch_id"].as_str().unwrap()
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(b.body["total"], 0, "someone else's batch counts as empty");

    let cancel = format!("{Q}/i/{id}/cancel");
    s.send(Method::PUT, &cancel, Some(&bob), None, &[])
        .await
        .assert_detail(403, "You do not have permission to cancel this queue item");
    let r = s.send(Method::PUT, &cancel, Some(&alice), None, &[]).await;
    assert_eq!(
        (
            r.status,
            r.body["status"].clone(),
            r.body["status_sequence"].clone()
        ),
        (200, json!("canceled"), json!(1))
    );
    assert!(r.body["completed_at"].is_string());
    // Canceling again is a no-op that returns the item unchanged.
    let again = s.send(Method::PUT, &cancel, Some(&admin), None, &[]).await;
    assert_eq!(
        (
            again.body["status_sequence"].clone(),
            again.body["updated_at"].clone()
        ),
        (json!(1), r.body["updated_at"].clone())
    );
    // Prune is scoped: Bob has nothing to prune, Alice has one.
    assert_eq!(
        s.send(Method::PUT, &format!("{Q}/prune"), Some(&bob), None, &[])
            .await
            .body,
        json!({"deleted": 0})
    );
    assert_eq!(
        s.send(Method::PUT, &format!("{Q}/prune"), Some(&alice), None, &[])
            .await
            .body,
        json!({"deleted": 1})
    );
}

#[tokio::test]
async fn clear_is_scoped_and_pause_is_for_admins() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    enqueue(
        &s,
        Some(&alice),
        json!({"graph": graph(), "runs": 2}),
        false,
    )
    .await;
    enqueue(&s, Some(&bob), json!({"graph": graph()}), false).await;
    assert_eq!(
        s.send(Method::PUT, &format!("{Q}/clear"), Some(&alice), None, &[])
            .await
            .body,
        json!({"deleted": 2})
    );
    assert_eq!(
        s.get(&format!("{Q}/status"), Some(&admin)).await.body["queue"]["total"],
        1
    );
    s.send(
        Method::PUT,
        &format!("{Q}/processor/pause"),
        Some(&alice),
        None,
        &[],
    )
    .await
    .assert_detail(403, "Admin privileges required");
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/processor/pause"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body, json!({"is_started": false, "is_processing": false}));
    // Enqueueing while paused still queues.
    assert_eq!(
        enqueue(&s, Some(&bob), json!({"graph": graph()}), false)
            .await
            .body["enqueued"],
        1
    );
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/processor/resume"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body["is_started"], true);
    let c = s
        .get(&format!("{Q}/counts_by_destination"), Some(&bob))
        .await;
    assert_eq!(c.status, 422, "destination is required");
}

#[tokio::test]
async fn batch_enqueued_reaches_the_owner_in_full_and_others_redacted() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let (mut a, _) = SocketClient::connect(&s.base, Some(json!({"token": alice})), None).await;
    let (mut b, _) = SocketClient::connect(&s.base, Some(json!({"token": bob})), None).await;
    b.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    a.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    // Make sure the subscriptions landed before enqueueing: a round trip through a no-op cancel.
    s.get(&format!("{Q}/status"), Some(&bob)).await;
    let r = enqueue(
        &s,
        Some(&alice),
        json!({"graph": graph(), "origin": "o"}),
        false,
    )
    .await;
    let batch_id = r.body["batch"]["batch_id"].as_str().unwrap().to_owned();
    let (name, full) = a.next_event().await.unwrap();
    assert_eq!(name, "batch_enqueued");
    assert_eq!(
        (
            full["user_id"].clone(),
            full["batch_id"].clone(),
            full["origin"].clone()
        ),
        (json!(alice_id), json!(batch_id), json!("o"))
    );
    let (name, companion) = b.next_event().await.unwrap();
    assert_eq!(name, "batch_enqueued");
    assert_eq!(
        (
            companion["user_id"].clone(),
            companion["batch_id"].clone(),
            companion["origin"].clone()
        ),
        (json!("redacted"), json!("redacted"), Value::Null)
    );
    assert_eq!(companion["enqueued"], 1);
}

#[tokio::test]
async fn by_ids_bulk_cancels_deletes_and_retries() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let a = enqueue(
        &s,
        Some(&alice),
        json!({"graph": graph(), "runs": 3, "destination": "canvas"}),
        false,
    )
    .await;
    let a_batch = a.body["batch"]["batch_id"].as_str().unwrap().to_owned();
    let a_ids: Vec<i64> = a.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let b = enqueue(&s, Some(&bob), json!({"graph": graph(), "runs": 2}), false).await;
    let b_ids: Vec<i64> = b.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();

    // By ids: request order, unknown ids skipped, others redacted; summaries carry only the summary keys.
    let r = s
        .post(
            &format!("{Q}/items_by_ids"),
            Some(&bob),
            &json!({"item_ids": [b_ids[0], 999, a_ids[0]]}),
        )
        .await;
    let got: Vec<i64> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [b_ids[0], a_ids[0]]);
    assert_eq!(r.body[1]["user_id"], "redacted");
    let r = s
        .post(
            &format!("{Q}/item_summaries_by_ids"),
            Some(&alice),
            &json!({"item_ids": [a_ids[0]]}),
        )
        .await;
    assert_eq!(r.body[0].as_object().unwrap().len(), 14);
    assert_eq!(r.body[0]["user_id"], json!(alice_id));
    let many: Vec<i64> = (0..1001).collect();
    assert_eq!(
        s.post(
            &format!("{Q}/items_by_ids"),
            Some(&bob),
            &json!({"item_ids": many})
        )
        .await
        .status,
        422
    );

    // Bulk cancels are scoped: Bob cannot touch Alice's batch.
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/cancel_by_batch_ids"),
            Some(&bob),
            Some(&json!({"batch_ids": [a_batch]})),
            &[],
        )
        .await;
    assert_eq!(r.body, json!({"canceled": 0}));
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/cancel_by_destination?destination=canvas"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body, json!({"canceled": 3}));
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/cancel_all_except_current"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(
        r.body,
        json!({"canceled": 0}),
        "nothing of Alice's is still waiting"
    );

    // Retry: only the owner (or an admin), new rows for the same owner; answers the old ids.
    let retry = format!("{Q}/retry_items_by_id");
    s.send(
        Method::PUT,
        &retry,
        Some(&bob),
        Some(&json!([a_ids[0]])),
        &[],
    )
    .await
    .assert_detail(
        403,
        &format!(
            "You do not have permission to retry queue item {}",
            a_ids[0]
        ),
    );
    let r = s
        .send(
            Method::PUT,
            &retry,
            Some(&alice),
            Some(&json!([a_ids[0], a_ids[0], 999])),
            &[],
        )
        .await;
    assert_eq!(
        r.body,
        json!({"queue_id": "default", "retried_item_ids": [a_ids[0]]})
    );
    let r = s
        .send(
            Method::PUT,
            &retry,
            Some(&admin),
            Some(&json!({"not": "a list"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422);
    let all = s.get(&format!("{Q}/list_all"), Some(&admin)).await;
    let retried: Vec<&Value> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["retried_from_item_id"] == json!(a_ids[0]))
        .collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0]["status"].clone(), retried[0]["user_id"].clone()),
        (json!("pending"), json!(alice_id))
    );

    // Deleting: owner or admin; a pending item is canceled then removed.
    let path = format!("{Q}/i/{}", b_ids[0]);
    s.delete(&path, Some(&alice))
        .await
        .assert_detail(403, "You do not have permission to delete this queue item");
    let r = s.delete(&path, Some(&bob)).await;
    assert_eq!((r.status, r.body.clone()), (200, Value::Null));
    s.get(&path, Some(&bob)).await.assert_detail(
        404,
        &format!("Queue item with id {} not found in queue default", b_ids[0]),
    );
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/delete_all_except_current"),
            Some(&bob),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body, json!({"deleted": 1}));
    let r = s.delete(&format!("{Q}/d/canvas"), Some(&admin)).await;
    assert_eq!(
        r.body,
        json!({"deleted": 4}),
        "Alice's three canceled and one retried canvas items"
    );
}

#[tokio::test]
async fn bulk_cancel_events_are_grouped_by_owner() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (mut a, _) = SocketClient::connect(&s.base, Some(json!({"token": alice})), None).await;
    let (mut adm, _) = SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;
    let r = enqueue(
        &s,
        Some(&alice),
        json!({"graph": graph(), "runs": 2}),
        false,
    )
    .await;
    assert_eq!(a.next_event().await.unwrap().0, "batch_enqueued");
    assert_eq!(adm.next_event().await.unwrap().0, "batch_enqueued");
    s.send(
        Method::PUT,
        &format!("{Q}/cancel_all_except_current"),
        Some(&admin),
        None,
        &[],
    )
    .await;
    let (name, payload) = a.next_event().await.unwrap();
    assert_eq!(name, "queue_items_canceled");
    let mut ids: Vec<i64> = r.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(payload["canceled_item_ids"], json!(ids));
    assert_eq!(payload["user_ids"], json!([alice_id]));
    assert_eq!(payload["canceled_item_ids_by_user"][&alice_id], json!(ids));
    let (name, _) = adm.next_event().await.unwrap();
    assert_eq!(name, "queue_items_canceled");
}

#[tokio::test]
async fn history_is_pruned_and_the_queue_cleared_at_start_up_when_configured() {
    let s = TestServer::builder().paused().start().await;
    let r = enqueue(&s, None, json!({"graph": graph(), "runs": 4}), false).await;
    let ids: Vec<i64> = r.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for id in &ids[..3] {
        s.send(Method::PUT, &format!("{Q}/i/{id}/cancel"), None, None, &[])
            .await;
    }
    let root = s.stop().await;
    let s = TestServer::builder_at(root)
        .set("max_queue_history", json!(1))
        .paused()
        .start()
        .await;
    let st = s.get(&format!("{Q}/status"), None).await;
    assert_eq!(
        (
            st.body["queue"]["canceled"].clone(),
            st.body["queue"]["pending"].clone()
        ),
        (json!(1), json!(1))
    );
    let root = s.stop().await;
    let s = TestServer::builder_at(root)
        .set("clear_queue_on_startup", json!(true))
        .start()
        .await;
    assert_eq!(
        s.get(&format!("{Q}/status"), None).await.body["queue"]["total"],
        0
    );
}
