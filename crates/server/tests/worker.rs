//! The queue worker end to end (queue-and-events.md §6, generation.md §3–6): graphs run to
//! completion, results land in the session, images on boards with metadata, failures are
//! recorded, scheduling order, prepend, cancel, revoked owners, and the events each audience
//! receives.

use crate::common::socket::SocketClient;
use crate::common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const Q: &str = "/api/v1/queue/default";

fn edge(s: &str, sf: &str, d: &str, df: &str) -> Value {
    json!({"source": {"node_id": s, "field": sf}, "destination": {"node_id": d, "field": df}})
}

/// 6 * 7 - 2.
fn math_graph() -> Value {
    json!({"id": "math", "nodes": {
        "a": {"id": "a", "type": "integer", "value": 6},
        "b": {"id": "b", "type": "integer", "value": 7},
        "m": {"id": "m", "type": "mul"},
        "s": {"id": "s", "type": "sub", "b": 2},
    }, "edges": [edge("a", "value", "m", "a"), edge("b", "value", "m", "b"), edge("m", "value", "s", "a")]})
}

/// A graph that runs for a while: a chain of `n` resizes, each saving an intermediate image.
pub fn long_graph(n: usize) -> Value {
    let mut nodes = serde_json::Map::new();
    let mut edges = Vec::new();
    nodes.insert(
        "blank".into(),
        json!({"id": "blank", "type": "blank_image", "width": 192, "height": 192, "is_intermediate": true}),
    );
    let mut prev = "blank".to_owned();
    for i in 0..n {
        let id = format!("r{i}");
        let size = if i % 2 == 0 { 191 } else { 192 };
        nodes.insert(
            id.clone(),
            json!({"id": id, "type": "img_resize", "width": size, "height": size,
                "resample_mode": "lanczos", "is_intermediate": true}),
        );
        edges.push(edge(&prev, "image", &id, "image"));
        prev = id;
    }
    json!({"nodes": nodes, "edges": edges})
}

async fn enqueue(s: &TestServer, token: Option<&str>, batch: Value, prepend: bool) -> Resp {
    s.post(
        &format!("{Q}/enqueue_batch"),
        token,
        &json!({"batch": batch, "prepend": prepend}),
    )
    .await
}

/// Enqueues one graph; returns the first item id.
async fn run_graph(s: &TestServer, token: Option<&str>, graph: Value) -> i64 {
    let r = enqueue(s, token, json!({"graph": graph}), false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["item_ids"][0].as_i64().unwrap()
}

/// Polls an item until its status is one of `wanted`.
async fn wait_status(s: &TestServer, token: Option<&str>, id: i64, wanted: &[&str]) -> Value {
    for _ in 0..600 {
        let r = s.get(&format!("{Q}/i/{id}"), token).await;
        if wanted.iter().any(|w| r.body["status"] == *w) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("item {id} never reached {wanted:?}");
}

const DONE: &[&str] = &["completed", "failed", "canceled"];

/// The outputs of a source node's execution copies.
fn results_of(item: &Value, source: &str) -> Vec<Value> {
    let session = &item["session"];
    session["source_prepared_mapping"][source]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|id| session["results"][id.as_str().unwrap()].clone())
        .collect()
}

/// Events until (and including) the item's terminal `queue_item_status_changed`.
async fn events_until_done(socket: &mut SocketClient, item_id: i64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    loop {
        let (name, payload) = socket.next_event().await.expect("socket open");
        let done = name == "queue_item_status_changed"
            && payload["item_id"] == item_id
            && ["completed", "failed", "canceled"].contains(&payload["status"].as_str().unwrap());
        out.push((name, payload));
        if done {
            return out;
        }
    }
}

fn names(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(n, p)| match p["status"].as_str() {
            Some(st) if n == "queue_item_status_changed" => format!("status:{st}"),
            _ => n.clone(),
        })
        .collect()
}

#[tokio::test]
async fn a_math_graph_runs_and_each_audience_hears_its_share() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let (mut a, _) = SocketClient::connect(&s.base, Some(json!({"token": alice})), None).await;
    let (mut ad, _) = SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;
    let (mut b, _) = SocketClient::connect(&s.base, Some(json!({"token": bob})), None).await;
    for sock in [&a, &ad, &b] {
        sock.emit("subscribe_queue", json!({"queue_id": "default"}))
            .await;
    }
    s.get(&format!("{Q}/status"), Some(&bob)).await;
    let id = run_graph(&s, Some(&alice), math_graph()).await;
    let item = wait_status(&s, Some(&alice), id, DONE).await;
    assert_eq!(item["status"], "completed", "{item}");
    assert_eq!(
        results_of(&item, "s"),
        vec![json!({"value": 40, "type": "integer_output"})]
    );
    assert_eq!(
        item["session"]["executed_history"],
        json!(["a", "b", "m", "s"])
    );
    assert!(item["started_at"].is_string() && item["completed_at"].is_string());

    // The owner: the full story, in order.
    let owner = events_until_done(&mut a, id).await;
    let expected: Vec<String> = [
        "batch_enqueued",
        "status:in_progress",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "status:completed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names(&owner), expected);
    let last_complete = &owner[9].1;
    assert_eq!(last_complete["invocation_source_id"], "s");
    assert_eq!(last_complete["result"]["value"], 40);
    assert_eq!(last_complete["user_id"], json!(alice_id));
    assert_eq!(last_complete["invocation"]["type"], "sub");
    assert_ne!(
        last_complete["invocation"]["id"], "s",
        "events name the execution copy"
    );
    // An admin hears the same events in full.
    let admin_events = events_until_done(&mut ad, id).await;
    assert_eq!(names(&admin_events), expected);
    // Another user hears only redacted status changes: no invocation events at all.
    let other = events_until_done(&mut b, id).await;
    assert_eq!(
        names(&other),
        vec!["batch_enqueued", "status:in_progress", "status:completed"]
    );
    for (_, p) in &other {
        assert_eq!(p["user_id"], "redacted");
    }
    // Bob's view of the item is redacted too.
    let seen = s.get(&format!("{Q}/i/{id}"), Some(&bob)).await;
    assert_eq!(seen.body["session"]["results"], json!({}));
}

#[tokio::test]
async fn an_image_graph_saves_to_the_chosen_board_with_metadata() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let board = s.create_board(Some(&alice), "Renders").await;
    let board_id = board["board_id"].as_str().unwrap();
    let graph = json!({"nodes": {
        "blank": {"id": "blank", "type": "blank_image", "width": 64, "height": 48,
            "color": {"r": 200, "g": 10, "b": 10, "a": 255}, "is_intermediate": true},
        "meta": {"id": "meta", "type": "core_metadata", "seed": 1234, "positive_prompt": "red", "generation_mode": "txt2img", "extra_key": [1, 2]},
        "out": {"id": "out", "type": "img_resize", "width": 32, "height": 24, "board": {"board_id": board_id}, "is_intermediate": false},
    }, "edges": [edge("blank", "image", "out", "image"), edge("meta", "metadata", "out", "metadata")]});
    let id = run_graph(&s, Some(&alice), graph).await;
    let item = wait_status(&s, Some(&alice), id, DONE).await;
    assert_eq!(item["status"], "completed", "{item}");
    let out = &results_of(&item, "out")[0];
    assert_eq!(
        (
            out["type"].clone(),
            out["width"].clone(),
            out["height"].clone()
        ),
        (json!("image_output"), json!(32), json!(24))
    );
    let name = out["image"]["image_name"].as_str().unwrap();
    let record = s
        .get(&format!("/api/v1/images/i/{name}"), Some(&alice))
        .await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["board_id"], board_id);
    assert_eq!(record.body["is_intermediate"], false);
    assert_eq!(record.body["image_origin"], "internal");
    assert_eq!(record.body["session_id"], item["session_id"]);
    assert_eq!(record.body["width"], 32);
    let meta = s
        .get(&format!("/api/v1/images/i/{name}/metadata"), Some(&alice))
        .await;
    assert_eq!(meta.body["seed"], 1234);
    assert_eq!(meta.body["extra_key"], json!([1, 2]));
    assert!(meta.body["app_version"].is_string());
    let embedded = s
        .get(&format!("/api/v1/images/i/{name}/workflow"), Some(&alice))
        .await;
    let graph_text = embedded.body["graph"].as_str().expect("graph embedded");
    assert!(graph_text.contains("\"img_resize\""));
    // The intermediate blank image exists but is not in the gallery.
    let blank = results_of(&item, "blank")[0]["image"]["image_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let rec = s
        .get(&format!("/api/v1/images/i/{blank}"), Some(&alice))
        .await;
    assert_eq!(rec.body["is_intermediate"], true);
    let listed = s
        .get(
            "/api/v1/images/?is_intermediate=false&limit=100",
            Some(&alice),
        )
        .await;
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&name) && !names.contains(&blank.as_str()));
    // Bob cannot read Alice's private output, and cannot save to her board.
    assert_eq!(
        s.get(&format!("/api/v1/images/i/{name}"), Some(&bob))
            .await
            .status,
        403
    );
    let sneaky = json!({"nodes": {"x": {"id": "x", "type": "blank_image", "width": 8, "height": 8,
        "board": {"board_id": board_id}}}, "edges": []});
    let id = run_graph(&s, Some(&bob), sneaky).await;
    let item = wait_status(&s, Some(&bob), id, DONE).await;
    assert_eq!(item["status"], "failed");
    assert_eq!(item["error_type"], "PermissionError");
    // Nor use her image as an input.
    let reuse = json!({"nodes": {"x": {"id": "x", "type": "img_resize", "image": {"image_name": name}}}, "edges": []});
    let id = run_graph(&s, Some(&bob), reuse).await;
    let item = wait_status(&s, Some(&bob), id, DONE).await;
    assert_eq!(item["status"], "failed");
    assert_eq!(item["error_type"], "PermissionError");
}

#[tokio::test]
async fn failures_are_recorded_on_the_item_and_announced_after_the_status() {
    let s = TestServer::single_user().await;
    let (mut sock, _) = SocketClient::connect(&s.base, None, None).await;
    sock.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    s.get(&format!("{Q}/status"), None).await;
    let graph = json!({"nodes": {"d": {"id": "d", "type": "div", "a": 1, "b": 0}}, "edges": []});
    let id = run_graph(&s, None, graph).await;
    let item = wait_status(&s, None, id, DONE).await;
    assert_eq!(item["status"], "failed");
    assert_eq!(item["error_type"], "ZeroDivisionError");
    assert_eq!(item["error_message"], "division by zero");
    assert!(item["error_traceback"]
        .as_str()
        .unwrap()
        .contains("ZeroDivisionError"));
    let errors = item["session"]["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors.values().next().unwrap(),
        "ZeroDivisionError: division by zero"
    );
    let mut events = events_until_done(&mut sock, id).await;
    // `invocation_error` follows the failed status.
    let (name, payload) = sock.next_event().await.unwrap();
    events.push((name, payload.clone()));
    assert_eq!(
        names(&events),
        vec![
            "batch_enqueued",
            "status:in_progress",
            "invocation_started",
            "status:failed",
            "invocation_error"
        ]
    );
    assert_eq!(payload["error_type"], "ZeroDivisionError");

    // A required input with no value fails at run time, not at enqueue.
    let graph = json!({"nodes": {"r": {"id": "r", "type": "img_resize"}}, "edges": []});
    let id = run_graph(&s, None, graph).await;
    let item = wait_status(&s, None, id, DONE).await;
    assert_eq!(
        (
            item["status"].clone(),
            item["error_type"].clone(),
            item["error_message"].clone()
        ),
        (
            json!("failed"),
            json!("MissingInputException"),
            json!("Node img_resize missing value or connection for field image")
        )
    );
    // An unknown image is the node's error; the queue goes on.
    let graph = json!({"nodes": {"r": {"id": "r", "type": "img_resize", "image": {"image_name": "nope.png"}}}, "edges": []});
    let id = run_graph(&s, None, graph).await;
    let item = wait_status(&s, None, id, DONE).await;
    assert_eq!(item["error_type"], "ImageFileNotFoundException");
    let id = run_graph(&s, None, math_graph()).await;
    assert_eq!(wait_status(&s, None, id, DONE).await["status"], "completed");
}

#[tokio::test]
async fn invalid_graphs_are_refused_at_enqueue() {
    let s = TestServer::builder().paused().start().await;
    let check = |graph: Value, data: Value| {
        let s = &s;
        async move {
            let r = enqueue(s, None, json!({"graph": graph, "data": data}), false).await;
            assert_eq!(r.status, 422, "{}", r.text);
            r.body["detail"][0].clone()
        }
    };
    let unknown = check(
        json!({"nodes": {"x": {"id": "x", "type": "no_such_node"}}}),
        Value::Null,
    )
    .await;
    assert_eq!(unknown["type"], "union_tag_invalid");
    assert_eq!(
        unknown["loc"],
        json!(["body", "batch", "graph", "nodes", "x"])
    );
    assert!(unknown["msg"].as_str().unwrap().starts_with(
        "Input tag 'no_such_node' found using 'type' does not match any of the expected tags:"
    ));
    let bad_value = check(
        json!({"nodes": {"x": {"id": "x", "type": "integer", "value": "seven"}}}),
        Value::Null,
    )
    .await;
    assert_eq!(
        bad_value["loc"],
        json!(["body", "batch", "graph", "nodes", "x", "integer", "value"])
    );
    assert_eq!(bad_value["type"], "int_parsing");
    let out_of_range = check(
        json!({"nodes": {"x": {"id": "x", "type": "img_resize", "width": 0}}}),
        Value::Null,
    )
    .await;
    assert_eq!(out_of_range["msg"], "Input should be greater than 0");
    let mismatch = check(
        json!({"nodes": {"t": {"id": "t", "type": "string"}, "m": {"id": "m", "type": "add"}},
            "edges": [edge("t", "value", "m", "a")]}),
        Value::Null,
    )
    .await;
    assert_eq!(mismatch["loc"], json!(["body", "batch", "graph"]));
    assert_eq!(
        mismatch["msg"],
        "Value error, Edge source and target types do not match (source=EdgeConnection(node_id='t', field='value') destination=EdgeConnection(node_id='m', field='a'))"
    );
    let cycle = check(
        json!({"nodes": {"a": {"id": "a", "type": "add"}, "b": {"id": "b", "type": "add"}},
            "edges": [edge("a", "value", "b", "a"), edge("b", "value", "a", "a")]}),
        Value::Null,
    )
    .await;
    assert_eq!(cycle["msg"], "Value error, Graph contains cycles");
    let twice = check(
        json!({"nodes": {"a": {"id": "a", "type": "integer"}, "b": {"id": "b", "type": "integer"}, "c": {"id": "c", "type": "add"}},
            "edges": [edge("a", "value", "c", "a"), edge("b", "value", "c", "a")]}),
        Value::Null,
    )
    .await;
    assert!(twice["msg"]
        .as_str()
        .unwrap()
        .contains("more than one incoming edge"));
    let no_field = check(
        json!({"nodes": {"a": {"id": "a", "type": "integer"}, "c": {"id": "c", "type": "add"}},
            "edges": [edge("a", "nope", "c", "a")]}),
        Value::Null,
    )
    .await;
    assert_eq!(
        no_field["msg"],
        "Value error, Edge source field nope does not exist in node a"
    );
    let bad_item = check(
        math_graph(),
        json!([[{"node_path": "a", "field_name": "value", "items": ["one", "two"]}]]),
    )
    .await;
    assert_eq!(bad_item["loc"], json!(["body", "batch", "data"]));
    assert!(bad_item["msg"].as_str().unwrap().contains("a.value"));
    let bad_field = check(
        math_graph(),
        json!([[{"node_path": "a", "field_name": "nope", "items": [1]}]]),
    )
    .await;
    assert_eq!(
        bad_field["msg"],
        "Value error, Field nope not found in node a"
    );
    // Nothing was enqueued.
    let st = s.get(&format!("{Q}/status"), None).await;
    assert_eq!(st.body["queue"]["total"], 0);
    // A valid graph is stored normalized: defaults filled in.
    let r = enqueue(&s, None, json!({"graph": math_graph()}), false).await;
    let item = s
        .get(&format!("{Q}/i/{}", r.body["item_ids"][0]), None)
        .await;
    let m = &item.body["session"]["graph"]["nodes"]["m"];
    assert_eq!(
        (
            m["a"].clone(),
            m["use_cache"].clone(),
            m["is_intermediate"].clone()
        ),
        (json!(0), json!(true), json!(false))
    );
}

/// The owners' emails in the order their items started.
async fn start_order(s: &TestServer, admin: &str) -> Vec<String> {
    let list = s.get(&format!("{Q}/list_all"), Some(admin)).await;
    let mut rows: Vec<(String, String)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["started_at"].as_str().unwrap_or("~").to_owned(),
                i["user_email"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, e)| e).collect()
}

async fn order_for(mode: &str) -> Vec<String> {
    let s = TestServer::builder()
        .multiuser(true)
        .set("session_queue_mode", json!(mode))
        .paused()
        .start()
        .await;
    let admin = s.setup_admin().await;
    let (_, a) = s.user_with_token(&admin, "a@example.com").await;
    let (_, b) = s.user_with_token(&admin, "b@example.com").await;
    let r = enqueue(
        &s,
        Some(&a),
        json!({"graph": math_graph(), "runs": 3}),
        false,
    )
    .await;
    assert_eq!(r.body["enqueued"], 3);
    let last = run_graph(&s, Some(&b), math_graph()).await;
    s.put_empty(&format!("{Q}/processor/resume"), Some(&admin))
        .await;
    let mut ids: Vec<i64> = r.body["item_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.push(last);
    for id in ids {
        assert_eq!(
            wait_status(&s, Some(&admin), id, DONE).await["status"],
            "completed"
        );
    }
    start_order(&s, &admin)
        .await
        .into_iter()
        .map(|e| e[..1].to_owned())
        .collect()
}

#[tokio::test]
async fn round_robin_alternates_users_and_fifo_does_not() {
    assert_eq!(order_for("round_robin").await, ["a", "b", "a", "a"]);
    assert_eq!(order_for("FIFO").await, ["a", "a", "a", "b"]);
}

#[tokio::test]
async fn prepended_work_runs_first_and_pause_holds_work() {
    let s = TestServer::builder().paused().start().await;
    let first = run_graph(&s, None, math_graph()).await;
    let second = run_graph(&s, None, math_graph()).await;
    let r = enqueue(&s, None, json!({"graph": math_graph()}), true).await;
    let urgent = r.body["item_ids"][0].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = s.get(&format!("{Q}/status"), None).await;
    assert_eq!(st.body["queue"]["pending"], 3, "paused: nothing runs");
    s.put_empty(&format!("{Q}/processor/resume"), None).await;
    let mut started = Vec::new();
    for id in [first, second, urgent] {
        let item = wait_status(&s, None, id, DONE).await;
        started.push((item["started_at"].as_str().unwrap().to_owned(), id));
    }
    started.sort();
    assert_eq!(
        started.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        vec![urgent, first, second]
    );
}

#[tokio::test]
async fn canceling_a_running_item_stops_it_between_nodes() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    let id = run_graph(&s, Some(&alice), long_graph(400)).await;
    wait_status(&s, Some(&alice), id, &["in_progress"]).await;
    // Others may not cancel it.
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/i/{id}/cancel"),
            Some(&bob),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .send(
            Method::PUT,
            &format!("{Q}/i/{id}/cancel"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let item = wait_status(&s, Some(&alice), id, DONE).await;
    assert_eq!(item["status"], "canceled");
    // The worker stops: the session stops growing and the next item runs.
    let next = run_graph(&s, Some(&alice), math_graph()).await;
    assert_eq!(
        wait_status(&s, Some(&alice), next, DONE).await["status"],
        "completed"
    );
    let item = s.get(&format!("{Q}/i/{id}"), Some(&alice)).await;
    let ran = item.body["session"]["executed_history"]
        .as_array()
        .unwrap()
        .len();
    assert!(ran < 401, "stopped early, ran {ran} nodes");
    // The admin may cancel anyone's.
    let id = run_graph(&s, Some(&alice), long_graph(400)).await;
    wait_status(&s, Some(&admin), id, &["in_progress"]).await;
    s.send(
        Method::PUT,
        &format!("{Q}/i/{id}/cancel"),
        Some(&admin),
        None,
        &[],
    )
    .await;
    assert_eq!(
        wait_status(&s, Some(&alice), id, DONE).await["status"],
        "canceled"
    );
}

#[tokio::test]
async fn a_deactivated_owners_work_is_canceled() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    // Pending work of a deactivated owner is canceled when it reaches the front.
    let pending = run_graph(&s, Some(&alice), math_graph()).await;
    let r = s
        .patch(
            &format!("/api/v1/auth/users/{alice_id}"),
            Some(&admin),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.put_empty(&format!("{Q}/processor/resume"), Some(&admin))
        .await;
    let item = wait_status(&s, Some(&admin), pending, DONE).await;
    assert_eq!(item["status"], "canceled");
    assert!(item["started_at"].is_string(), "claimed, then canceled");
    // A running item is stopped when its owner is deactivated.
    s.patch(
        &format!("/api/v1/auth/users/{alice_id}"),
        Some(&admin),
        &json!({"is_active": true}),
    )
    .await;
    let alice = s.login("alice@example.com", "User-Pass-1").await;
    let running = run_graph(&s, Some(&alice), long_graph(400)).await;
    wait_status(&s, Some(&admin), running, &["in_progress"]).await;
    s.patch(
        &format!("/api/v1/auth/users/{alice_id}"),
        Some(&admin),
        &json!({"is_active": false}),
    )
    .await;
    let item = wait_status(&s, Some(&admin), running, DONE).await;
    assert_eq!(item["status"], "canceled");
    // Deleting works the same way, and the queue carries on for others.
    let after = run_graph(&s, Some(&admin), math_graph()).await;
    assert_eq!(
        wait_status(&s, Some(&admin), after, DONE).await["status"],
        "completed"
    );
}

/// A real `atelier serve` process over `root`, killed (SIGKILL) when dropped.
struct Process {
    child: std::process::Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(root: &std::path::Path) -> Process {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(["serve", "--root", root.to_str().unwrap(), "--port", "0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server listening");
    Process {
        child,
        base: format!("http://{addr}"),
    }
}

#[tokio::test]
async fn an_item_interrupted_by_a_crash_is_failed_at_restart_and_the_queue_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let item_of = |base: &str, id: i64| format!("{base}{Q}/i/{id}");
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let server = spawn_server(root.path());
    let r: Value = http
        .post(format!("{}{Q}/enqueue_batch", server.base))
        .json(&json!({"batch": {"graph": long_graph(3000)}, "prepend": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let running = r["item_ids"][0].as_i64().unwrap();
    // A second item waits behind it.
    let r: Value = http
        .post(format!("{}{Q}/enqueue_batch", server.base))
        .json(&json!({"batch": {"graph": math_graph()}, "prepend": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let waiting = r["item_ids"][0].as_i64().unwrap();
    let mut seen = false;
    for _ in 0..600 {
        if get(item_of(&server.base, running)).await["status"] == "in_progress" {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the long item started");
    drop(server); // SIGKILL mid-item.

    let server = spawn_server(root.path());
    let item = get(item_of(&server.base, running)).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert_eq!(item["error_type"], "ServerInterruptedError");
    assert!(item["error_message"]
        .as_str()
        .unwrap()
        .contains("server stopped"));
    // The queue continues with the item that was waiting.
    let mut status = Value::Null;
    for _ in 0..600 {
        status = get(item_of(&server.base, waiting)).await["status"].clone();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "completed");
}

#[tokio::test]
async fn finished_history_is_pruned_to_max_queue_history() {
    let s = TestServer::builder()
        .set("max_queue_history", json!(2))
        .start()
        .await;
    let mut last = 0;
    for _ in 0..4 {
        last = run_graph(&s, None, math_graph()).await;
        wait_status(&s, None, last, DONE).await;
    }
    // Pruning follows each item; give the last one a moment.
    let mut total = Value::Null;
    for _ in 0..100 {
        total = s.get(&format!("{Q}/status"), None).await.body["queue"]["total"].clone();
        if total == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(total, 2);
    assert_eq!(
        s.get(&format!("{Q}/i/{last}"), None).await.status,
        200,
        "the newest finished item is kept"
    );
}

#[tokio::test]
async fn the_noise_node_draws_pytorchs_numbers() {
    let s = TestServer::single_user().await;
    let graph = json!({"nodes": {
        "seed": {"id": "seed", "type": "integer", "value": 31337},
        "n": {"id": "n", "type": "noise", "width": 64, "height": 64},
        "l": {"id": "l", "type": "latents"},
    }, "edges": [edge("seed", "value", "n", "seed"), edge("n", "noise", "l", "latents")]});
    let id = run_graph(&s, None, graph).await;
    let item = wait_status(&s, None, id, DONE).await;
    assert_eq!(item["status"], "completed", "{item}");
    let out = &results_of(&item, "n")[0];
    assert_eq!(out["type"], "noise_output");
    assert_eq!(
        (out["width"].clone(), out["height"].clone()),
        (json!(64), json!(64))
    );
    assert_eq!(out["noise"]["seed"], 31337);
    // The latents primitive reads the stored tensor's size.
    let passed = &results_of(&item, "l")[0];
    assert_eq!(
        (passed["width"].clone(), passed["height"].clone()),
        (json!(64), json!(64))
    );
    assert_eq!(passed["latents"], out["noise"]);
    let name = out["noise"]["latents_name"].as_str().unwrap();
    let latents = s.state().tensors.latents(name).expect("stored");
    assert_eq!(latents.shape, vec![1, 4, 8, 8]);
    // torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(31337)), recorded by
    // the engine's fixture script.
    let fixture: Value =
        serde_json::from_str(include_str!("../../engine/tests/fixtures/noise.json")).unwrap();
    let expected: Vec<f32> = fixture["latent_1x4x8x8"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(fixture["latent_1x4x8x8"]["seed"], 31337);
    assert_eq!(latents.data, expected);
}
