//! The model manager (models.md): identification from tiny hand-written safetensors files and
//! diffusers folders, installs from paths and URLs, the download guard, access rules, the
//! admin-only install events, start-up scanning and `atelier model …`.

use crate::common::socket::{Connect, SocketClient};
use crate::common::*;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const UNET: &str = "model.diffusion_model.";

/// Writes a safetensors file: the JSON header and zeroed F16 data for `tensors`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<u64>)]) {
    let mut header = Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let len = shape.iter().product::<u64>() * 2;
        header.insert(
            name.clone(),
            json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let text = Value::Object(header).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.resize(bytes.len() + offset as usize, 0);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A single-file LDM checkpoint: the two keys the probe reads.
pub fn checkpoint(path: &Path, attn_block: u32, width: u64, in_channels: u64) {
    write_safetensors(
        path,
        &[
            (
                format!("{UNET}input_blocks.0.0.weight"),
                vec![320, in_channels, 3, 3],
            ),
            (
                format!("{UNET}input_blocks.{attn_block}.1.transformer_blocks.0.attn2.to_k.weight"),
                vec![4, width],
            ),
        ],
    );
}

pub fn sd1(path: &Path) {
    checkpoint(path, 2, 768, 4);
}

pub fn kohya_lora(path: &Path, width: u64) {
    let k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
    write_safetensors(
        path,
        &[
            (format!("{k}.lora_down.weight"), vec![4, width]),
            (format!("{k}.lora_up.weight"), vec![320, 4]),
            (format!("{k}.alpha"), vec![]),
        ],
    );
}

fn diffusers_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("unet/config.json"),
        r#"{"_class_name": "UNet2DConditionModel", "in_channels": 9, "cross_attention_dim": 768}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        r#"{"prediction_type": "epsilon"}"#,
    )
    .unwrap();
    write_safetensors(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        &[("conv_in.weight".into(), vec![320, 9, 3, 3])],
    );
}

fn blake3_of(path: &Path) -> String {
    format!(
        "blake3:{}",
        blake3::hash(&std::fs::read(path).unwrap()).to_hex()
    )
}

/// Starts an install and waits for its job to end; returns the final job.
pub async fn install(s: &TestServer, token: Option<&str>, source: &str, inplace: bool) -> Value {
    install_with(s, token, source, inplace, &json!({})).await
}

pub async fn install_with(
    s: &TestServer,
    token: Option<&str>,
    source: &str,
    inplace: bool,
    body: &Value,
) -> Value {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("source", source)
        .append_pair("inplace", if inplace { "true" } else { "false" })
        .finish();
    let r = s
        .post(&format!("/api/v2/models/install?{query}"), token, body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    wait_job(s, token, r.body["id"].as_i64().unwrap()).await
}

pub async fn wait_job(s: &TestServer, token: Option<&str>, id: i64) -> Value {
    for _ in 0..400 {
        let r = s.get(&format!("/api/v2/models/install/{id}"), token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if matches!(
            r.body["status"].as_str(),
            Some("completed" | "error" | "cancelled")
        ) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("install job {id} did not finish");
}

pub fn outside(s: &TestServer, name: &str) -> PathBuf {
    s.root.path().join("incoming").join(name)
}

#[tokio::test]
async fn installs_from_a_path_in_place_or_moved_and_deletes_only_its_own_files() {
    let s = TestServer::single_user().await;
    let models = s.root.path().join("models");

    // In place: the record points at the file where it is.
    let file = outside(&s, "dreamshaper_8.safetensors");
    sd1(&file);
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["source"],
        json!({"type": "local", "path": file.canonicalize().unwrap().to_str().unwrap(), "inplace": true})
    );
    let rec = job["config_out"].clone();
    let key = rec["key"].as_str().unwrap().to_owned();
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(
        rec,
        json!({"key": key, "hash": blake3_of(&file),
            "path": file.canonicalize().unwrap().to_str().unwrap(), "file_size": size,
            "name": "dreamshaper_8", "description": null,
            "source": file.canonicalize().unwrap().to_str().unwrap(), "source_type": "path",
            "source_api_response": null, "source_url": null, "cover_image": null,
            "type": "main", "trigger_phrases": null,
            "default_settings": {"vae": null, "vae_precision": null, "scheduler": null, "steps": null,
                "cfg_scale": null, "cfg_rescale_multiplier": null, "width": 512, "height": 512,
                "guidance": null, "cpu_only": null, "fp8_storage": null},
            "config_path": null, "prediction_type": "epsilon", "variant": "normal",
            "format": "checkpoint", "base": "sd-1"})
    );
    let r = s.get(&format!("/api/v2/models/i/{key}"), None).await;
    assert_eq!((r.status, &r.body), (200, &rec));

    // Moved: the file goes to <models>/<key>/ and the path is relative.
    let xl = outside(&s, "juggernaut.safetensors");
    checkpoint(&xl, 4, 2048, 4);
    let hash = blake3_of(&xl);
    let job = install_with(
        &s,
        None,
        xl.to_str().unwrap(),
        false,
        &json!({"name": "Jugg", "description": "xl"}),
    )
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    let xl_rec = &job["config_out"];
    let xl_key = xl_rec["key"].as_str().unwrap();
    assert_eq!(xl_rec["path"], format!("{xl_key}/juggernaut.safetensors"));
    assert_eq!(
        (xl_rec["name"].as_str(), xl_rec["description"].as_str()),
        (Some("Jugg"), Some("xl"))
    );
    assert_eq!(
        (xl_rec["base"].as_str(), xl_rec["hash"].as_str()),
        (Some("sdxl"), Some(hash.as_str()))
    );
    assert_eq!(xl_rec["default_settings"]["width"], 1024);
    assert!(!xl.exists(), "the source file was moved");
    let moved = models.join(xl_key).join("juggernaut.safetensors");
    assert!(moved.is_file());

    // Listing: name order is case-insensitive; filters narrow it.
    let r = s.get("/api/v2/models/", None).await;
    let names: Vec<&str> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dreamshaper_8", "Jugg"]);
    let r = s
        .get("/api/v2/models/?base_models=sdxl&base_models=sd-1", None)
        .await;
    let bases: Vec<&str> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["base"].as_str().unwrap())
        .collect();
    assert_eq!(
        bases,
        ["sdxl", "sd-1"],
        "one block per base, in request order"
    );
    let r = s.get("/api/v2/models/?model_type=lora", None).await;
    assert_eq!(r.body, json!({"models": []}));
    let r = s
        .get(&format!("/api/v2/models/get_by_hash?hash={hash}"), None)
        .await;
    assert_eq!(r.body["key"], xl_key);
    let r = s
        .get(
            "/api/v2/models/get_by_attrs?name=Jugg&type=main&base=sdxl",
            None,
        )
        .await;
    assert_eq!(r.body["key"], xl_key);

    // Installing the same file in place again is a duplicate path: a job error.
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "error");
    assert_eq!(job["error_reason"], "DuplicateModelException");
    assert_eq!(
        job["error"],
        format!(
            "A model with path '{}' is already installed",
            file.canonicalize().unwrap().display()
        )
    );

    // Deleting: our own files go, files elsewhere stay.
    let r = s.delete(&format!("/api/v2/models/i/{xl_key}"), None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!moved.exists() && !models.join(xl_key).exists());
    let r = s.delete(&format!("/api/v2/models/i/{key}"), None).await;
    assert_eq!(r.status, 204);
    assert!(
        file.is_file(),
        "an in-place model's file is only unregistered"
    );
    s.get(&format!("/api/v2/models/i/{key}"), None)
        .await
        .assert_detail(404, "model not found");
    s.delete(&format!("/api/v2/models/i/{key}"), None)
        .await
        .assert_detail(404, "model not found");
}

#[tokio::test]
async fn identifies_each_supported_family_and_refuses_the_rest() {
    let s = TestServer::single_user().await;
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, Value)> = vec![
        (
            "sd2.safetensors",
            Box::new(|p: &Path| checkpoint(p, 2, 1024, 4)),
            json!({"type": "main", "format": "checkpoint", "base": "sd-2", "variant": "normal", "prediction_type": "v_prediction", "width": 768}),
        ),
        (
            "sd2-depth.safetensors",
            Box::new(|p: &Path| checkpoint(p, 2, 1024, 5)),
            json!({"type": "main", "format": "checkpoint", "base": "sd-2", "variant": "depth", "prediction_type": "v_prediction", "width": 768}),
        ),
        (
            "sd1-inpaint.safetensors",
            Box::new(|p: &Path| checkpoint(p, 2, 768, 9)),
            json!({"type": "main", "format": "checkpoint", "base": "sd-1", "variant": "inpaint", "prediction_type": "epsilon", "width": 512}),
        ),
        (
            "refiner.safetensors",
            Box::new(|p: &Path| checkpoint(p, 4, 1280, 4)),
            json!({"type": "main", "format": "checkpoint", "base": "sdxl-refiner", "variant": "normal", "prediction_type": "epsilon", "width": null}),
        ),
        (
            "sd15-inpaint-diffusers",
            Box::new(diffusers_folder),
            json!({"type": "main", "format": "diffusers", "base": "sd-1", "variant": "inpaint", "prediction_type": "epsilon", "width": 512}),
        ),
        (
            "detail.safetensors",
            Box::new(|p: &Path| kohya_lora(p, 768)),
            json!({"type": "lora", "format": "lycoris", "base": "sd-1", "variant": null, "prediction_type": null, "width": null}),
        ),
        (
            "xl-lora.safetensors",
            Box::new(|p: &Path| kohya_lora(p, 2048)),
            json!({"type": "lora", "format": "lycoris", "base": "sdxl", "variant": null, "prediction_type": null, "width": null}),
        ),
        (
            "sdxl_vae.safetensors",
            Box::new(|p: &Path| {
                write_safetensors(
                    p,
                    &[
                        ("encoder.conv_in.weight".into(), vec![128, 3, 3, 3]),
                        ("decoder.conv_out.weight".into(), vec![3, 128, 3, 3]),
                    ],
                )
            }),
            json!({"type": "vae", "format": "checkpoint", "base": "sdxl", "variant": null, "prediction_type": null, "width": null}),
        ),
    ];
    for (name, make, want) in cases {
        let path = outside(&s, name);
        make(&path);
        let job = install(&s, None, path.to_str().unwrap(), true).await;
        assert_eq!(job["status"], "completed", "{name}: {job}");
        let rec = &job["config_out"];
        let got = json!({"type": rec["type"], "format": rec["format"], "base": rec["base"],
            "variant": rec.get("variant").cloned().unwrap_or(Value::Null),
            "prediction_type": rec.get("prediction_type").cloned().unwrap_or(Value::Null),
            "width": rec["default_settings"]["width"]});
        assert_eq!(got, want, "{name}");
    }
    let lora = s
        .get("/api/v2/models/?model_type=lora&order_by=name", None)
        .await;
    assert_eq!(
        lora.body["models"][0]["default_settings"],
        json!({"weight": null, "weight_min": null, "weight_max": null})
    );
    let folder = s.get("/api/v2/models/?model_format=diffusers", None).await;
    assert_eq!(folder.body["models"][0]["repo_variant"], "");

    // Refusals end the job in `error` with a clear reason.
    let pickle = outside(&s, "old.ckpt");
    std::fs::write(&pickle, b"PK\x03\x04 pickled").unwrap();
    let corrupt = outside(&s, "broken.safetensors");
    std::fs::write(&corrupt, [200, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
    let truncated = outside(&s, "truncated.safetensors");
    sd1(&truncated);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let unknown = outside(&s, "mystery.safetensors");
    write_safetensors(&unknown, &[("some.weight".into(), vec![2, 2])]);
    for (path, reason, contains) in [
        (
            &pickle,
            "UnsafeModelFormatError",
            "'old.ckpt' is a pickle checkpoint: loading it could run arbitrary code",
        ),
        (
            &corrupt,
            "SafetensorError",
            "'broken.safetensors' is not a valid safetensors file",
        ),
        (&truncated, "SafetensorError", "truncated"),
        (
            &unknown,
            "InvalidModelConfigException",
            "Unable to identify model format",
        ),
    ] {
        let job = install(&s, None, path.to_str().unwrap(), false).await;
        assert_eq!(
            (job["status"].as_str(), job["error_reason"].as_str()),
            (Some("error"), Some(reason)),
            "{job}"
        );
        assert!(job["error"].as_str().unwrap().contains(contains), "{job}");
        assert!(path.exists(), "a refused file is not moved");
    }
}

#[tokio::test]
async fn non_admins_read_but_cannot_write() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "user@example.com").await;
    let file = outside(&s, "m.safetensors");
    sd1(&file);
    let job = install(&s, Some(&admin), file.to_str().unwrap(), true).await;
    let key = job["config_out"]["key"].as_str().unwrap().to_owned();

    for path in [
        "/api/v2/models/".to_owned(),
        "/api/v2/models/missing".to_owned(),
        format!("/api/v2/models/i/{key}"),
        "/api/v2/models/get_by_attrs?name=m&type=main&base=sd-1".to_owned(),
        format!("/api/v2/models/get_by_hash?hash={}", blake3_of(&file)),
    ] {
        let r = s.get(&path, Some(&user)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    let body = json!({});
    let keys = json!({"keys": [key]});
    let writes: Vec<(reqwest::Method, String, Option<&Value>)> = vec![
        (
            reqwest::Method::PATCH,
            format!("/api/v2/models/i/{key}"),
            Some(&body),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v2/models/i/{key}"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v2/models/i/{key}/reidentify"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v2/models/i/bulk_delete".to_owned(),
            Some(&keys),
        ),
        (
            reqwest::Method::POST,
            "/api/v2/models/i/bulk_reidentify".to_owned(),
            Some(&keys),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v2/models/i/{key}/image"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/scan_folder?scan_path=/tmp".to_owned(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v2/models/install?source=/tmp".to_owned(),
            Some(&body),
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/install".to_owned(),
            None,
        ),
        (
            reqwest::Method::DELETE,
            "/api/v2/models/install".to_owned(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/install/0".to_owned(),
            None,
        ),
        (
            reqwest::Method::DELETE,
            "/api/v2/models/install/0".to_owned(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v2/models/install/0/pause".to_owned(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/starter_models".to_owned(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/stats".to_owned(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v2/models/empty_model_cache".to_owned(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/api/v2/models/sync/orphaned".to_owned(),
            None,
        ),
    ];
    for (method, path, body) in writes {
        let r = s.send(method.clone(), &path, Some(&user), body, &[]).await;
        r.assert_detail(403, "Admin privileges required");
        let r = s.send(method, &path, None, None, &[]).await;
        assert_eq!(r.status, 401, "{path}");
    }
    s.get("/api/v2/models/", None)
        .await
        .assert_detail(401, "Authentication required");
    // The cover image is public (404 until one is set).
    s.get(&format!("/api/v2/models/i/{key}/image"), None)
        .await
        .assert_detail(404, "Not Found");
    assert!(
        s.get(&format!("/api/v2/models/i/{key}"), Some(&user))
            .await
            .body["key"]
            == key
    );
}

#[tokio::test]
async fn patch_validation_images_and_job_errors() {
    let s = TestServer::single_user().await;
    let file = outside(&s, "m.safetensors");
    sd1(&file);
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    let key = job["config_out"]["key"].as_str().unwrap().to_owned();
    let at = format!("/api/v2/models/i/{key}");

    let r = s
        .patch(
            &at,
            None,
            &json!({"name": "Renamed", "trigger_phrases": ["a", "a", "b"],
        "default_settings": {"steps": 30, "width": 640, "height": 512}, "unknown_field": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["name"], "Renamed");
    assert_eq!(r.body["trigger_phrases"], json!(["a", "b"]));
    assert_eq!(r.body["default_settings"]["steps"], 30);
    assert_eq!(r.body["default_settings"]["cfg_scale"], Value::Null);
    s.patch(&at, None, &json!({"variant": "depth"}))
        .await
        .assert_detail(409, "Invalid variant 'depth' for base 'sd-1'");
    s.patch(&at, None, &json!({"source_url": "ftp://example.com/x"}))
        .await
        .assert_detail(
            409,
            "Invalid source_url 'ftp://example.com/x': only http and https URLs are allowed",
        );
    s.patch(&at, None, &json!({"default_settings": {"width": 100}}))
        .await
        .assert_detail(
            409,
            "default_settings.width must be a multiple of 8 of at least 64",
        );
    s.patch("/api/v2/models/i/nope", None, &json!({"name": "x"}))
        .await
        .assert_detail(404, "model not found");
    let r = s.post(&format!("{at}/reidentify"), None, &json!({})).await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (200, Some("Renamed")),
        "{}",
        r.text
    );

    // Cover image: admin upload, public read, computed URL on the record.
    let part = reqwest::multipart::Part::bytes(png_bytes(300, 200))
        .file_name("c.png")
        .mime_str("image/png")
        .unwrap();
    let r = s
        .client
        .patch(s.url(&format!("{at}/image")))
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, headers, bytes) = s.get_bytes(&format!("{at}/image"), None, &[]).await;
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (200, "image/png")
    );
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (256, 171));
    let cover = s.get(&at, None).await.body["cover_image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        cover.starts_with(&format!("api/v2/models/i/{key}/image?")),
        "{cover}"
    );
    let part = reqwest::multipart::Part::bytes(b"hello".to_vec())
        .file_name("c.txt")
        .mime_str("text/plain")
        .unwrap();
    let r = Resp::read(
        s.client
            .patch(s.url(&format!("{at}/image")))
            .multipart(reqwest::multipart::Form::new().part("image", part))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_detail(415, "Not an image");
    assert_eq!(s.delete(&format!("{at}/image"), None).await.status, 204);
    assert_eq!(s.get(&at, None).await.body["cover_image"], Value::Null);

    // Query and source validation.
    let r = s.get("/api/v2/models/?model_type=not-a-type", None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    s.post(
        "/api/v2/models/install?source=nothing-here",
        None,
        &json!({}),
    )
    .await
    .assert_detail(409, "Unsupported model source: 'nothing-here'");
    let r = s
        .post_empty("/api/v2/models/install?source=/tmp", None)
        .await;
    assert_eq!(r.status, 422, "the body is required: {}", r.text);
    s.get("/api/v2/models/install/999", None)
        .await
        .assert_detail(404, "No job with id 999 known");
    s.delete("/api/v2/models/install/999", None)
        .await
        .assert_detail(415, "No job with id 999 known");
    s.post_empty("/api/v2/models/install/999/resume", None)
        .await
        .assert_detail(415, "No job with id 999 known");
    let r = s.get("/api/v2/models/install", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(s.delete("/api/v2/models/install", None).await.status, 204);
    assert_eq!(s.get("/api/v2/models/install", None).await.body, json!([]));

    // scan_folder: one message whether the path is missing or not a folder.
    s.get("/api/v2/models/scan_folder?scan_path=/no/such/dir", None)
        .await
        .assert_detail(400, "The search path '/no/such/dir' could not be scanned");
    let incoming = s.root.path().join("incoming");
    let r = s
        .get(
            &format!(
                "/api/v2/models/scan_folder?scan_path={}",
                incoming.display()
            ),
            None,
        )
        .await;
    assert_eq!(
        r.body,
        json!([{"path": file.display().to_string(), "is_installed": true}])
    );

    // Bulk delete reports per-key failures.
    let r = s
        .post(
            "/api/v2/models/i/bulk_delete",
            None,
            &json!({"keys": [key, "missing-key"]}),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"deleted": [key], "failed": [{"key": "missing-key", "error": "model not found"}]})
    );
}

/// Serves `files` (path → bytes) on 127.0.0.1, plus `/redirect?to=…` answering 302.
async fn file_server(files: Vec<(&'static str, Vec<u8>)>) -> String {
    use axum::extract::Query;
    use axum::response::IntoResponse;
    let mut app = axum::Router::new().route(
        "/redirect",
        axum::routing::get(
            |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                axum::response::Redirect::to(&q["to"]).into_response()
            },
        ),
    );
    for (path, bytes) in files {
        app = app.route(
            path,
            axum::routing::get(move || async move { bytes.clone() }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn installs_from_a_url_with_events_for_admins_only() {
    let s = TestServer::builder()
        .multiuser(true)
        .set("allow_private_download_urls", json!(true))
        .start()
        .await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "user@example.com").await;
    let tmp = tempfile::tempdir().unwrap();
    sd1(&tmp.path().join("m.safetensors"));
    let bytes = std::fs::read(tmp.path().join("m.safetensors")).unwrap();
    let hash = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    let base = file_server(vec![("/files/remote%20model.safetensors", bytes.clone())]).await;

    let (mut admin_socket, outcome) =
        SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;
    assert_eq!(outcome, Connect::Accepted);
    let (mut user_socket, outcome) =
        SocketClient::connect(&s.base, Some(json!({"token": user})), None).await;
    assert_eq!(outcome, Connect::Accepted);

    // Through a redirect, to check that hops are followed.
    let target = format!("{base}/files/remote%20model.safetensors");
    let url = format!(
        "{base}/redirect?to={}",
        form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
    );
    let job = install(&s, Some(&admin), &url, false).await;
    assert_eq!(job["status"], "completed", "{job}");
    let rec = &job["config_out"];
    let key = rec["key"].as_str().unwrap();
    assert_eq!(
        (
            rec["source"].as_str(),
            rec["source_type"].as_str(),
            rec["hash"].as_str(),
            rec["base"].as_str()
        ),
        (
            Some(url.as_str()),
            Some("url"),
            Some(hash.as_str()),
            Some("sd-1")
        )
    );
    assert_eq!(rec["path"], format!("{key}/remote model.safetensors"));
    assert_eq!(
        job["source"],
        json!({"type": "url", "url": url, "access_token": null})
    );
    assert_eq!(
        (job["bytes"].as_u64(), job["total_bytes"].as_u64()),
        (Some(bytes.len() as u64), Some(bytes.len() as u64))
    );
    assert_eq!(job["download_parts"][0]["status"], "completed");
    let models = s.root.path().join("models");
    assert!(models.join(key).join("remote model.safetensors").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmpinstall_"))
        .collect();
    assert!(leftovers.is_empty(), "the temp folder is removed");

    // The admin hears the whole sequence, in order.
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("model_install_complete") {
        let (name, payload) =
            tokio::time::timeout(Duration::from_secs(10), admin_socket.next_event())
                .await
                .unwrap()
                .unwrap();
        assert!(payload["timestamp"].is_i64(), "{name}");
        if name == "model_install_complete" {
            assert_eq!(
                (payload["id"].clone(), payload["key"].clone()),
                (job["id"].clone(), json!(key))
            );
            assert_eq!(payload["config"]["hash"], hash);
        }
        names.push(name);
    }
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
    };
    assert_eq!(pos("download_started"), 0, "{names:?}");
    assert!(
        pos("download_progress") < pos("download_complete"),
        "{names:?}"
    );
    assert!(pos("model_install_download_progress") < pos("model_install_downloads_complete"));
    assert!(pos("download_complete") < pos("model_install_downloads_complete"));
    assert!(pos("model_install_downloads_complete") < pos("model_install_started"));
    assert!(pos("model_install_started") < pos("model_install_complete"));

    // The user heard none of it: the first event they get is their own workflow's.
    let r = s
        .post(
            "/api/v1/workflows/",
            Some(&user),
            &json!({"workflow": {"name": "w", "author": "", "description": "",
        "version": "1.0.0", "contact": "", "tags": "", "notes": "", "exposedFields": [],
        "meta": {"version": "3.0.0", "category": "user"}, "nodes": [], "edges": []}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (name, _) = tokio::time::timeout(Duration::from_secs(10), user_socket.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(name, "workflow_created");
}

#[tokio::test]
async fn the_download_guard_refuses_private_addresses_by_default() {
    let s = TestServer::builder().multiuser(true).start().await;
    let admin = s.setup_admin().await;
    let tmp = tempfile::tempdir().unwrap();
    sd1(&tmp.path().join("m.safetensors"));
    let base = file_server(vec![(
        "/m.safetensors",
        std::fs::read(tmp.path().join("m.safetensors")).unwrap(),
    )])
    .await;
    let (mut socket, _) = SocketClient::connect(&s.base, Some(json!({"token": admin})), None).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    for (url, host) in [
        (format!("{base}/m.safetensors"), "127.0.0.1".to_owned()),
        (
            format!("http://0x7f.1:{port}/m.safetensors"),
            "127.0.0.1".to_owned(),
        ),
        (
            "http://10.1.2.3/m.safetensors".to_owned(),
            "10.1.2.3".to_owned(),
        ),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "169.254.169.254".to_owned(),
        ),
        (
            format!("http://localhost:{port}/m.safetensors"),
            "localhost".to_owned(),
        ),
    ] {
        let job = install(&s, Some(&admin), &url, false).await;
        assert_eq!(
            (job["status"].as_str(), job["error_reason"].as_str()),
            (Some("error"), Some("UnsafeDownloadURLError")),
            "{url}: {job}"
        );
        assert_eq!(job["error"], format!("Refusing to download from '{host}': it resolves to a non-public address. Set `allow_private_download_urls` in invokeai.yaml to permit downloads from loopback and private-network addresses."));
        assert_eq!(job["download_parts"][0]["status"], "error");
    }
    // Events: download_error then model_install_error, for the admin.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (name, payload) = tokio::time::timeout(Duration::from_secs(10), socket.next_event())
            .await
            .unwrap()
            .unwrap();
        if name == "download_error" || name == "model_install_error" {
            assert_eq!(payload["error_type"], "UnsafeDownloadURLError");
        }
        seen.push(name);
    }
    assert_eq!(
        seen,
        ["download_started", "download_error", "model_install_error"]
    );
    assert!(std::fs::read_dir(s.root.path().join("models"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with("tmpinstall_")));
}

#[tokio::test]
async fn start_up_scans_when_asked_and_reports_missing_files() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    sd1(&models.join("found").join("scanned.safetensors"));
    diffusers_folder(&models.join("sd15-diffusers"));
    std::fs::write(models.join("notes.safetensors"), b"garbage").unwrap();
    std::fs::create_dir_all(models.join("tmpinstall_stale")).unwrap();
    std::fs::create_dir_all(models.join("core")).unwrap();
    sd1(&models.join("core").join("ignored.safetensors"));
    let s = TestServer::builder_at(root)
        .set("scan_models_on_startup", json!(true))
        .start()
        .await;
    assert!(!models.join("tmpinstall_stale").exists());
    assert!(models.join("README.txt").is_file());
    let r = s.get("/api/v2/models/?order_by=path", None).await;
    let paths: Vec<&str> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["found/scanned.safetensors", "sd15-diffusers"],
        "{}",
        r.text
    );
    assert_eq!(
        s.get("/api/v2/models/missing", None).await.body,
        json!({"models": []})
    );

    std::fs::remove_file(models.join("found").join("scanned.safetensors")).unwrap();
    let r = s.get("/api/v2/models/missing", None).await;
    assert_eq!(r.body["models"][0]["path"], "found/scanned.safetensors");
    // A restart keeps the record (missing files are only logged) and registers nothing twice.
    let root = s.stop().await;
    let s = TestServer::builder_at(root)
        .set("scan_models_on_startup", json!(true))
        .start()
        .await;
    assert_eq!(
        s.get("/api/v2/models/", None).await.body["models"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Orphans: a folder with weights and no record.
    sd1(&models.join("stray").join("x.safetensors"));
    let r = s.get("/api/v2/models/sync/orphaned", None).await;
    assert_eq!(r.body[0]["path"], "stray", "{}", r.text);
    assert_eq!(r.body[0]["files"], json!(["x.safetensors"]));
    let r = s
        .send(
            reqwest::Method::DELETE,
            "/api/v2/models/sync/orphaned",
            None,
            Some(&json!({"paths": ["stray", "found"]})),
            &[],
        )
        .await;
    assert_eq!(
        r.body,
        json!({"deleted": ["stray"], "errors": {"found": "Not an orphaned model folder"}})
    );
    assert!(!models.join("stray").exists());
}

#[tokio::test]
async fn the_command_line_adds_lists_and_deletes_models() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("incoming").join("cli-model.safetensors");
    sd1(&file);
    let (code, out, err) = crate::cli::atelier(
        root.path(),
        &[
            "model",
            "add",
            file.to_str().unwrap(),
            "--name",
            "From CLI",
            "--inplace",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("✅ Installed From CLI (sd-1 main checkpoint)\n   Key: "),
        "{out}"
    );
    let (code, out, _) = crate::cli::atelier(root.path(), &["model", "list", "--json"], "");
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "From CLI");
    assert_eq!(
        list[0]["path"],
        file.canonicalize().unwrap().to_str().unwrap()
    );
    let (code, out, _) = crate::cli::atelier(root.path(), &["model", "list"], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("From CLI") && out.ends_with("1 model(s)\n"),
        "{out}"
    );

    let pickle = root.path().join("incoming").join("bad.ckpt");
    std::fs::write(&pickle, b"x").unwrap();
    let (code, out, _) =
        crate::cli::atelier(root.path(), &["model", "add", pickle.to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(
        out.starts_with("❌ Error: 'bad.ckpt' is a pickle checkpoint"),
        "{out}"
    );
    let (code, out, _) = crate::cli::atelier(
        root.path(),
        &["model", "add", "http://127.0.0.1:9/x.safetensors"],
        "",
    );
    assert_eq!(code, 1);
    assert!(
        out.starts_with("❌ Error: Refusing to download from '127.0.0.1'"),
        "{out}"
    );

    let (code, out, _) = crate::cli::atelier(root.path(), &["model", "del", "From CLI"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("✅ Deleted model "), "{out}");
    assert!(file.is_file(), "in-place files stay");
    let (code, out, _) = crate::cli::atelier(root.path(), &["model", "del", "From CLI"], "");
    assert_eq!(
        (code, out.as_str()),
        (1, "❌ Error: No model with key or name 'From CLI'\n")
    );
}

#[tokio::test]
async fn the_command_line_downloads_from_a_url_with_a_progress_bar() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("invokeai.yaml"),
        "schema_version: 4.0.2\nallow_private_download_urls: true\n",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    checkpoint(&tmp.path().join("x.safetensors"), 4, 2048, 4);
    let base = file_server(vec![(
        "/xl.safetensors",
        std::fs::read(tmp.path().join("x.safetensors")).unwrap(),
    )])
    .await;
    let root_path = root.path().to_owned();
    let url = format!("{base}/xl.safetensors");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        crate::cli::atelier(&root_path, &["model", "add", &url], "")
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("✅ Installed xl (sdxl main checkpoint)"),
        "{out}"
    );
    assert!(err.contains("100%"), "progress bar on stderr: {err:?}");
}

#[tokio::test]
async fn download_proxy_is_used_and_every_redirect_hop_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    sd1(&tmp.path().join("m.safetensors"));
    // The tiny file server doubles as an HTTP proxy: it answers absolute-form requests by path.
    let proxy = file_server(vec![(
        "/m.safetensors",
        std::fs::read(tmp.path().join("m.safetensors")).unwrap(),
    )])
    .await;
    let s = TestServer::builder()
        .set("download_proxy", json!(proxy))
        .start()
        .await;
    // A public host, reached through the proxy.
    let job = install(&s, None, "http://8.8.8.8/m.safetensors", false).await;
    assert_eq!(job["status"], "completed", "{job}");
    // A redirect from a public host to a private one is refused at the second hop.
    let job = install(
        &s,
        None,
        "http://8.8.8.8/redirect?to=http%3A%2F%2F10.0.0.7%2Fm.safetensors",
        false,
    )
    .await;
    assert_eq!(
        (job["status"].as_str(), job["error_reason"].as_str()),
        (Some("error"), Some("UnsafeDownloadURLError")),
        "{job}"
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("Refusing to download from '10.0.0.7'"),
        "{job}"
    );
}

#[tokio::test]
async fn model_loader_nodes_see_installed_models() {
    let s = TestServer::single_user().await;
    let file = outside(&s, "dreamshaper.safetensors");
    sd1(&file);
    let job = install(&s, None, file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let listed = s.get("/api/v2/models/", None).await;
    let model = listed.body["models"][0].clone();
    let ident = json!({"key": model["key"], "hash": model["hash"], "name": model["name"],
        "base": model["base"], "type": model["type"]});
    let run = |ident: Value| {
        let s = &s;
        async move {
            let graph = json!({"nodes": {"l": {"id": "l", "type": "main_model_loader", "model": ident}}, "edges": []});
            let r = s
                .post(
                    "/api/v1/queue/default/enqueue_batch",
                    None,
                    &json!({"batch": {"graph": graph}, "prepend": false}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let id = r.body["item_ids"][0].as_i64().unwrap();
            for _ in 0..400 {
                let item = s.get(&format!("/api/v1/queue/default/i/{id}"), None).await;
                if matches!(
                    item.body["status"].as_str(),
                    Some("completed" | "failed" | "canceled")
                ) {
                    return item.body;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("item {id} did not finish");
        }
    };
    let item = run(ident.clone()).await;
    assert_eq!(item["status"], "completed", "{item}");
    let exec = item["session"]["source_prepared_mapping"]["l"][0]
        .as_str()
        .unwrap();
    let out = &item["session"]["results"][exec];
    assert_eq!(out["unet"]["unet"]["key"], model["key"]);
    assert_eq!(out["vae"]["vae"]["submodel_type"], "vae");
    let mut missing = ident;
    missing["key"] = json!("not-installed");
    let item = run(missing).await;
    assert_eq!(
        (
            item["status"].clone(),
            item["error_type"].clone(),
            item["error_message"].clone()
        ),
        (
            json!("failed"),
            json!("Exception"),
            json!("Unknown model not-installed")
        )
    );
}
