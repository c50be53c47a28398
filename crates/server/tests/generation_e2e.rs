//! Real generation end to end on tiny random-weight models the test writes itself: install
//! through the API, generate through `POST /api/v1/generate` and through a UI-shaped graph,
//! image on the board with metadata, progress events, cancel mid-denoise.

use crate::common::socket::SocketClient;
use crate::common::*;
use crate::models::install;
use atelier_engine::tiny::{write_tiny_sd, Family};
use serde_json::{json, Value};
use std::time::Duration;

/// Writes a tiny model outside the models folder and installs it in place; returns its key.
async fn tiny_model(s: &TestServer, family: Family, name: &str) -> String {
    let dir = s.root.path().join("incoming").join(name);
    write_tiny_sd(&dir, family, 7).expect("tiny model");
    let job = install(s, None, dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let listed = s.get("/api/v2/models/?model_type=main", None).await;
    let model = listed.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().is_some_and(|p| p.ends_with(name)))
        .cloned()
        .expect("installed");
    model["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_tiny_sd1_model_generates_an_image_with_progress() {
    let s = TestServer::single_user().await;
    let key = tiny_model(&s, Family::Sd1, "tiny-sd1").await;
    let (mut sock, _) = SocketClient::connect(&s.base, None, None).await;
    sock.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    s.get("/api/v1/queue/default/status", None).await;
    let board = s.create_board(None, "Renders").await;
    let r = s
        .post(
            "/api/v1/generate",
            None,
            &json!({"prompt": "a red fox", "negative_prompt": "blurry", "model": key,
                "width": 64, "height": 64, "steps": 3, "scheduler": "euler", "seed": 42,
                "board_id": board["board_id"], "wait": true, "timeout_s": 120}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let image = &r.body["images"][0];
    assert_eq!(
        (image["width"].clone(), image["height"].clone()),
        (json!(64), json!(64))
    );
    assert_eq!(image["seed"], 42);
    let name = image["image_name"].as_str().unwrap();
    let record = s.get(&format!("/api/v1/images/i/{name}"), None).await;
    assert_eq!(record.body["board_id"], board["board_id"]);
    let meta = s
        .get(&format!("/api/v1/images/i/{name}/metadata"), None)
        .await;
    assert_eq!(meta.body["positive_prompt"], "a red fox");
    assert_eq!(meta.body["seed"], 42);
    assert_eq!(meta.body["scheduler"], "euler");
    assert_eq!(meta.body["model"]["key"], json!(key));
    // The pixels are not blank noise-free output: a real decode varies across the image.
    let png = s
        .get_bytes(&format!("/api/v1/images/i/{name}/full"), None, &[])
        .await;
    let decoded = image::load_from_memory(&png.2).expect("png").to_rgb8();
    let first = decoded.get_pixel(0, 0);
    assert!(
        decoded.pixels().any(|p| p != first),
        "the image is not uniform"
    );
    // Progress arrived, step by step, and the model was loaded once.
    let mut steps = Vec::new();
    let mut loads = 0;
    loop {
        let (event, payload) = sock.next_event().await.expect("socket");
        match event.as_str() {
            "invocation_progress" => {
                steps.push(payload["percentage"].as_f64().unwrap());
                assert_eq!(payload["message"], "Denoising");
                let preview = &payload["image"];
                assert_eq!(
                    (preview["width"].clone(), preview["height"].clone()),
                    (json!(64), json!(64))
                );
                assert!(preview["dataURL"]
                    .as_str()
                    .unwrap()
                    .starts_with("data:image/jpeg;base64,"));
            }
            "model_load_complete" => loads += 1,
            "queue_item_status_changed" if payload["status"] == "completed" => break,
            _ => {}
        }
    }
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!((steps[2] - 1.0).abs() < 1e-9);
    assert!(loads >= 1);
    // Same seed, same settings: the same pixels (noise and schedulers are deterministic).
    let again = s
        .post(
            "/api/v1/generate",
            None,
            &json!({"prompt": "a red fox", "negative_prompt": "blurry", "model": key,
                "width": 64, "height": 64, "steps": 3, "scheduler": "euler", "seed": 42,
                "wait": true, "timeout_s": 120}),
        )
        .await;
    let name2 = again.body["images"][0]["image_name"].as_str().unwrap();
    let png2 = s
        .get_bytes(&format!("/api/v1/images/i/{name2}/full"), None, &[])
        .await;
    let decoded2 = image::load_from_memory(&png2.2).expect("png").to_rgb8();
    assert_eq!(decoded.as_raw(), decoded2.as_raw());
}

#[tokio::test]
async fn image_to_image_and_v_prediction_run() {
    let s = TestServer::single_user().await;
    let key = tiny_model(&s, Family::Sd2V, "tiny-sd2v").await;
    let up = s
        .upload(
            None,
            "image_category=user&is_intermediate=false",
            png_bytes(64, 48),
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let r = s
        .post(
            "/api/v1/generate",
            None,
            &json!({"prompt": "p", "model": key, "init_image": up.body["image_name"], "strength": 0.5,
                "steps": 4, "scheduler": "dpmpp_2m", "seed": 1, "wait": true, "timeout_s": 120}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(
        (
            r.body["images"][0]["width"].clone(),
            r.body["images"][0]["height"].clone()
        ),
        (json!(64), json!(48))
    );
}

#[tokio::test]
async fn canceling_stops_denoising_mid_way() {
    let s = TestServer::single_user().await;
    let key = tiny_model(&s, Family::Sd1, "tiny-cancel").await;
    let (mut sock, _) = SocketClient::connect(&s.base, None, None).await;
    sock.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    s.get("/api/v1/queue/default/status", None).await;
    let r = s
        .post(
            "/api/v1/generate",
            None,
            &json!({"prompt": "p", "model": key, "width": 64, "height": 64, "steps": 200,
                "scheduler": "euler", "seed": 3}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["item_ids"][0].as_i64().unwrap();
    // Wait for the first step, then cancel.
    loop {
        let (event, _) = sock.next_event().await.expect("socket");
        if event == "invocation_progress" {
            break;
        }
    }
    let c = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/queue/default/i/{id}/cancel"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(c.status, 200);
    let mut progress_after = 0;
    let mut status = Value::Null;
    for _ in 0..400 {
        let item = s.get(&format!("/api/v1/queue/default/i/{id}"), None).await;
        status = item.body["status"].clone();
        let done = item.body["session"]["results"]
            .as_object()
            .map_or(0, |r| r.len());
        if status == "canceled" {
            // The denoise node never completed.
            assert!(done < 12, "{done} nodes finished");
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "canceled");
    // The worker moved on: at most one more step's progress arrives, then nothing for this item.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = s
        .post(
            "/api/v1/queue/default/enqueue_batch",
            None,
            &json!({"batch": {"graph": {"nodes": {"a": {"id": "a", "type": "add", "a": 1, "b": 1}}}}}),
        )
        .await;
    let next_id = next.body["item_ids"][0].as_i64().unwrap();
    loop {
        let (event, payload) = sock.next_event().await.expect("socket");
        if event == "invocation_progress" && payload["item_id"] == id {
            progress_after += 1;
        }
        if event == "queue_item_status_changed"
            && payload["item_id"] == next_id
            && payload["status"] == "completed"
        {
            break;
        }
    }
    assert!(
        progress_after <= 1,
        "{progress_after} steps ran after the cancel"
    );
}
