//! The generation nodes' work, on the worker's executor thread: loading models (cached between
//! items within a memory budget), encoding prompts, denoising, VAE decode and encode through
//! the engine. Values pass between nodes through the [`TensorStore`] by name.
//!
//! Supported today: SD 1.x / 2.x main models in diffusers folders, SD 1.x main models as
//! single-file LDM checkpoints, and separate SD 1.x/2.x/XL VAE models (diffusers folders or
//! single-file LDM checkpoints), on the CPU in f32, with LoRAs (kohya or diffusers/PEFT names)
//! merged into the UNet and text encoder at load. SDXL and single-file SD 2.x checkpoints are
//! refused with a clear error (issue 5 tracks them).

use crate::service::tensors::{Latents, Stored, TensorStore};
use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::lora::{Lora, LoraSelection};
use atelier_engine::pipeline::{
    latents_from_vec, latents_to_vec, CfgScale, CheckpointConfig, DenoiseRequest, Sd, Vae,
};
use atelier_graph::NodeError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Default memory budget for loaded models when the config sets no `ram` (GB).
const DEFAULT_BUDGET_BYTES: u64 = 8 << 30;

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
}

/// Loaded models, least recently used first out when over budget.
pub struct ModelCache {
    budget: u64,
    entries: Vec<(String, u64, Loaded)>,
}

impl ModelCache {
    pub fn new(budget_gb: Option<f64>) -> Self {
        let budget = budget_gb
            .filter(|gb| *gb > 0.0)
            .map_or(DEFAULT_BUDGET_BYTES, |gb| (gb * (1u64 << 30) as f64) as u64);
        Self {
            budget,
            entries: Vec::new(),
        }
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

/// A step preview as the reference makes it: latents projected to RGB at 1/8 size, as a JPEG
/// data URL whose `width`/`height` are the final image's.
pub fn preview(latents: &Tensor) -> Option<Value> {
    use base64::Engine as _;
    let dims = latents.dims().to_vec();
    let [_, 4, h, w] = dims.as_slice() else {
        return None;
    };
    let (h, w) = (*h, *w);
    let data = latents_to_vec(latents).ok()?;
    let plane = h * w;
    let mut rgb = image::RgbImage::new(u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    for (i, px) in rgb.pixels_mut().enumerate() {
        let mut out = [0u8; 3];
        for (c, slot) in out.iter_mut().enumerate() {
            let v: f32 = (0..4)
                .map(|l| data[l * plane + i] * SD1_LATENT_RGB_FACTORS[l][c])
                .sum();
            // `.byte()` truncates.
            *slot = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        }
        *px = image::Rgb(out);
    }
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
    if !["sd-1", "sd-2"].contains(&base) {
        return Err(unsupported(&format!("base {base}")));
    }
    let checkpoint = match record["format"].as_str().unwrap_or_default() {
        "diffusers" => false,
        // Single files in the original LDM layout: SD 1.x only (SD 2.x's OpenCLIP text encoder
        // needs a conversion the engine does not do yet).
        "checkpoint" if base == "sd-1" => true,
        "checkpoint" => return Err(unsupported(&format!("a single-file {base} checkpoint"))),
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

/// Loads (or finds in the cache) the main model `key`, with `loras` merged into the part the node
/// uses (the text encoder gets the CLIP field's LoRAs, the UNet the UNet field's, as InvokeAI
/// patches each submodel from its own field). The cache key includes the LoRAs and weights, so
/// the same base with other LoRAs never shares patched weights; LoRAs of weight 0 change nothing
/// and share the plain model.
fn model(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    key: &str,
    part: Part,
    loras: &[(String, f32)],
) -> Result<Arc<Sd>, NodeError> {
    let submodel = part.submodel();
    if !loras.is_empty() {
        // Checked even when the patched model is cached (or every weight is 0).
        let (record, _) = main_record(host, key)?;
        lora_records(
            host,
            key,
            record["base"].as_str().unwrap_or_default(),
            loras,
        )?;
    }
    let active: Vec<&(String, f32)> = loras.iter().filter(|(_, w)| *w != 0.0).collect();
    let cache_key = if active.is_empty() {
        key.to_owned()
    } else {
        let list: Vec<String> = active.iter().map(|(k, w)| format!("{k}@{w}")).collect();
        format!("{key}|{submodel}:{}", list.join(","))
    };
    if let Some(Loaded::Sd(m)) = cache.get(&cache_key) {
        return Ok(m);
    }
    let (record, checkpoint) = main_record(host, key)?;
    let path: PathBuf = crate::service::models::resolve(
        host.models_dir(),
        record["path"].as_str().unwrap_or_default(),
    );
    let owned: Vec<(String, f32)> = active.iter().map(|&l| l.clone()).collect();
    let base = record["base"].as_str().unwrap_or_default().to_owned();
    let mut size = record["file_size"].as_u64().unwrap_or(0);
    let mut parsed = Vec::new();
    for (lora_record, (_, weight)) in lora_records(host, key, &base, &owned)?.iter().zip(&owned) {
        let lora_path = crate::service::models::resolve(
            host.models_dir(),
            lora_record["path"].as_str().unwrap_or_default(),
        );
        host.model_load(false, lora_record, None);
        let lora = Lora::load(&lora_file(&lora_path)?).map_err(engine_error)?;
        host.model_load(true, lora_record, None);
        size += lora_record["file_size"].as_u64().unwrap_or(0);
        parsed.push((lora, *weight));
    }
    let refs: Vec<(&Lora, f32)> = parsed.iter().map(|(l, w)| (l, *w)).collect();
    let selection = match part {
        Part::TextEncoder => LoraSelection {
            unet: &[],
            text_encoder: &refs,
        },
        Part::Unet => LoraSelection {
            unet: &refs,
            text_encoder: &[],
        },
        Part::Vae => LoraSelection::NONE,
    };
    host.model_load(false, &record, Some(submodel));
    let loaded = if checkpoint {
        Sd::load_checkpoint_with_loras(
            &path,
            &CheckpointConfig::sd1(),
            &Device::Cpu,
            DType::F32,
            selection,
        )
    } else {
        Sd::load_with_loras(&path, &Device::Cpu, DType::F32, selection)
    }
    .map_err(engine_error)?;
    host.model_load(true, &record, Some(submodel));
    let model = Arc::new(loaded);
    cache.insert(&cache_key, size, Loaded::Sd(model.clone()));
    Ok(model)
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
        None => {}
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
    host.model_load(false, &record, None);
    let loaded = if format == "diffusers" {
        Vae::load(&path, &Device::Cpu, DType::F32)
    } else {
        // A checkpoint records no scaling factor: the family's (generation.md §10.4).
        let scaling = if base == "sdxl" { 0.13025 } else { 0.18215 };
        Vae::load_checkpoint(&path, scaling, &Device::Cpu, DType::F32)
    }
    .map_err(engine_error)?;
    host.model_load(true, &record, None);
    let vae = Arc::new(loaded);
    let size = record["file_size"].as_u64().unwrap_or(0);
    cache.insert(key, size, Loaded::Vae(vae.clone()));
    Ok(VaeOf::Separate(vae))
}

fn conditioning(tensors: &TensorStore, field: &Value) -> Result<Tensor, NodeError> {
    let list: Vec<&Value> = match field {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let mut parts = Vec::new();
    for item in list {
        if !item["mask"].is_null() {
            return Err(unsupported("a conditioning mask"));
        }
        let name = item["conditioning_name"].as_str().unwrap_or_default();
        match tensors.get(name) {
            Some(Stored::Opaque(any)) => match any.downcast_ref::<Tensor>() {
                Some(t) => parts.push(t.clone()),
                None => return Err(NodeError::value(format!("{name} is not a conditioning"))),
            },
            _ => {
                return Err(NodeError::new(
                    "ObjectNotFoundError",
                    format!("'Object with name {name} not found'"),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err(NodeError::value("no conditioning given"));
    }
    Tensor::cat(&parts, 1).map_err(|e| NodeError::new("RuntimeError", e.to_string()))
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

/// `compel`.
pub fn encode_prompt(
    cache: &mut ModelCache,
    host: &mut dyn Host,
    tensors: &TensorStore,
    request: &Value,
) -> Result<String, NodeError> {
    if !request["clip2"].is_null() {
        return Err(unsupported("SDXL"));
    }
    if !request["mask"].is_null() {
        return Err(unsupported("a conditioning mask"));
    }
    let clip = &request["clip"];
    let key = key_of(clip, "text_encoder")?;
    let sd = model(cache, host, &key, Part::TextEncoder, &loras_of(clip)?)?;
    let skipped = usize::try_from(clip["skipped_layers"].as_u64().unwrap_or(0)).unwrap_or(0);
    let prompt = request["prompt"].as_str().unwrap_or_default();
    let tensor = sd.encode_prompt(prompt, skipped).map_err(engine_error)?;
    Ok(tensors.put("conditioning", Stored::Opaque(Arc::new(tensor))))
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
        &loras_of(unet)?,
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
    let req = DenoiseRequest {
        positive: conditioning(tensors, &request["positive_conditioning"])?,
        negative: conditioning(tensors, &request["negative_conditioning"])?,
        noise: noise.map(|(t, _)| t),
        latents: start.map(|(t, _)| t),
        steps: usize::try_from(request["steps"].as_u64().unwrap_or(10)).unwrap_or(10),
        cfg_scale,
        cfg_rescale_multiplier: request["cfg_rescale_multiplier"].as_f64().unwrap_or(0.0),
        scheduler: request["scheduler"].as_str().unwrap_or("euler").to_owned(),
        denoising_start: request["denoising_start"].as_f64().unwrap_or(0.0),
        denoising_end: request["denoising_end"].as_f64().unwrap_or(1.0),
        seed,
    };
    let mut sink = |p: &atelier_engine::pipeline::StepProgress<'_>| {
        let pct = p.step as f64 / p.total_steps.max(1) as f64;
        host.progress("Denoising", Some(pct), preview(p.latents));
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
    if request["color_compensation"] == "SDXL" {
        return Err(unsupported("SDXL colour compensation"));
    }
    let vae = vae_model(cache, host, &key_of(&request["vae"], "vae")?)?;
    let t = vae.get().encode(&image.to_rgb8()).map_err(engine_error)?;
    store_latents(tensors, &t)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn previews_project_latents_like_the_reference() {
        // Channel 0 at 1, the others at 0: (1 + factor) / 2 of full scale per colour.
        let mut data = vec![0f32; 4 * 2 * 3];
        data[..6].fill(1.0);
        let latents = latents_from_vec(&[1, 4, 2, 3], data).expect("tensor");
        let preview = preview(&latents).expect("preview");
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
}
