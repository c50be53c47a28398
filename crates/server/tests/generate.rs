//! `POST /api/v1/generate` (generation.md §12): the graph it builds is the web UI's (compared
//! with Appendix A's shape), its checks, enqueueing, and waiting.

use crate::common::*;
use crate::models::{checkpoint, install, kohya_lora, outside, sd1};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Installs a fake SD1 checkpoint (header only) and returns its record.
async fn sd1_model(s: &TestServer, token: Option<&str>, file: &str) -> Value {
    let path = outside(s, file);
    sd1(&path);
    let job = install(s, token, path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let key = job["config_out"]["key"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    let listed = s.get("/api/v2/models/?model_type=main", token).await;
    listed.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| key.is_empty() || m["key"] == key.as_str())
        .cloned()
        .unwrap()
}

async fn generate(s: &TestServer, token: Option<&str>, body: Value) -> Resp {
    s.post("/api/v1/generate", token, &body).await
}

/// A graph with ids replaced by their UI prefixes, as (node types by prefix, edges).
fn shape(graph: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let prefix = |id: &str| id.split(':').next().unwrap_or(id).to_owned();
    let nodes = graph["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, n)| format!("{}={}", prefix(id), n["type"].as_str().unwrap()))
        .collect();
    let edges = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}.{}->{}.{}",
                prefix(e["source"]["node_id"].as_str().unwrap()),
                e["source"]["field"].as_str().unwrap(),
                prefix(e["destination"]["node_id"].as_str().unwrap()),
                e["destination"]["field"].as_str().unwrap()
            )
        })
        .collect();
    (nodes, edges)
}

fn appendix_a() -> Value {
    let text = include_str!("../../graph/tests/appendix_a.json");
    serde_json::from_str(text).unwrap()
}

fn node_by_prefix<'a>(graph: &'a Value, prefix: &str) -> &'a Value {
    graph["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(id, _)| id.split(':').next() == Some(prefix))
        .map(|(_, n)| n)
        .unwrap_or_else(|| panic!("no {prefix} node"))
}

#[tokio::test]
async fn a_dry_run_builds_the_generate_tabs_graph() {
    let s = TestServer::single_user().await;
    let model = sd1_model(&s, None, "sd15.safetensors").await;
    let r = generate(
        &s,
        None,
        json!({"prompt": "a red fox in snow", "negative_prompt": "blurry", "model": model["key"],
            "seed": 1938271, "count": 2, "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["seeds"], json!([1938271, 1938272]));
    let batch = &r.body["batch"];
    let reference = appendix_a();
    // Same nodes and edges as the web UI's request, ids aside.
    assert_eq!(shape(&batch["graph"]), shape(&reference["batch"]["graph"]));
    assert_eq!(
        (
            batch["origin"].clone(),
            batch["destination"].clone(),
            batch["runs"].clone()
        ),
        (json!("api"), json!("api"), json!(1))
    );
    let data = batch["data"].as_array().unwrap();
    assert_eq!(data[0][0]["items"], json!([1938271, 1938272]));
    assert_eq!(data[1][0]["items"], json!(["a red fox in snow"]));
    assert_eq!(data[1][1]["items"], json!(["blurry"]));
    let graph = &batch["graph"];
    let denoise = node_by_prefix(graph, "denoise_latents");
    assert_eq!(
        (
            denoise["scheduler"].clone(),
            denoise["steps"].clone(),
            denoise["cfg_scale"].clone()
        ),
        (json!("dpmpp_3m_k"), json!(30), json!(7.5))
    );
    let noise = node_by_prefix(graph, "noise");
    assert_eq!(
        (noise["width"].clone(), noise["height"].clone()),
        (json!(512), json!(512))
    );
    let output = node_by_prefix(graph, "canvas_output");
    assert_eq!(
        (
            output["is_intermediate"].clone(),
            output["use_cache"].clone(),
            output["fp32"].clone()
        ),
        (json!(false), json!(false), json!(true))
    );
    let meta = node_by_prefix(graph, "core_metadata");
    assert_eq!(meta["generation_mode"], "txt2img");
    assert_eq!(meta["model"]["key"], model["key"]);
    assert_eq!(meta["clip_skip"], 0);
    // Nothing was enqueued.
    let st = s.get("/api/v1/queue/default/status", None).await;
    assert_eq!(st.body["queue"]["total"], 0);
}

#[tokio::test]
async fn image_to_image_and_loras_extend_the_graph_like_the_ui() {
    let s = TestServer::single_user().await;
    let model = sd1_model(&s, None, "sd15.safetensors").await;
    let lora_path = outside(&s, "style.safetensors");
    kohya_lora(&lora_path, 768);
    let job = install(&s, None, lora_path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let loras = s.get("/api/v2/models/?model_type=lora", None).await;
    let lora_key = loras.body["models"][0]["key"].clone();
    let bytes = png_bytes(100, 72);
    let up = s
        .upload(
            None,
            "image_category=user&is_intermediate=false",
            bytes,
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let init = up.body["image_name"].as_str().unwrap().to_owned();
    let r = generate(
        &s,
        None,
        json!({"prompt": "p", "model": model["name"], "init_image": init, "strength": 0.6,
            "loras": [{"model": lora_key, "weight": 0.5}], "clip_skip": 1, "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let graph = &r.body["batch"]["graph"];
    let (nodes, edges) = shape(graph);
    for n in [
        "i2l=i2l",
        "lora_selector=lora_selector",
        "lora_collect=collect",
        "lora_collection_loader=lora_collection_loader",
    ] {
        assert!(nodes.contains(n), "{n} missing from {nodes:?}");
    }
    for e in [
        "sd1_model_loader.vae->i2l.vae",
        "i2l.latents->denoise_latents.latents",
        "lora_selector.lora->lora_collect.item",
        "lora_collect.collection->lora_collection_loader.loras",
        "sd1_model_loader.unet->lora_collection_loader.unet",
        "clip_skip.clip->lora_collection_loader.clip",
        "lora_collection_loader.unet->denoise_latents.unet",
        "lora_collection_loader.clip->pos_cond.clip",
        "lora_collection_loader.clip->neg_cond.clip",
    ] {
        assert!(edges.contains(e), "{e} missing from {edges:?}");
    }
    assert!(!edges.contains("sd1_model_loader.unet->denoise_latents.unet"));
    let denoise = node_by_prefix(graph, "denoise_latents");
    assert!((denoise["denoising_start"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    let noise = node_by_prefix(graph, "noise");
    assert_eq!(
        (noise["width"].clone(), noise["height"].clone()),
        (json!(96), json!(72))
    );
    let meta = node_by_prefix(graph, "core_metadata");
    assert_eq!(meta["generation_mode"], "img2img");
    assert_eq!(meta["init_image"], json!(init));
    assert_eq!(meta["loras"][0]["weight"], 0.5);
    assert_eq!(node_by_prefix(graph, "clip_skip")["skipped_layers"], 1);
}

#[tokio::test]
async fn sdxl_models_get_the_sdxl_graph() {
    let s = TestServer::single_user().await;
    let path = outside(&s, "xl.safetensors");
    checkpoint(&path, 4, 2048, 4);
    let job = install(&s, None, path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    // The only main model: `model` may be left out.
    let r = generate(
        &s,
        None,
        json!({"prompt": "p", "negative_prompt": "n", "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let graph = &r.body["batch"]["graph"];
    let (nodes, edges) = shape(graph);
    assert!(nodes.contains("sdxl_model_loader=sdxl_model_loader"));
    assert!(nodes.contains("pos_cond=sdxl_compel_prompt"));
    assert!(!nodes.iter().any(|n| n.starts_with("clip_skip")));
    for e in [
        "sdxl_model_loader.clip2->pos_cond.clip2",
        "positive_prompt.value->pos_cond.style",
        "negative_prompt.value->neg_cond.style",
    ] {
        assert!(edges.contains(e), "{e} missing");
    }
    let noise = node_by_prefix(graph, "noise");
    assert_eq!(noise["width"], 1024);
    assert_eq!(
        node_by_prefix(graph, "core_metadata")["generation_mode"],
        "sdxl_txt2img"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let (_, bob) = s.user_with_token(&admin, "bob@example.com").await;
    // No model installed.
    let r = generate(&s, Some(&alice), json!({"prompt": "p"})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "model"]));
    let model = sd1_model(&s, Some(&admin), "one.safetensors").await;
    let key = model["key"].clone();
    let cases = [
        (
            json!({"prompt": "p", "modle": key}),
            "modle",
            "extra_forbidden",
        ),
        (json!({"model": key}), "prompt", "missing"),
        (
            json!({"prompt": "p", "model": key, "width": 500}),
            "width",
            "multiple_of",
        ),
        (
            json!({"prompt": "p", "model": key, "steps": 0}),
            "steps",
            "greater_than_equal",
        ),
        (
            json!({"prompt": "p", "model": key, "cfg_scale": 0.5}),
            "cfg_scale",
            "greater_than_equal",
        ),
        (
            json!({"prompt": "p", "model": key, "timeout_s": 0}),
            "timeout_s",
            "greater_than_equal",
        ),
        (
            json!({"prompt": "p", "model": key, "count": 0}),
            "count",
            "greater_than_equal",
        ),
    ];
    for (body, field, kind) in cases {
        let r = generate(&s, Some(&alice), body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert_eq!(r.body["detail"][0]["loc"], json!(["body", field]), "{body}");
        assert_eq!(r.body["detail"][0]["type"], kind, "{body}");
    }
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": key, "scheduler": "no_such_scheduler"}),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["detail"][0]["msg"],
        "Value error, scheduler 'no_such_scheduler' is not supported by this server"
    );
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": "no-such-model"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": key, "init_image": "nope.png"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    // Another user's private board is off limits; one's own is fine.
    let board = s.create_board(Some(&bob), "Bob's").await;
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": key, "board_id": board["board_id"], "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = generate(
        &s,
        Some(&bob),
        json!({"prompt": "p", "model": key, "board_id": board["board_id"], "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        node_by_prefix(&r.body["batch"]["graph"], "canvas_output")["board"]["board_id"],
        board["board_id"]
    );
    // An administrator may save to anyone's board.
    let r = generate(
        &s,
        Some(&admin),
        json!({"prompt": "p", "model": key, "board_id": board["board_id"], "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Two main models: `model` is required, and the error names them.
    sd1_model(&s, Some(&admin), "two.safetensors").await;
    let r = generate(&s, Some(&alice), json!({"prompt": "p"})).await;
    assert_eq!(r.status, 422);
    assert!(r.body["detail"][0]["msg"].as_str().unwrap().contains("one"));
    // Anonymous callers are refused.
    assert_eq!(generate(&s, None, json!({"prompt": "p"})).await.status, 401);
}

#[tokio::test]
async fn enqueued_generations_belong_to_the_caller_and_can_be_awaited() {
    let s = TestServer::builder().multiuser(true).paused().start().await;
    let admin = s.setup_admin().await;
    let (alice_id, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let model = sd1_model(&s, Some(&admin), "m.safetensors").await;
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": model["key"], "seed": -1, "count": 3}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    // −1 wraps to 4294967295, and the UI's seed series is taken modulo 4294967295.
    assert_eq!(r.body["seeds"], json!([0, 1, 2]));
    let ids = r.body["item_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 3);
    let item = s
        .get(&format!("/api/v1/queue/default/i/{}", ids[0]), Some(&alice))
        .await;
    assert_eq!(item.body["user_id"], json!(alice_id));
    assert_eq!(item.body["origin"], "api");
    // Waiting returns when the items end, with each failure listed.
    s.put_empty("/api/v1/queue/default/processor/resume", Some(&admin))
        .await;
    let r = generate(
        &s,
        Some(&alice),
        json!({"prompt": "p", "model": model["key"], "seed": 7, "wait": true, "timeout_s": 60}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        ["failed", "completed"].contains(&r.body["status"].as_str().unwrap()),
        "{}",
        r.text
    );
    if r.body["status"] == "failed" {
        // A header-only checkpoint has no weights to run.
        assert_eq!(r.body["errors"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["images"], json!([]));
    }
}
