//! Model loaders and the nodes that pass model references along (generation.md §8.2):
//! they only check that the models are installed and build `UNetField`/`CLIPField`/`VAEField`
//! values; weights are loaded by the nodes that use them.

use super::{fields, node};
use crate::field::Ty;
use crate::spec::{Input, Inputs, NodeSpec};
use crate::{Context, NodeError};
use serde_json::{json, Map, Value};

fn ident() -> Ty {
    Ty::Named("ModelIdentifierField")
}
fn unet() -> Ty {
    Ty::Named("UNetField")
}
fn clip() -> Ty {
    Ty::Named("CLIPField")
}
fn vae() -> Ty {
    Ty::Named("VAEField")
}
fn lora() -> Ty {
    Ty::Named("LoRAField")
}

/// The reference raises a bare `Exception` for these.
fn fail(message: String) -> NodeError {
    NodeError::new("Exception", message)
}

fn require_model(ctx: &mut dyn Context, key: &str, message: String) -> Result<(), NodeError> {
    if ctx.model_exists(key)? {
        Ok(())
    } else {
        Err(fail(message))
    }
}

/// A copy of a model identifier naming one of its submodels.
fn sub(model: &Value, submodel: &str) -> Value {
    let mut m = model.clone();
    m["submodel_type"] = json!(submodel);
    m
}

fn key_of(model: &Value) -> &str {
    model.get("key").and_then(Value::as_str).unwrap_or_default()
}

fn main_loader(
    i: &Inputs,
    ctx: &mut dyn Context,
    sdxl: bool,
) -> Result<Map<String, Value>, NodeError> {
    let model = i.get("model").clone();
    let key = key_of(&model).to_owned();
    let message = if sdxl {
        format!("Unknown model: {key}")
    } else {
        format!("Unknown model {key}")
    };
    require_model(ctx, &key, message)?;
    let mut out = fields(vec![
        (
            "unet",
            json!({"unet": sub(&model, "unet"), "scheduler": sub(&model, "scheduler"), "loras": [],
                "seamless_axes": [], "freeu_config": null}),
        ),
        (
            "clip",
            json!({"tokenizer": sub(&model, "tokenizer"), "text_encoder": sub(&model, "text_encoder"),
                "skipped_layers": 0, "loras": []}),
        ),
    ]);
    if sdxl {
        out.insert(
            "clip2".into(),
            json!({"tokenizer": sub(&model, "tokenizer_2"), "text_encoder": sub(&model, "text_encoder_2"),
                "skipped_layers": 0, "loras": []}),
        );
    }
    out.insert(
        "vae".into(),
        json!({"vae": sub(&model, "vae"), "seamless_axes": []}),
    );
    Ok(out)
}

fn has_lora(field: &Value, key: &str) -> bool {
    field
        .get("loras")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| key_of(&x["lora"]) == key))
}

fn push_lora(field: &Value, entry: &Value) -> Value {
    let mut copy = field.clone();
    match copy.get_mut("loras").and_then(Value::as_array_mut) {
        Some(list) => list.push(entry.clone()),
        None => copy["loras"] = json!([entry]),
    }
    copy
}

/// `lora_loader` / `sdxl_lora_loader`: one LoRA onto each given model field.
fn single_lora(
    i: &Inputs,
    ctx: &mut dyn Context,
    targets: &[&str],
) -> Result<Map<String, Value>, NodeError> {
    let model = i.get("lora").clone();
    let key = key_of(&model).to_owned();
    require_model(ctx, &key, format!("Unknown lora: {key}!"))?;
    for target in targets {
        if has_lora(i.get(target), &key) {
            return Err(fail(format!(
                "LoRA \"{key}\" already applied to {}",
                if *target == "clip2" { "clip2" } else { target }
            )));
        }
    }
    let entry = json!({"lora": model, "weight": i.float("weight")?});
    let mut out = Map::new();
    for target in targets {
        let field = i.get(target);
        out.insert(
            (*target).into(),
            if field.is_null() {
                Value::Null
            } else {
                push_lora(field, &entry)
            },
        );
    }
    Ok(out)
}

/// `lora_collection_loader` / `sdxl_lora_collection_loader`.
fn collection(
    i: &Inputs,
    ctx: &mut dyn Context,
    targets: &[&str],
    bases: &[&str],
) -> Result<Map<String, Value>, NodeError> {
    let loras: Vec<Value> = match i.get("loras") {
        Value::Array(list) => list.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    };
    let mut out: Map<String, Value> = targets
        .iter()
        .map(|t| ((*t).to_owned(), i.get(t).clone()))
        .collect();
    let mut added: Vec<String> = Vec::new();
    for entry in loras.iter().filter(|l| !l.is_null()) {
        let key = key_of(&entry["lora"]).to_owned();
        if added.contains(&key) {
            continue;
        }
        require_model(ctx, &key, format!("Unknown lora: {key}!"))?;
        let base = entry["lora"]["base"].as_str().unwrap_or_default();
        if !bases.contains(&base) {
            return Err(NodeError::new(
                "AssertionError",
                format!("LoRA {key} is for base {base}, not {}", bases.join(" or ")),
            ));
        }
        added.push(key);
        for target in targets {
            if let Some(field) = out.get(*target).filter(|f| !f.is_null()) {
                let updated = push_lora(field, entry);
                out.insert((*target).into(), updated);
            }
        }
    }
    Ok(out)
}

pub fn specs() -> Vec<NodeSpec> {
    let model_input = |desc: &'static str| Input::new("model", ident()).desc(desc);
    let conn = |name: &'static str, ty: Ty, desc: &'static str| {
        Input::new(name, ty).optional().conn().desc(desc)
    };
    let mut specs = vec![
        node(
            "model_identifier",
            "Any Model",
            "1.0.1",
            "model",
            vec![model_input("The model to select")],
            "model_identifier_output",
            vec![("model", ident())],
            |i, ctx| {
                let model = i.get("model").clone();
                let key = key_of(&model).to_owned();
                require_model(ctx, &key, format!("Unknown model {key}"))?;
                Ok(fields(vec![("model", model)]))
            },
        ),
        node(
            "main_model_loader",
            "Main Model - SD1.5, SD2",
            "1.0.4",
            "model",
            vec![model_input("Main model (UNet, VAE, CLIP) to load")],
            "model_loader_output",
            vec![("unet", unet()), ("clip", clip()), ("vae", vae())],
            |i, ctx| main_loader(i, ctx, false),
        ),
        node(
            "sdxl_model_loader",
            "Main Model - SDXL",
            "1.0.4",
            "model",
            vec![model_input(
                "SDXL Main model (UNet, VAE, CLIP1, CLIP2) to load",
            )],
            "sdxl_model_loader_output",
            vec![
                ("unet", unet()),
                ("clip", clip()),
                ("clip2", clip()),
                ("vae", vae()),
            ],
            |i, ctx| main_loader(i, ctx, true),
        ),
        node(
            "sdxl_refiner_model_loader",
            "Refiner Model - SDXL",
            "1.0.4",
            "model",
            vec![model_input(
                "SDXL Refiner Main Modde (UNet, VAE, CLIP2) to load",
            )],
            "sdxl_refiner_model_loader_output",
            vec![("unet", unet()), ("clip2", clip()), ("vae", vae())],
            |i, ctx| {
                let mut out = main_loader(i, ctx, true)?;
                out.remove("clip");
                Ok(out)
            },
        ),
        node(
            "vae_loader",
            "VAE Model - SD1.5, SD2, SDXL, SD3, FLUX",
            "1.0.4",
            "model",
            vec![Input::new("vae_model", ident()).desc("VAE model to load")],
            "vae_output",
            vec![("vae", vae())],
            |i, ctx| {
                let model = i.get("vae_model").clone();
                let key = key_of(&model).to_owned();
                require_model(ctx, &key, format!("Unknown vae: {key}!"))?;
                Ok(fields(vec![(
                    "vae",
                    json!({"vae": model, "seamless_axes": []}),
                )]))
            },
        ),
        node(
            "clip_skip",
            "Apply CLIP Skip - SD1.5, SDXL",
            "1.1.1",
            "prompt",
            vec![
                Input::new("clip", clip())
                    .conn()
                    .desc("CLIP (tokenizer, text encoder, LoRAs) and skipped layer count"),
                Input::new("skipped_layers", Ty::Int)
                    .default(json!(0))
                    .ge(json!(0))
                    .desc("Number of layers to skip in text encoder"),
            ],
            "clip_skip_output",
            vec![("clip", clip())],
            |i, _| {
                let mut clip = i.get("clip").clone();
                let before = clip["skipped_layers"].as_i64().unwrap_or(0);
                clip["skipped_layers"] = json!(before.saturating_add(i.int("skipped_layers")?));
                Ok(fields(vec![("clip", clip)]))
            },
        ),
        node(
            "lora_selector",
            "Select LoRA",
            "1.0.3",
            "model",
            vec![
                Input::new("lora", ident()).desc("LoRA model to load"),
                Input::new("weight", Ty::Float)
                    .default(json!(0.75))
                    .desc("The weight at which the LoRA is applied to each model"),
            ],
            "lora_selector_output",
            vec![("lora", lora())],
            |i, _| {
                Ok(fields(vec![(
                    "lora",
                    json!({"lora": i.get("lora"), "weight": i.float("weight")?}),
                )]))
            },
        ),
        node(
            "lora_loader",
            "Apply LoRA - SD1.5",
            "1.0.4",
            "model",
            vec![
                Input::new("lora", ident()).desc("LoRA model to load"),
                Input::new("weight", Ty::Float)
                    .default(json!(0.75))
                    .desc("The weight at which the LoRA is applied to each model"),
                conn("unet", unet(), "UNet (scheduler, LoRAs)"),
                conn(
                    "clip",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
            ],
            "lora_loader_output",
            vec![("unet", unet()), ("clip", clip())],
            |i, ctx| single_lora(i, ctx, &["unet", "clip"]),
        ),
        node(
            "sdxl_lora_loader",
            "Apply LoRA - SDXL",
            "1.0.5",
            "model",
            vec![
                Input::new("lora", ident()).desc("LoRA model to load"),
                Input::new("weight", Ty::Float)
                    .default(json!(0.75))
                    .desc("The weight at which the LoRA is applied to each model"),
                conn("unet", unet(), "UNet (scheduler, LoRAs)"),
                conn(
                    "clip",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
                conn(
                    "clip2",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
            ],
            "sdxl_lora_loader_output",
            vec![("unet", unet()), ("clip", clip()), ("clip2", clip())],
            |i, ctx| single_lora(i, ctx, &["unet", "clip", "clip2"]),
        ),
        node(
            "lora_collection_loader",
            "Apply LoRA Collection - SD1.5",
            "1.1.3",
            "model",
            vec![
                Input::new("loras", Ty::one_or_list(lora()))
                    .optional()
                    .desc("LoRA models and weights. May be a single LoRA or collection."),
                conn("unet", unet(), "UNet (scheduler, LoRAs)"),
                conn(
                    "clip",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
            ],
            "lora_loader_output",
            vec![("unet", unet()), ("clip", clip())],
            |i, ctx| collection(i, ctx, &["unet", "clip"], &["sd-1", "sd-2"]),
        ),
        node(
            "sdxl_lora_collection_loader",
            "Apply LoRA Collection - SDXL",
            "1.1.3",
            "model",
            vec![
                Input::new("loras", Ty::one_or_list(lora()))
                    .optional()
                    .desc("LoRA models and weights. May be a single LoRA or collection."),
                conn("unet", unet(), "UNet (scheduler, LoRAs)"),
                conn(
                    "clip",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
                conn(
                    "clip2",
                    clip(),
                    "CLIP (tokenizer, text encoder, LoRAs) and skipped layer count",
                ),
            ],
            "sdxl_lora_loader_output",
            vec![("unet", unet()), ("clip", clip()), ("clip2", clip())],
            |i, ctx| collection(i, ctx, &["unet", "clip", "clip2"], &["sdxl"]),
        ),
        node(
            "seamless",
            "Apply Seamless - SD1.5, SDXL",
            "1.0.2",
            "model",
            vec![
                conn("unet", unet(), "UNet (scheduler, LoRAs)"),
                conn("vae", vae(), "VAE model to load"),
                Input::new("seamless_y", Ty::Bool)
                    .default(json!(true))
                    .desc("Specify whether Y axis is seamless"),
                Input::new("seamless_x", Ty::Bool)
                    .default(json!(true))
                    .desc("Specify whether X axis is seamless"),
            ],
            "seamless_output",
            vec![("unet", unet()), ("vae", vae())],
            |i, _| {
                let mut axes = Vec::new();
                if i.bool("seamless_x")? {
                    axes.push("x");
                }
                if i.bool("seamless_y")? {
                    axes.push("y");
                }
                let with_axes = |v: &Value| {
                    if v.is_null() {
                        Value::Null
                    } else {
                        let mut c = v.clone();
                        c["seamless_axes"] = json!(axes);
                        c
                    }
                };
                Ok(fields(vec![
                    ("unet", with_axes(i.get("unet"))),
                    ("vae", with_axes(i.get("vae"))),
                ]))
            },
        ),
    ];
    for spec in &mut specs {
        spec.tags = match spec.type_name {
            "clip_skip" => &["clipskip", "clip", "skip"],
            "sdxl_model_loader" => &["model", "sdxl"],
            "sdxl_refiner_model_loader" => &["model", "sdxl", "refiner"],
            "sdxl_lora_loader" => &["lora", "model"],
            "vae_loader" => &["vae", "model"],
            "seamless" => &["seamless", "model"],
            _ => &["model"],
        };
    }
    specs
}
