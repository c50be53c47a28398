//! socket.io through a real client crate (queue-and-events.md §7.1–7.5): rust_socketio's async
//! client, over websocket and over polling, against a real server.
//!
//! How rust_socketio reports things: `connect()` only performs the Engine.IO handshake and
//! sends CONNECT, so it succeeds whether or not the server accepts the socket. An accepted
//! CONNECT fires the `open` callback (`Event::Connect`); a refused one (CONNECT_ERROR) fires the
//! `error` callback with `Received an ConnectError frame: {"message":…}`; a DISCONNECT from the
//! server fires `close`. Every callback pushes into one channel, so a test sees them in order.

use crate::common::*;
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{timeout, Instant};

/// How long to wait for the answer to a CONNECT, or for a disconnect.
const ANSWER: Duration = Duration::from_secs(5);
/// How long one queue item may take to reach the sockets, start to finish.
const ITEM: Duration = Duration::from_secs(20);

/// What a client observed, in arrival order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The server accepted the CONNECT.
    Connected,
    /// The `error` callback (a refused CONNECT, or a transport error).
    Error(String),
    /// The server disconnected the socket.
    Closed,
    /// A server event and its (single) argument.
    Event(String, Value),
}

/// The first argument of an event (every event of this server carries one JSON object).
fn first_arg(payload: Payload) -> Value {
    match payload {
        Payload::Text(values) => values.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn text_of(payload: Payload) -> String {
    match first_arg(payload) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The transport a client uses throughout (no upgrade).
#[derive(Clone, Copy, Debug)]
enum Via {
    Websocket,
    Polling,
}

/// Where a client puts its token.
#[derive(Clone, Copy)]
enum Token<'a> {
    None,
    /// The CONNECT packet's auth payload `{"token": …}`.
    Auth(&'a str),
    /// `Authorization: Bearer …` on the opening request.
    Header(&'a str),
}

struct Sock {
    client: Client,
    rx: UnboundedReceiver<Seen>,
}

fn push(tx: &UnboundedSender<Seen>, seen: Seen) {
    // The receiver lives as long as the test; a send after it is gone is irrelevant.
    let _ = tx.send(seen);
}

impl Sock {
    /// Opens a client (no reconnection) and sends CONNECT; the answer arrives as an event.
    async fn open(s: &TestServer, token: Token<'_>, via: Via) -> Self {
        let (tx, rx) = unbounded_channel();
        let (on_open, on_error, on_close, on_any) = (tx.clone(), tx.clone(), tx.clone(), tx);
        let mut builder = ClientBuilder::new(s.url("/ws/socket.io/"))
            .transport_type(match via {
                Via::Websocket => TransportType::Websocket,
                Via::Polling => TransportType::Polling,
            })
            .reconnect(false)
            .on(Event::Connect, move |_, _| {
                push(&on_open, Seen::Connected);
                async {}.boxed()
            })
            .on(Event::Error, move |payload, _| {
                push(&on_error, Seen::Error(text_of(payload)));
                async {}.boxed()
            })
            .on(Event::Close, move |_, _| {
                push(&on_close, Seen::Closed);
                async {}.boxed()
            })
            .on_any(move |event, payload, _| {
                push(&on_any, Seen::Event(event.to_string(), first_arg(payload)));
                async {}.boxed()
            });
        match token {
            Token::None => {}
            Token::Auth(t) => builder = builder.auth(json!({ "token": t })),
            Token::Header(t) => {
                builder = builder.opening_header("Authorization", format!("Bearer {t}"));
            }
        }
        let client = builder.connect().await.expect("Engine.IO handshake");
        Sock { client, rx }
    }

    /// Opens a client and asserts the server accepted it.
    async fn accepted(s: &TestServer, token: Token<'_>, via: Via) -> Self {
        let mut sock = Self::open(s, token, via).await;
        assert_eq!(sock.answer().await, Seen::Connected);
        sock
    }

    /// The next observation, or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Seen> {
        timeout(within, self.rx.recv()).await.ok().flatten()
    }

    /// The server's answer to CONNECT: `Connected` or the `Error` carrying the CONNECT_ERROR.
    async fn answer(&mut self) -> Seen {
        let seen = self.next(ANSWER).await.expect("no answer to CONNECT");
        assert!(
            matches!(seen, Seen::Connected | Seen::Error(_)),
            "unexpected first observation: {seen:?}"
        );
        seen
    }

    /// Server events until (and including) the first terminal `queue_item_status_changed`.
    async fn until_done(&mut self) -> Vec<(String, Value)> {
        let deadline = Instant::now() + ITEM;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Seen::Event(name, payload)) => {
                    let done = name == "queue_item_status_changed"
                        && ["completed", "failed", "canceled"]
                            .contains(&payload["status"].as_str().unwrap_or(""));
                    out.push((name, payload));
                    if done {
                        return out;
                    }
                }
                Some(other) => panic!("unexpected {other:?} after {out:?}"),
                None => panic!("no terminal status within {ITEM:?}; got {out:?}"),
            }
        }
    }

    /// Whatever else arrives within `within`.
    async fn drain(&mut self, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(seen) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(seen);
        }
        out
    }

    async fn close(self) {
        // The server may already have closed it; either way the client stops.
        let _ = self.client.disconnect().await;
    }
}

/// Asserts that a CONNECT was refused with `message`, and that no accept follows.
async fn assert_refused(mut sock: Sock, message: &str) {
    match sock.answer().await {
        Seen::Error(text) => {
            assert!(
                text.starts_with("Received an ConnectError frame"),
                "not a CONNECT_ERROR: {text}"
            );
            let body: Value =
                serde_json::from_str(text.trim_start_matches("Received an ConnectError frame: "))
                    .unwrap_or(Value::Null);
            assert_eq!(body["message"], message, "{text}");
        }
        other => panic!("the server accepted the socket: {other:?}"),
    }
    let later = sock.drain(Duration::from_millis(300)).await;
    assert!(
        !later.contains(&Seen::Connected),
        "accepted after refusing: {later:?}"
    );
    sock.close().await;
}

#[tokio::test]
async fn multi_user_refuses_sockets_without_a_valid_token() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    for transport in [Via::Websocket, Via::Polling] {
        let sock = Sock::open(&s, Token::None, transport).await;
        assert_refused(sock, "Authentication required").await;
        let sock = Sock::open(&s, Token::Auth("garbage"), transport).await;
        assert_refused(sock, "Authentication failed").await;
        let sock = Sock::open(&s, Token::Header("garbage"), transport).await;
        assert_refused(sock, "Authentication failed").await;
        // The same client with a real token, in either place, is accepted.
        Sock::accepted(&s, Token::Auth(&admin), transport)
            .await
            .close()
            .await;
        Sock::accepted(&s, Token::Header(&admin), transport)
            .await
            .close()
            .await;
    }
}

#[tokio::test]
async fn single_user_accepts_sockets_without_a_token() {
    let s = TestServer::single_user().await;
    for transport in [Via::Websocket, Via::Polling] {
        Sock::accepted(&s, Token::None, transport)
            .await
            .close()
            .await;
    }
}

/// `a = 6`, `m = a * 7`.
fn math_batch() -> Value {
    json!({"graph": {
        "nodes": {
            "a": {"id": "a", "type": "integer", "value": 6},
            "m": {"id": "m", "type": "mul", "b": 7},
        },
        "edges": [{"source": {"node_id": "a", "field": "value"},
                   "destination": {"node_id": "m", "field": "a"}}],
    }})
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

/// Waits until `n` sockets have joined the queue room (`subscribe_queue` has no reply).
async fn wait_subscribed(s: &TestServer, n: usize) {
    let deadline = Instant::now() + ANSWER;
    while s.state().sockets.to("default").sockets().len() < n {
        assert!(
            Instant::now() < deadline,
            "subscribe_queue never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The full events of one item as the owner and an admin must see them.
#[track_caller]
fn assert_full(who: &str, events: &[(String, Value)], alice_id: &str, batch_id: &str, item: i64) {
    let expected = [
        "batch_enqueued",
        "status:in_progress",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "status:completed",
    ];
    assert_eq!(names(events), expected, "{who}: {events:#?}");
    for (name, p) in events {
        assert_eq!(p["user_id"], alice_id, "{who}: {name} {p}");
        assert_eq!(p["batch_id"], batch_id, "{who}: {name} {p}");
        assert_eq!(p["queue_id"], "default", "{who}: {name} {p}");
        assert!(p["timestamp"].is_i64(), "{who}: {name} {p}");
        if name != "batch_enqueued" {
            assert_eq!(p["item_id"], item, "{who}: {name} {p}");
            let session = p["session_id"].as_str().unwrap_or("");
            assert!(
                !session.is_empty() && session != "redacted",
                "{who}: {name} {p}"
            );
        }
    }
    let (_, enqueued) = &events[0];
    assert_eq!(
        (&enqueued["enqueued"], &enqueued["requested"]),
        (&json!(1), &json!(1)),
        "{who}: {enqueued}"
    );
    assert_eq!(events[1].1["status_sequence"], 1, "{who}");
    assert_eq!(events[6].1["status_sequence"], 2, "{who}");
    assert!(events[6].1["completed_at"].is_string(), "{who}");

    // Per node: started, then complete with the node's output; `invocation_source_id` names
    // the node of the submitted graph.
    let mut sources = Vec::new();
    for pair in events[2..6].chunks(2) {
        let (started, complete) = (&pair[0].1, &pair[1].1);
        let source = complete["invocation_source_id"].as_str().unwrap_or("");
        assert_eq!(started["invocation_source_id"], source, "{who}");
        assert_eq!(started["invocation"], complete["invocation"], "{who}");
        assert!(
            complete["invocation"]["type"].is_string(),
            "{who}: {complete}"
        );
        assert!(complete["result"].is_object(), "{who}: {complete}");
        sources.push(source.to_owned());
    }
    assert_eq!(sources, ["a", "m"], "{who}");
    let (a, m) = (&events[3].1, &events[5].1);
    assert_eq!(a["invocation"]["type"], "integer", "{who}");
    assert_eq!(
        a["result"],
        json!({"type": "integer_output", "value": 6}),
        "{who}"
    );
    assert_eq!(m["invocation"]["type"], "mul", "{who}");
    assert_eq!(
        m["result"],
        json!({"type": "integer_output", "value": 42}),
        "{who}"
    );
}

#[tokio::test]
async fn owner_and_admin_get_full_events_others_only_redacted_companions() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    // One client per transport and token placement.
    let mut a = Sock::accepted(&s, Token::Auth(&alice), Via::Websocket).await;
    let mut ad = Sock::accepted(&s, Token::Auth(&admin), Via::Polling).await;
    let mut b = Sock::accepted(&s, Token::Header(&bob), Via::Websocket).await;
    for sock in [&a, &ad, &b] {
        sock.client
            .emit("subscribe_queue", json!({"queue_id": "default"}))
            .await
            .expect("emit");
    }
    wait_subscribed(&s, 3).await;

    let r = s
        .post(
            "/api/v1/queue/default/enqueue_batch",
            Some(&alice),
            &json!({"batch": math_batch(), "prepend": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let item = r.body["item_ids"][0].as_i64().expect("item id");
    let batch_id = r.body["batch"]["batch_id"].as_str().expect("batch id");

    let (owner, by_admin, other) = tokio::join!(a.until_done(), ad.until_done(), b.until_done());
    assert_full("owner", &owner, &alice_id, batch_id, item);
    assert_full("admin", &by_admin, &alice_id, batch_id, item);

    // Bob: the companions only, redacted, and no invocation events at all.
    assert_eq!(
        names(&other),
        ["batch_enqueued", "status:in_progress", "status:completed"],
        "{other:#?}"
    );
    let (_, enqueued) = &other[0];
    assert_eq!(
        (
            &enqueued["user_id"],
            &enqueued["batch_id"],
            &enqueued["origin"]
        ),
        (&json!("redacted"), &json!("redacted"), &Value::Null),
        "{enqueued}"
    );
    assert_eq!(enqueued["enqueued"], 1, "counts are kept: {enqueued}");
    for (_, p) in &other[1..] {
        assert_eq!(p["item_id"], item, "{p}");
        for key in ["user_id", "batch_id", "session_id"] {
            assert_eq!(p[key], "redacted", "{key}: {p}");
        }
        for key in ["origin", "destination"] {
            assert_eq!(p[key], Value::Null, "{key}: {p}");
        }
    }
    // Nothing trails the terminal status for anyone (no late invocation events for Bob).
    let (late_a, late_ad, late_b) = tokio::join!(
        a.drain(Duration::from_millis(300)),
        ad.drain(Duration::from_millis(300)),
        b.drain(Duration::from_millis(300))
    );
    assert_eq!(
        (late_a, late_ad, late_b),
        (vec![], vec![], vec![]),
        "events after the terminal status"
    );
    for sock in [a, ad, b] {
        sock.close().await;
    }
}

#[tokio::test]
async fn a_deactivated_users_socket_is_disconnected() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let mut a = Sock::accepted(&s, Token::Auth(&alice), Via::Websocket).await;
    let mut p = Sock::accepted(&s, Token::Header(&alice), Via::Polling).await;
    // An unrelated socket stays open.
    let mut ad = Sock::accepted(&s, Token::Auth(&admin), Via::Websocket).await;

    let r = s
        .patch(
            &format!("/api/v1/auth/users/{alice_id}"),
            Some(&admin),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (transport, sock) in [("websocket", &mut a), ("polling", &mut p)] {
        let mut seen = Vec::new();
        loop {
            match sock.next(ANSWER).await {
                Some(Seen::Closed) => break,
                Some(other) => seen.push(other),
                None => panic!("{transport}: no disconnect within {ANSWER:?}; saw {seen:?}"),
            }
        }
    }
    assert_eq!(
        ad.drain(Duration::from_millis(300)).await,
        vec![],
        "the admin's socket is untouched"
    );
    // And the token no longer opens a socket.
    let again = Sock::open(&s, Token::Auth(&alice), Via::Websocket).await;
    assert_refused(again, "Authentication failed").await;
    for sock in [a, p, ad] {
        sock.close().await;
    }
}
