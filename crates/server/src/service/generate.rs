//! `POST /api/v1/generate` (generation.md §12): one call that builds the graph and batch the web
//! UI would send for a text-to-image or image-to-image generation (§9), enqueues it through the
//! same path as `enqueue_batch`, and optionally waits for the images.

use crate::http::error::{ApiError, ValidationIssue};
use crate::service::queue as queue_service;
use crate::state::AppState;
use atelier_domain::queue::QueueItemStatus;
use atelier_domain::Identity;
use atelier_graph::{Input, Ty};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The request's fields: name, type and checks (unknown fields are refused).
fn fields() -> Vec<Input> {
    vec![
        Input::new("prompt", Ty::Str),
        Input::new("negative_prompt", Ty::Str).default(json!("")),
        Input::new("model", Ty::Str).optional(),
        Input::new("width", Ty::Int)
            .optional()
            .multiple_of(8)
            .ge(json!(64))
            .le(json!(4096)),
        Input::new("height", Ty::Int)
            .optional()
            .multiple_of(8)
            .ge(json!(64))
            .le(json!(4096)),
        Input::new("steps", Ty::Int)
            .optional()
            .ge(json!(1))
            .le(json!(200)),
        Input::new("cfg_scale", Ty::Float).optional().ge(json!(1)),
        Input::new("cfg_rescale_multiplier", Ty::Float)
            .default(json!(0))
            .ge(json!(0))
            .lt(json!(1)),
        Input::new("scheduler", Ty::Str).optional(),
        Input::new("seed", Ty::Int).optional(),
        Input::new("count", Ty::Int).default(json!(1)).ge(json!(1)),
        Input::new("clip_skip", Ty::Int)
            .default(json!(0))
            .ge(json!(0)),
        Input::new("vae", Ty::Str).optional(),
        Input::new("loras", Ty::list(Ty::Any)).default(json!([])),
        Input::new("init_image", Ty::Str).optional(),
        Input::new("strength", Ty::Float)
            .default(json!(0.75))
            .ge(json!(0))
            .le(json!(1)),
        Input::new("board_id", Ty::Str).optional(),
        Input::new("is_intermediate", Ty::Bool).default(json!(false)),
        Input::new("queue_id", Ty::Str).default(json!("default")),
        Input::new("prepend", Ty::Bool).default(json!(false)),
        Input::new("wait", Ty::Bool).default(json!(false)),
        Input::new("timeout_s", Ty::Int)
            .default(json!(300))
            .ge(json!(1))
            .le(json!(3600)),
        Input::new("dry_run", Ty::Bool).default(json!(false)),
        // The SDXL refiner (an Atelier extension; defaults are the web UI's).
        Input::new("refiner_model", Ty::Str).optional(),
        Input::new("refiner_steps", Ty::Int)
            .optional()
            .ge(json!(1))
            .le(json!(200)),
        Input::new("refiner_cfg_scale", Ty::Float)
            .optional()
            .ge(json!(1)),
        Input::new("refiner_scheduler", Ty::Str).optional(),
        Input::new("refiner_positive_aesthetic_score", Ty::Float)
            .optional()
            .ge(json!(1))
            .le(json!(10)),
        Input::new("refiner_negative_aesthetic_score", Ty::Float)
            .optional()
            .ge(json!(1))
            .le(json!(10)),
        Input::new("refiner_start", Ty::Float)
            .optional()
            .ge(json!(0))
            .le(json!(1)),
    ]
}

/// The refiner settings besides `refiner_model`: they need it.
const REFINER_SETTINGS: [&str; 6] = [
    "refiner_steps",
    "refiner_cfg_scale",
    "refiner_scheduler",
    "refiner_positive_aesthetic_score",
    "refiner_negative_aesthetic_score",
    "refiner_start",
];

fn issue(field: &str, kind: &'static str, msg: String, input: Value) -> ValidationIssue {
    ValidationIssue {
        kind,
        loc: vec![json!("body"), json!(field)],
        msg,
        input,
        ctx: None,
    }
}

fn invalid(field: &str, msg: String, input: Value) -> ApiError {
    ApiError::Validation(vec![issue(
        field,
        "value_error",
        format!("Value error, {msg}"),
        input,
    )])
}

/// The checked request, with defaults applied.
#[derive(Debug, Clone)]
pub struct Request(Map<String, Value>);

impl Request {
    fn get(&self, k: &str) -> &Value {
        self.0.get(k).unwrap_or(&Value::Null)
    }
    fn str(&self, k: &str) -> Option<&str> {
        self.get(k).as_str()
    }
    fn int(&self, k: &str) -> Option<i64> {
        self.get(k).as_i64()
    }
    fn float(&self, k: &str) -> Option<f64> {
        self.get(k).as_f64()
    }
    fn flag(&self, k: &str) -> bool {
        self.get(k).as_bool().unwrap_or(false)
    }
    pub fn wait(&self) -> bool {
        self.flag("wait")
    }
}

/// Checks the body: known fields only, each of the right type and range.
pub fn parse(body: &Value) -> Result<Request, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::Validation(vec![ValidationIssue {
            kind: "model_attributes_type",
            loc: vec![json!("body")],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: body.clone(),
            ctx: None,
        }]));
    };
    let specs = fields();
    let mut issues = Vec::new();
    for key in map.keys() {
        if !specs.iter().any(|s| s.name == key) {
            issues.push(issue(
                key,
                "extra_forbidden",
                "Extra inputs are not permitted".into(),
                map[key].clone(),
            ));
        }
    }
    let mut out = Map::new();
    for spec in &specs {
        match map.get(spec.name) {
            None | Some(Value::Null) => match &spec.default {
                Some(d) => {
                    out.insert(spec.name.into(), d.clone());
                }
                None => issues.push(issue(
                    spec.name,
                    "missing",
                    "Field required".into(),
                    body.clone(),
                )),
            },
            Some(v) => match spec.check(v) {
                Ok(checked) => {
                    out.insert(spec.name.into(), checked);
                }
                Err(e) => {
                    let mut loc = vec![json!("body"), json!(spec.name)];
                    loc.extend(e.loc);
                    issues.push(ValidationIssue {
                        kind: e.kind,
                        loc,
                        msg: e.msg,
                        input: v.clone(),
                        ctx: None,
                    });
                }
            },
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::Validation(issues));
    }
    Ok(Request(out))
}

const BASES: [&str; 3] = ["sd-1", "sd-2", "sdxl"];

/// Installed records of one type, parsed.
async fn models_of_type(state: &AppState, model_type: &str) -> Result<Vec<Value>, ApiError> {
    let rows = state
        .store
        .list_models(
            &atelier_store::ModelFilter {
                model_type: Some(model_type.to_owned()),
                ..Default::default()
            },
            atelier_store::ModelOrder::default(),
            false,
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.config).ok())
        .collect())
}

/// A model by key, or by a name only one installed model of that type carries.
async fn find_model(
    state: &AppState,
    model_type: &str,
    wanted: &str,
) -> Result<Option<Value>, ApiError> {
    if let Some(row) = state.store.get_model(wanted).await? {
        return Ok(serde_json::from_str(&row.config).ok());
    }
    let named: Vec<Value> = models_of_type(state, model_type)
        .await?
        .into_iter()
        .filter(|m| m["name"] == wanted)
        .collect();
    Ok(match named.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    })
}

fn identifier(model: &Value) -> Value {
    json!({"key": model["key"], "hash": model["hash"], "name": model["name"], "base": model["base"],
        "type": model["type"]})
}

/// The main model the request names (or the only installed one).
async fn main_model(state: &AppState, req: &Request) -> Result<Value, ApiError> {
    match req.str("model") {
        Some(wanted) => {
            let model = find_model(state, "main", wanted)
                .await?
                .ok_or_else(|| ApiError::not_found(&format!("Model {wanted} not found")))?;
            let base = model["base"].as_str().unwrap_or_default();
            if model["type"] != "main" || !BASES.contains(&base) {
                return Err(invalid(
                    "model",
                    format!("model {wanted} is not a main model of base sd-1, sd-2 or sdxl"),
                    json!(wanted),
                ));
            }
            Ok(model)
        }
        None => {
            let usable: Vec<Value> = models_of_type(state, "main")
                .await?
                .into_iter()
                .filter(|m| BASES.contains(&m["base"].as_str().unwrap_or_default()))
                .collect();
            match usable.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(invalid(
                    "model",
                    "no main model is installed".into(),
                    Value::Null,
                )),
                many => {
                    let names: Vec<&str> = many.iter().filter_map(|m| m["name"].as_str()).collect();
                    Err(invalid(
                        "model",
                        format!(
                            "model is required when several are installed: {}",
                            names.join(", ")
                        ),
                        Value::Null,
                    ))
                }
            }
        }
    }
}

/// A UI-style node id: `prefix:` and ten random characters.
fn node_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let tail: String = (0..10)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}:{tail}")
}

struct Builder {
    nodes: Map<String, Value>,
    edges: Vec<Value>,
}

impl Builder {
    fn add(&mut self, prefix: &str, mut node: Value) -> String {
        let id = node_id(prefix);
        node["id"] = json!(id);
        if node.get("is_intermediate").is_none() {
            node["is_intermediate"] = json!(true);
        }
        if node.get("use_cache").is_none() {
            node["use_cache"] = json!(true);
        }
        self.nodes.insert(id.clone(), node);
        id
    }

    fn edge(&mut self, from: &str, out: &str, to: &str, input: &str) {
        self.edges.push(json!({"source": {"node_id": from, "field": out}, "destination": {"node_id": to, "field": input}}));
    }
}

/// What the request resolved to, ready for the graph.
struct Plan {
    model: Value,
    vae: Option<Value>,
    loras: Vec<(Value, f64)>,
    init: Option<(String, u32, u32)>,
    board: Option<String>,
    width: i64,
    height: i64,
    steps: i64,
    cfg_scale: f64,
    scheduler: String,
    fp32: bool,
    refiner: Option<Refiner>,
}

/// The SDXL refiner pass: the base denoises up to `start`, the refiner from there to the end.
struct Refiner {
    model: Value,
    steps: i64,
    cfg_scale: f64,
    scheduler: String,
    positive_aesthetic_score: f64,
    negative_aesthetic_score: f64,
    start: f64,
}

/// The graph of §9.1/9.2 (+9.3 with an init image, +9.4 with LoRAs, + a VAE loader), and the
/// ids of the seed, prompt and output nodes.
fn build_graph(req: &Request, plan: &Plan) -> (Value, [String; 4]) {
    let sdxl = plan.model["base"] == "sdxl";
    let mut b = Builder {
        nodes: Map::new(),
        edges: Vec::new(),
    };
    let model = identifier(&plan.model);
    let seed = b.add("seed", json!({"type": "integer"}));
    let positive = b.add("positive_prompt", json!({"type": "string"}));
    let negative = b.add("negative_prompt", json!({"type": "string"}));
    let loader = if sdxl {
        b.add(
            "sdxl_model_loader",
            json!({"type": "sdxl_model_loader", "model": model}),
        )
    } else {
        b.add(
            "sd1_model_loader",
            json!({"type": "main_model_loader", "model": model}),
        )
    };
    let clip_skip = (!sdxl).then(|| {
        b.add(
            "clip_skip",
            json!({"type": "clip_skip", "skipped_layers": req.int("clip_skip").unwrap_or(0)}),
        )
    });
    let cond_type = if sdxl { "sdxl_compel_prompt" } else { "compel" };
    let pos_cond = b.add("pos_cond", json!({"type": cond_type}));
    let pos_collect = b.add("pos_cond_collect", json!({"type": "collect"}));
    let neg_cond = b.add("neg_cond", json!({"type": cond_type}));
    let neg_collect = b.add("neg_cond_collect", json!({"type": "collect"}));
    let (noise_w, noise_h) = match &plan.init {
        Some((_, w, h)) => (i64::from(*w), i64::from(*h)),
        None => (plan.width, plan.height),
    };
    let noise = b.add(
        "noise",
        json!({"type": "noise", "use_cpu": true, "width": noise_w, "height": noise_h}),
    );
    let strength = req.float("strength").unwrap_or(0.75);
    let mut denoising_start = if plan.init.is_some() {
        1.0 - strength
    } else {
        0.0
    };
    // With a refiner, the base stops where the refiner starts (the UI's image-to-image rule,
    // also for text to image: diffusers' "ensemble of expert denoisers").
    let denoising_end = match &plan.refiner {
        Some(refiner) => {
            denoising_start = denoising_start.min(refiner.start);
            json!(refiner.start)
        }
        None => json!(1),
    };
    let denoise = b.add(
        "denoise_latents",
        json!({"type": "denoise_latents", "cfg_scale": plan.cfg_scale,
            "cfg_rescale_multiplier": req.float("cfg_rescale_multiplier").unwrap_or(0.0),
            "scheduler": plan.scheduler, "steps": plan.steps, "denoising_start": denoising_start,
            "denoising_end": denoising_end, "hidiffusion": false, "hidiffusion_raunet": true,
            "hidiffusion_window_attn": true}),
    );
    let mut output_node = json!({"type": "l2i", "fp32": plan.fp32,
        "is_intermediate": req.flag("is_intermediate"), "use_cache": false});
    if let Some(board) = &plan.board {
        output_node["board"] = json!({"board_id": board});
    }
    let output = b.add("canvas_output", output_node);
    let mode = match (sdxl, plan.init.is_some()) {
        (false, false) => "txt2img",
        (false, true) => "img2img",
        (true, false) => "sdxl_txt2img",
        (true, true) => "sdxl_img2img",
    };
    let mut metadata = json!({"type": "core_metadata", "cfg_scale": plan.cfg_scale,
        "cfg_rescale_multiplier": req.float("cfg_rescale_multiplier").unwrap_or(0.0),
        "hidiffusion": false, "hidiffusion_raunet": true, "hidiffusion_window_attn": true,
        "hidiffusion_t1_ratio": 0.4, "hidiffusion_t2_ratio": 0, "model": identifier(&plan.model),
        "steps": plan.steps, "rand_device": "cpu", "scheduler": plan.scheduler,
        "generation_mode": mode, "width": plan.width, "height": plan.height});
    if !sdxl {
        metadata["clip_skip"] = json!(req.int("clip_skip").unwrap_or(0));
    }
    if let Some(vae) = &plan.vae {
        metadata["vae"] = identifier(vae);
    }
    if !plan.loras.is_empty() {
        metadata["loras"] = json!(plan
            .loras
            .iter()
            .map(|(m, w)| json!({"model": identifier(m), "weight": w}))
            .collect::<Vec<_>>());
    }
    if let Some((name, _, _)) = &plan.init {
        metadata["strength"] = json!(strength);
        metadata["init_image"] = json!(name);
    }
    if let Some(r) = &plan.refiner {
        metadata["refiner_model"] = identifier(&r.model);
        metadata["refiner_positive_aesthetic_score"] = json!(r.positive_aesthetic_score);
        metadata["refiner_negative_aesthetic_score"] = json!(r.negative_aesthetic_score);
        metadata["refiner_cfg_scale"] = json!(r.cfg_scale);
        metadata["refiner_scheduler"] = json!(r.scheduler);
        metadata["refiner_start"] = json!(r.start);
        metadata["refiner_steps"] = json!(r.steps);
    }
    let meta = b.add("core_metadata", metadata);

    // Where the UNet and the CLIP(s) come from: the loader, or the LoRA loader (§9.4).
    let clip_source = clip_skip.clone().unwrap_or_else(|| loader.clone());
    let (unet_from, clip_from, clip2_from) = if plan.loras.is_empty() {
        (loader.clone(), clip_source.clone(), loader.clone())
    } else {
        let collect = b.add("lora_collect", json!({"type": "collect"}));
        for (lora, weight) in &plan.loras {
            let sel = b.add(
                "lora_selector",
                json!({"type": "lora_selector", "lora": identifier(lora), "weight": weight}),
            );
            b.edge(&sel, "lora", &collect, "item");
        }
        let apply_type = if sdxl {
            "sdxl_lora_collection_loader"
        } else {
            "lora_collection_loader"
        };
        let apply = b.add(apply_type, json!({"type": apply_type}));
        b.edge(&collect, "collection", &apply, "loras");
        b.edge(&loader, "unet", &apply, "unet");
        b.edge(&clip_source, "clip", &apply, "clip");
        if sdxl {
            b.edge(&loader, "clip2", &apply, "clip2");
        }
        (apply.clone(), apply.clone(), apply)
    };
    b.edge(&unet_from, "unet", &denoise, "unet");
    if let Some(skip) = &clip_skip {
        b.edge(&loader, "clip", skip, "clip");
    }
    for cond in [&pos_cond, &neg_cond] {
        b.edge(&clip_from, "clip", cond, "clip");
        if sdxl {
            b.edge(&clip2_from, "clip2", cond, "clip2");
        }
    }
    b.edge(&positive, "value", &pos_cond, "prompt");
    b.edge(&negative, "value", &neg_cond, "prompt");
    if sdxl {
        b.edge(&positive, "value", &pos_cond, "style");
        b.edge(&negative, "value", &neg_cond, "style");
    }
    b.edge(&pos_cond, "conditioning", &pos_collect, "item");
    b.edge(
        &pos_collect,
        "collection",
        &denoise,
        "positive_conditioning",
    );
    b.edge(&neg_cond, "conditioning", &neg_collect, "item");
    b.edge(
        &neg_collect,
        "collection",
        &denoise,
        "negative_conditioning",
    );
    b.edge(&seed, "value", &noise, "seed");
    b.edge(&noise, "noise", &denoise, "noise");
    match &plan.refiner {
        None => b.edge(&denoise, "latents", &output, "latents"),
        Some(r) => {
            // As the UI's addSDXLRefiner: the refiner's own loader, prompts (CLIP 2 on the
            // prompts as styles, with the aesthetic scores) and denoiser, fed the base's latents
            // (no new noise), decoded by the base's VAE.
            let loader = b.add(
                "refiner_model_loader",
                json!({"type": "sdxl_refiner_model_loader", "model": identifier(&r.model)}),
            );
            let pos = b.add(
                "refiner_pos_cond",
                json!({"type": "sdxl_refiner_compel_prompt",
                    "aesthetic_score": r.positive_aesthetic_score}),
            );
            let neg = b.add(
                "refiner_neg_cond",
                json!({"type": "sdxl_refiner_compel_prompt",
                    "aesthetic_score": r.negative_aesthetic_score}),
            );
            let refine = b.add(
                "refiner_denoise_latents",
                json!({"type": "denoise_latents", "cfg_scale": r.cfg_scale, "steps": r.steps,
                    "scheduler": r.scheduler, "hidiffusion": false, "hidiffusion_raunet": true,
                    "hidiffusion_window_attn": true, "denoising_start": r.start,
                    "denoising_end": 1}),
            );
            b.edge(&loader, "unet", &refine, "unet");
            for cond in [&pos, &neg] {
                b.edge(&loader, "clip2", cond, "clip2");
            }
            b.edge(&positive, "value", &pos, "style");
            b.edge(&negative, "value", &neg, "style");
            b.edge(&pos, "conditioning", &refine, "positive_conditioning");
            b.edge(&neg, "conditioning", &refine, "negative_conditioning");
            b.edge(&denoise, "latents", &refine, "latents");
            b.edge(&refine, "latents", &output, "latents");
        }
    }
    let vae_from = match &plan.vae {
        Some(vae) => b.add(
            "vae",
            json!({"type": "vae_loader", "vae_model": identifier(vae)}),
        ),
        None => loader.clone(),
    };
    b.edge(&vae_from, "vae", &output, "vae");
    if let Some((name, _, _)) = &plan.init {
        let i2l = b.add(
            "i2l",
            json!({"type": "i2l", "image": {"image_name": name}, "fp32": plan.fp32}),
        );
        b.edge(&vae_from, "vae", &i2l, "vae");
        b.edge(&i2l, "latents", &denoise, "latents");
    }
    b.edge(&seed, "value", &meta, "seed");
    b.edge(&positive, "value", &meta, "positive_prompt");
    b.edge(&negative, "value", &meta, "negative_prompt");
    b.edge(&meta, "metadata", &output, "metadata");
    let prefix = if sdxl { "sdxl_graph" } else { "sd1_graph" };
    let graph = json!({"id": node_id(prefix), "nodes": b.nodes, "edges": b.edges});
    (graph, [seed, positive, negative, output])
}

/// Resolves models, images and boards, checks what depends on them, and builds the batch.
async fn plan(
    state: &AppState,
    me: &Identity,
    req: &Request,
) -> Result<(Value, Vec<u32>, [String; 2]), ApiError> {
    let model = main_model(state, req).await?;
    let base = model["base"].as_str().unwrap_or_default().to_owned();
    let defaults = model
        .get("default_settings")
        .cloned()
        .unwrap_or(Value::Null);
    let default_size = if base == "sdxl" { 1024 } else { 512 };
    let vae = match req.str("vae").or_else(|| defaults["vae"].as_str()) {
        None => None,
        Some(wanted) => {
            let vae = find_model(state, "vae", wanted)
                .await?
                .ok_or_else(|| ApiError::not_found(&format!("VAE {wanted} not found")))?;
            if vae["type"] != "vae" || vae["base"] != base.as_str() {
                return Err(invalid(
                    "vae",
                    format!("VAE {wanted} is not a VAE for {base}"),
                    json!(wanted),
                ));
            }
            Some(vae)
        }
    };
    let mut loras = Vec::new();
    for (i, entry) in req
        .get("loras")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let wanted = entry["model"].as_str().ok_or_else(|| {
            ApiError::Validation(vec![ValidationIssue {
                kind: "missing",
                loc: vec![json!("body"), json!("loras"), json!(i), json!("model")],
                msg: "Field required".into(),
                input: entry.clone(),
                ctx: None,
            }])
        })?;
        let weight = entry.get("weight").and_then(Value::as_f64).unwrap_or(0.75);
        let lora = find_model(state, "lora", wanted)
            .await?
            .ok_or_else(|| ApiError::not_found(&format!("LoRA {wanted} not found")))?;
        if lora["type"] != "lora" || lora["base"] != base.as_str() {
            return Err(invalid(
                "loras",
                format!("LoRA {wanted} is not a LoRA for {base}"),
                entry.clone(),
            ));
        }
        loras.push((lora, weight));
    }
    let init = match req.str("init_image") {
        None => None,
        Some(name) => {
            let image = crate::service::images::readable(state, me, name)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => ApiError::not_found("Image not found"),
                    other => other,
                })?;
            let w = u32::try_from(image.width).unwrap_or(0);
            let h = u32::try_from(image.height).unwrap_or(0);
            // The UI sizes noise to the init image, rounded down to the latent grid.
            Some((image.image_name, w / 8 * 8, h / 8 * 8))
        }
    };
    let board = match req.str("board_id") {
        None | Some("none") => None,
        Some(id) => {
            crate::service::boards::writable(
                state,
                me,
                id,
                "Not authorized to add images to this board",
            )
            .await?;
            Some(id.to_owned())
        }
    };
    let pick_int = |field: &str, fallback: i64| {
        req.int(field)
            .or_else(|| defaults[field].as_i64())
            .unwrap_or(fallback)
    };
    let (width, height) = match &init {
        Some((_, w, h)) if req.int("width").is_none() && req.int("height").is_none() => {
            (i64::from(*w), i64::from(*h))
        }
        _ => (
            pick_int("width", default_size),
            pick_int("height", default_size),
        ),
    };
    let scheduler = req
        .str("scheduler")
        .or_else(|| defaults["scheduler"].as_str())
        .unwrap_or("dpmpp_3m_k")
        .to_owned();
    if !atelier_engine::schedulers::is_implemented(&scheduler) {
        return Err(invalid(
            "scheduler",
            format!("scheduler '{scheduler}' is not supported by this server"),
            json!(scheduler),
        ));
    }
    let refiner = refiner(state, req, &base).await?;
    let plan = Plan {
        refiner,
        vae,
        loras,
        init,
        board,
        width,
        height,
        steps: pick_int("steps", 30),
        cfg_scale: req
            .float("cfg_scale")
            .or_else(|| defaults["cfg_scale"].as_f64())
            .unwrap_or(7.5),
        scheduler,
        fp32: defaults["vae_precision"].as_str() != Some("fp16"),
        model,
    };
    let count = req.int("count").unwrap_or(1);
    if count > state.config.max_queue_size() {
        return Err(ApiError::Validation(vec![issue(
            "count",
            "less_than_equal",
            format!(
                "Input should be less than or equal to {}",
                state.config.max_queue_size()
            ),
            json!(count),
        )]));
    }
    let first: u64 = match req.int("seed") {
        Some(s) => u64::try_from(s.rem_euclid(4_294_967_296)).unwrap_or(0),
        None => rand::random::<u32>().into(),
    };
    let seeds: Vec<u32> = (0..u64::try_from(count).unwrap_or(1))
        .map(|i| u32::try_from((first + i) % 4_294_967_295).unwrap_or(0))
        .collect();
    let (graph, [seed_id, pos_id, neg_id, output_id]) = build_graph(req, &plan);
    let batch = json!({
        "batch_id": uuid::Uuid::new_v4().to_string(),
        "origin": "api", "destination": "api", "runs": 1, "graph": graph,
        "data": [
            [{"node_path": seed_id, "field_name": "value", "items": seeds}],
            [{"node_path": pos_id, "field_name": "value", "items": [req.str("prompt").unwrap_or_default()]},
             {"node_path": neg_id, "field_name": "value", "items": [req.str("negative_prompt").unwrap_or_default()]}],
        ],
    });
    Ok((batch, seeds, [seed_id, output_id]))
}

/// The refiner pass the request asks for: `refiner_model` must be an installed SDXL refiner and
/// the main model SDXL; the other `refiner_*` fields need it.
async fn refiner(state: &AppState, req: &Request, base: &str) -> Result<Option<Refiner>, ApiError> {
    let Some(wanted) = req.str("refiner_model") else {
        return match REFINER_SETTINGS.iter().find(|k| !req.get(k).is_null()) {
            Some(field) => Err(invalid(
                field,
                format!("{field} needs refiner_model"),
                req.get(field).clone(),
            )),
            None => Ok(None),
        };
    };
    if base != "sdxl" {
        return Err(invalid(
            "refiner_model",
            format!("a refiner needs an sdxl main model (this one is {base})"),
            json!(wanted),
        ));
    }
    let model = find_model(state, "main", wanted)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("Model {wanted} not found")))?;
    if model["type"] != "main" || model["base"] != "sdxl-refiner" {
        return Err(invalid(
            "refiner_model",
            format!("model {wanted} is not an SDXL refiner"),
            json!(wanted),
        ));
    }
    // The web UI's defaults.
    let scheduler = req.str("refiner_scheduler").unwrap_or("euler").to_owned();
    if !atelier_engine::schedulers::is_implemented(&scheduler) {
        return Err(invalid(
            "refiner_scheduler",
            format!("scheduler '{scheduler}' is not supported by this server"),
            json!(scheduler),
        ));
    }
    Ok(Some(Refiner {
        model,
        steps: req.int("refiner_steps").unwrap_or(20),
        cfg_scale: req.float("refiner_cfg_scale").unwrap_or(7.5),
        scheduler,
        positive_aesthetic_score: req.float("refiner_positive_aesthetic_score").unwrap_or(6.0),
        negative_aesthetic_score: req.float("refiner_negative_aesthetic_score").unwrap_or(2.5),
        start: req.float("refiner_start").unwrap_or(0.8),
    }))
}

/// What the endpoint answers: a status code, and either JSON or PNG bytes.
pub enum Outcome {
    Json(u16, Value),
    Png(Vec<u8>),
}

/// Runs the whole use case.
pub async fn generate(
    state: &AppState,
    me: &Identity,
    req: Request,
    wants_png: bool,
) -> Result<Outcome, ApiError> {
    let queue_id = req.str("queue_id").unwrap_or("default").to_owned();
    let (batch, seeds, [seed_id, output_id]) = plan(state, me, &req).await?;
    let validated = queue_service::validate_batch(&batch, req.flag("prepend"))?;
    if req.flag("dry_run") {
        return Ok(Outcome::Json(
            200,
            json!({"queue_id": queue_id, "batch_id": validated.batch["batch_id"], "item_ids": [],
                "seeds": seeds, "status": "pending", "batch": validated.batch}),
        ));
    }
    let enqueued = queue_service::enqueue(state, me, &queue_id, validated).await?;
    let mut item_ids: Vec<i64> = enqueued["item_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    if item_ids.is_empty() {
        return Err(ApiError::Conflict("The queue is full".into()));
    }
    item_ids.sort_unstable();
    let batch_id = enqueued["batch"]["batch_id"].clone();
    let base =
        json!({"queue_id": queue_id, "batch_id": batch_id, "item_ids": item_ids, "seeds": seeds});
    if !req.wait() {
        let mut body = base;
        body["status"] = json!("pending");
        return Ok(Outcome::Json(202, body));
    }
    let timeout =
        Duration::from_secs(u64::try_from(req.int("timeout_s").unwrap_or(300)).unwrap_or(300));
    let deadline = tokio::time::Instant::now() + timeout;
    let rows = loop {
        let mut rows = Vec::new();
        for id in &item_ids {
            if let Some(row) = state.store.get_queue_item(*id).await? {
                rows.push(row);
            }
        }
        let done = rows.iter().all(|r| r.status.is_terminal());
        if done || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for row in &rows {
        let session: Value = serde_json::from_str(&row.session).unwrap_or(Value::Null);
        let seed = serde_json::from_str::<Value>(row.field_values.as_deref().unwrap_or("[]"))
            .ok()
            .and_then(|fv| {
                fv.as_array()?
                    .iter()
                    .find(|v| v["node_path"] == seed_id.as_str())
                    .map(|v| v["value"].clone())
            })
            .unwrap_or(Value::Null);
        if row.status == QueueItemStatus::Completed {
            let exec = session["source_prepared_mapping"][&output_id][0]
                .as_str()
                .unwrap_or_default();
            let result = &session["results"][exec];
            if let Some(name) = result["image"]["image_name"].as_str() {
                images.push(
                    json!({"item_id": row.item_id, "seed": seed, "image_name": name,
                    "width": result["width"], "height": result["height"],
                    "image_url": format!("/api/v1/images/i/{name}/full"),
                    "thumbnail_url": format!("/api/v1/images/i/{name}/thumbnail")}),
                );
            }
        }
        if row.status == QueueItemStatus::Failed {
            errors.push(json!({"item_id": row.item_id, "error_type": row.error_type, "error_message": row.error_message}));
        }
    }
    let any = |s: QueueItemStatus| rows.iter().any(|r| r.status == s);
    let all_done = rows.iter().all(|r| r.status.is_terminal());
    let status = if !all_done {
        if any(QueueItemStatus::InProgress) || rows.iter().any(|r| r.status.is_terminal()) {
            "in_progress"
        } else {
            "pending"
        }
    } else if any(QueueItemStatus::Failed) {
        "failed"
    } else if any(QueueItemStatus::Canceled) {
        "canceled"
    } else {
        "completed"
    };
    if status == "completed" && wants_png && images.len() == 1 && item_ids.len() == 1 {
        if let Some(name) = images[0]["image_name"].as_str() {
            if let Some(record) = state.store.get_image(name).await? {
                let bytes = crate::service::images::read_full(state, &record).await?;
                return Ok(Outcome::Png(bytes));
            }
        }
    }
    let mut body = base;
    body["status"] = json!(status);
    body["images"] = json!(images);
    body["errors"] = json!(errors);
    Ok(Outcome::Json(if all_done { 200 } else { 202 }, body))
}
