//! A minimal Engine.IO v4 / Socket.IO v5 client over HTTP long-polling, enough to connect
//! with or without credentials and read the events a socket receives.

use reqwest::Client;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;

pub struct SocketClient {
    client: Client,
    url: String,
    buffer: VecDeque<String>,
}

/// How a CONNECT ended.
#[derive(Debug, PartialEq)]
pub enum Connect {
    Accepted,
    Refused(Value),
}

impl SocketClient {
    /// Opens the Engine.IO session (no credentials needed) and sends CONNECT with `auth`
    /// (and, optionally, an `Authorization` header on every request).
    pub async fn connect(base: &str, auth: Option<Value>, bearer: Option<&str>) -> (Self, Connect) {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = bearer {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let client = Client::builder().default_headers(headers).build().unwrap();
        let open = client
            .get(format!("{base}/ws/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap();
        assert_eq!(open.status().as_u16(), 200);
        let text = open.text().await.unwrap();
        let handshake: Value =
            serde_json::from_str(text.strip_prefix('0').expect("open packet")).unwrap();
        let sid = handshake["sid"].as_str().unwrap();
        let url = format!("{base}/ws/socket.io/?EIO=4&transport=polling&sid={sid}");
        let mut socket = Self {
            client,
            url,
            buffer: VecDeque::new(),
        };
        let packet = match auth {
            Some(a) => format!("40{a}"),
            None => "40".to_owned(),
        };
        socket.send(&packet).await;
        let reply = socket.next_packet().await.expect("connect reply");
        let outcome = if let Some(rest) = reply.strip_prefix("40") {
            let _ = rest;
            Connect::Accepted
        } else if let Some(rest) = reply.strip_prefix("44") {
            Connect::Refused(serde_json::from_str(rest).unwrap_or(Value::Null))
        } else {
            panic!("unexpected reply to CONNECT: {reply}");
        };
        (socket, outcome)
    }

    pub async fn send(&self, packet: &str) {
        let r = self
            .client
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    /// Sends a client event `42["name", payload]`.
    pub async fn emit(&self, name: &str, payload: Value) {
        self.send(&format!("42{}", serde_json::json!([name, payload])))
            .await;
    }

    /// The next Engine.IO packet (answering pings), or `None` when the session is gone.
    pub async fn next_packet(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buffer.pop_front() {
                if p == "2" {
                    self.send("3").await;
                    continue;
                }
                return Some(p);
            }
            let res =
                tokio::time::timeout(Duration::from_secs(30), self.client.get(&self.url).send())
                    .await
                    .expect("poll timed out")
                    .ok()?;
            if !res.status().is_success() {
                return None;
            }
            let text = res.text().await.ok()?;
            self.buffer.extend(text.split('\u{1e}').map(str::to_owned));
        }
    }

    /// The next event as `(name, payload)`; `None` if the socket was disconnected first.
    pub async fn next_event(&mut self) -> Option<(String, Value)> {
        loop {
            let packet = self.next_packet().await?;
            if packet.starts_with("41") || packet == "1" {
                return None;
            }
            if let Some(body) = packet.strip_prefix("42") {
                let v: Value = serde_json::from_str(body).unwrap();
                return Some((v[0].as_str().unwrap().to_owned(), v[1].clone()));
            }
        }
    }
}
