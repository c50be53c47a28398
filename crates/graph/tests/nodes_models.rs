//! Model-reference nodes: loaders, CLIP skip, LoRA selection and collection, seamless.
#![allow(clippy::expect_used)]

use atelier_graph::{validate_graph, Context, ImageRef, NodeError, SaveRequest, Session};
use image::DynamicImage;
use serde_json::{json, Value};

/// Knows the models whose keys it holds; stores no images.
struct Installed(Vec<&'static str>);

impl Context for Installed {
    fn load_image(&mut self, name: &str) -> Result<DynamicImage, NodeError> {
        Err(NodeError::value(format!("no image {name}")))
    }
    fn save_image(&mut self, _: &DynamicImage, _: SaveRequest) -> Result<ImageRef, NodeError> {
        Err(NodeError::value("no images here"))
    }
    fn is_canceled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: &str, _: Option<f64>) {}
    fn app_version(&self) -> String {
        "test".into()
    }
    fn model_exists(&mut self, key: &str) -> Result<bool, NodeError> {
        Ok(self.0.contains(&key))
    }
}

fn run(graph: Value, ctx: &mut Installed) -> Result<Value, NodeError> {
    let graph = validate_graph(&graph).map_err(|e| NodeError::value(format!("{e:?}")))?;
    let mut session = Session::new("s", graph);
    while let Some(p) = session.next_node() {
        match p.inputs.and_then(|inputs| (p.spec.run)(&inputs, ctx)) {
            Ok(o) => session.complete(&p.exec_id, o),
            Err(e) => return Err(e),
        }
    }
    Ok(session.to_json())
}

fn out(session: &Value, source: &str) -> Value {
    let id = session["source_prepared_mapping"][source][0]
        .as_str()
        .expect("ran");
    session["results"][id].clone()
}

fn edge(s: &str, sf: &str, d: &str, df: &str) -> Value {
    json!({"source": {"node_id": s, "field": sf}, "destination": {"node_id": d, "field": df}})
}

fn model(key: &str, base: &str, kind: &str) -> Value {
    json!({"key": key, "hash": "blake3:00", "name": key, "base": base, "type": kind})
}

#[test]
fn the_sd1_loader_chain_builds_model_fields() {
    let graph = json!({"nodes": {
        "loader": {"id": "loader", "type": "main_model_loader", "model": model("m1", "sd-1", "main")},
        "skip": {"id": "skip", "type": "clip_skip", "skipped_layers": 2},
        "l1": {"id": "l1", "type": "lora_selector", "lora": model("lo1", "sd-1", "lora"), "weight": 0.5},
        "l2": {"id": "l2", "type": "lora_selector", "lora": model("lo1", "sd-1", "lora")},
        "c": {"id": "c", "type": "collect"},
        "apply": {"id": "apply", "type": "lora_collection_loader"},
        "seam": {"id": "seam", "type": "seamless", "seamless_y": false},
    }, "edges": [
        edge("loader", "clip", "skip", "clip"),
        edge("l1", "lora", "c", "item"), edge("l2", "lora", "c", "item"),
        edge("c", "collection", "apply", "loras"),
        edge("loader", "unet", "apply", "unet"), edge("skip", "clip", "apply", "clip"),
        edge("apply", "unet", "seam", "unet"), edge("loader", "vae", "seam", "vae"),
    ]});
    let session = run(graph, &mut Installed(vec!["m1", "lo1"])).expect("runs");
    let loader = out(&session, "loader");
    assert_eq!(loader["type"], "model_loader_output");
    assert_eq!(loader["unet"]["unet"]["submodel_type"], "unet");
    assert_eq!(loader["unet"]["scheduler"]["submodel_type"], "scheduler");
    assert_eq!(
        loader["clip"]["text_encoder"]["submodel_type"],
        "text_encoder"
    );
    assert_eq!(loader["vae"]["vae"]["key"], "m1");
    assert_eq!(out(&session, "skip")["clip"]["skipped_layers"], 2);
    let applied = out(&session, "apply");
    // The same LoRA twice is applied once, with the first weight.
    assert_eq!(
        applied["unet"]["loras"],
        json!([{"lora": model("lo1", "sd-1", "lora"), "weight": 0.5}])
    );
    assert_eq!(applied["clip"]["skipped_layers"], 2);
    assert_eq!(applied["clip"]["loras"].as_array().map(Vec::len), Some(1));
    let seam = out(&session, "seam");
    assert_eq!(seam["unet"]["seamless_axes"], json!(["x"]));
    assert_eq!(seam["vae"]["seamless_axes"], json!(["x"]));
}

#[test]
fn unknown_models_and_wrong_bases_fail_like_the_reference() {
    let g = json!({"nodes": {"loader": {"id": "loader", "type": "main_model_loader", "model": model("gone", "sd-1", "main")}}});
    let err = run(g, &mut Installed(vec![])).expect_err("unknown");
    assert_eq!(
        (err.error_type.as_str(), err.message.as_str()),
        ("Exception", "Unknown model gone")
    );
    let g = json!({"nodes": {"v": {"id": "v", "type": "vae_loader", "vae_model": model("v1", "sd-1", "vae")}}});
    assert_eq!(
        run(g, &mut Installed(vec![])).expect_err("unknown").message,
        "Unknown vae: v1!"
    );
    let g = json!({"nodes": {
        "loader": {"id": "loader", "type": "main_model_loader", "model": model("m1", "sd-1", "main")},
        "apply": {"id": "apply", "type": "lora_collection_loader", "loras": {"lora": model("x", "sdxl", "lora"), "weight": 1.0}},
    }, "edges": [edge("loader", "unet", "apply", "unet")]});
    let err = run(g, &mut Installed(vec!["m1", "x"])).expect_err("base");
    assert_eq!(err.error_type, "AssertionError");
    // A LoRA applied twice through single loaders is refused.
    let g = json!({"nodes": {
        "loader": {"id": "loader", "type": "main_model_loader", "model": model("m1", "sd-1", "main")},
        "a": {"id": "a", "type": "lora_loader", "lora": model("lo", "sd-1", "lora")},
        "b": {"id": "b", "type": "lora_loader", "lora": model("lo", "sd-1", "lora")},
    }, "edges": [edge("loader", "unet", "a", "unet"), edge("a", "unet", "b", "unet")]});
    let err = run(g, &mut Installed(vec!["m1", "lo"])).expect_err("twice");
    assert_eq!(err.message, "LoRA \"lo\" already applied to unet");
    // A model identifier missing its required members is a 422 at enqueue.
    let g = json!({"nodes": {"loader": {"id": "loader", "type": "main_model_loader", "model": {"key": "m1"}}}});
    assert!(validate_graph(&g).is_err());
}

#[test]
fn the_sdxl_loader_names_the_second_encoder() {
    let g = json!({"nodes": {"loader": {"id": "loader", "type": "sdxl_model_loader", "model": model("x1", "sdxl", "main")}}});
    let session = run(g, &mut Installed(vec!["x1"])).expect("runs");
    let o = out(&session, "loader");
    assert_eq!(o["type"], "sdxl_model_loader_output");
    assert_eq!(o["clip2"]["tokenizer"]["submodel_type"], "tokenizer_2");
    assert_eq!(
        o["clip2"]["text_encoder"]["submodel_type"],
        "text_encoder_2"
    );
}
