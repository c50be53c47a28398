//! Real generation end to end on tiny random-weight models the test writes itself: install
//! through the API, generate through `POST /api/v1/generate` and through a UI-shaped graph,
//! image on the board with metadata, progress events, cancel mid-denoise.

use crate::common::socket::SocketClient;
use crate::common::*;
use crate::models::{install, kohya_lora};
use atelier_engine::tiny::{
    write_ldm_vae, write_tiny_lora, write_tiny_lycoris, write_tiny_sd, write_tiny_sd1_checkpoint,
    write_tiny_sd1_twin, write_tiny_sd2_checkpoint, Family, LoraNaming,
};
use atelier_engine::tiny_sdxl::{
    write_tiny_sdxl, write_tiny_sdxl_checkpoint, write_tiny_sdxl_lora, write_tiny_sdxl_refiner,
    write_tiny_sdxl_refiner_checkpoint, SdxlLoraNaming,
};
use serde_json::{json, Value};
use std::time::Duration;

/// Writes a tiny model outside the models folder and installs it in place; returns its key.
async fn tiny_model(s: &TestServer, family: Family, name: &str) -> String {
    let dir = s.root.path().join("incoming").join(name);
    write_tiny_sd(&dir, family, 7).expect("tiny model");
    install_in_place(s, &dir, name).await
}

/// Installs the model folder `dir` in place; returns its key.
async fn install_in_place(s: &TestServer, dir: &std::path::Path, name: &str) -> String {
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

/// The `device` and `precision` keys: on the CPU `precision: float16` still runs in float32 (as
/// InvokeAI does), and a GPU this build cannot use fails the generation with the reason instead
/// of falling back silently.
#[tokio::test]
async fn the_configured_device_and_precision_are_honoured() {
    let request = |key: &str| {
        json!({"prompt": "a red fox", "model": key, "width": 64, "height": 64, "steps": 2,
            "scheduler": "euler", "seed": 5, "wait": true, "timeout_s": 120})
    };
    async fn pixels(s: &TestServer, body: Value) -> image::RgbImage {
        image_pixels(s, None, body["images"][0]["image_name"].as_str().unwrap()).await
    }
    let plain = TestServer::single_user().await;
    let key = tiny_model(&plain, Family::Sd1, "tiny-sd1").await;
    let r = plain.post("/api/v1/generate", None, &request(&key)).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let expected = pixels(&plain, r.body).await;

    let half = TestServer::builder()
        .set("device", json!("cpu"))
        .set("precision", json!("float16"))
        .start()
        .await;
    let key = tiny_model(&half, Family::Sd1, "tiny-sd1").await;
    let r = half.post("/api/v1/generate", None, &request(&key)).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    assert_eq!(pixels(&half, r.body).await.as_raw(), expected.as_raw());

    if cfg!(feature = "cuda") {
        return;
    }
    let gpu = TestServer::builder()
        .set("device", json!("cuda:0"))
        .start()
        .await;
    let key = tiny_model(&gpu, Family::Sd1, "tiny-sd1").await;
    let r = gpu.post("/api/v1/generate", None, &request(&key)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    let error = &r.body["errors"][0];
    assert_eq!(error["error_type"], "RuntimeError", "{error}");
    assert!(
        error["error_message"].as_str().unwrap().starts_with(
            "device 'cuda:0' is configured, but this build of Atelier has no CUDA support"
        ),
        "{error}"
    );
    // Boards and images still work on that server.
    assert_eq!(
        gpu.create_board(None, "Still here").await["board_name"],
        "Still here"
    );
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

/// Writes a tiny model with `seed` outside the models folder and installs its `vae/` folder in
/// place as a separate VAE model (as `token`); `scaling` overrides the config's scaling factor,
/// which the model manager reads the VAE's base from. Returns the install job.
async fn tiny_vae(
    s: &TestServer,
    token: Option<&str>,
    name: &str,
    seed: u64,
    scaling: f64,
) -> Value {
    let dir = s.root.path().join("incoming").join(name);
    write_tiny_sd(&dir, Family::Sd1, seed).expect("tiny model");
    let vae = dir.join("vae");
    let config = vae.join("config.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    value["scaling_factor"] = json!(scaling);
    std::fs::write(&config, serde_json::to_vec(&value).unwrap()).unwrap();
    install(s, token, vae.to_str().unwrap(), true).await
}

async fn image_pixels(s: &TestServer, token: Option<&str>, name: &str) -> image::RgbImage {
    let png = s
        .get_bytes(&format!("/api/v1/images/i/{name}/full"), token, &[])
        .await;
    image::load_from_memory(&png.2).expect("png").to_rgb8()
}

/// Enqueues `graph` as `token` and waits for the item's end; returns (status, l2i image name).
async fn run_graph(s: &TestServer, token: Option<&str>, graph: &Value) -> (Value, Value) {
    let r = s
        .post(
            "/api/v1/queue/default/enqueue_batch",
            token,
            &json!({"batch": {"graph": graph, "runs": 1}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["item_ids"][0].as_i64().unwrap();
    for _ in 0..2400 {
        let item = s.get(&format!("/api/v1/queue/default/i/{id}"), token).await;
        let status = item.body["status"].clone();
        if ["completed", "failed", "canceled"].contains(&status.as_str().unwrap_or_default()) {
            let session = &item.body["session"];
            let exec = session["source_prepared_mapping"]["canvas_output:n12"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let image = session["results"][exec]["image"]["image_name"].clone();
            assert_eq!(status, "completed", "{}", item.text);
            return (status, image);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("item {id} did not finish");
}

#[tokio::test]
async fn a_separate_vae_model_decodes_and_encodes() {
    let s = TestServer::builder().multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let (_, alice) = s.user_with_token(&admin, "alice@example.com").await;
    let user = Some(alice.as_str());
    // The admin installs a tiny main model and a separate tiny VAE (another seed).
    let dir = s.root.path().join("incoming").join("tiny-main");
    write_tiny_sd(&dir, Family::Sd1, 7).expect("tiny model");
    let job = install(&s, Some(&admin), dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let main = job["config_out"].clone();
    let job = tiny_vae(&s, Some(&admin), "tiny-vae", 99, 0.18215).await;
    assert_eq!(job["status"], "completed", "{job}");
    let vae = job["config_out"].clone();
    assert_eq!(
        (
            vae["type"].clone(),
            vae["format"].clone(),
            vae["base"].clone()
        ),
        (json!("vae"), json!("diffusers"), json!("sd-1"))
    );
    let (key, vae_key) = (main["key"].clone(), vae["key"].clone());

    let body = |vae: Option<&Value>| {
        let mut b = json!({"prompt": "a red fox", "model": key, "width": 64, "height": 64,
            "steps": 2, "scheduler": "euler", "seed": 42, "wait": true, "timeout_s": 120});
        if let Some(v) = vae {
            b["vae"] = v.clone();
        }
        b
    };
    let mut pixels = Vec::new();
    for with in [None, Some(&vae_key), None] {
        let r = s.post("/api/v1/generate", user, &body(with)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "completed", "{}", r.text);
        let name = r.body["images"][0]["image_name"]
            .as_str()
            .unwrap()
            .to_owned();
        if with.is_some() {
            let meta = s
                .get(&format!("/api/v1/images/i/{name}/metadata"), user)
                .await;
            assert_eq!(meta.body["vae"]["key"], vae_key);
        }
        pixels.push(image_pixels(&s, user, &name).await);
    }
    assert_ne!(
        pixels[0].as_raw(),
        pixels[1].as_raw(),
        "the VAE was not used"
    );
    assert_eq!(pixels[0].as_raw(), pixels[2].as_raw());

    // The same VAE as a single-file checkpoint (original LDM names) decodes the same pixels.
    let incoming = s.root.path().join("incoming");
    let file = incoming.join("tiny-vae-ldm.safetensors");
    write_ldm_vae(&incoming.join("tiny-vae").join("vae"), &file, false).expect("ldm vae");
    let job = install(&s, Some(&admin), file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        (
            job["config_out"]["type"].clone(),
            job["config_out"]["format"].clone()
        ),
        (json!("vae"), json!("checkpoint"))
    );
    let r = s
        .post(
            "/api/v1/generate",
            user,
            &body(Some(&job["config_out"]["key"])),
        )
        .await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"].as_str().unwrap();
    let checkpoint = image_pixels(&s, user, name).await;
    assert_eq!(checkpoint.as_raw(), pixels[1].as_raw());

    // Image to image encodes with the separate VAE too.
    let up = s
        .upload(
            user,
            "image_category=user&is_intermediate=false",
            png_bytes(64, 48),
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let mut i2i = body(Some(&vae_key));
    i2i["init_image"] = up.body["image_name"].clone();
    i2i["strength"] = json!(0.5);
    i2i.as_object_mut().unwrap().remove("width");
    i2i.as_object_mut().unwrap().remove("height");
    let r = s.post("/api/v1/generate", user, &i2i).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);

    // The UI's graph (Appendix A) with a `vae_loader` feeding `l2i`.
    let mut graph = appendix_a(&main, 42, "a red fox");
    let (_, own) = run_graph(&s, user, &graph).await;
    let nodes = graph["nodes"].as_object_mut().unwrap();
    nodes.insert(
        "vae_loader:n14".into(),
        json!({"id": "vae_loader:n14", "type": "vae_loader", "is_intermediate": true,
            "use_cache": true, "vae_model": identifier(&vae)}),
    );
    for edge in graph["edges"].as_array_mut().unwrap() {
        if edge["destination"] == json!({"node_id": "canvas_output:n12", "field": "vae"}) {
            edge["source"] = json!({"node_id": "vae_loader:n14", "field": "vae"});
        }
    }
    let (_, separate) = run_graph(&s, user, &graph).await;
    let own = image_pixels(&s, user, own.as_str().unwrap()).await;
    let separate = image_pixels(&s, user, separate.as_str().unwrap()).await;
    assert_eq!(separate.dimensions(), (64, 64));
    assert_ne!(
        own.as_raw(),
        separate.as_raw(),
        "the VAE loader was not used"
    );

    // A VAE of another base is refused by `POST /api/v1/generate` (same base only).
    let job = tiny_vae(&s, Some(&admin), "tiny-sdxl-vae", 5, 0.13025).await;
    assert_eq!(job["config_out"]["base"], "sdxl", "{job}");
    let wrong = job["config_out"]["key"].clone();
    let r = s.post("/api/v1/generate", user, &body(Some(&wrong))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("is not a VAE for sd-1"), "{}", r.text);
}

#[tokio::test]
async fn a_single_file_sd1_checkpoint_generates_like_its_diffusers_twin() {
    checkpoint_generates_like_its_twin("sd1", "sd-1", "epsilon").await;
}

/// An SD 2.x checkpoint (OpenCLIP text encoder): the probe takes it for a 768-v model, as InvokeAI
/// does without a `global_step` of 220000, and the twin is one.
#[tokio::test]
async fn a_single_file_sd2_checkpoint_generates_like_its_diffusers_twin() {
    checkpoint_generates_like_its_twin("sd2", "sd-2", "v_prediction").await;
}

/// The probe knows this tiny SDXL file (its cross-attention is not SDXL's 2048) by its two SGM
/// text encoders.
#[tokio::test]
async fn a_single_file_sdxl_checkpoint_generates_like_its_diffusers_twin() {
    checkpoint_generates_like_its_twin("sdxl", "sdxl", "epsilon").await;
}

async fn checkpoint_generates_like_its_twin(family: &str, base: &str, prediction: &str) {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    let twin_dir = incoming.join(format!("tiny-{family}-twin"));
    let file = incoming.join(format!("tiny-{family}-ldm.safetensors"));
    match family {
        "sd2" => write_tiny_sd2_checkpoint(&twin_dir, &file, 11),
        "sdxl" => write_tiny_sdxl_checkpoint(&twin_dir, &file, 11),
        _ => write_tiny_sd1_checkpoint(&twin_dir, &file, 11),
    }
    .expect("tiny checkpoint");
    // The model manager identifies the single file from its tensors.
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let config = &job["config_out"];
    assert_eq!(
        (
            config["type"].clone(),
            config["format"].clone(),
            config["base"].clone(),
            config["variant"].clone(),
            config["prediction_type"].clone()
        ),
        (
            json!("main"),
            json!("checkpoint"),
            json!(base),
            json!("normal"),
            json!(prediction)
        ),
        "{config}"
    );
    let checkpoint_key = config["key"].as_str().unwrap().to_owned();
    let job = install(&s, None, twin_dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["config_out"]["format"], "diffusers");
    assert_eq!(job["config_out"]["base"], base);
    assert_eq!(job["config_out"]["prediction_type"], prediction);
    let twin_key = job["config_out"]["key"].as_str().unwrap().to_owned();

    let mut pixels = Vec::new();
    for key in [&checkpoint_key, &twin_key] {
        let r = s
            .post(
                "/api/v1/generate",
                None,
                &json!({"prompt": "a photo of an astronaut riding a horse",
                    "negative_prompt": "blurry", "model": key,
                    "width": 64, "height": 64, "steps": 3, "scheduler": "euler", "seed": 5,
                    "wait": true, "timeout_s": 120}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "completed", "{}", r.text);
        let name = r.body["images"][0]["image_name"].as_str().unwrap();
        let meta = s
            .get(&format!("/api/v1/images/i/{name}/metadata"), None)
            .await;
        assert_eq!(meta.body["model"]["key"], json!(key));
        pixels.push(image_pixels(&s, None, name).await);
    }
    let first = pixels[0].get_pixel(0, 0);
    assert!(pixels[0].pixels().any(|p| p != first), "a uniform image");
    assert_eq!(pixels[0].as_raw(), pixels[1].as_raw());
}

#[tokio::test]
async fn a_lora_changes_the_image_and_weight_zero_does_not() {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    // The twin's 768-wide cross-attention lets the model manager identify its LoRA as sd-1.
    let model_dir = incoming.join("tiny-sd1-lora-base");
    write_tiny_sd1_twin(&model_dir, 11).expect("tiny model");
    let job = install(&s, None, model_dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let main = job["config_out"].clone();
    let lora_path = incoming.join("tiny-lora.safetensors");
    write_tiny_lora(&model_dir, &lora_path, LoraNaming::Kohya, 4, 3).expect("tiny lora");
    let job = install(&s, None, lora_path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let lora = job["config_out"].clone();
    assert_eq!(
        (lora["type"].clone(), lora["base"].clone()),
        (json!("lora"), json!("sd-1")),
        "{lora}"
    );
    let (key, lora_key) = (main["key"].clone(), lora["key"].clone());

    let body = json!({"prompt": "a photo of a cat", "negative_prompt": "blurry",
            "model": key, "width": 64, "height": 64, "steps": 2, "scheduler": "euler",
            "seed": 5, "wait": true, "timeout_s": 120});
    let (_, with_lora) = assert_lora_acts(&s, &body, &lora_key, "the LoRA changed nothing").await;
    let again = generate_with_lora(&s, &body, &lora_key, Some(0.8)).await;
    assert_eq!(
        with_lora.as_raw(),
        again.as_raw(),
        "the LoRA is not deterministic"
    );

    // The UI's graph (Appendix A) with a `lora_loader` between the loaders and their users.
    assert_lora_loader_changes_the_image(&s, &main, &lora, "lora_loader changed nothing").await;

    // A LoRA for another base is refused.
    let sd2_lora = incoming.join("sd2-lora.safetensors");
    kohya_lora(&sd2_lora, 1024);
    let job = install(&s, None, sd2_lora.to_str().unwrap(), true).await;
    assert_eq!(job["config_out"]["base"], "sd-2", "{job}");
    let mut b = body.clone();
    b["loras"] = json!([{"model": job["config_out"]["key"], "weight": 0.5}]);
    let r = s.post("/api/v1/generate", None, &b).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("is not a LoRA for sd-1"), "{}", r.text);
}

#[tokio::test]
async fn a_lycoris_lora_changes_the_image_and_weight_zero_does_not() {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    let model_dir = incoming.join("tiny-sd1-lycoris-base");
    write_tiny_sd1_twin(&model_dir, 11).expect("tiny model");
    let job = install(&s, None, model_dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let main = job["config_out"].clone();
    // LoHa (plain and Tucker) and LoKr layers in one kohya-named file.
    let lora_path = incoming.join("tiny-lycoris.safetensors");
    write_tiny_lycoris(&model_dir, &lora_path, 3).expect("tiny lycoris");
    let job = install(&s, None, lora_path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let lora = job["config_out"].clone();
    assert_eq!(
        (
            lora["type"].clone(),
            lora["format"].clone(),
            lora["base"].clone()
        ),
        (json!("lora"), json!("lycoris"), json!("sd-1")),
        "{lora}"
    );
    let (key, lora_key) = (main["key"].clone(), lora["key"].clone());
    let body = json!({"prompt": "a photo of a cat", "negative_prompt": "blurry",
            "model": key, "width": 64, "height": 64, "steps": 2, "scheduler": "euler",
            "seed": 5, "wait": true, "timeout_s": 120});
    assert_lora_acts(&s, &body, &lora_key, "the LyCORIS LoRA changed nothing").await;

    // Through a `lora_loader` node in the UI's graph.
    assert_lora_loader_changes_the_image(
        &s,
        &main,
        &lora,
        "lora_loader with a LyCORIS LoRA changed nothing",
    )
    .await;
}

/// The UI's graph (Appendix A) on `main`, plain and with a `lora_loader` (weight 0.8) between the
/// loaders and their users: the LoRA must change the image.
async fn assert_lora_loader_changes_the_image(
    s: &TestServer,
    main: &Value,
    lora: &Value,
    what: &str,
) {
    let mut graph = appendix_a(main, 5, "a photo of a cat");
    let (_, plain) = run_graph(s, None, &graph).await;
    let nodes = graph["nodes"].as_object_mut().unwrap();
    nodes.insert(
        "lora_loader:n15".into(),
        json!({"id": "lora_loader:n15", "type": "lora_loader", "is_intermediate": true,
            "use_cache": true, "lora": identifier(lora), "weight": 0.8}),
    );
    let edges = graph["edges"].as_array_mut().unwrap();
    for edge in edges.iter_mut() {
        let field = edge["destination"]["field"].clone();
        if field == "unet" || (field == "clip" && edge["source"]["node_id"] == "clip_skip:n5") {
            edge["source"] = json!({"node_id": "lora_loader:n15", "field": field});
        }
    }
    edges.push(
        json!({"source": {"node_id": "sd1_model_loader:n4", "field": "unet"},
        "destination": {"node_id": "lora_loader:n15", "field": "unet"}}),
    );
    edges.push(
        json!({"source": {"node_id": "clip_skip:n5", "field": "clip"},
        "destination": {"node_id": "lora_loader:n15", "field": "clip"}}),
    );
    let (_, with_lora) = run_graph(s, None, &graph).await;
    let plain = image_pixels(s, None, plain.as_str().unwrap()).await;
    let with_lora = image_pixels(s, None, with_lora.as_str().unwrap()).await;
    assert_ne!(plain.as_raw(), with_lora.as_raw(), "{what}");
}

/// Generates `body` through `POST /api/v1/generate`, checks that the image's metadata names the
/// LoRA `lora_key` at `weight` (when there is one), and returns the pixels.
async fn generate_with_lora(
    s: &TestServer,
    body: &Value,
    lora_key: &Value,
    weight: Option<f64>,
) -> image::RgbImage {
    let r = s
        .post(
            "/api/v1/generate",
            None,
            &body_with_lora(body, lora_key, weight),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"].as_str().unwrap();
    if let Some(w) = weight {
        let meta = s
            .get(&format!("/api/v1/images/i/{name}/metadata"), None)
            .await;
        assert_eq!(
            meta.body["loras"][0]["model"]["key"], *lora_key,
            "{}",
            meta.text
        );
        assert_eq!(meta.body["loras"][0]["weight"], json!(w));
    }
    image_pixels(s, None, name).await
}

/// A generate request `body` with the LoRA `lora_key` at `weight` (`None`: as it is).
fn body_with_lora(body: &Value, lora_key: &Value, weight: Option<f64>) -> Value {
    let mut b = body.clone();
    if let Some(w) = weight {
        b["loras"] = json!([{"model": lora_key, "weight": w}]);
    }
    b
}

/// Generates `body` without the LoRA, with it at 0.8 and at 0: the LoRA must change the image
/// and weight 0 must not. Returns the plain image and the one at 0.8.
async fn assert_lora_acts(
    s: &TestServer,
    body: &Value,
    lora_key: &Value,
    what: &str,
) -> (image::RgbImage, image::RgbImage) {
    let plain = generate_with_lora(s, body, lora_key, None).await;
    let with_lora = generate_with_lora(s, body, lora_key, Some(0.8)).await;
    let zero = generate_with_lora(s, body, lora_key, Some(0.0)).await;
    assert_ne!(plain.as_raw(), with_lora.as_raw(), "{what}");
    assert_eq!(plain.as_raw(), zero.as_raw(), "weight 0 changed the image");
    (plain, with_lora)
}

/// A model record as the identifier a graph carries.
fn identifier(m: &Value) -> Value {
    json!({"key": m["key"], "hash": m["hash"], "name": m["name"], "base": m["base"],
        "type": m["type"]})
}

/// The UI's SD 1.x graph (Appendix A) on `main`: 64×64, two euler steps.
fn appendix_a(main: &Value, seed: u64, prompt: &str) -> Value {
    let mut graph: Value =
        serde_json::from_str::<Value>(include_str!("../../graph/tests/appendix_a.json")).unwrap()
            ["batch"]["graph"]
            .clone();
    let nodes = graph["nodes"].as_object_mut().unwrap();
    nodes["sd1_model_loader:n4"]["model"] = identifier(main);
    nodes["core_metadata:n13"]["model"] = identifier(main);
    nodes["seed:n1"]["value"] = json!(seed);
    nodes["positive_prompt:n2"]["value"] = json!(prompt);
    for (field, value) in [("width", 64), ("height", 64)] {
        nodes["noise:n10"][field] = json!(value);
        nodes["core_metadata:n13"][field] = json!(value);
    }
    nodes["denoise_latents:n11"]["steps"] = json!(2);
    nodes["denoise_latents:n11"]["scheduler"] = json!("euler");
    graph
}

/// Enqueues `batch` and waits for its one item; returns the item.
async fn run_batch(s: &TestServer, batch: &Value) -> Value {
    let r = s
        .post(
            "/api/v1/queue/default/enqueue_batch",
            None,
            &json!({ "batch": batch }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["item_ids"][0].as_i64().unwrap();
    for _ in 0..2400 {
        let item = s.get(&format!("/api/v1/queue/default/i/{id}"), None).await;
        let status = item.body["status"].as_str().unwrap_or_default().to_owned();
        if ["completed", "failed", "canceled"].contains(&status.as_str()) {
            return item.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("item {id} did not finish");
}

/// The one image a finished item's session made.
fn item_image(item: &Value) -> String {
    let images: Vec<&str> = item["session"]["results"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|r| r["image"]["image_name"].as_str())
        .collect();
    assert_eq!(images.len(), 1, "{item}");
    images[0].to_owned()
}

#[tokio::test]
async fn a_tiny_sdxl_model_generates_through_the_endpoint_and_its_graph() {
    let s = TestServer::single_user().await;
    let dir = s.root.path().join("incoming").join("tiny-sdxl");
    write_tiny_sdxl(&dir, 7).expect("tiny sdxl");
    let key = install_in_place(&s, &dir, "tiny-sdxl").await;
    let record = s.get(&format!("/api/v2/models/i/{key}"), None).await;
    assert_eq!(record.body["base"], "sdxl", "{}", record.text);
    let (mut sock, _) = SocketClient::connect(&s.base, None, None).await;
    sock.emit("subscribe_queue", json!({"queue_id": "default"}))
        .await;
    s.get("/api/v1/queue/default/status", None).await;
    let body = json!({"prompt": "a (red)1.2 fox", "negative_prompt": "blurry", "model": key,
        "width": 64, "height": 64, "steps": 3, "scheduler": "euler", "seed": 42});
    let mut waiting = body.clone();
    waiting["wait"] = json!(true);
    waiting["timeout_s"] = json!(120);
    let r = s.post("/api/v1/generate", None, &waiting).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let meta = s
        .get(&format!("/api/v1/images/i/{name}/metadata"), None)
        .await;
    assert_eq!(meta.body["generation_mode"], "sdxl_txt2img");
    assert_eq!(meta.body["positive_prompt"], "a (red)1.2 fox");
    assert_eq!(meta.body["model"]["base"], "sdxl");
    let first = image_pixels(&s, None, &name).await;
    assert_eq!(first.dimensions(), (64, 64));
    let corner = first.get_pixel(0, 0);
    assert!(first.pixels().any(|p| p != corner), "the image is uniform");
    // Three steps of progress with 64×64 previews.
    let mut steps = 0;
    loop {
        let (event, payload) = sock.next_event().await.expect("socket");
        match event.as_str() {
            "invocation_progress" => {
                steps += 1;
                assert_eq!(payload["image"]["width"], 64, "{payload}");
            }
            "queue_item_status_changed" if payload["status"] == "completed" => break,
            _ => {}
        }
    }
    assert_eq!(steps, 3);

    // The dry run's batch, enqueued as is, is the same generation: the same pixels.
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let r = s.post("/api/v1/generate", None, &dry).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let batch = r.body["batch"].clone();
    let item = run_batch(&s, &batch).await;
    assert_eq!(item["status"], "completed", "{item}");
    assert_eq!(
        image_pixels(&s, None, &item_image(&item)).await.as_raw(),
        first.as_raw()
    );

    // The time ids reach the UNet: another original size changes the pixels.
    let mut resized = batch.clone();
    let nodes = resized["graph"]["nodes"].as_object_mut().unwrap();
    let mut changed = 0;
    for node in nodes.values_mut() {
        if node["type"] == "sdxl_compel_prompt" {
            node["original_width"] = json!(512);
            changed += 1;
        }
    }
    assert_eq!(changed, 2);
    let item = run_batch(&s, &resized).await;
    assert_eq!(item["status"], "completed", "{item}");
    assert_ne!(
        image_pixels(&s, None, &item_image(&item)).await.as_raw(),
        first.as_raw()
    );

    // SD 1.x prompts (`compel`, no CLIP 2) on an SDXL model: a clear failure.
    let mut plain = batch.clone();
    for node in plain["graph"]["nodes"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        if node["type"] == "sdxl_compel_prompt" {
            *node = json!({"id": node["id"], "type": "compel", "prompt": "a fox"});
        }
    }
    plain["graph"]["edges"].as_array_mut().unwrap().retain(|e| {
        !["clip2", "style", "prompt"].contains(&e["destination"]["field"].as_str().unwrap())
            || !e["destination"]["node_id"]
                .as_str()
                .unwrap()
                .contains("_cond")
    });
    plain["data"] = json!(null);
    let item = run_batch(&s, &plain).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(
        item["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("is an SDXL model: its prompts need `sdxl_compel_prompt`"),
        "{item}"
    );

    // SDXL conditioning into an SD 1.x UNet: refused before denoising.
    let sd1 = tiny_model(&s, Family::Sd1, "tiny-sd1-for-sdxl").await;
    let mut mixed = batch.clone();
    let nodes = mixed["graph"]["nodes"].as_object_mut().unwrap();
    let model = s.get(&format!("/api/v2/models/i/{sd1}"), None).await.body;
    nodes.insert(
        "sd1_loader".into(),
        json!({"id": "sd1_loader", "type": "main_model_loader", "model": identifier(&model)}),
    );
    let mut rewired = 0;
    for edge in mixed["graph"]["edges"].as_array_mut().unwrap() {
        if edge["destination"]["field"] == "unet" {
            edge["source"]["node_id"] = json!("sd1_loader");
            rewired += 1;
        }
    }
    assert_eq!(rewired, 1);
    let item = run_batch(&s, &mixed).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(
        item["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("SDXL conditioning (from `sdxl_compel_prompt`) needs an SDXL UNet"),
        "{item}"
    );

    // `i2l`'s colour compensation changes what an SDXL VAE encodes, and nothing on SD 1.x.
    let up = s
        .upload(
            None,
            "image_category=user&is_intermediate=false",
            png_bytes(64, 48),
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let round_trip = |main: &Value, loader: &str, compensation: &str| {
        json!({"graph": {"id": "round_trip", "nodes": {
            "loader": {"id": "loader", "type": loader, "model": identifier(main)},
            "i2l": {"id": "i2l", "type": "i2l", "image": {"image_name": up.body["image_name"]},
                "color_compensation": compensation},
            "l2i": {"id": "l2i", "type": "l2i", "is_intermediate": false}},
          "edges": [
            {"source": {"node_id": "loader", "field": "vae"}, "destination": {"node_id": "i2l", "field": "vae"}},
            {"source": {"node_id": "loader", "field": "vae"}, "destination": {"node_id": "l2i", "field": "vae"}},
            {"source": {"node_id": "i2l", "field": "latents"}, "destination": {"node_id": "l2i", "field": "latents"}}]},
         "runs": 1})
    };
    let mut decoded = Vec::new();
    for (main, loader) in [
        (&record.body, "sdxl_model_loader"),
        (&model, "main_model_loader"),
    ] {
        for compensation in ["None", "SDXL"] {
            let item = run_batch(&s, &round_trip(main, loader, compensation)).await;
            assert_eq!(item["status"], "completed", "{item}");
            decoded.push(image_pixels(&s, None, &item_image(&item)).await);
        }
    }
    assert_ne!(decoded[0].as_raw(), decoded[1].as_raw(), "SDXL VAE");
    assert_eq!(decoded[2].as_raw(), decoded[3].as_raw(), "SD 1.x VAE");
}

/// The UI's SDXL refiner graph on `refiner` (a record) for the uploaded image `image`: loader → refiner
/// prompts, i2l of the image + noise → denoise_latents from 0.8 → l2i.
fn refiner_graph(refiner: &Value, image: &str, aesthetic: f64) -> Value {
    let edge = |from: &str, out: &str, to: &str, field: &str| {
        json!({"source": {"node_id": from, "field": out},
            "destination": {"node_id": to, "field": field}})
    };
    json!({"graph": {"id": "refine", "nodes": {
        "loader": {"id": "loader", "type": "sdxl_refiner_model_loader",
            "model": identifier(refiner)},
        "pos": {"id": "pos", "type": "sdxl_refiner_compel_prompt", "style": "a (red)1.2 fox",
            "original_width": 64, "original_height": 64, "aesthetic_score": aesthetic},
        "neg": {"id": "neg", "type": "sdxl_refiner_compel_prompt", "style": "",
            "original_width": 64, "original_height": 64, "aesthetic_score": 2.5},
        "i2l": {"id": "i2l", "type": "i2l", "image": {"image_name": image}},
        "noise": {"id": "noise", "type": "noise", "seed": 42, "width": 64, "height": 64},
        "denoise": {"id": "denoise", "type": "denoise_latents", "steps": 10, "cfg_scale": 5.0,
            "scheduler": "euler", "denoising_start": 0.8, "denoising_end": 1.0},
        "l2i": {"id": "l2i", "type": "l2i", "is_intermediate": false}},
      "edges": [
        edge("loader", "clip2", "pos", "clip2"),
        edge("loader", "clip2", "neg", "clip2"),
        edge("loader", "vae", "i2l", "vae"),
        edge("loader", "vae", "l2i", "vae"),
        edge("loader", "unet", "denoise", "unet"),
        edge("pos", "conditioning", "denoise", "positive_conditioning"),
        edge("neg", "conditioning", "denoise", "negative_conditioning"),
        edge("noise", "noise", "denoise", "noise"),
        edge("i2l", "latents", "denoise", "latents"),
        edge("denoise", "latents", "l2i", "latents")]},
     "runs": 1})
}

/// An SDXL refiner single file (Stability's SGM layout) installs as an `sdxl-refiner` checkpoint,
/// refines through the refiner graph exactly as its diffusers twin, and converts to a diffusers
/// folder (text encoder 2 alone) that refines the same.
#[tokio::test]
async fn a_single_file_sdxl_refiner_refines_like_its_diffusers_twin_and_converts() {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    let twin_dir = incoming.join("tiny-sdxl-refiner-twin");
    let file = incoming.join("tiny-sdxl-refiner-ldm.safetensors");
    write_tiny_sdxl_refiner_checkpoint(&twin_dir, &file, 11).expect("tiny refiner checkpoint");
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let checkpoint = job["config_out"].clone();
    assert_eq!(
        (
            checkpoint["type"].clone(),
            checkpoint["format"].clone(),
            checkpoint["base"].clone(),
            checkpoint["variant"].clone(),
            checkpoint["prediction_type"].clone()
        ),
        (
            json!("main"),
            json!("checkpoint"),
            json!("sdxl-refiner"),
            json!("normal"),
            json!("epsilon")
        ),
        "{checkpoint}"
    );
    let job = install(&s, None, twin_dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let twin = job["config_out"].clone();
    assert_eq!(
        (twin["format"].clone(), twin["base"].clone()),
        (json!("diffusers"), json!("sdxl-refiner")),
        "{twin}"
    );
    let up = s
        .upload(
            None,
            "image_category=user&is_intermediate=false",
            png_bytes(64, 64),
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let image = up.body["image_name"].as_str().unwrap().to_owned();
    let refine = |record: Value| {
        let graph = refiner_graph(&record, &image, 6.0);
        let s = &s;
        async move {
            let item = run_batch(s, &graph).await;
            assert_eq!(item["status"], "completed", "{item}");
            image_pixels(s, None, &item_image(&item)).await
        }
    };
    let from_file = refine(checkpoint.clone()).await;
    let from_twin = refine(twin.clone()).await;
    assert_eq!(from_file.dimensions(), (64, 64));
    let first = from_file.get_pixel(0, 0);
    assert!(from_file.pixels().any(|p| p != first), "a uniform image");
    assert_eq!(from_file.as_raw(), from_twin.as_raw());

    // Converted to diffusers: text encoder 2 alone, the same pixels.
    let key = checkpoint["key"].as_str().unwrap();
    let r = s
        .put_empty(&format!("/api/v2/models/convert/{key}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let converted = r.body.clone();
    assert_eq!(
        (converted["format"].clone(), converted["base"].clone()),
        (json!("diffusers"), json!("sdxl-refiner")),
        "{converted}"
    );
    let dir = s
        .root
        .path()
        .join("models")
        .join(converted["path"].as_str().unwrap());
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model_index.json")).unwrap()).unwrap();
    assert_eq!(index["_class_name"], "StableDiffusionXLImg2ImgPipeline");
    assert_eq!(index["text_encoder"], json!([null, null]));
    assert!(dir
        .join("text_encoder_2")
        .join("model.safetensors")
        .is_file());
    assert!(!dir.join("text_encoder").exists());
    let r = s.get(&format!("/api/v2/models/i/{key}"), None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(refine(converted).await.as_raw(), from_file.as_raw());
}

#[tokio::test]
async fn a_tiny_sdxl_refiner_refines_an_image_through_its_graph() {
    let s = TestServer::single_user().await;
    let dir = s.root.path().join("incoming").join("tiny-sdxl-refiner");
    write_tiny_sdxl_refiner(&dir, 7).expect("tiny refiner");
    let key = install_in_place(&s, &dir, "tiny-sdxl-refiner").await;
    let refiner = s.get(&format!("/api/v2/models/i/{key}"), None).await;
    assert_eq!(refiner.body["base"], "sdxl-refiner", "{}", refiner.text);
    let up = s
        .upload(
            None,
            "image_category=user&is_intermediate=false",
            png_bytes(64, 64),
            "image/png",
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);
    let image = up.body["image_name"].as_str().unwrap().to_owned();
    let graph = |aesthetic: f64| refiner_graph(&refiner.body, &image, aesthetic);
    let item = run_batch(&s, &graph(6.0)).await;
    assert_eq!(item["status"], "completed", "{item}");
    let first = image_pixels(&s, None, &item_image(&item)).await;
    assert_eq!(first.dimensions(), (64, 64));
    // The aesthetic score (the refiner's fifth time id) reaches the UNet.
    let item = run_batch(&s, &graph(3.0)).await;
    assert_eq!(item["status"], "completed", "{item}");
    assert_ne!(
        image_pixels(&s, None, &item_image(&item)).await.as_raw(),
        first.as_raw()
    );

    // Refiner prompts into an SDXL base UNet: a clear failure.
    let base_dir = s.root.path().join("incoming").join("tiny-sdxl-for-refiner");
    write_tiny_sdxl(&base_dir, 7).expect("tiny sdxl");
    let base_key = install_in_place(&s, &base_dir, "tiny-sdxl-for-refiner").await;
    let base = s
        .get(&format!("/api/v2/models/i/{base_key}"), None)
        .await
        .body;
    let mut mixed = graph(6.0);
    mixed["graph"]["nodes"]["base"] =
        json!({"id": "base", "type": "sdxl_model_loader", "model": identifier(&base)});
    for edge in mixed["graph"]["edges"].as_array_mut().unwrap() {
        if edge["destination"]["field"] == "unet" {
            edge["source"]["node_id"] = json!("base");
        }
    }
    let item = run_batch(&s, &mixed).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(
        item["error_message"].as_str().unwrap_or_default().contains(
            "SDXL refiner conditioning (from `sdxl_refiner_compel_prompt`) needs an SDXL refiner UNet"
        ),
        "{item}"
    );
    // A base model's CLIP 2 in a refiner prompt: refused too.
    let mut wrong = graph(6.0);
    wrong["graph"]["nodes"]["base"] =
        json!({"id": "base", "type": "sdxl_model_loader", "model": identifier(&base)});
    for edge in wrong["graph"]["edges"].as_array_mut().unwrap() {
        if edge["destination"]["node_id"] == "pos" {
            edge["source"]["node_id"] = json!("base");
        }
    }
    let item = run_batch(&s, &wrong).await;
    assert_eq!(item["status"], "failed", "{item}");
    assert!(
        item["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("is not an SDXL refiner"),
        "{item}"
    );
}

#[tokio::test]
async fn an_sdxl_lora_changes_the_image_and_weight_zero_does_not() {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    let dir = incoming.join("tiny-sdxl-lora-base");
    write_tiny_sdxl(&dir, 7).expect("tiny sdxl");
    let key = install_in_place(&s, &dir, "tiny-sdxl-lora-base").await;
    // kohya naming as SDXL LoRAs have it: lora_te1_ / lora_te2_ and LDM-named UNet keys.
    let lora_path = incoming.join("tiny-sdxl-lora.safetensors");
    write_tiny_sdxl_lora(&dir, &lora_path, SdxlLoraNaming::KohyaLdm, 4, 3).expect("tiny lora");
    let job = install(&s, None, lora_path.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let lora = job["config_out"].clone();
    assert_eq!(
        (lora["type"].clone(), lora["base"].clone()),
        (json!("lora"), json!("sdxl")),
        "{lora}"
    );
    let lora_key = lora["key"].clone();

    let body = json!({"prompt": "a (red)1.2 fox", "negative_prompt": "blurry", "model": key,
            "width": 64, "height": 64, "steps": 2, "scheduler": "euler", "seed": 42,
            "wait": true, "timeout_s": 120});
    let (plain, with_lora) =
        assert_lora_acts(&s, &body, &lora_key, "the LoRA changed nothing").await;

    // The endpoint's graph puts an `sdxl_lora_collection_loader` between the loader and the UNet, CLIP
    // and CLIP 2 users; run as is, it is the same generation.
    let mut dry = body_with_lora(&body, &lora_key, Some(0.8));
    dry["dry_run"] = json!(true);
    dry.as_object_mut().unwrap().remove("wait");
    let r = s.post("/api/v1/generate", None, &dry).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let batch = r.body["batch"].clone();
    let nodes = batch["graph"]["nodes"].as_object().unwrap();
    let id_of = |ty: &str| {
        nodes
            .values()
            .find(|n| n["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} node"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (apply, loader) = (
        id_of("sdxl_lora_collection_loader"),
        id_of("sdxl_model_loader"),
    );
    let item = run_batch(&s, &batch).await;
    assert_eq!(item["status"], "completed", "{item}");
    let full = image_pixels(&s, None, &item_image(&item)).await;
    assert_eq!(full.as_raw(), with_lora.as_raw());

    // CLIP 1 from the plain loader, CLIP 2 and the UNet through the LoRA: text encoder 2 keeps its LoRA
    // while text encoder 1 does not, so the image is neither the plain one nor the full LoRA's (the
    // patched encoders are cached per submodel and LoRA list, not shared).
    let mut partial = batch.clone();
    let mut rewired = 0;
    for edge in partial["graph"]["edges"].as_array_mut().unwrap() {
        if edge["source"]["node_id"] == apply.as_str() && edge["source"]["field"] == "clip" {
            edge["source"]["node_id"] = json!(loader);
            rewired += 1;
        }
    }
    assert_eq!(rewired, 2, "the two prompts' CLIP 1");
    let item = run_batch(&s, &partial).await;
    assert_eq!(item["status"], "completed", "{item}");
    let only_clip2 = image_pixels(&s, None, &item_image(&item)).await;
    assert_ne!(
        only_clip2.as_raw(),
        full.as_raw(),
        "CLIP 1's LoRA changed nothing"
    );
    assert_ne!(only_clip2.as_raw(), plain.as_raw(), "no LoRA applied");
}

/// `POST /api/v1/generate` with `refiner_model` (an Atelier extension): the base SDXL model
/// denoises up to `refiner_start`, the refiner takes its latents from there, the base's VAE
/// decodes; the metadata carries the refiner settings; the dry run's batch gives the same pixels.
#[tokio::test]
async fn the_generate_endpoint_chains_an_sdxl_refiner() {
    let s = TestServer::single_user().await;
    let incoming = s.root.path().join("incoming");
    write_tiny_sdxl(&incoming.join("tiny-sdxl"), 7).expect("tiny sdxl");
    let base = install_in_place(&s, &incoming.join("tiny-sdxl"), "tiny-sdxl").await;
    write_tiny_sdxl_refiner(&incoming.join("tiny-refiner"), 9).expect("tiny refiner");
    let refiner = install_in_place(&s, &incoming.join("tiny-refiner"), "tiny-refiner").await;
    let sd1 = tiny_model(&s, Family::Sd1, "tiny-sd1").await;
    let plain = json!({"prompt": "a (red)1.2 fox", "negative_prompt": "blurry", "model": base,
        "width": 64, "height": 64, "steps": 5, "scheduler": "euler", "seed": 42, "wait": true,
        "timeout_s": 120});
    let mut refined = plain.clone();
    refined["refiner_model"] = json!("tiny-refiner"); // a unique name works like the key
    refined["refiner_steps"] = json!(5);
    refined["refiner_start"] = json!(0.6);

    // The graph: the base stops at refiner_start, the refiner goes on from there.
    let mut dry = refined.clone();
    dry["dry_run"] = json!(true);
    let r = s.post("/api/v1/generate", None, &dry).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let batch = r.body["batch"].clone();
    let nodes = batch["graph"]["nodes"].as_object().unwrap();
    let of_type = |t: &str| -> Vec<&Value> { nodes.values().filter(|n| n["type"] == t).collect() };
    let denoisers = of_type("denoise_latents");
    assert_eq!(denoisers.len(), 2);
    let (first, second) = if denoisers[0]["id"].as_str().unwrap().starts_with("refiner_") {
        (denoisers[1], denoisers[0])
    } else {
        (denoisers[0], denoisers[1])
    };
    assert_eq!(
        (
            first["denoising_start"].clone(),
            first["denoising_end"].clone()
        ),
        (json!(0.0), json!(0.6))
    );
    assert_eq!(
        (
            second["denoising_start"].clone(),
            second["denoising_end"].clone()
        ),
        (json!(0.6), json!(1))
    );
    assert_eq!(second["scheduler"], "euler");
    assert_eq!(second["cfg_scale"], 7.5);
    assert_eq!(
        of_type("sdxl_refiner_model_loader")[0]["model"]["key"],
        json!(refiner)
    );
    let scores: Vec<f64> = of_type("sdxl_refiner_compel_prompt")
        .iter()
        .map(|n| n["aesthetic_score"].as_f64().unwrap())
        .collect();
    assert!(scores.contains(&6.0) && scores.contains(&2.5), "{scores:?}");

    // A real run: completed, refiner metadata, and other pixels than the base alone.
    let r = s.post("/api/v1/generate", None, &refined).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let meta = s
        .get(&format!("/api/v1/images/i/{name}/metadata"), None)
        .await;
    assert_eq!(meta.body["refiner_model"]["key"], json!(refiner));
    assert_eq!(meta.body["refiner_start"], 0.6);
    assert_eq!(meta.body["refiner_steps"], 5);
    assert_eq!(meta.body["refiner_scheduler"], "euler");
    assert_eq!(meta.body["refiner_positive_aesthetic_score"], 6.0);
    let with_refiner = image_pixels(&s, None, &name).await;
    let r = s.post("/api/v1/generate", None, &plain).await;
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let without = image_pixels(
        &s,
        None,
        r.body["images"][0]["image_name"].as_str().unwrap(),
    )
    .await;
    assert_ne!(with_refiner.as_raw(), without.as_raw());
    // The dry run's batch, enqueued as it is, makes the same image.
    let item = run_batch(&s, &batch).await;
    assert_eq!(item["status"], "completed", "{item}");
    let again = image_pixels(&s, None, &item_image(&item)).await;
    assert_eq!(again.as_raw(), with_refiner.as_raw());

    // Refusals name the field.
    let refused = |body: Value, field: &'static str, text: &'static str| {
        let s = &s;
        async move {
            let r = s.post("/api/v1/generate", None, &body).await;
            assert_eq!(r.status, 422, "{}", r.text);
            assert_eq!(
                r.body["detail"][0]["loc"],
                json!(["body", field]),
                "{}",
                r.text
            );
            let msg = r.body["detail"][0]["msg"].as_str().unwrap().to_owned();
            assert!(msg.contains(text), "{msg}");
        }
    };
    let mut body = plain.clone();
    body["refiner_steps"] = json!(10);
    refused(body, "refiner_steps", "refiner_steps needs refiner_model").await;
    let mut body = refined.clone();
    body["model"] = json!(sd1);
    refused(body, "refiner_model", "a refiner needs an sdxl main model").await;
    let mut body = refined.clone();
    body["refiner_model"] = json!(base);
    refused(body, "refiner_model", "is not an SDXL refiner").await;
    let mut body = refined.clone();
    body["refiner_scheduler"] = json!("no_such_scheduler");
    refused(body, "refiner_scheduler", "is not supported by this server").await;
    let mut body = refined.clone();
    body["refiner_start"] = json!(1.5);
    refused(body, "refiner_start", "less than or equal to 1").await;
    let mut body = refined.clone();
    body["refiner_model"] = json!("missing");
    let r = s.post("/api/v1/generate", None, &body).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// Generates `prompt` on `model` as `token` through `POST /api/v1/generate`; returns the pixels.
async fn generate_prompt(
    s: &TestServer,
    token: &str,
    model: &Value,
    prompt: &str,
) -> image::RgbImage {
    let body = json!({"prompt": prompt, "negative_prompt": "blurry", "model": model,
        "width": 64, "height": 64, "steps": 2, "scheduler": "euler", "seed": 5, "wait": true,
        "timeout_s": 120});
    let r = s.post("/api/v1/generate", Some(token), &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"].as_str().unwrap();
    image_pixels(s, Some(token), name).await
}

#[tokio::test]
async fn a_textual_inversion_embedding_named_in_a_prompt_changes_the_image() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "ti-user@example.com").await;
    let incoming = s.root.path().join("incoming");
    // The twin's 768-wide text encoder is what an sd-1 embedding fits.
    let model_dir = incoming.join("tiny-sd1-ti-base");
    write_tiny_sd1_twin(&model_dir, 11).expect("tiny model");
    let job = install(&s, Some(&admin), model_dir.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let key = job["config_out"]["key"].clone();

    let with_trigger = "a photo of <tiny-cat> on a mat";
    let plain = "a photo of a cat on a mat";
    let trigger_before = generate_prompt(&s, &user, &key, with_trigger).await;
    let plain_before = generate_prompt(&s, &user, &key, plain).await;

    // A two-vector A1111 embedding (`emb_params`), 768 wide: sd-1.
    let embedding = incoming.join("tiny-cat.safetensors");
    let values: Vec<f32> = atelier_engine::noise::randn(3, 2 * 768)
        .iter()
        .map(|v| v * 0.05)
        .collect();
    atelier_engine::weights::write_f32_safetensors(
        &embedding,
        &[("emb_params".to_owned(), vec![2, 768], values)],
    )
    .expect("embedding");
    // Installing is for admins.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("source", embedding.to_str().unwrap())
        .append_pair("inplace", "true")
        .finish();
    let r = s
        .post(
            &format!("/api/v2/models/install?{query}"),
            Some(&user),
            &json!({}),
        )
        .await;
    r.assert_detail(403, "Admin privileges required");
    let job = install(&s, Some(&admin), embedding.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let record = job["config_out"].clone();
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "cover_image")
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "base",
            "description",
            "file_size",
            "format",
            "hash",
            "key",
            "name",
            "path",
            "source",
            "source_api_response",
            "source_type",
            "source_url",
            "type"
        ],
        "{record}"
    );
    assert_eq!(
        (
            &record["type"],
            &record["format"],
            &record["base"],
            &record["name"]
        ),
        (
            &json!("embedding"),
            &json!("embedding_file"),
            &json!("sd-1"),
            &json!("tiny-cat")
        ),
        "{record}"
    );

    // The user's prompt naming it now encodes the embedding's vectors; the trigger by key does the same.
    let trigger_after = generate_prompt(&s, &user, &key, with_trigger).await;
    assert_ne!(
        trigger_before.as_raw(),
        trigger_after.as_raw(),
        "the embedding changed nothing"
    );
    let ti_key = record["key"].as_str().unwrap();
    let by_key = generate_prompt(&s, &user, &key, &format!("a photo of <{ti_key}> on a mat")).await;
    assert_eq!(trigger_after.as_raw(), by_key.as_raw(), "by key");
    // Prompts without the trigger are unchanged.
    let plain_after = generate_prompt(&s, &user, &key, plain).await;
    assert_eq!(plain_before.as_raw(), plain_after.as_raw());
    // An embedding of another base stays plain text.
    let dog = "a photo of <tiny-dog> on a mat";
    let dog_before = generate_prompt(&s, &user, &key, dog).await;
    let sd2_embedding = incoming.join("tiny-dog.safetensors");
    atelier_engine::weights::write_f32_safetensors(
        &sd2_embedding,
        &[("<tiny-dog>".to_owned(), vec![1024], vec![0.5; 1024])],
    )
    .expect("embedding");
    let job = install(&s, Some(&admin), sd2_embedding.to_str().unwrap(), true).await;
    assert_eq!(job["config_out"]["base"], "sd-2", "{job}");
    let dog_after = generate_prompt(&s, &user, &key, dog).await;
    assert_eq!(dog_before.as_raw(), dog_after.as_raw());

    // Embeddings of unknown widths and pickled ones are refused, the job saying why.
    let odd = incoming.join("odd-width.safetensors");
    atelier_engine::weights::write_f32_safetensors(
        &odd,
        &[("emb_params".to_owned(), vec![2, 512], vec![0.0; 1024])],
    )
    .expect("embedding");
    let pickled = incoming.join("old-embedding.pt");
    std::fs::write(&pickled, b"PK\x03\x04 pickled").unwrap();
    for (path, reason, text) in [
        (
            &odd,
            "InvalidModelConfigException",
            "is not a textual-inversion embedding of a supported shape",
        ),
        (&pickled, "UnsafeModelFormatError", "is a pickle checkpoint"),
    ] {
        let job = install(&s, Some(&admin), path.to_str().unwrap(), true).await;
        assert_eq!(
            (job["status"].as_str(), job["error_reason"].as_str()),
            (Some("error"), Some(reason)),
            "{job}"
        );
        assert!(job["error"].as_str().unwrap().contains(text), "{job}");
    }
}

#[tokio::test]
async fn sdxl_prompts_look_up_embeddings_of_the_sdxl_base() {
    let s = TestServer::single_user().await;
    let dir = s.root.path().join("incoming").join("tiny-sdxl-ti");
    write_tiny_sdxl(&dir, 7).expect("tiny sdxl");
    let key = install_in_place(&s, &dir, "tiny-sdxl-ti").await;
    // A real-sized SDXL embedding: found for the SDXL prompt, but its vectors (768 and 1280 wide) do
    // not fit the tiny encoders (32 and 64), which fails the node as in InvokeAI.
    let embedding = s.root.path().join("incoming").join("xl-emb.safetensors");
    atelier_engine::weights::write_f32_safetensors(
        &embedding,
        &[
            ("clip_g".to_owned(), vec![1, 1280], vec![0.1; 1280]),
            ("clip_l".to_owned(), vec![1, 768], vec![0.1; 768]),
        ],
    )
    .expect("embedding");
    let job = install(&s, None, embedding.to_str().unwrap(), true).await;
    assert_eq!(job["config_out"]["base"], "sdxl", "{job}");
    let batch = |prompt: &str| {
        let body = json!({"prompt": prompt, "negative_prompt": "", "model": key, "width": 64,
            "height": 64, "steps": 2, "scheduler": "euler", "seed": 3, "dry_run": true});
        body
    };
    for (prompt, failure) in [
        ("a <xl-emb> fox", Some("Cannot load embedding for <xl-emb>")),
        ("a <other> fox", None),
        ("a fox", None),
    ] {
        let r = s.post("/api/v1/generate", None, &batch(prompt)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let item = run_batch(&s, &r.body["batch"]).await;
        match failure {
            Some(text) => {
                assert_eq!(item["status"], "failed", "{item}");
                assert!(
                    item["error_message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(text),
                    "{item}"
                );
            }
            None => assert_eq!(item["status"], "completed", "{prompt}: {item}"),
        }
    }
}
