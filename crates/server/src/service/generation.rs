//! The generation nodes' work, on the worker's executor thread: loading models (cached between
//! items within a memory budget), encoding prompts, denoising, VAE decode and encode through
//! the engine. Values pass between nodes through the [`TensorStore`] by name.
//!
//! Supported today: SD 1.x / 2.x / XL and SDXL refiner main models, in diffusers folders or as
//! single-file LDM/SGM checkpoints, and separate SD 1.x/2.x/XL VAE models (diffusers folders or
//! single-file LDM checkpoints), on the device and precision of [`Compute`] (the CPU in f32 by
//! default), with LoRAs (kohya or diffusers/PEFT names) merged into the UNet and text encoders at
//! load (SDXL's CLIP 1 and CLIP 2 each from their own field's LoRAs). Textual-inversion
//! embeddings named in prompts (`<name>` or `<key>`) are looked up, loaded (cached like models) and
//! applied as InvokeAI's `generate_ti_list` and `apply_ti` do.

use crate::service::compute::Compute;
use crate::service::tensors::{Latents, Stored, TensorStore};
use atelier_engine::candle::Tensor;
use atelier_engine::lora::{Lora, LoraSelection};
use atelier_engine::pipeline::{
    latents_from_vec, latents_to_vec, CfgScale, CheckpointConfig, DenoiseRequest, Sd, SdxlAdded,
    Vae, VAE_DTYPE,
};
use atelier_engine::schedulers::PredictionType;
use atelier_engine::textual_inversion::{triggers, TextualInversion};
use atelier_graph::NodeError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const GB: u64 = 1 << 30;

/// The memory budget for loaded models when the config sets no `max_cache_ram_gb`: InvokeAI's
/// heuristic for a machine without a GPU (half the system memory less a 2 GB baseline, at most
/// 32 GB, at least 4 GB). `total` is the system memory, when known (8 GB otherwise).
fn default_budget(total: Option<u64>) -> u64 {
    match total {
        Some(total) => (total / 2).saturating_sub(2 * GB).clamp(4 * GB, 32 * GB),
        None => 8 * GB,
    }
}

/// The machine's memory from `/proc/meminfo` (Linux), in bytes.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn engine_error(e: atelier_engine::EngineError) -> NodeError {
    match e {
        atelier_engine::EngineError::Canceled => NodeError::canceled(),
        other => NodeError::new("RuntimeError", other.to_string()),
    }
}

fn unsupported(what: &str) -> NodeError {
    NodeError::new(
        "NotImplementedError",
        format!("{what} is not supported by this server yet"),
    )
}

/// A loaded model in the cache: a whole pipeline, or a separate VAE.
#[derive(Clone)]
enum Loaded {
    Sd(Arc<Sd>),
    Vae(Arc<Vae>),
    Embedding(Arc<TextualInversion>),
}

/// Loaded models, least recently used first out when over budget.
pub struct ModelCache {
    budget: u64,
    entries: Vec<(String, u64, Loaded)>,
    /// Where models are loaded, or why the configured device cannot be used.
    compute: Result<Compute, String>,
}

impl ModelCache {
    pub fn new(budget_gb: Option<f64>, compute: Result<Compute, String>) -> Self {
        let budget = budget_gb.filter(|gb| *gb > 0.0).map_or_else(
            || default_budget(total_memory()),
            |gb| (gb * GB as f64) as u64,
        );
        Self {
            budget,
            entries: Vec::new(),
            compute,
        }
    }

    /// The device and dtype to load models on; the configured device's problem as a node error.
    fn compute(&self) -> Result<Compute, NodeError> {
        self.compute
            .clone()
            .map_err(|reason| NodeError::new("RuntimeError", reason))
    }

    fn get(&mut self, key: &str) -> Option<Loaded> {
        let pos = self.entries.iter().position(|(k, _, _)| k == key)?;
        let entry = self.entries.remove(pos);
        let model = entry.2.clone();
        self.entries.push(entry);
        Some(model)
    }

    fn insert(&mut self, key: &str, size: u64, model: Loaded) {
        self.entries.retain(|(k, _, _)| k != key);
        while !self.entries.is_empty()
            && self.entries.iter().map(|(_, s, _)| s).sum::<u64>() + size > self.budget
        {
            self.entries.remove(0);
        }
        self.entries.push((key.to_owned(), size, model));
    }
}

/// What the adapter needs from the server: model records (over the channel to the runtime),
/// the models folder, events.
pub trait Host {
    fn model_record(&mut self, key: &str) -> Result<Option<Value>, NodeError>;
    /// The records of the models with exactly this name, base and type.
    fn find_models(
        &mut self,
        name: &str,
        base: &str,
        model_type: &str,
    ) -> Result<Vec<Value>, NodeError>;
    fn models_dir(&self) -> &Path;
    /// `model_load_started` / `model_load_complete` for the item's owner.
    fn model_load(&mut self, complete: bool, record: &Value, submodel: Option<&str>);
    /// `invocation_progress`, with a small preview image (`{width, height, dataURL}`) or null.
    fn progress(&mut self, message: &str, percentage: Option<f64>, image: Option<Value>);
}

/// InvokeAI's latent-to-RGB factors for SD 1.x/2.x previews (rows: latent channels).
const SD1_LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.3444, 0.1385, 0.0670],
    [0.1247, 0.4027, 0.1494],
    [-0.3192, 0.2513, 0.2103],
    [-0.1307, -0.1874, -0.7445],
];

/// InvokeAI's latent-to-RGB factors for SDXL previews, and the 3x3 blur it applies after them.
const SDXL_LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.3816, 0.4930, 0.5320],
    [-0.3753, 0.1631, 0.1739],
    [0.1770, 0.3588, -0.2048],
    [-0.4350, -0.2644, -0.4289],
];
const SDXL_SMOOTH_MATRIX: [[f32; 3]; 3] = [
    [0.0358, 0.0964, 0.0358],
    [0.0964, 0.4711, 0.0964],
    [0.0358, 0.0964, 0.0358],
];

/// A step preview as the reference makes it: latents projected to RGB at 1/8 size (SDXL's then
/// smoothed by a zero-padded 3x3 convolution), as a JPEG data URL whose `width`/`height` are the
/// final image's.
pub fn preview(latents: &Tensor, sdxl: bool) -> Option<Value> {
    use base64::Engine as _;
    let rgb = preview_image(latents, sdxl)?;
    let (w, h) = (rgb.width(), rgb.height());
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(rgb)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .ok()?;
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&jpeg)
    );
    Some(serde_json::json!({"width": w * 8, "height": h * 8, "dataURL": url}))
}

/// The preview's pixels (1/8 of the image's size).
fn preview_image(latents: &Tensor, sdxl: bool) -> Option<image::RgbImage> {
    let dims = latents.dims().to_vec();
    let [_, 4, h, w] = dims.as_slice() else {
        return None;
    };
    let (h, w) = (*h, *w);
    let data = latents_to_vec(latents).ok()?;
    let plane = h * w;
    let factors = if sdxl {
        &SDXL_LATENT_RGB_FACTORS
    } else {
        &SD1_LATENT_RGB_FACTORS
    };
    // Projected colours, channel-major: [c][y * w + x].
    let mut colours = vec![vec![0f32; plane]; 3];
    for (c, colour) in colours.iter_mut().enumerate() {
        for (i, v) in colour.iter_mut().enumerate() {
            *v = (0..4).map(|l| data[l * plane + i] * factors[l][c]).sum();
        }
    }
    if sdxl {
        for colour in &mut colours {
            let source = colour.clone();
            for y in 0..h {
                for x in 0..w {
                    let mut sum = 0f32;
                    for (dy, row) in SDXL_SMOOTH_MATRIX.iter().enumerate() {
                        for (dx, k) in row.iter().enumerate() {
                            let (sy, sx) = ((y + dy).checked_sub(1), (x + dx).checked_sub(1));
                            if let (Some(sy), Some(sx)) = (sy, sx) {
                                if sy < h && sx < w {
                                    sum += k * source[sy * w + sx];
                                }
                            }
                        }
                    }
                    colour[y * w + x] = sum;
                }
            }
        }
    }
    let mut rgb = image::RgbImage::new(u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    for (i, px) in rgb.pixels_mut().enumerate() {
        // `.byte()` truncates.
        let byte = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        *px = image::Rgb([
            byte(colours[0][i]),
            byte(colours[1][i]),
            byte(colours[2][i]),
        ]);
    }
    Some(rgb)
}

fn key_of(field: &Value, member: &str) -> Result<String, NodeError> {
    field[member]["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| NodeError::value(format!("missing model identifier `{member}`")))
}

/// The LoRAs of a `UNetField` or `CLIPField`: (key, weight), in order.
fn loras_of(field: &Value) -> Result<Vec<(String, f32)>, NodeError> {
    let Some(list) = field["loras"].as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|item| {
            let key = key_of(item, "lora")?;
            let weight = item["weight"]
                .as_f64()
                .ok_or_else(|| NodeError::value(format!("LoRA {key} has no weight")))?;
            Ok((key, weight as f32))
        })
        .collect()
}

/// Which part of a main model a node uses, and so which LoRAs are merged into it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    TextEncoder,
    Unet,
    Vae,
}

impl Part {
    fn submodel(self) -> &'static str {
        match self {
            Part::TextEncoder => "text_encoder",
            Part::Unet => "unet",
            Part::Vae => "vae",
        }
    }
}

/// The main model's record, checked: a main SD 1.x/2.x model in a format the engine loads.
/// Returns (record, whether it is a single-file checkpoint).
fn main_record(host: &mut dyn Host, key: &str) -> Result<(Value, bool), NodeError> {
    let record = record(host, key)?;
    if record["type"] != "main" {
        return Err(NodeError::value(format!(
            "model {key} is a {} model, not a main model",
            record["type"].as_str().unwrap_or("?")
        )));
    }
    let base = record["base"].as_str().unwrap_or_default();
    if !["sd-1", "sd-2", "sdxl", "sdxl-refiner"].contains(&base) {
        return Err(unsupported(&format!("base {base}")));
    }
    let checkpoint = match record["format"].as_str().unwrap_or_default() {
        "diffusers" => false,
        // Single files in the original LDM/SGM layout (SD 1.x, 2.x, XL and the XL refiner).
        "checkpoint" => true,
        other => return Err(unsupported(&format!("a main model in {other} format"))),
    };
    Ok((record, checkpoint))
}

/// The LoRA records of `loras`, checked against the main model's base.
fn lora_records(
    host: &mut dyn Host,
    main_key: &str,
    main_base: &str,
    loras: &[(String, f32)],
) -> Result<Vec<Value>, NodeError> {
    loras
        .iter()
        .map(|(key, _)| {
            let record = record(host, key)?;
            if record["type"] != "lora" {
                return Err(NodeError::value(format!(
                    "model {key} is a {} model, not a LoRA",
                    record["type"].as_str().unwrap_or("?")
                )));
            }
            let base = record["base"].as_str().unwrap_or_default();
            if base != main_base {
                return Err(NodeError::value(format!(
                    "LoRA {key} is for {base} models; it cannot be applied to the {main_base} model \
                     {main_key}"
                )));
            }
            Ok(record)
        })
        .collect()
}

/// The safetensors file of a LoRA record: the file itself, or the one `.safetensors` file of a
/// diffusers LoRA folder (`pytorch_lora_weights.safetensors` preferred).
fn lora_file(path: &Path) -> Result<PathBuf, NodeError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let preferred = path.join("pytorch_lora_weights.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| NodeError::new("OSError", format!("{}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| NodeError::value(format!("{}: no .safetensors LoRA file", path.display())))
}

/// The submodel a list of LoRAs is merged into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LoraSlot {
    Unet,
    /// The (first) text encoder: a CLIP field's LoRAs (SDXL's `clip`, patched with `lora_te1_` keys).
    TextEncoder,
    /// SDXL's second text encoder: the `clip2` field's LoRAs (patched with `lora_te2_` keys).
    TextEncoder2,
}

impl LoraSlot {
    fn name(self) -> &'static str {
        match self {
            LoraSlot::Unet => "unet",
            LoraSlot::TextEncoder => "text_encoder",
            LoraSlot::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// Loads (or finds in the cache) the main model `key`, with each slot's LoRAs merged into its
/// submodel (the text encoder gets the CLIP field's LoRAs, SDXL's second text encoder the CLIP 2
/// field's, the UNet the UNet field's, as InvokeAI patches each submodel from its own field). The
/// cache key includes the slots, LoRAs and weights, so the same base with other LoRAs never shares
/// patched weights; LoRAs of weight 0 change nothing and share the plain model.
fn model(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    key: &str,
    part: Part,
    loras: &[(LoraSlot, Vec<(String, f32)>)],
) -> Result<Arc<Sd>, NodeError> {
    let submodel = part.submodel();
    if loras.iter().any(|(_, list)| !list.is_empty()) {
        // Checked even when the patched model is cached (or every weight is 0).
        let (record, _) = main_record(host, key)?;
        for (_, list) in loras {
            lora_records(host, key, record["base"].as_str().unwrap_or_default(), list)?;
        }
    }
    let active: Vec<(LoraSlot, Vec<(String, f32)>)> = loras
        .iter()
        .map(|(slot, list)| {
            let list: Vec<(String, f32)> =
                list.iter().filter(|(_, w)| *w != 0.0).cloned().collect();
            (*slot, list)
        })
        .filter(|(_, list)| !list.is_empty())
        .collect();
    let cache_key = if active.is_empty() {
        key.to_owned()
    } else {
        let slots: Vec<String> = active
            .iter()
            .map(|(slot, list)| {
                let list: Vec<String> = list.iter().map(|(k, w)| format!("{k}@{w}")).collect();
                format!("{}:{}", slot.name(), list.join(","))
            })
            .collect();
        format!("{key}|{}", slots.join("|"))
    };
    if let Some(Loaded::Sd(m)) = cache.get(&cache_key) {
        return Ok(m);
    }
    let (record, checkpoint) = main_record(host, key)?;
    let path: PathBuf = crate::service::models::resolve(
        host.models_dir(),
        record["path"].as_str().unwrap_or_default(),
    );
    let base = record["base"].as_str().unwrap_or_default().to_owned();
    let mut parsed: Vec<(LoraSlot, Vec<(Lora, f32)>)> = Vec::new();
    for (slot, owned) in &active {
        let mut list = Vec::new();
        for (lora_record, (_, weight)) in lora_records(host, key, &base, owned)?.iter().zip(owned) {
            let lora_path = crate::service::models::resolve(
                host.models_dir(),
                lora_record["path"].as_str().unwrap_or_default(),
            );
            host.model_load(false, lora_record, None);
            let lora = Lora::load(&lora_file(&lora_path)?).map_err(engine_error)?;
            host.model_load(true, lora_record, None);
            list.push((lora, *weight));
        }
        parsed.push((*slot, list));
    }
    let (mut unet_loras, mut text_loras, mut text_2_loras) = (Vec::new(), Vec::new(), Vec::new());
    for (slot, list) in &parsed {
        let refs = list.iter().map(|(l, w)| (l, *w));
        match slot {
            LoraSlot::Unet => unet_loras.extend(refs),
            LoraSlot::TextEncoder => text_loras.extend(refs),
            LoraSlot::TextEncoder2 => text_2_loras.extend(refs),
        }
    }
    let selection = LoraSelection {
        unet: &unet_loras,
        text_encoder: &text_loras,
        text_encoder_2: &text_2_loras,
    };
    let compute = cache.compute()?;
    host.model_load(false, &record, Some(submodel));
    let loaded = if checkpoint {
        Sd::load_checkpoint_with_loras(
            &path,
            &checkpoint_config(&record),
            &compute.device,
            compute.dtype,
            selection,
        )
    } else {
        Sd::load_with_loras(&path, &compute.device, compute.dtype, selection)
    }
    .map_err(engine_error)?;
    host.model_load(true, &record, Some(submodel));
    // What the weights take in memory in the load dtype (LoRAs are merged into them), which the
    // file's size does not tell when it is stored in another precision.
    let size = atelier_engine::weights::loaded_bytes(&path, compute.dtype)
        .unwrap_or_else(|_| record["file_size"].as_u64().unwrap_or(0));
    let model = Arc::new(loaded);
    cache.insert(&cache_key, size, Loaded::Sd(model.clone()));
    Ok(model)
}

/// What a single-file checkpoint does not record, from its model record: the base's family, and the
/// record's prediction type (which the probe guessed as InvokeAI does, and the user may have edited) over
/// the family's default.
pub(crate) fn checkpoint_config(record: &Value) -> CheckpointConfig {
    let config = match record["base"].as_str() {
        Some("sd-2") => CheckpointConfig::sd2(),
        Some("sdxl") => CheckpointConfig::sdxl(),
        Some("sdxl-refiner") => CheckpointConfig::sdxl_refiner(),
        _ => CheckpointConfig::sd1(),
    };
    match record["prediction_type"].as_str() {
        Some("v_prediction") => config.with_prediction_type(PredictionType::VPrediction),
        Some("epsilon") => config.with_prediction_type(PredictionType::Epsilon),
        _ => config,
    }
}

fn record(host: &mut dyn Host, key: &str) -> Result<Value, NodeError> {
    host.model_record(key)?
        .ok_or_else(|| NodeError::new("UnknownModelException", format!("Unknown model {key}")))
}

/// The VAE a `VAEField` names: a main model's (its `vae/` folder) or a separate VAE model.
enum VaeOf {
    Main(Arc<Sd>),
    Separate(Arc<Vae>),
}

impl VaeOf {
    fn get(&self) -> &Vae {
        match self {
            VaeOf::Main(sd) => sd.vae(),
            VaeOf::Separate(vae) => vae,
        }
    }
}

/// Loads (or finds in the cache) the VAE of model `key`. Like InvokeAI's `l2i`/`i2l`, any SD 1.x/2.x/XL
/// `AutoencoderKL` is accepted whatever the main model (its latents must have the VAE's channel count);
/// `POST /api/v1/generate` is where a VAE of another base is refused.
fn vae_model(cache: &mut ModelCache, host: &mut dyn Host, key: &str) -> Result<VaeOf, NodeError> {
    match cache.get(key) {
        Some(Loaded::Sd(sd)) => return Ok(VaeOf::Main(sd)),
        Some(Loaded::Vae(vae)) => return Ok(VaeOf::Separate(vae)),
        Some(Loaded::Embedding(_)) | None => {}
    }
    let record = record(host, key)?;
    if record["type"] != "vae" {
        return model(cache, host, key, Part::Vae, &[]).map(VaeOf::Main);
    }
    let base = record["base"].as_str().unwrap_or_default();
    if !["sd-1", "sd-2", "sdxl"].contains(&base) {
        return Err(unsupported(&format!("a VAE of base {base}")));
    }
    let format = record["format"].as_str().unwrap_or_default();
    if !["diffusers", "checkpoint"].contains(&format) {
        return Err(unsupported(&format!("a VAE in {format} format")));
    }
    let path: PathBuf = crate::service::models::resolve(
        host.models_dir(),
        record["path"].as_str().unwrap_or_default(),
    );
    let device = cache.compute()?.device;
    host.model_load(false, &record, None);
    let loaded = if format == "diffusers" {
        Vae::load(&path, &device, VAE_DTYPE)
    } else {
        // A checkpoint records no scaling factor: the family's (generation.md §10.4).
        let scaling = if base == "sdxl" { 0.13025 } else { 0.18215 };
        Vae::load_checkpoint(&path, scaling, &device, VAE_DTYPE)
    }
    .map_err(engine_error)?;
    host.model_load(true, &record, None);
    let vae = Arc::new(loaded);
    let size = record["file_size"].as_u64().unwrap_or(0);
    cache.insert(key, size, Loaded::Vae(vae.clone()));
    Ok(VaeOf::Separate(vae))
}

/// Textual-inversion embeddings by the trigger name a prompt wrote (`<name>`).
type Embeddings = Vec<(String, Arc<TextualInversion>)>;

/// The most distinct `<…>` triggers one prompt node looks up; the rest stay plain text. Each lookup
/// is a database round trip on the one worker thread every user shares, and a prompt's encoding
/// cannot use more embeddings than this anyway.
const MAX_TRIGGERS: usize = 64;

/// The textual-inversion embeddings the `<…>` triggers of `texts` name, for the text encoders of the main
/// model `main_key` (InvokeAI's `generate_ti_list`, with the main model's base): a trigger's text is first
/// taken as a model key (the model must be an embedding of that base), else as the name of an embedding of
/// that base (exactly one). A trigger that names none stays plain text, with a warning, as does one whose
/// embedding fails to load.
fn embeddings(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    main_key: &str,
    texts: &[&str],
) -> Result<Embeddings, NodeError> {
    let mut out: Embeddings = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut base: Option<String> = None;
    for name in texts.iter().flat_map(|t| triggers(t)) {
        if seen.contains(name) {
            continue;
        }
        if seen.len() == MAX_TRIGGERS {
            tracing::warn!(
                "more than {MAX_TRIGGERS} distinct <…> triggers in one prompt; the rest stay plain text"
            );
            break;
        }
        seen.insert(name);
        let base = match &base {
            Some(b) => b.clone(),
            None => base.insert(main_base(host, main_key)?).clone(),
        };
        let Some(record) = embedding_record(host, name, &base)? else {
            continue;
        };
        match load_embedding(cache, host, &record) {
            Ok(ti) => out.push((name.to_owned(), ti)),
            Err(e) => tracing::warn!(
                trigger = %format!("<{name}>"),
                error = %e.message,
                "failed to load the textual inversion model for this trigger; it stays plain text"
            ),
        }
    }
    Ok(out)
}

/// The embedding record a trigger names (see [`embeddings`]), or `None` (logged).
fn embedding_record(
    host: &mut dyn Host,
    name: &str,
    base: &str,
) -> Result<Option<Value>, NodeError> {
    let trigger = format!("<{name}>");
    if let Some(record) = host.model_record(name)? {
        if record["type"] == "embedding" && record["base"] == base {
            return Ok(Some(record));
        }
        tracing::warn!(%trigger, "not a valid textual inversion model for this graph");
        return Ok(None);
    }
    let mut found = host.find_models(name, base, "embedding")?;
    match found.len() {
        1 => Ok(found.pop()),
        0 => {
            tracing::warn!(%trigger, base, "no textual inversion model of this name and base; the trigger stays plain text");
            Ok(None)
        }
        _ => {
            tracing::warn!(%trigger, "more than one similarly-named textual inversion models");
            Ok(None)
        }
    }
}

/// Loads (or finds in the cache) an embedding model: its `.safetensors` file, or a diffusers folder's
/// `learned_embeds.safetensors`.
fn load_embedding(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    record: &Value,
) -> Result<Arc<TextualInversion>, NodeError> {
    let key = record["key"].as_str().unwrap_or_default();
    if let Some(Loaded::Embedding(ti)) = cache.get(key) {
        return Ok(ti);
    }
    let mut path = crate::service::models::resolve(
        host.models_dir(),
        record["path"].as_str().unwrap_or_default(),
    );
    if record["format"] == "embedding_folder" {
        path = path.join("learned_embeds.safetensors");
    }
    // The file is read before the events, so a trigger whose embedding fails to load (and stays
    // text) leaves no `model_load_started` without its `model_load_complete`.
    let ti = Arc::new(TextualInversion::load(&path).map_err(engine_error)?);
    host.model_load(false, record, None);
    host.model_load(true, record, None);
    let size = record["file_size"].as_u64().unwrap_or(0);
    cache.insert(key, size, Loaded::Embedding(ti.clone()));
    Ok(ti)
}

/// The engine's view of [`Embeddings`].
fn embedding_refs(list: &Embeddings) -> Vec<(&str, &TextualInversion)> {
    list.iter().map(|(n, t)| (n.as_str(), t.as_ref())).collect()
}

/// The base of the main model `key` (the base its text encoders' embeddings must have).
fn main_base(host: &mut dyn Host, key: &str) -> Result<String, NodeError> {
    let (record, _) = main_record(host, key)?;
    Ok(record["base"].as_str().unwrap_or_default().to_owned())
}

/// An `sdxl_compel_prompt` result (InvokeAI's `SDXLConditioningInfo`): both encoders' states side
/// by side, encoder 2's pooled output and the six time ids.
struct SdxlConditioning {
    embeds: Tensor,
    pooled: Tensor,
    time_ids: Vec<f64>,
}

/// A conditioning as `denoise_latents` uses it.
enum Conditioning {
    /// SD 1.x/2.x: (1, 77·k, dim).
    Plain(Tensor),
    /// SDXL: embeds (1, 77·k, dim1 + dim2), pooled (1, pooled dim), time ids.
    Sdxl(Tensor, Tensor, Vec<f64>),
}

/// The conditioning (or list of them, concatenated along the tokens as for SD 1.x; an SDXL list
/// keeps the first item's pooled output and time ids) a `denoise_latents` field names.
fn conditioning(tensors: &TensorStore, field: &Value) -> Result<Conditioning, NodeError> {
    let list: Vec<&Value> = match field {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let mut parts = Vec::new();
    let mut sdxl: Option<(Tensor, Vec<f64>)> = None;
    for item in list {
        if !item["mask"].is_null() {
            return Err(unsupported("a conditioning mask"));
        }
        let name = item["conditioning_name"].as_str().unwrap_or_default();
        let Some(Stored::Opaque(any)) = tensors.get(name) else {
            return Err(NodeError::new(
                "ObjectNotFoundError",
                format!("'Object with name {name} not found'"),
            ));
        };
        let is_sdxl = if let Some(t) = any.downcast_ref::<Tensor>() {
            parts.push(t.clone());
            false
        } else if let Some(c) = any.downcast_ref::<SdxlConditioning>() {
            parts.push(c.embeds.clone());
            sdxl.get_or_insert_with(|| (c.pooled.clone(), c.time_ids.clone()));
            true
        } else {
            return Err(NodeError::value(format!("{name} is not a conditioning")));
        };
        if is_sdxl != sdxl.is_some() {
            return Err(NodeError::value(
                "a conditioning list mixes SDXL and SD 1.x/2.x conditionings",
            ));
        }
    }
    if parts.is_empty() {
        return Err(NodeError::value("no conditioning given"));
    }
    let embeds =
        Tensor::cat(&parts, 1).map_err(|e| NodeError::new("RuntimeError", e.to_string()))?;
    Ok(match sdxl {
        None => Conditioning::Plain(embeds),
        Some((pooled, time_ids)) => Conditioning::Sdxl(embeds, pooled, time_ids),
    })
}

fn latents(
    tensors: &TensorStore,
    field: &Value,
) -> Result<Option<(Tensor, Option<u32>)>, NodeError> {
    if field.is_null() {
        return Ok(None);
    }
    let name = field["latents_name"].as_str().unwrap_or_default();
    let stored = tensors.latents(name).ok_or_else(|| {
        NodeError::new(
            "ObjectNotFoundError",
            format!("'Object with name {name} not found'"),
        )
    })?;
    let tensor = latents_from_vec(&stored.shape, stored.data.clone()).map_err(engine_error)?;
    let seed = field["seed"].as_u64().and_then(|s| u32::try_from(s).ok());
    Ok(Some((tensor, seed)))
}

fn store_latents(tensors: &TensorStore, t: &Tensor) -> Result<(String, u32, u32), NodeError> {
    let shape = t.dims().to_vec();
    let data = latents_to_vec(t).map_err(engine_error)?;
    let (h, w) = match shape.as_slice() {
        [_, _, h, w] => (*h, *w),
        _ => (0, 0),
    };
    let name = tensors.put(
        "latents",
        Stored::Latents(Arc::new(Latents { shape, data })),
    );
    let px = |v: usize| u32::try_from(v * 8).unwrap_or(0);
    Ok((name, px(w), px(h)))
}

fn skipped_layers(clip: &Value) -> usize {
    usize::try_from(clip["skipped_layers"].as_u64().unwrap_or(0)).unwrap_or(0)
}

/// `compel` and `sdxl_compel_prompt`.
pub fn encode_prompt(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
) -> Result<String, NodeError> {
    if !request["mask"].is_null() {
        return Err(unsupported("a conditioning mask"));
    }
    let clip = &request["clip"];
    if clip.is_null() && !request["clip2"].is_null() {
        return encode_prompt_sdxl_refiner(cache, host, tensors, request);
    }
    let key = key_of(clip, "text_encoder")?;
    if !request["clip2"].is_null() {
        return encode_prompt_sdxl(cache, host, tensors, request, &key);
    }
    let sd = model(
        cache,
        host,
        &key,
        Part::TextEncoder,
        &[(LoraSlot::TextEncoder, loras_of(clip)?)],
    )?;
    if sd.is_sdxl() {
        return Err(NodeError::value(format!(
            "model {key} is an SDXL model: its prompts need `sdxl_compel_prompt` (CLIP 1 and 2)"
        )));
    }
    let prompt = request["prompt"].as_str().unwrap_or_default();
    let tis = embeddings(cache, host, &key, &[prompt])?;
    let tensor = sd
        .encode_prompt_with_ti(prompt, skipped_layers(clip), &embedding_refs(&tis))
        .map_err(engine_error)?;
    Ok(tensors.put("conditioning", Stored::Opaque(Arc::new(tensor))))
}

/// `sdxl_compel_prompt`: both text encoders of the SDXL model `key` (CLIP 1 on the prompt, CLIP 2
/// on the style, or on the prompt when the style is blank) and the time ids
/// `[original_height, original_width, crop_top, crop_left, target_height, target_width]`.
fn encode_prompt_sdxl(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
    key: &str,
) -> Result<String, NodeError> {
    let (clip, clip2) = (&request["clip"], &request["clip2"]);
    if key_of(clip2, "text_encoder")? != key {
        return Err(unsupported("CLIP 1 and CLIP 2 from different models"));
    }
    // InvokeAI patches CLIP 1 with the `clip` field's LoRAs (`lora_te1_` keys) and CLIP 2 with the
    // `clip2` field's (`lora_te2_` keys).
    let loras = [
        (LoraSlot::TextEncoder, loras_of(clip)?),
        (LoraSlot::TextEncoder2, loras_of(clip2)?),
    ];
    let sd = model(cache, host, key, Part::TextEncoder, &loras)?;
    if !sd.is_sdxl() {
        return Err(NodeError::value(format!(
            "model {key} is not an SDXL model: use the `compel` node for SD 1.x/2.x models"
        )));
    }
    if sd.is_sdxl_refiner() {
        return Err(NodeError::value(format!(
            "model {key} is an SDXL refiner: its prompts need `sdxl_refiner_compel_prompt` (CLIP 2)"
        )));
    }
    let number = |name: &str, default: i64| request[name].as_i64().unwrap_or(default) as f64;
    let time_ids = vec![
        number("original_height", 1024),
        number("original_width", 1024),
        number("crop_top", 0),
        number("crop_left", 0),
        number("target_height", 1024),
        number("target_width", 1024),
    ];
    let (prompt, style) = (
        request["prompt"].as_str().unwrap_or_default(),
        request["style"].as_str().unwrap_or_default(),
    );
    let tis = embeddings(cache, host, key, &[prompt, style])?;
    let encoded = sd
        .encode_prompt_sdxl_with_ti(
            prompt,
            style,
            skipped_layers(clip),
            skipped_layers(clip2),
            &embedding_refs(&tis),
        )
        .map_err(engine_error)?;
    let stored = SdxlConditioning {
        embeds: encoded.embeds,
        pooled: encoded.pooled,
        time_ids,
    };
    Ok(tensors.put("conditioning", Stored::Opaque(Arc::new(stored))))
}

/// `sdxl_refiner_compel_prompt`: the SDXL refiner's only text encoder (CLIP 2) on the style, and
/// the time ids `[original_height, original_width, crop_top, crop_left, aesthetic_score]`.
fn encode_prompt_sdxl_refiner(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
) -> Result<String, NodeError> {
    let clip2 = &request["clip2"];
    let key = key_of(clip2, "text_encoder")?;
    let loras = [(LoraSlot::TextEncoder2, loras_of(clip2)?)];
    let sd = model(cache, host, &key, Part::TextEncoder, &loras)?;
    if !sd.is_sdxl_refiner() {
        return Err(NodeError::value(format!(
            "model {key} is not an SDXL refiner: `sdxl_refiner_compel_prompt` needs one"
        )));
    }
    let number = |name: &str, default: f64| request[name].as_f64().unwrap_or(default);
    let time_ids = vec![
        number("original_height", 1024.0),
        number("original_width", 1024.0),
        number("crop_top", 0.0),
        number("crop_left", 0.0),
        number("aesthetic_score", 6.0),
    ];
    let style = request["style"].as_str().unwrap_or_default();
    // The refiner's base is `sdxl-refiner`, which no embedding has: as in InvokeAI, triggers stay text.
    let tis = embeddings(cache, host, &key, &[style])?;
    let encoded = sd
        .encode_prompt_sdxl_refiner_with_ti(style, skipped_layers(clip2), &embedding_refs(&tis))
        .map_err(engine_error)?;
    let stored = SdxlConditioning {
        embeds: encoded.embeds,
        pooled: encoded.pooled,
        time_ids,
    };
    Ok(tensors.put("conditioning", Stored::Opaque(Arc::new(stored))))
}

/// `denoise_latents`.
pub fn denoise(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
    cancel: &AtomicBool,
) -> Result<(String, u32, u32), NodeError> {
    for field in ["control", "ip_adapter", "t2i_adapter", "denoise_mask"] {
        if !request[field].is_null() {
            return Err(unsupported(field));
        }
    }
    if request["hidiffusion"].as_bool() == Some(true) {
        return Err(unsupported("HiDiffusion"));
    }
    let unet = &request["unet"];
    if unet["seamless_axes"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported("seamless tiling"));
    }
    if !unet["freeu_config"].is_null() {
        return Err(unsupported("FreeU"));
    }
    let sd = model(
        cache,
        host,
        &key_of(unet, "unet")?,
        Part::Unet,
        &[(LoraSlot::Unet, loras_of(unet)?)],
    )?;
    let noise = latents(tensors, &request["noise"])?;
    let start = latents(tensors, &request["latents"])?;
    let seed = noise
        .as_ref()
        .and_then(|(_, s)| *s)
        .or_else(|| start.as_ref().and_then(|(_, s)| *s))
        .unwrap_or(0);
    let cfg_scale = match &request["cfg_scale"] {
        Value::Array(list) => CfgScale::PerStep(list.iter().filter_map(Value::as_f64).collect()),
        v => CfgScale::Scalar(v.as_f64().unwrap_or(7.5)),
    };
    let (positive, negative, sdxl) = match (
        conditioning(tensors, &request["positive_conditioning"])?,
        conditioning(tensors, &request["negative_conditioning"])?,
    ) {
        (Conditioning::Plain(p), Conditioning::Plain(n)) => (p, n, None),
        (Conditioning::Sdxl(p, p_pooled, p_ids), Conditioning::Sdxl(n, n_pooled, n_ids)) => (
            p,
            n,
            Some(SdxlAdded {
                positive_pooled: p_pooled,
                negative_pooled: n_pooled,
                positive_time_ids: p_ids,
                negative_time_ids: n_ids,
            }),
        ),
        _ => {
            return Err(NodeError::value(
                "the positive and negative conditionings are for different model families",
            ))
        }
    };
    match (sd.is_sdxl(), sdxl.is_some()) {
        (true, false) => {
            return Err(NodeError::value(
                "an SDXL UNet needs SDXL conditioning (from `sdxl_compel_prompt`)",
            ))
        }
        (false, true) => {
            return Err(NodeError::value(
                "SDXL conditioning (from `sdxl_compel_prompt`) needs an SDXL UNet",
            ))
        }
        _ => {}
    }
    if let (Some(count), Some(added)) = (sd.time_id_count(), &sdxl) {
        let given = added
            .positive_time_ids
            .len()
            .max(added.negative_time_ids.len());
        if given != count || added.positive_time_ids.len() != added.negative_time_ids.len() {
            return Err(NodeError::value(if sd.is_sdxl_refiner() {
                "an SDXL refiner UNet needs the refiner's conditioning (from `sdxl_refiner_compel_prompt`)"
            } else {
                "SDXL refiner conditioning (from `sdxl_refiner_compel_prompt`) needs an SDXL refiner UNet"
            }));
        }
    }
    let is_sdxl = sd.is_sdxl();
    let req = DenoiseRequest {
        positive,
        negative,
        noise: noise.map(|(t, _)| t),
        latents: start.map(|(t, _)| t),
        steps: usize::try_from(request["steps"].as_u64().unwrap_or(10)).unwrap_or(10),
        cfg_scale,
        cfg_rescale_multiplier: request["cfg_rescale_multiplier"].as_f64().unwrap_or(0.0),
        scheduler: request["scheduler"].as_str().unwrap_or("euler").to_owned(),
        denoising_start: request["denoising_start"].as_f64().unwrap_or(0.0),
        denoising_end: request["denoising_end"].as_f64().unwrap_or(1.0),
        seed,
        sdxl,
    };
    let mut sink = |p: &atelier_engine::pipeline::StepProgress<'_>| {
        let pct = p.step as f64 / p.total_steps.max(1) as f64;
        host.progress("Denoising", Some(pct), preview(p.latents, is_sdxl));
    };
    let out = sd.denoise(&req, &mut sink, cancel).map_err(engine_error)?;
    store_latents(tensors, &out)
}

/// `l2i`.
pub fn decode(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
) -> Result<image::DynamicImage, NodeError> {
    let vae = &request["vae"];
    if vae["seamless_axes"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported("seamless tiling"));
    }
    let vae = vae_model(cache, host, &key_of(vae, "vae")?)?;
    let (t, _) = latents(tensors, &request["latents"])?
        .ok_or_else(|| NodeError::value("no latents given"))?;
    let rgb = vae.get().decode(&t).map_err(engine_error)?;
    Ok(image::DynamicImage::ImageRgb8(rgb))
}

/// `i2l`.
pub fn encode(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    image: &image::DynamicImage,
    request: &Value,
) -> Result<(String, u32, u32), NodeError> {
    let key = key_of(&request["vae"], "vae")?;
    let vae = vae_model(cache, host, &key)?;
    // InvokeAI's colour compensation applies to SDXL VAEs only; other VAEs ignore the option.
    let (scale, bias) =
        if request["color_compensation"] == "SDXL" && record(host, &key)?["base"] == "sdxl" {
            (1.015, -0.002)
        } else {
            (1.0, 0.0)
        };
    let t = vae
        .get()
        .encode_compensated(&image.to_rgb8(), scale, bias)
        .map_err(engine_error)?;
    store_latents(tensors, &t)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn the_default_cache_budget_follows_invokeai_heuristic() {
        // Half the memory less 2 GB, between 4 and 32 GB; 8 GB when the memory is unknown.
        assert_eq!(default_budget(Some(24 * GB)), 10 * GB);
        assert_eq!(default_budget(Some(8 * GB)), 4 * GB);
        assert_eq!(default_budget(Some(GB)), 4 * GB);
        assert_eq!(default_budget(Some(256 * GB)), 32 * GB);
        assert_eq!(default_budget(None), 8 * GB);
        // This machine's /proc/meminfo is read (Linux CI).
        assert!(total_memory().is_some_and(|m| m > GB));
        let cache = ModelCache::new(None, Ok(Compute::cpu()));
        assert_eq!(cache.budget, default_budget(total_memory()));
        assert_eq!(
            ModelCache::new(Some(1.5), Ok(Compute::cpu())).budget,
            3 * GB / 2
        );
    }

    #[test]
    fn checkpoint_configs_follow_the_record() {
        use atelier_engine::ldm::CheckpointFamily;
        let config = |record: Value| {
            let c = checkpoint_config(&record);
            (c.family, c.scheduler.prediction_type)
        };
        assert_eq!(
            config(serde_json::json!({"base": "sd-1", "prediction_type": "epsilon"})),
            (CheckpointFamily::Sd1, PredictionType::Epsilon)
        );
        assert_eq!(
            config(serde_json::json!({"base": "sd-2", "prediction_type": "v_prediction"})),
            (CheckpointFamily::Sd2, PredictionType::VPrediction)
        );
        // The record's value wins over the family's default (SD 2.x base: ε).
        assert_eq!(
            config(serde_json::json!({"base": "sd-2", "prediction_type": "epsilon"})),
            (CheckpointFamily::Sd2, PredictionType::Epsilon)
        );
        assert_eq!(
            config(serde_json::json!({"base": "sd-1", "prediction_type": "v_prediction"})),
            (CheckpointFamily::Sd1, PredictionType::VPrediction)
        );
        assert_eq!(
            config(serde_json::json!({"base": "sd-2"})),
            (CheckpointFamily::Sd2, PredictionType::Epsilon)
        );
        assert_eq!(
            config(serde_json::json!({"base": "sdxl", "prediction_type": "epsilon"})),
            (CheckpointFamily::Sdxl, PredictionType::Epsilon)
        );
        assert_eq!(
            config(serde_json::json!({"base": "sdxl-refiner", "prediction_type": "epsilon"})),
            (CheckpointFamily::SdxlRefiner, PredictionType::Epsilon)
        );
    }

    #[test]
    fn previews_project_latents_like_the_reference() {
        // Channel 0 at 1, the others at 0: (1 + factor) / 2 of full scale per colour.
        let mut data = vec![0f32; 4 * 2 * 3];
        data[..6].fill(1.0);
        let latents = latents_from_vec(&[1, 4, 2, 3], data).expect("tensor");
        let preview = preview(&latents, false).expect("preview");
        assert_eq!(
            (preview["width"].clone(), preview["height"].clone()),
            (serde_json::json!(24), serde_json::json!(16))
        );
        let url = preview["dataURL"].as_str().expect("url");
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(url.trim_start_matches("data:image/jpeg;base64,"))
            .expect("base64");
        let img = image::load_from_memory(&jpeg).expect("jpeg").to_rgb8();
        assert_eq!(img.dimensions(), (3, 2));
        let px = img.get_pixel(1, 1);
        for (got, want) in px.0.iter().zip([171i32, 145, 136]) {
            assert!((i32::from(*got) - want).abs() <= 4, "{px:?}");
        }
    }

    #[test]
    fn sdxl_previews_use_their_factors_and_the_smoothing() {
        // Channel 0 at 1 on a 3x3 grid: the centre sums the whole smoothing kernel (0.9999),
        // a corner only the four taps inside the grid (0.6997).
        let mut data = vec![0f32; 4 * 3 * 3];
        data[..9].fill(1.0);
        let latents = latents_from_vec(&[1, 4, 3, 3], data).expect("tensor");
        let img = preview_image(&latents, true).expect("preview");
        let byte = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        let want = |weight: f32| SDXL_LATENT_RGB_FACTORS[0].map(|f| byte(f * weight));
        let close = |got: [u8; 3], want: [u8; 3]| {
            got.iter()
                .zip(want)
                .all(|(g, w)| (i32::from(*g) - i32::from(w)).abs() <= 1)
        };
        assert!(close(img.get_pixel(1, 1).0, want(0.9999)), "{img:?}");
        assert!(close(img.get_pixel(0, 0).0, want(0.6997)), "{img:?}");
        assert!(close(img.get_pixel(0, 0).0, [161, 171, 174]), "{img:?}");
        let plain = preview_image(&latents, false).expect("preview");
        assert_eq!(plain.get_pixel(0, 0).0, SD1_LATENT_RGB_FACTORS[0].map(byte));
    }
}
