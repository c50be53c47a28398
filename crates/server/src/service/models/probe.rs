//! Identifying a model from its files (models.md §1.3–1.5) without loading any weights:
//! safetensors headers (the 8-byte length and the JSON that follows, nothing else) for
//! single files, and the JSON configs of diffusers folders.
//!
//! Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused outright: unpickling can run
//! arbitrary code, and this server never needs to. A damaged or truncated safetensors file is
//! an error naming what is wrong, never a panic: every length and offset read from the file
//! is checked against the file's real size before use.

use super::record::{lora_defaults, main_defaults};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Headers larger than this are refused (real ones are a few MB at most).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// File extensions of weights the scanner reports and the hasher reads.
pub const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "sft", "ckpt", "pt", "pth", "bin", "gguf"];
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl"];

/// Why a path could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A pickle checkpoint: refused for safety.
    #[error("'{0}' is a pickle checkpoint: loading it could run arbitrary code, so it is refused. Convert it to .safetensors first")]
    Pickle(String),
    /// A safetensors file whose header or layout is damaged.
    #[error("'{file}' is not a valid safetensors file: {reason}")]
    Corrupt { file: String, reason: String },
    /// Readable, but not a model this server recognises.
    #[error("Unable to identify model format: {0}")]
    Unrecognized(String),
    #[error("cannot read '{file}': {reason}")]
    Io { file: String, reason: String },
}

impl ProbeError {
    /// The exception-style class name reported as a job's `error_reason`.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Pickle(_) => "UnsafeModelFormatError",
            Self::Corrupt { .. } => "SafetensorError",
            Self::Unrecognized(_) => "InvalidModelConfigException",
            Self::Io { .. } => "OSError",
        }
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<u64>,
}

/// A parsed safetensors header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: Map<String, Value>,
}

impl Header {
    fn shape(&self, key: &str) -> Option<&[u64]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_owned()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads and checks the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<Header, ProbeError> {
    let file_name = display_name(path);
    let corrupt = |reason: String| ProbeError::Corrupt {
        file: file_name.clone(),
        reason,
    };
    let io = |e: std::io::Error| ProbeError::Io {
        file: file_name.clone(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(corrupt(format!(
            "the file is {len} bytes long, too short for a header"
        )));
    }
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(io)?;
    let header_len = u64::from_le_bytes(prefix);
    if !(2..=MAX_HEADER_BYTES).contains(&header_len) {
        return Err(corrupt(format!(
            "the header length {header_len} is implausible"
        )));
    }
    if header_len > len - 8 {
        return Err(corrupt(format!(
            "the header claims {header_len} bytes but the file is truncated at {len} bytes"
        )));
    }
    let mut bytes =
        vec![0u8; usize::try_from(header_len).map_err(|_| corrupt("header too large".into()))?];
    file.read_exact(&mut bytes).map_err(io)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("the header is not valid JSON ({e})")))?;
    let Value::Object(entries) = value else {
        return Err(corrupt("the header is not a JSON object".to_owned()));
    };
    let data_len = len - 8 - header_len;
    let mut header = Header::default();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if let Value::Object(meta) = entry {
                header.metadata = meta;
            }
            continue;
        }
        let bad = |what: &str| corrupt(format!("tensor '{name}' has {what}"));
        let dtype = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no dtype"))?
            .to_owned();
        let shape = entry
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad("a malformed shape"))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad("malformed data_offsets"))?;
        if offsets.0 > offsets.1 {
            return Err(bad("data_offsets that run backwards"));
        }
        if offsets.1 > data_len {
            return Err(corrupt(format!(
                "the file is truncated: tensor '{name}' ends at byte {} of the data, which is only {data_len} bytes long",
                offsets.1
            )));
        }
        if let Some(size) = dtype_size(&dtype) {
            let expected = shape
                .iter()
                .try_fold(size, |acc, d| acc.checked_mul(*d))
                .ok_or_else(|| bad("an impossible shape"))?;
            if expected != offsets.1 - offsets.0 {
                return Err(bad("a byte range that does not match its shape and dtype"));
            }
        }
        header.tensors.insert(name, TensorInfo { dtype, shape });
    }
    Ok(header)
}

/// What probing found: `type`, `format`, `base` and the kind's fields, ready to merge into a
/// record.
pub type Probed = Map<String, Value>;

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Identifies the model at `path` (a file or a diffusers-style folder).
pub fn probe(path: &Path) -> Result<Probed, ProbeError> {
    if path.is_dir() {
        return probe_folder(path);
    }
    let ext = extension(path);
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ProbeError::Pickle(display_name(path)));
    }
    match ext.as_str() {
        "safetensors" | "sft" => probe_safetensors(path, &read_header(path)?),
        "gguf" => Err(ProbeError::Unrecognized(format!(
            "GGUF files are not supported yet ('{}')",
            display_name(path)
        ))),
        _ => Err(ProbeError::Unrecognized(format!(
            "'{}' is not a .safetensors file or a diffusers folder",
            display_name(path)
        ))),
    }
}

const UNET: &str = "model.diffusion_model.";

fn main_checkpoint(header: &Header) -> Result<Probed, ProbeError> {
    let to_k = |block: u32| {
        header
            .shape(&format!(
                "{UNET}input_blocks.{block}.1.transformer_blocks.0.attn2.to_k.weight"
            ))
            .and_then(|s| s.last().copied())
    };
    let base = match (to_k(2), to_k(4)) {
        (Some(768), _) => "sd-1",
        (Some(1024), _) => "sd-2",
        (None, Some(2048)) => "sdxl",
        (None, Some(1280)) => "sdxl-refiner",
        // A non-standard width (small test models): Stability's SGM text encoders tell SDXL
        // (OpenCLIP bigG second, under `conditioner.embedders.1.model.`) from its refiner (OpenCLIP
        // bigG alone, under `conditioner.embedders.0.model.`).
        _ if header.has_prefix("conditioner.embedders.0.model.") => "sdxl-refiner",
        _ if header.has_prefix("conditioner.embedders.0.transformer.")
            && header.has_prefix("conditioner.embedders.1.model.") =>
        {
            "sdxl"
        }
        (a, b) => {
            return Err(ProbeError::Unrecognized(format!(
                "a Stable Diffusion UNet with an unknown cross-attention width ({:?})",
                a.or(b)
            )))
        }
    };
    let in_channels = header
        .shape(&format!("{UNET}input_blocks.0.0.weight"))
        .and_then(|s| s.get(1).copied());
    let variant = match (in_channels, base) {
        (Some(4), _) => "normal",
        (Some(9), _) => "inpaint",
        (Some(5), "sd-2") => "depth",
        (other, _) => {
            return Err(ProbeError::Unrecognized(format!(
                "a {base} UNet with {other:?} input channels"
            )))
        }
    };
    // SD 2.x checkpoints are v-prediction except the 512px base model, which reports
    // global_step 220000 (InvokeAI's rule); safetensors carry it in the metadata if at all.
    let global_step = header.metadata.get("global_step").and_then(|v| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(v.as_u64())
    });
    let prediction = if base == "sd-2" && global_step != Some(220_000) {
        "v_prediction"
    } else {
        "epsilon"
    };
    Ok(map(json!({
        "type": "main", "format": "checkpoint", "base": base,
        "variant": variant, "prediction_type": prediction, "config_path": null,
        "trigger_phrases": null, "default_settings": main_defaults(base),
    })))
}

fn map(value: Value) -> Probed {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Base of a LoRA from its cross-attention input width or its text-encoder layers.
fn lora_base(header: &Header) -> Option<&'static str> {
    if header.has_prefix("lora_te2_") || header.tensors.keys().any(|k| k.contains("text_encoder_2"))
    {
        return Some("sdxl");
    }
    let width = header.tensors.iter().find_map(|(k, t)| {
        let down = k.ends_with("lora_down.weight")
            || k.ends_with("lora_A.weight")
            || k.ends_with("lora.down.weight");
        let attn2_k = k.contains("attn2_to_k")
            || k.contains("attn2.to_k")
            || k.contains("attn2.processor.to_k");
        (down && attn2_k).then(|| t.shape.get(1).copied()).flatten()
    });
    // LyCORIS layers (LoHa, LoKr, full) on the cross-attention's k/v projections.
    let width = width.or_else(|| {
        header.tensors.keys().find_map(|k| {
            let (stem, leaf) = k.split_once('.')?;
            let cross = stem.ends_with("_attn2_to_k") || stem.ends_with("_attn2_to_v");
            (stem.starts_with("lora_unet_") && cross)
                .then(|| lycoris_width(header, stem, leaf))
                .flatten()
        })
    });
    let width = width.or_else(|| {
        header.tensors.iter().find_map(|(k, t)| {
            (k.starts_with("lora_te_") && k.ends_with("lora_down.weight"))
                .then(|| t.shape.get(1).copied())
                .flatten()
        })
    });
    let width = width.or_else(|| {
        header.tensors.keys().find_map(|k| {
            let (stem, leaf) = k.split_once('.')?;
            (stem.starts_with("lora_te_") && stem.contains("_self_attn_"))
                .then(|| lycoris_width(header, stem, leaf))
                .flatten()
        })
    });
    match width? {
        768 => Some("sd-1"),
        1024 => Some("sd-2"),
        2048 => Some("sdxl"),
        _ => None,
    }
}

/// The input width of a kohya-named LyCORIS layer `stem` read from its tensor `leaf`, as InvokeAI's
/// `lora_token_vector_length` reads it: LoHa's `hada_w·_b` and full `diff` columns, LoKr's `w1` columns times
/// `w2` columns (each the full factor or its `_b` half), a text-encoder IA3 `weight`'s length.
fn lycoris_width(header: &Header, stem: &str, leaf: &str) -> Option<u64> {
    let column = |key: &str| header.shape(key).and_then(|s| s.get(1).copied());
    match leaf {
        "hada_w1_b" | "hada_w2_b" | "diff" => column(&format!("{stem}.{leaf}")),
        l if l.starts_with("lokr_") => {
            let factor = |n: u8| {
                column(&format!("{stem}.lokr_w{n}"))
                    .or_else(|| column(&format!("{stem}.lokr_w{n}_b")))
            };
            Some(factor(1)? * factor(2)?)
        }
        "weight" if !stem.starts_with("lora_unet_") => header
            .shape(&format!("{stem}.weight"))
            .and_then(|s| s.first().copied()),
        _ => None,
    }
}

fn is_lora(header: &Header) -> bool {
    header.has_prefix("lora_unet_")
        || header.has_prefix("lora_te")
        || header.tensors.keys().any(|k| {
            k.contains(".lora_down.")
                || k.contains(".lora_A.")
                || k.contains(".lora.down.")
                || k.contains("_lora.down.")
        })
}

fn lora(header: &Header, format: &str) -> Result<Probed, ProbeError> {
    let base = lora_base(header).ok_or_else(|| {
        ProbeError::Unrecognized("a LoRA for an unrecognised base model".to_owned())
    })?;
    Ok(map(json!({
        "type": "lora", "format": format, "base": base,
        "trigger_phrases": null, "default_settings": lora_defaults(),
    })))
}

fn is_vae(header: &Header) -> bool {
    let ldm = header.tensors.contains_key("encoder.conv_in.weight")
        && header.tensors.contains_key("decoder.conv_out.weight");
    let prefixed = header
        .tensors
        .contains_key("first_stage_model.encoder.conv_in.weight")
        && !header.has_prefix(UNET);
    ldm || prefixed
}

/// SD1 and SDXL VAEs have the same layout; the name is the only hint (models.md §1.4).
fn vae_base_from_name(path: &Path) -> &'static str {
    let name = display_name(path).to_ascii_lowercase();
    if name.contains("xl") {
        "sdxl"
    } else {
        "sd-1"
    }
}

/// A textual-inversion embedding (InvokeAI's `TI_File_*_Config` / `TI_Folder_*_Config`): a file with an
/// `emb_params`, `clip_g` or `string_to_param.*` tensor, or a small one (under 10 tensors) whose first tensor is
/// a vector or a (vectors, width) matrix; the width gives the base: 768 sd-1, 1024 sd-2, 1280 (`clip_g`) sdxl.
/// `None` when the file does not look like an embedding; an error when it does but its width is not one of those.
fn embedding(path: &Path, header: &Header, format: &str) -> Option<Result<Probed, ProbeError>> {
    use atelier_engine::textual_inversion::{Layout, TextualInversion};
    let explicit = header.tensors.contains_key("emb_params")
        || header.tensors.contains_key("clip_g")
        || header.has_prefix("string_to_param.");
    if !explicit && header.tensors.len() >= 10 {
        return None;
    }
    let key = match TextualInversion::layout(header.tensors.keys().map(String::as_str))? {
        Layout::EmbParams => "emb_params".to_owned(),
        Layout::Sdxl => "clip_g".to_owned(),
        Layout::StringToParam(key) | Layout::FirstTensor(key) => key,
    };
    let shape = header.shape(&key).unwrap_or_default();
    let base = match shape {
        [768] | [_, 768] => "sd-1",
        [1024] | [_, 1024] => "sd-2",
        [1280] | [_, 1280] => "sdxl",
        _ => {
            return Some(Err(ProbeError::Unrecognized(format!(
                "'{}' is not a textual-inversion embedding of a supported shape: its tensor '{key}' has \
                 shape {shape:?}, while embeddings are (vectors, 768) for sd-1, (vectors, 1024) for sd-2 and \
                 clip_g (vectors, 1280) with clip_l (vectors, 768) for sdxl",
                display_name(path)
            ))))
        }
    };
    Some(Ok(map(
        json!({"type": "embedding", "format": format, "base": base}),
    )))
}

fn probe_safetensors(path: &Path, header: &Header) -> Result<Probed, ProbeError> {
    if header
        .tensors
        .contains_key(&format!("{UNET}input_blocks.0.0.weight"))
    {
        return main_checkpoint(header);
    }
    if is_lora(header) {
        return lora(header, "lycoris");
    }
    if is_vae(header) {
        return Ok(map(json!({
            "type": "vae", "format": "checkpoint", "base": vae_base_from_name(path),
            "config_path": null, "cpu_only": null,
        })));
    }
    if let Some(probed) = embedding(path, header, "embedding_file") {
        return probed;
    }
    Err(ProbeError::Unrecognized(format!(
        "'{}' matches no supported model family",
        display_name(path)
    )))
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, ProbeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProbeError::Io {
                file: display_name(path),
                reason: e.to_string(),
            })
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        _ => Err(ProbeError::Unrecognized(format!(
            "'{}' is not a JSON object",
            display_name(path)
        ))),
    }
}

/// `fp16` when the weights are published as `*.fp16.safetensors`, else the default `""`.
fn repo_variant(dir: &Path) -> &'static str {
    let found = |sub: &str| {
        std::fs::read_dir(dir.join(sub))
            .map(|entries| {
                entries.flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                    name.contains(".fp16.")
                })
            })
            .unwrap_or(false)
    };
    if found("unet") || found(".") {
        "fp16"
    } else {
        ""
    }
}

/// Whether a diffusers folder has weights only in pickle form.
fn only_pickles(dir: &Path) -> bool {
    let mut pickles = false;
    let mut safe = false;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let ext = extension(&p);
                pickles |= PICKLE_EXTENSIONS.contains(&ext.as_str());
                safe |= ext == "safetensors";
            }
        }
    }
    pickles && !safe
}

fn probe_folder(dir: &Path) -> Result<Probed, ProbeError> {
    if let Some(index) = read_json(&dir.join("model_index.json"))? {
        if only_pickles(dir) {
            return Err(ProbeError::Pickle(display_name(dir)));
        }
        return diffusers_main(dir, &index);
    }
    let lora_file = dir.join("pytorch_lora_weights.safetensors");
    if lora_file.is_file() {
        return lora(&read_header(&lora_file)?, "diffusers");
    }
    if dir.join("pytorch_lora_weights.bin").is_file() {
        return Err(ProbeError::Pickle(display_name(dir)));
    }
    // A diffusers textual-inversion folder: `learned_embeds.safetensors` (the pickle `.bin` is refused).
    let embeds = dir.join("learned_embeds.safetensors");
    if embeds.is_file() {
        return embedding(&embeds, &read_header(&embeds)?, "embedding_folder").unwrap_or_else(
            || {
                Err(ProbeError::Unrecognized(format!(
                    "'{}' in '{}' is not a textual-inversion embedding",
                    display_name(&embeds),
                    display_name(dir)
                )))
            },
        );
    }
    if ["learned_embeds.bin", "learned_embeds.pt"]
        .iter()
        .any(|f| dir.join(f).is_file())
    {
        return Err(ProbeError::Pickle(display_name(dir)));
    }
    if let Some(config) = read_json(&dir.join("config.json"))? {
        let class = config
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(class, "AutoencoderKL" | "AutoencoderTiny") {
            if only_pickles(dir) {
                return Err(ProbeError::Pickle(display_name(dir)));
            }
            // SDXL's VAE config scales latents by 0.13025, SD1/2's by 0.18215.
            let scaling = config.get("scaling_factor").and_then(Value::as_f64);
            let base = match scaling {
                Some(s) if (s - 0.13025).abs() < 1e-6 => "sdxl",
                Some(s) if (s - 0.18215).abs() < 1e-6 => "sd-1",
                _ => vae_base_from_name(dir),
            };
            return Ok(map(json!({
                "type": "vae", "format": "diffusers", "base": base,
                "repo_variant": repo_variant(dir), "cpu_only": null,
            })));
        }
    }
    Err(ProbeError::Unrecognized(format!(
        "the folder '{}' is not a diffusers model",
        display_name(dir)
    )))
}

fn diffusers_main(dir: &Path, index: &Map<String, Value>) -> Result<Probed, ProbeError> {
    let class = index
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let unet = read_json(&dir.join("unet").join("config.json"))?.unwrap_or_default();
    let cross = unet.get("cross_attention_dim").and_then(Value::as_u64);
    let has_text_encoder = index
        .get("text_encoder")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| !v.is_null()));
    let base = match class {
        "StableDiffusionPipeline"
        | "StableDiffusionInpaintPipeline"
        | "StableDiffusionImg2ImgPipeline"
        | "StableDiffusionDepth2ImgPipeline" => match cross {
            Some(768) => "sd-1",
            Some(1024) => "sd-2",
            // A non-standard width (small test models): the text encoder tells the family,
            // OpenAI's CLIP (SD 1.x) uses quick-GELU and OpenCLIP (SD 2.x) GELU.
            other => {
                let encoder =
                    read_json(&dir.join("text_encoder").join("config.json"))?.unwrap_or_default();
                match encoder.get("hidden_act").and_then(Value::as_str) {
                    Some("quick_gelu") => "sd-1",
                    Some("gelu") => "sd-2",
                    _ => {
                        return Err(ProbeError::Unrecognized(format!(
                            "a {class} with cross_attention_dim {other:?}"
                        )))
                    }
                }
            }
        },
        "StableDiffusionXLPipeline" | "StableDiffusionXLInpaintPipeline" => "sdxl",
        "StableDiffusionXLImg2ImgPipeline" => {
            if has_text_encoder {
                "sdxl"
            } else {
                "sdxl-refiner"
            }
        }
        other => {
            return Err(ProbeError::Unrecognized(format!(
                "the pipeline class '{other}' is not supported"
            )))
        }
    };
    let variant = match unet.get("in_channels").and_then(Value::as_u64) {
        Some(4) | None => "normal",
        Some(9) => "inpaint",
        Some(5) if base == "sd-2" => "depth",
        Some(other) => {
            return Err(ProbeError::Unrecognized(format!(
                "a {base} UNet with {other} input channels"
            )))
        }
    };
    let scheduler = read_json(&dir.join("scheduler").join("scheduler_config.json"))?;
    let prediction = scheduler
        .as_ref()
        .and_then(|s| s.get("prediction_type"))
        .and_then(Value::as_str)
        .filter(|p| super::record::PREDICTION_TYPES.contains(p))
        .unwrap_or("epsilon")
        .to_owned();
    Ok(map(json!({
        "type": "main", "format": "diffusers", "base": base,
        "variant": variant, "prediction_type": prediction, "repo_variant": repo_variant(dir),
        "trigger_phrases": null, "default_settings": main_defaults(base),
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a safetensors file with F16 zero tensors of the given shapes.
    pub fn write_safetensors(path: &Path, tensors: &[(&str, &[u64])]) {
        let mut header = Map::new();
        let mut offset = 0u64;
        for (name, shape) in tensors {
            let len = shape.iter().product::<u64>() * 2;
            header.insert(
                (*name).to_owned(),
                json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len]}),
            );
            offset += len;
        }
        let text = Value::Object(header).to_string();
        let mut file = File::create(path).expect("create");
        file.write_all(&(text.len() as u64).to_le_bytes())
            .expect("write");
        file.write_all(text.as_bytes()).expect("write");
        file.write_all(&vec![0u8; offset as usize]).expect("write");
    }

    fn unet(width_block: u32, width: u64, in_ch: u64) -> Vec<(String, Vec<u64>)> {
        vec![
            (
                format!("{UNET}input_blocks.0.0.weight"),
                vec![320, in_ch, 3, 3],
            ),
            (
                format!(
                    "{UNET}input_blocks.{width_block}.1.transformer_blocks.0.attn2.to_k.weight"
                ),
                vec![8, width],
            ),
        ]
    }

    fn probe_tensors(tensors: Vec<(String, Vec<u64>)>) -> Result<Probed, ProbeError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("m.safetensors");
        let refs: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        write_safetensors(&path, &refs);
        probe(&path)
    }

    #[test]
    fn identifies_main_checkpoints() {
        let p = probe_tensors(unet(2, 768, 4)).expect("sd1");
        assert_eq!(
            (p["base"].as_str(), p["variant"].as_str()),
            (Some("sd-1"), Some("normal"))
        );
        assert_eq!(p["default_settings"]["width"], 512);
        let p = probe_tensors(unet(2, 1024, 5)).expect("sd2");
        assert_eq!(
            (
                p["base"].as_str(),
                p["variant"].as_str(),
                p["prediction_type"].as_str()
            ),
            (Some("sd-2"), Some("depth"), Some("v_prediction"))
        );
        let p = probe_tensors(unet(4, 2048, 9)).expect("sdxl");
        assert_eq!(
            (p["base"].as_str(), p["variant"].as_str()),
            (Some("sdxl"), Some("inpaint"))
        );
        let p = probe_tensors(unet(4, 1280, 4)).expect("refiner");
        assert_eq!(p["base"], "sdxl-refiner");
        assert_eq!(p["default_settings"], Value::Null);
        assert!(matches!(
            probe_tensors(unet(2, 768, 5)),
            Err(ProbeError::Unrecognized(_))
        ));
        // Another width: the SGM text encoders tell SDXL from its refiner.
        assert!(matches!(
            probe_tensors(unet(3, 128, 4)),
            Err(ProbeError::Unrecognized(_))
        ));
        let text = |names: &[&str]| {
            let mut t = unet(3, 128, 4);
            t.extend(
                names
                    .iter()
                    .map(|n| (format!("{n}ln_final.weight"), vec![8])),
            );
            probe_tensors(t)
        };
        let p = text(&["conditioner.embedders.0.model."]).expect("tiny refiner");
        assert_eq!(p["base"], "sdxl-refiner");
        let p = text(&[
            "conditioner.embedders.0.transformer.",
            "conditioner.embedders.1.model.",
        ])
        .expect("tiny sdxl");
        assert_eq!(p["base"], "sdxl");
    }

    #[test]
    fn identifies_loras_and_vaes() {
        let p = probe_tensors(vec![
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight".into(), vec![4, 768]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight".into(), vec![320, 4]),
        ])
        .expect("kohya");
        assert_eq!(
            (p["type"].as_str(), p["format"].as_str(), p["base"].as_str()),
            (Some("lora"), Some("lycoris"), Some("sd-1"))
        );
        let p = probe_tensors(vec![(
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
            vec![4, 1280],
        )])
        .expect("sdxl kohya");
        assert_eq!(p["base"], "sdxl");
        let p = probe_tensors(vec![(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight".into(),
            vec![4, 1024],
        )])
        .expect("peft");
        assert_eq!(p["base"], "sd-2");
        // LyCORIS layers: LoHa, LoKr (w1 columns × w2 columns), a text-encoder IA3.
        let attn2 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
        let p = probe_tensors(vec![
            (format!("{attn2}.hada_w1_a"), vec![320, 4]),
            (format!("{attn2}.hada_w1_b"), vec![4, 1024]),
        ])
        .expect("loha");
        assert_eq!(kind(&p), ("lora", "lycoris", "sd-2"));
        let p = probe_tensors(vec![
            (format!("{attn2}.lokr_w1"), vec![8, 8]),
            (format!("{attn2}.lokr_w2_a"), vec![40, 2]),
            (format!("{attn2}.lokr_w2_b"), vec![2, 96]),
        ])
        .expect("lokr");
        assert_eq!(kind(&p), ("lora", "lycoris", "sd-1"));
        let p = probe_tensors(vec![
            (
                "lora_te_text_model_encoder_layers_0_self_attn_k_proj.weight".into(),
                vec![768],
            ),
            (
                "lora_te_text_model_encoder_layers_0_self_attn_k_proj.on_input".into(),
                vec![],
            ),
        ])
        .expect("ia3");
        assert_eq!(kind(&p), ("lora", "lycoris", "sd-1"));
        let p = probe_tensors(vec![
            ("encoder.conv_in.weight".into(), vec![128, 3, 3, 3]),
            ("decoder.conv_out.weight".into(), vec![3, 128, 3, 3]),
        ])
        .expect("vae");
        assert_eq!(
            (p["type"].as_str(), p["base"].as_str()),
            (Some("vae"), Some("sd-1"))
        );
    }

    fn kind(p: &Probed) -> (&str, &str, &str) {
        let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
        (get("type"), get("format"), get("base"))
    }

    #[test]
    fn identifies_a1111_emb_params_embeddings() {
        let p = probe_tensors(vec![("emb_params".into(), vec![4, 768])]).expect("sd-1");
        assert_eq!(kind(&p), ("embedding", "embedding_file", "sd-1"));
        // InvokeAI's embedding configs carry no fields beyond the common ones.
        let mut keys: Vec<&str> = p.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["base", "format", "type"]);
        let p = probe_tensors(vec![("emb_params".into(), vec![1, 1024])]).expect("sd-2");
        assert_eq!(kind(&p).2, "sd-2");
    }

    #[test]
    fn identifies_flattened_string_to_param_embeddings() {
        let p = probe_tensors(vec![
            ("string_to_param.*".into(), vec![2, 1024]),
            ("string_to_token.*".into(), vec![1]),
        ])
        .expect("sd-2");
        assert_eq!(kind(&p), ("embedding", "embedding_file", "sd-2"));
    }

    #[test]
    fn identifies_diffusers_single_token_embeddings() {
        let p = probe_tensors(vec![("<cat-toy>".into(), vec![768])]).expect("1-D");
        assert_eq!(kind(&p), ("embedding", "embedding_file", "sd-1"));
        let p = probe_tensors(vec![("<cat-toy>".into(), vec![2, 1024])]).expect("2-D");
        assert_eq!(kind(&p).2, "sd-2");
    }

    #[test]
    fn identifies_sdxl_embeddings() {
        let p = probe_tensors(vec![
            ("clip_g".into(), vec![2, 1280]),
            ("clip_l".into(), vec![2, 768]),
        ])
        .expect("sdxl");
        assert_eq!(kind(&p), ("embedding", "embedding_file", "sdxl"));
    }

    #[test]
    fn identifies_diffusers_embedding_folders() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("cat-toy");
        std::fs::create_dir_all(&root).expect("mkdir");
        write_safetensors(
            &root.join("learned_embeds.safetensors"),
            &[("<cat-toy>", &[1, 768])],
        );
        let p = probe(&root).expect("folder");
        assert_eq!(kind(&p), ("embedding", "embedding_folder", "sd-1"));
        let pickled = dir.path().join("pickled");
        std::fs::create_dir_all(&pickled).expect("mkdir");
        std::fs::write(pickled.join("learned_embeds.bin"), b"PK").expect("write");
        assert!(matches!(probe(&pickled), Err(ProbeError::Pickle(_))));
        std::fs::write(dir.path().join("emb.pt"), b"PK").expect("write");
        assert!(matches!(
            probe(&dir.path().join("emb.pt")),
            Err(ProbeError::Pickle(_))
        ));
    }

    #[test]
    fn embeddings_of_unknown_widths_are_refused_clearly() {
        for tensors in [
            vec![("emb_params".to_owned(), vec![2, 512])],
            vec![("<tok>".to_owned(), vec![2, 3, 768])],
            vec![
                ("clip_g".to_owned(), vec![2, 640]),
                ("clip_l".to_owned(), vec![2, 768]),
            ],
        ] {
            let err = probe_tensors(tensors.clone()).expect_err("unknown width");
            assert!(matches!(err, ProbeError::Unrecognized(_)), "{tensors:?}");
            assert!(
                err.to_string()
                    .contains("not a textual-inversion embedding of a supported shape"),
                "{err}"
            );
        }
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("bad.safetensors");
        for bytes in [
            Vec::new(),
            vec![1, 2, 3],
            u64::MAX.to_le_bytes().to_vec(),
            [&50u64.to_le_bytes()[..], b"{}"].concat(),
            [&2u64.to_le_bytes()[..], b"[]"].concat(),
            [&9u64.to_le_bytes()[..], b"not json!"].concat(),
        ] {
            std::fs::write(&path, &bytes).expect("write");
            assert!(
                matches!(probe(&path), Err(ProbeError::Corrupt { .. })),
                "{bytes:?}"
            );
        }
        // A header whose tensors run past the end of the file.
        let tensors = unet(2, 768, 4);
        let refs: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        write_safetensors(&path, &refs);
        let full = std::fs::read(&path).expect("read");
        std::fs::write(&path, &full[..full.len() - 10]).expect("truncate");
        let err = probe(&path).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(dir.path().join("m.ckpt"), b"PK").expect("write");
        assert!(matches!(
            probe(&dir.path().join("m.ckpt")),
            Err(ProbeError::Pickle(_))
        ));
    }

    #[test]
    fn identifies_diffusers_folders() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("sdxl-model");
        std::fs::create_dir_all(root.join("unet")).expect("mkdir");
        std::fs::create_dir_all(root.join("scheduler")).expect("mkdir");
        std::fs::write(
            root.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}"#,
        )
        .expect("write");
        std::fs::write(
            root.join("unet/config.json"),
            r#"{"in_channels": 4, "cross_attention_dim": 2048}"#,
        )
        .expect("write");
        std::fs::write(
            root.join("unet/diffusion_pytorch_model.fp16.safetensors"),
            b"",
        )
        .expect("write");
        std::fs::write(
            root.join("scheduler/scheduler_config.json"),
            r#"{"prediction_type": "v_prediction"}"#,
        )
        .expect("write");
        let p = probe(&root).expect("diffusers");
        assert_eq!(
            (
                p["base"].as_str(),
                p["format"].as_str(),
                p["prediction_type"].as_str(),
                p["repo_variant"].as_str()
            ),
            (
                Some("sdxl"),
                Some("diffusers"),
                Some("v_prediction"),
                Some("fp16")
            )
        );
    }
}
