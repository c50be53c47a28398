//! `PUT /api/v2/models/convert/{key}` (models.md §2.2): a single-file checkpoint becomes a
//! diffusers folder under a new key, keeping its identity, cover image and pixels.

use crate::common::*;
use crate::models::{install, kohya_lora, outside, sd1};
use atelier_engine::tiny::write_tiny_sd1_checkpoint;
use serde_json::{json, Value};

async fn generate(s: &TestServer, key: &str) -> image::RgbImage {
    let r = s
        .post(
            "/api/v1/generate",
            None,
            &json!({"prompt": "a photo of a cat", "negative_prompt": "blurry", "model": key,
                "width": 64, "height": 64, "steps": 3, "scheduler": "euler", "seed": 5,
                "wait": true, "timeout_s": 120}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "completed", "{}", r.text);
    let name = r.body["images"][0]["image_name"].as_str().unwrap();
    let (status, _, png) = s
        .get_bytes(&format!("/api/v1/images/i/{name}/full"), None, &[])
        .await;
    assert_eq!(status, 200);
    image::load_from_memory(&png).unwrap().to_rgb8()
}

async fn set_cover(s: &TestServer, key: &str) {
    let part = reqwest::multipart::Part::bytes(png_bytes(40, 30))
        .file_name("c.png")
        .mime_str("image/png")
        .unwrap();
    let r = s
        .client
        .patch(s.url(&format!("/api/v2/models/i/{key}/image")))
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_checkpoint_converts_to_diffusers_under_a_new_key_with_the_same_pixels() {
    let s = TestServer::single_user().await;
    let models = s.root.path().join("models");
    let file = outside(&s, "tiny-sd1.safetensors");
    write_tiny_sd1_checkpoint(&outside(&s, "twin"), &file, 11).expect("tiny checkpoint");
    // Moved into the models directory, so the conversion deletes it afterwards.
    let job = install(&s, None, file.to_str().unwrap(), false).await;
    assert_eq!(job["status"], "completed", "{job}");
    let old = job["config_out"].clone();
    let key = old["key"].as_str().unwrap().to_owned();
    assert_eq!(old["format"], "checkpoint");
    let old_file = models.join(old["path"].as_str().unwrap());
    assert!(old_file.is_file(), "{}", old_file.display());
    let r = s
        .patch(
            &format!("/api/v2/models/i/{key}"),
            None,
            &json!({"description": "a tiny model", "trigger_phrases": ["tiny"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    set_cover(&s, &key).await;
    let before = generate(&s, &key).await;

    let r = s
        .put_empty(&format!("/api/v2/models/convert/{key}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.body.clone();
    let new_key = new["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    for field in ["type", "base", "variant", "prediction_type"] {
        assert_eq!(new[field], old[field], "{field}: {new}");
    }
    assert_eq!(new["format"], "diffusers", "{new}");
    assert_eq!(new["hash"], old["hash"], "{new}");
    assert_eq!(new["name"], old["name"], "{new}");
    assert_eq!(new["description"], "a tiny model", "{new}");
    assert_eq!(new["source"], old["source"], "{new}");
    assert_eq!(new["source_type"], old["source_type"], "{new}");
    assert_eq!(new["path"], json!(new_key), "{new}");
    assert!(
        new["cover_image"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("api/v2/models/i/{new_key}/image?"))),
        "{new}"
    );

    // The checkpoint is gone: record, file, folder and cover image.
    let r = s.get(&format!("/api/v2/models/i/{key}"), None).await;
    r.assert_detail(404, "model not found");
    let r = s
        .put_empty(&format!("/api/v2/models/convert/{key}"), None)
        .await;
    r.assert_detail(424, "model not found");
    assert!(!old_file.exists());
    assert!(!models.join(&key).exists());
    let (status, _, _) = s
        .get_bytes(&format!("/api/v2/models/i/{key}/image"), None, &[])
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = s
        .get_bytes(&format!("/api/v2/models/i/{new_key}/image"), None, &[])
        .await;
    assert_eq!(status, 200);
    // The diffusers folder lives under the new key; the scratch folder is left empty.
    let dir = models.join(&new_key);
    for f in [
        "model_index.json",
        "unet/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let scratch = models.join(".convert_tmp");
    assert!(
        !scratch.exists() || std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch left behind"
    );
    // Hash-based recall finds the converted model; the record is what GET returns.
    let hash = old["hash"].as_str().unwrap();
    let r = s
        .get(
            &format!("/api/v2/models/get_by_hash?hash={}", urlencode(hash)),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["key"], json!(new_key));
    let listed = s.get("/api/v2/models/", None).await;
    let keys: Vec<&Value> = listed.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["key"])
        .collect();
    assert_eq!(keys, vec![&json!(new_key)]);

    // Same seed and settings, same pixels.
    let after = generate(&s, &new_key).await;
    let first = before.get_pixel(0, 0);
    assert!(before.pixels().any(|p| p != first), "a uniform image");
    assert_eq!(before.as_raw(), after.as_raw());

    // A diffusers model is not a checkpoint.
    let r = s
        .put_empty(&format!("/api/v2/models/convert/{new_key}"), None)
        .await;
    r.assert_detail(
        400,
        &format!("The model with key {new_key} is not a main SD 1/2/XL checkpoint model."),
    );
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn conversion_is_admin_only_exclusive_and_for_checkpoints_only() {
    let s = TestServer::multiuser().await;
    let admin = s.setup_admin().await;
    let (_, user) = s.user_with_token(&admin, "user@example.com").await;
    let file = outside(&s, "m.safetensors");
    sd1(&file);
    let job = install(&s, Some(&admin), file.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let key = job["config_out"]["key"].as_str().unwrap().to_owned();
    let at = format!("/api/v2/models/convert/{key}");

    let r = s.put_empty(&at, Some(&user)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.put_empty(&at, None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = s
        .put_empty("/api/v2/models/convert/no-such-key", Some(&admin))
        .await;
    r.assert_detail(424, "model not found");

    // A LoRA is not a main checkpoint.
    let lora = outside(&s, "l.safetensors");
    kohya_lora(&lora, 768);
    let job = install(&s, Some(&admin), lora.to_str().unwrap(), true).await;
    assert_eq!(job["status"], "completed", "{job}");
    let lora_key = job["config_out"]["key"].as_str().unwrap().to_owned();
    let r = s
        .put_empty(&format!("/api/v2/models/convert/{lora_key}"), Some(&admin))
        .await;
    r.assert_detail(
        400,
        &format!("The model with key {lora_key} is not a main SD 1/2/XL checkpoint model."),
    );

    // One conversion at a time, and not while another operation holds the model.
    let models = &s.state().models;
    {
        let _running = models.conversion.start().unwrap();
        let r = s.put_empty(&at, Some(&admin)).await;
        r.assert_detail(
            409,
            "Another model conversion is already in progress. Wait for it to finish and try again.",
        );
    }
    {
        let _claim = models.claim(&key).unwrap();
        let r = s.put_empty(&at, Some(&admin)).await;
        r.assert_detail(
            409,
            &format!(
                "Another operation on model {key} is already in progress. Wait for it to finish and try again."
            ),
        );
    }
    // The header-only file cannot be converted: a 500 with the reason, and nothing changes.
    let r = s.put_empty(&at, Some(&admin)).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with(&format!("Unable to convert model {key}: "))),
        "{}",
        r.text
    );
    let r = s
        .get(&format!("/api/v2/models/i/{key}"), Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["format"], "checkpoint");
    assert!(file.is_file());
    let scratch = s.root.path().join("models").join(".convert_tmp");
    assert!(
        !scratch.exists() || std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch left behind"
    );
}
