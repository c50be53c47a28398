//! Tiny random-weight Stable Diffusion models in diffusers layout, for tests (ours and the server's) and
//! benchmarks. Nothing is downloaded: [`write_tiny_sd`] writes `model_index.json`, `unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/` and `scheduler/` from a seed, deterministically, and diffusers/transformers load
//! the result as they load a real model (the parity fixtures are made that way).
//!
//! Sizes: UNet block_out_channels [32, 64] (one cross-attention block, 2 heads), layers_per_block 1,
//! cross_attention_dim 32; VAE four blocks of 32 channels (so latents are 1/8 of the image, as in SD); CLIP text
//! encoder width 32 with 2 layers and a byte-level vocabulary plus a few merges. All group norms use 32 groups
//! (candle's UNet blocks ignore any other count).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use serde_json::{json, Value};

use crate::config::{unet_spec, vae_spec};
use crate::noise::TorchGenerator;
use crate::tokenizer::byte_symbols;
use crate::unet::UNet2DConditionModel;
use crate::weights::write_f32_safetensors_streaming;
use crate::EngineError;

/// Which model shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: quick-GELU CLIP, `<|endoftext|>` padding, conv projections, ε-prediction.
    Sd1,
    /// SD 2.x base: GELU (OpenCLIP) text encoder, `!` padding, linear projections, ε-prediction.
    Sd2,
    /// SD 2.x 768-v: as [`Family::Sd2`] with v-prediction.
    Sd2V,
}

/// The words whose BPE merges the tiny vocabulary has (every other word is spelt in bytes).
const TINY_WORDS: [&str; 16] = [
    "photo", "of", "the", "cat", "dog", "red", "blue", "sitting", "on", "and", "in", "painting",
    "forest", "house", "with", "tree",
];

pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Io(format!("{}: {e}", path.display()))
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| io(path, e))
}

pub(crate) fn mkdir(path: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(path).map_err(|e| io(path, e))
}

/// Writes a transformers `CLIPTokenizer` folder: `vocab.json`, `merges.txt`, `special_tokens_map.json` and
/// `tokenizer_config.json`. `pad` is `<|endoftext|>` (OpenAI CLIP) or `!` (OpenCLIP: SD 2.x, SDXL's encoder 2).
pub(crate) fn write_clip_tokenizer<'a>(
    dir: &Path,
    vocab: impl IntoIterator<Item = (&'a str, u32)>,
    merges: &[(String, String)],
    pad: &str,
) -> Result<(), EngineError> {
    mkdir(dir)?;
    let vocab: serde_json::Map<String, Value> = vocab
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let path = dir.join("vocab.json");
    let text = serde_json::to_string(&vocab).map_err(|e| io(&path, e))?;
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    let path = dir.join("merges.txt");
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": pad,
            "unk_token": "<|endoftext|>",
        }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "add_prefix_space": false,
            "bos_token": "<|startoftext|>",
            "clean_up_tokenization_spaces": true,
            "do_lower_case": true,
            "eos_token": "<|endoftext|>",
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": pad,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": "<|endoftext|>",
        }),
    )
}

/// The tiny tokenizer: byte symbols, byte symbols with `</w>`, the merges of [`TINY_WORDS`], then the two
/// specials (CLIP's own layout, in miniature).
pub(crate) fn tiny_vocab() -> (BTreeMap<String, u32>, Vec<(String, String)>) {
    let mut vocab = BTreeMap::new();
    let symbols = byte_symbols();
    for (i, c) in symbols.iter().enumerate() {
        vocab.insert(c.to_string(), i as u32);
    }
    for (i, c) in symbols.iter().enumerate() {
        vocab.insert(format!("{c}</w>"), (256 + i) as u32);
    }
    let mut merges = Vec::new();
    let mut next = 512u32;
    for word in TINY_WORDS {
        let chars: Vec<char> = word.chars().collect();
        let mut current = chars[0].to_string();
        for (k, c) in chars.iter().enumerate().skip(1) {
            let second = if k + 1 == chars.len() {
                format!("{c}</w>")
            } else {
                c.to_string()
            };
            let merged = format!("{current}{second}");
            if !vocab.contains_key(&merged) {
                merges.push((current.clone(), second.clone()));
                vocab.insert(merged.clone(), next);
                next += 1;
            }
            current = merged;
        }
    }
    vocab.insert("<|startoftext|>".into(), next);
    vocab.insert("<|endoftext|>".into(), next + 1);
    (vocab, merges)
}

/// Tensor names with their shapes.
pub(crate) type TensorSpecs = Vec<(String, Vec<usize>)>;

/// Records the tensors a candle model asks for.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    seen: Arc<Mutex<TensorSpecs>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "recorder: no shape for '{name}'"
        )))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // Ask for diffusers' current attention names in the VAE.
        name.ends_with("to_q.weight")
    }
}

impl Recorder {
    pub(crate) fn builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }

    pub(crate) fn names(&self) -> TensorSpecs {
        let mut seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        seen.sort();
        seen.dedup();
        seen
    }
}

/// Deterministic random values for one named tensor, continuing `generator`'s stream: norms near 1, biases
/// small, weights N(0, 1/fan_in).
fn random_values(generator: &mut TorchGenerator, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut values = generator.randn(n.max(16));
    values.truncate(n);
    let (scale, offset) = if shape.len() == 1 {
        if name.contains("norm") && name.ends_with("weight") {
            (0.1, 1.0)
        } else {
            (0.1, 0.0)
        }
    } else {
        let fan_in: usize = shape[1..].iter().product();
        (1.0 / (fan_in.max(1) as f32).sqrt(), 0.0)
    };
    for v in &mut values {
        *v = *v * scale + offset;
    }
    values
}

/// Writes random weights for the named tensors, in name order, streaming.
pub(crate) fn write_random(
    path: &Path,
    names: &[(String, Vec<usize>)],
    seed: u64,
) -> Result<(), EngineError> {
    let mut generator = TorchGenerator::new(seed);
    write_f32_safetensors_streaming(path, names, |name, shape| {
        random_values(&mut generator, name, shape)
    })
}

fn unet_config(family: Family) -> Value {
    let sd2 = family != Family::Sd1;
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "attention_head_dim": if sd2 { json!([2, 4]) } else { json!(2) },
        "block_out_channels": [32, 64],
        "center_input_sample": false,
        "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 8,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "use_linear_projection": sd2,
    })
}

pub(crate) fn vae_config() -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 64,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    })
}

fn scheduler_config(family: Family) -> Value {
    match family {
        // stable-diffusion-v1-5/scheduler/scheduler_config.json
        Family::Sd1 => json!({
            "_class_name": "PNDMScheduler",
            "_diffusers_version": "0.6.0",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
            "clip_sample": false,
        }),
        // stable-diffusion-2-1(-base)/scheduler/scheduler_config.json
        Family::Sd2 | Family::Sd2V => json!({
            "_class_name": "DDIMScheduler",
            "_diffusers_version": "0.8.0",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "prediction_type": if family == Family::Sd2V { "v_prediction" } else { "epsilon" },
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
        }),
    }
}

const TEXT_HIDDEN: usize = 32;
const TEXT_LAYERS: usize = 2;
const TEXT_INTERMEDIATE: usize = 64;
const TEXT_POSITIONS: usize = 77;

fn text_encoder_names(vocab_size: usize, h: usize) -> TensorSpecs {
    clip_names(vocab_size, h, TEXT_LAYERS, TEXT_INTERMEDIATE, false)
}

/// The tensors of a transformers CLIP text encoder (`text_model.…`, 77 positions), sorted; with
/// `projection`, an `h`-wide `text_projection` as `CLIPTextModelWithProjection` has.
pub(crate) fn clip_names(
    vocab_size: usize,
    h: usize,
    layers: usize,
    intermediate: usize,
    projection: bool,
) -> TensorSpecs {
    let mut names = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![vocab_size, h],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![TEXT_POSITIONS, h],
        ),
        ("text_model.final_layer_norm.weight".to_string(), vec![h]),
        ("text_model.final_layer_norm.bias".to_string(), vec![h]),
    ];
    for i in 0..layers {
        let p = format!("text_model.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            names.push((format!("{p}.self_attn.{proj}.weight"), vec![h, h]));
            names.push((format!("{p}.self_attn.{proj}.bias"), vec![h]));
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            names.push((format!("{p}.{norm}.weight"), vec![h]));
            names.push((format!("{p}.{norm}.bias"), vec![h]));
        }
        names.push((format!("{p}.mlp.fc1.weight"), vec![intermediate, h]));
        names.push((format!("{p}.mlp.fc1.bias"), vec![intermediate]));
        names.push((format!("{p}.mlp.fc2.weight"), vec![h, intermediate]));
        names.push((format!("{p}.mlp.fc2.bias"), vec![h]));
    }
    if projection {
        names.push(("text_projection.weight".to_string(), vec![h, h]));
    }
    names.sort();
    names
}

/// Writes a tiny random-weight SD model of `family` into `dir` (created if needed), deterministically from
/// `seed`.
pub fn write_tiny_sd(dir: &Path, family: Family, seed: u64) -> Result<(), EngineError> {
    write_tiny(dir, family, seed, false)
}

/// Writes the diffusers twin of [`write_tiny_sd1_checkpoint`]'s checkpoint: a tiny SD 1.x model shaped like the
/// real thing where a single-file checkpoint's loader and the model manager's probe look: the full OpenAI CLIP
/// tokenizer (written from the bundled BPE data) and a 768-wide text encoder (12 heads), a UNet with
/// 2 layers per block, 8 attention heads and cross-attention width 768.
pub fn write_tiny_sd1_twin(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_tiny(dir, Family::Sd1, seed, true)
}

/// Writes a tiny SD 1.x single-file checkpoint in the original LDM layout to `file`, with its diffusers twin
/// ([`write_tiny_sd1_twin`]) in `twin_dir`: the same weights, so both generate the same images.
pub fn write_tiny_sd1_checkpoint(
    twin_dir: &Path,
    file: &Path,
    seed: u64,
) -> Result<(), EngineError> {
    write_tiny_sd1_twin(twin_dir, seed)?;
    write_ldm_checkpoint(twin_dir, file)
}

/// Writes the diffusers twin of [`write_tiny_sd2_checkpoint`]'s checkpoint: a tiny SD 2.x 768-v model
/// (v-prediction, as the model manager's probe takes an SD 2.x checkpoint to be) shaped like the real thing where
/// a single-file checkpoint's loader and the probe look: the full CLIP vocabulary with `!` padding, a 1024-wide
/// GELU text encoder (16 heads of 64), a UNet with 2 layers per block, block channels 64 and 128 with 64-wide
/// attention heads (1 and 2 heads), linear projections and cross-attention width 1024.
pub fn write_tiny_sd2_twin(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_tiny(dir, Family::Sd2V, seed, true)
}

/// Writes a tiny SD 2.x single-file checkpoint in the original LDM layout (OpenCLIP text encoder under
/// `cond_stage_model.model.` with fused q/k/v) to `file`, with its diffusers twin ([`write_tiny_sd2_twin`]) in
/// `twin_dir`: the same weights, so both generate the same images.
pub fn write_tiny_sd2_checkpoint(
    twin_dir: &Path,
    file: &Path,
    seed: u64,
) -> Result<(), EngineError> {
    write_tiny_sd2_twin(twin_dir, seed)?;
    write_ldm_checkpoint(twin_dir, file)
}

/// Rewrites a diffusers SD 1.x or 2.x folder (UNet, VAE, transformers CLIP text encoder) as one LDM-layout
/// checkpoint (`model.diffusion_model.`, `first_stage_model.`, and `cond_stage_model.transformer.text_model.`
/// for a quick-GELU (OpenAI CLIP) text encoder or `cond_stage_model.model.` in OpenCLIP's names, q/k/v fused
/// into `in_proj`, for a GELU one), the inverse of [`crate::ldm`]'s mappings. An OpenCLIP encoder also gets the
/// `text_projection` and `logit_scale` real checkpoints carry (unused by SD 2.x). An SDXL folder
/// (`text_encoder_2/`) becomes Stability's SGM layout: `conditioner.embedders.0.transformer.text_model.` and
/// `conditioner.embedders.1.model.` (OpenCLIP names, its `text_projection` transposed to OpenCLIP's layout); an
/// SDXL refiner folder (`text_encoder_2/` without `text_encoder/`) has its one encoder under
/// `conditioner.embedders.0.model.`, as Stability's refiner checkpoint.
pub fn write_ldm_checkpoint(dir: &Path, file: &Path) -> Result<(), EngineError> {
    let open = |sub: &str, stems: &[&str]| {
        crate::weights::SafetensorsFiles::open(&crate::weights::component_files(
            &dir.join(sub),
            stems,
        )?)
    };
    let mut tensors = ldm_vae_tensors(&dir.join("vae"), true)?;
    let spec = unet_spec(&dir.join("unet").join("config.json"))?;
    let up_attention: Vec<bool> = spec
        .config
        .blocks
        .iter()
        .rev()
        .map(|b| b.use_cross_attn.is_some())
        .collect();
    let unet = open("unet", &["diffusion_pytorch_model", "model"])?;
    let mut names: Vec<String> = unet.names().map(str::to_owned).collect();
    names.sort();
    for name in names {
        let ldm = crate::ldm::unet_key_to_ldm(&name, spec.config.layers_per_block, &up_attention)
            .ok_or_else(|| {
            EngineError::InvalidArgument(format!("no LDM name for UNet tensor '{name}'"))
        })?;
        let tensor = unet.load(&name, DType::F32, &Device::Cpu)?;
        tensors.push((format!("{}{ldm}", crate::ldm::UNET_PREFIX), tensor));
    }
    let sdxl = dir.join("text_encoder_2").is_dir();
    // The SDXL refiner has text encoder 2 alone, under `conditioner.embedders.0.model.`.
    let refiner = sdxl && !dir.join("text_encoder").is_dir();
    if sdxl {
        let text_2 = open("text_encoder_2", &["model"])?;
        let config_2 = crate::clip::ClipTextConfig::from_file(
            &dir.join("text_encoder_2").join("config.json"),
        )?;
        let projection = text_2
            .load("text_projection.weight", DType::F32, &Device::Cpu)?
            .t()?
            .contiguous()?;
        let prefix = if refiner {
            crate::ldm::SDXL_REFINER_OPEN_CLIP_PREFIX
        } else {
            crate::ldm::SDXL_OPEN_CLIP_PREFIX
        };
        tensors.extend(open_clip_tensors(
            &text_2,
            config_2.hidden_size,
            prefix,
            Some(projection),
        )?);
        if refiner {
            return save_tensors(file, tensors);
        }
    }
    let text = open("text_encoder", &["model"])?;
    let text_config =
        crate::clip::ClipTextConfig::from_file(&dir.join("text_encoder").join("config.json"))?;
    if !sdxl && text_config.hidden_act == crate::clip::Activation::Gelu {
        tensors.extend(open_clip_tensors(
            &text,
            text_config.hidden_size,
            crate::ldm::OPEN_CLIP_PREFIX,
            None,
        )?);
        return save_tensors(file, tensors);
    }
    let clip_prefix = if sdxl {
        crate::ldm::SDXL_CLIP_PREFIX
    } else {
        crate::ldm::CLIP_PREFIX
    };
    let mut names: Vec<String> = text.names().map(str::to_owned).collect();
    names.sort();
    for name in names {
        let tensor = text.load(&name, DType::F32, &Device::Cpu)?;
        let bare = name.strip_prefix("text_model.").unwrap_or(&name);
        tensors.push((format!("{clip_prefix}text_model.{bare}"), tensor));
    }
    save_tensors(file, tensors)
}

/// Writes named f32 tensors as one safetensors file (through candle's writer: fast in debug builds).
fn save_tensors(file: &Path, tensors: NamedTensors) -> Result<(), EngineError> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, file)
        .map_err(|e| EngineError::Io(format!("{}: {e}", file.display())))
}

/// A transformers CLIP text encoder's tensors in OpenCLIP's names under `prefix`, q/k/v fused, with
/// `projection` as `text_projection` (OpenCLIP's (width, projection) layout; `None`: the identity) and a
/// `logit_scale`. The encoder's own `text_projection.weight` is left out.
fn open_clip_tensors(
    text: &crate::weights::SafetensorsFiles,
    hidden: usize,
    prefix: &str,
    projection: Option<Tensor>,
) -> Result<NamedTensors, EngineError> {
    let load = |name: &str| -> Result<Tensor, EngineError> {
        let prefixed = format!("text_model.{name}");
        let name = if text.contains(&prefixed) {
            prefixed
        } else {
            name.to_owned()
        };
        text.load(&name, DType::F32, &Device::Cpu)
    };
    let mut names: Vec<String> = text.names().map(str::to_owned).collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let bare = name.strip_prefix("text_model.").unwrap_or(&name);
        if let Some((layer, p)) = bare
            .strip_prefix("encoder.layers.")
            .and_then(|r| r.split_once(".self_attn.q_proj."))
        {
            let parts = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|q| load(&format!("encoder.layers.{layer}.self_attn.{q}.{p}")))
                .collect::<Result<Vec<_>, _>>()?;
            tensors.push((
                format!("{prefix}transformer.resblocks.{layer}.attn.in_proj_{p}"),
                Tensor::cat(&parts, 0)?,
            ));
            continue;
        }
        if bare.contains(".self_attn.k_proj.")
            || bare.contains(".self_attn.v_proj.")
            || bare == "text_projection.weight"
        {
            continue;
        }
        let ldm = crate::ldm::open_clip_key_to_ldm(bare).ok_or_else(|| {
            EngineError::InvalidArgument(format!("no OpenCLIP name for text tensor '{name}'"))
        })?;
        let tensor = text.load(&name, DType::F32, &Device::Cpu)?;
        tensors.push((format!("{prefix}{ldm}"), tensor));
    }
    let projection = match projection {
        Some(p) => p,
        None => Tensor::eye(hidden, DType::F32, &Device::Cpu)?,
    };
    tensors.push((format!("{prefix}text_projection"), projection));
    tensors.push((
        format!("{prefix}logit_scale"),
        Tensor::new(4.6052f32, &Device::Cpu)?,
    ));
    Ok(tensors)
}

fn write_tiny(dir: &Path, family: Family, seed: u64, twin: bool) -> Result<(), EngineError> {
    let sd2 = family != Family::Sd1;
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        mkdir(&dir.join(sub))?;
    }
    let scheduler_class = if sd2 {
        "DDIMScheduler"
    } else {
        "PNDMScheduler"
    };
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )?;
    write_json(
        &dir.join("scheduler").join("scheduler_config.json"),
        &scheduler_config(family),
    )?;

    // Tokenizer.
    let (vocab, merges) = if twin {
        let (tokens, merges) = crate::tokenizer::openai_clip_bpe()?;
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        (vocab, merges)
    } else {
        tiny_vocab()
    };
    let pad = if sd2 { "!" } else { "<|endoftext|>" };
    write_clip_tokenizer(
        &dir.join("tokenizer"),
        vocab.iter().map(|(k, &v)| (k.as_str(), v)),
        &merges,
        pad,
    )?;

    // Text encoder.
    let text_hidden = match (twin, sd2) {
        (true, true) => 1024,
        (true, false) => 768,
        (false, _) => TEXT_HIDDEN,
    };
    let vocab_size = vocab.len();
    let id = |t: &str| vocab.get(t).copied().unwrap_or(0);
    let te = dir.join("text_encoder");
    write_json(
        &te.join("config.json"),
        &json!({
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": id("<|startoftext|>"),
            "dropout": 0.0,
            "eos_token_id": id("<|endoftext|>"),
            "hidden_act": if sd2 { "gelu" } else { "quick_gelu" },
            "hidden_size": text_hidden,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": TEXT_INTERMEDIATE,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": TEXT_POSITIONS,
            "model_type": "clip_text_model",
            "num_attention_heads": if twin { text_hidden / 64 } else { 2 },
            "num_hidden_layers": TEXT_LAYERS,
            "pad_token_id": id(pad),
            "projection_dim": text_hidden,
            "torch_dtype": "float32",
            "vocab_size": vocab_size,
        }),
    )?;
    write_random(
        &te.join("model.safetensors"),
        &text_encoder_names(vocab_size, text_hidden),
        seed.wrapping_add(1),
    )?;

    // UNet: the tensor names and shapes are those candle's model asks for.
    let unet_dir = dir.join("unet");
    let unet_config_path = unet_dir.join("config.json");
    let mut config = unet_config(family);
    if twin {
        config["layers_per_block"] = json!(2);
        config["cross_attention_dim"] = json!(text_hidden);
        if sd2 {
            // 64-wide heads, as an SD 2.x checkpoint's loader assumes.
            config["block_out_channels"] = json!([64, 128]);
            config["attention_head_dim"] = json!([1, 2]);
        } else {
            config["attention_head_dim"] = json!(8);
        }
    }
    write_json(&unet_config_path, &config)?;
    let spec = unet_spec(&unet_config_path)?;
    let recorder = Recorder::default();
    UNet2DConditionModel::new(
        recorder.builder(),
        spec.in_channels,
        spec.out_channels,
        &spec.config,
        None,
        None,
    )?;
    write_random(
        &unet_dir.join("diffusion_pytorch_model.safetensors"),
        &recorder.names(),
        seed.wrapping_add(2),
    )?;

    // VAE.
    let vae_dir = dir.join("vae");
    let vae_config_path = vae_dir.join("config.json");
    write_json(&vae_config_path, &vae_config())?;
    let spec = vae_spec(&vae_config_path)?;
    let recorder = Recorder::default();
    AutoEncoderKL::new(
        recorder.builder(),
        spec.in_channels,
        spec.out_channels,
        spec.config,
    )?;
    write_random(
        &vae_dir.join("diffusion_pytorch_model.safetensors"),
        &recorder.names(),
        seed.wrapping_add(3),
    )?;
    Ok(())
}

/// Writes a random-weight UNet (config.json + weights) for an arbitrary diffusers SD 1.x/2.x UNet config (for
/// benchmarks with SD1.5-shaped weights).
pub fn write_random_unet(dir: &Path, config: &Value, seed: u64) -> Result<(), EngineError> {
    mkdir(dir)?;
    let path = dir.join("config.json");
    write_json(&path, config)?;
    let spec = unet_spec(&path)?;
    let recorder = Recorder::default();
    UNet2DConditionModel::new(
        recorder.builder(),
        spec.in_channels,
        spec.out_channels,
        &spec.config,
        None,
        None,
    )?;
    write_random(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &recorder.names(),
        seed,
    )
}

/// Writes a random-weight VAE for an arbitrary diffusers VAE config.
pub fn write_random_vae(dir: &Path, config: &Value, seed: u64) -> Result<(), EngineError> {
    mkdir(dir)?;
    let path = dir.join("config.json");
    write_json(&path, config)?;
    let spec = vae_spec(&path)?;
    let recorder = Recorder::default();
    AutoEncoderKL::new(
        recorder.builder(),
        spec.in_channels,
        spec.out_channels,
        spec.config,
    )?;
    write_random(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &recorder.names(),
        seed,
    )
}

/// Rewrites a diffusers VAE folder's weights as a single-file checkpoint in the original LDM layout
/// ([`crate::ldm::vae_key_to_ldm`], attention projections as 1×1 convolutions), optionally under a whole
/// checkpoint's `first_stage_model.` prefix: a VAE checkpoint like those people download, for tests.
pub fn write_ldm_vae(
    vae_dir: &Path,
    file: &Path,
    full_checkpoint: bool,
) -> Result<(), EngineError> {
    save_tensors(file, ldm_vae_tensors(vae_dir, full_checkpoint)?)
}

/// Named f32 tensors.
type NamedTensors = Vec<(String, Tensor)>;

fn ldm_vae_tensors(vae_dir: &Path, full_checkpoint: bool) -> Result<NamedTensors, EngineError> {
    let spec = vae_spec(&vae_dir.join("config.json"))?;
    let up_blocks = spec.config.block_out_channels.len();
    let files = crate::weights::SafetensorsFiles::open(&crate::weights::component_files(
        vae_dir,
        &["diffusion_pytorch_model", "model"],
    )?)?;
    let mut names: Vec<String> = files.names().map(str::to_owned).collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let ldm = crate::ldm::vae_key_to_ldm(&name, up_blocks).ok_or_else(|| {
            EngineError::InvalidArgument(format!("no LDM name for VAE tensor '{name}'"))
        })?;
        let mut tensor = files.load(&name, DType::F32, &Device::Cpu)?;
        if ldm.contains(".attn_1.") && !ldm.contains(".norm.") && tensor.rank() == 2 {
            let (out, inp) = tensor.dims2()?;
            tensor = tensor.reshape((out, inp, 1, 1))?;
        }
        let prefix = if full_checkpoint {
            "first_stage_model."
        } else {
            ""
        };
        tensors.push((format!("{prefix}{ldm}"), tensor));
    }
    Ok(tensors)
}

/// The tiny tokenizer's vocabulary (for tests).
pub fn tiny_vocabulary() -> HashMap<String, u32> {
    tiny_vocab().0.into_iter().collect()
}

/// How [`write_tiny_lora`] names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraNaming {
    /// kohya: `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
    /// `lora_te_text_model_encoder_...` for the text encoder.
    Kohya,
    /// diffusers/PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` / `.alpha`,
    /// `text_encoder.text_model.encoder...`.
    Peft,
}

/// The modules [`write_tiny_lora`] patches in a tiny model: every attention projection of the UNet, its first
/// resnet's 3x3 `conv1`, and the text encoder's `q_proj`, `v_proj` and `out_proj`. Returns
/// `(is_text_encoder, module, weight shape)`; the text encoder's modules carry no `text_model.` prefix.
pub fn tiny_lora_targets(model_dir: &Path) -> Result<Vec<(bool, String, Vec<usize>)>, EngineError> {
    use crate::weights::{component_files, SafetensorsFiles};
    let mut targets = Vec::new();
    let unet = SafetensorsFiles::open(&component_files(
        &model_dir.join("unet"),
        &["diffusion_pytorch_model", "model"],
    )?)?;
    let text = SafetensorsFiles::open(&component_files(
        &model_dir.join("text_encoder"),
        &["model"],
    )?)?;
    for (is_text, files) in [(false, &unet), (true, &text)] {
        let mut names: Vec<&str> = files.names().collect();
        names.sort_unstable();
        for name in names {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let wanted = if is_text {
                ["q_proj", "v_proj", "out_proj"]
                    .iter()
                    .any(|p| module.ends_with(&format!("self_attn.{p}")))
            } else {
                [".to_q", ".to_k", ".to_v", ".to_out.0"]
                    .iter()
                    .any(|p| module.ends_with(p))
                    || module == "down_blocks.0.resnets.0.conv1"
            };
            if wanted {
                let module = module.strip_prefix("text_model.").unwrap_or(module);
                let shape = files.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
                targets.push((is_text, module.to_string(), shape));
            }
        }
    }
    Ok(targets)
}

/// Writes a random rank-`rank` LoRA (alpha = rank / 2, so a scale of 0.5) over [`tiny_lora_targets`] of the
/// tiny model in `model_dir` to `path`. The same `seed` gives the same factors in either naming.
pub fn write_tiny_lora(
    model_dir: &Path,
    path: &Path,
    naming: LoraNaming,
    rank: usize,
    seed: u64,
) -> Result<(), EngineError> {
    let mut generator = TorchGenerator::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (is_text, module, shape) in tiny_lora_targets(model_dir)? {
        let out = shape[0];
        let down_shape: Vec<usize> = std::iter::once(rank)
            .chain(shape[1..].iter().copied())
            .collect();
        let up_shape: Vec<usize> = if shape.len() == 4 {
            vec![out, rank, 1, 1]
        } else {
            vec![out, rank]
        };
        let fan_in: usize = shape[1..].iter().product();
        let mut draw = |shape: &[usize], scale: f32| {
            let n: usize = shape.iter().product();
            let mut v = generator.randn(n.max(16));
            v.truncate(n);
            v.iter().map(|x| x * scale).collect::<Vec<f32>>()
        };
        let down = draw(&down_shape, 1.0 / (fan_in as f32).sqrt());
        let up = draw(&up_shape, 0.5 / (rank as f32).sqrt());
        let (down_name, up_name, alpha_name) = match (naming, is_text) {
            (LoraNaming::Kohya, _) => {
                let stem = if is_text {
                    format!("lora_te_text_model_{}", module.replace('.', "_"))
                } else {
                    format!("lora_unet_{}", module.replace('.', "_"))
                };
                (
                    format!("{stem}.lora_down.weight"),
                    format!("{stem}.lora_up.weight"),
                    format!("{stem}.alpha"),
                )
            }
            (LoraNaming::Peft, _) => {
                let stem = if is_text {
                    format!("text_encoder.text_model.{module}")
                } else {
                    format!("unet.{module}")
                };
                (
                    format!("{stem}.lora_A.weight"),
                    format!("{stem}.lora_B.weight"),
                    format!("{stem}.alpha"),
                )
            }
        };
        tensors.push((down_name, down_shape, down));
        tensors.push((up_name, up_shape, up));
        tensors.push((alpha_name, vec![], vec![rank as f32 / 2.0]));
    }
    crate::weights::write_f32_safetensors(path, &tensors)
}

/// Writes a random kohya-named LyCORIS file over [`tiny_lora_targets`] of the tiny model in `model_dir` to
/// `path`, mixing layer types: LoHa (Tucker form) on the 3x3 conv, and LoHa and LoKr (full `lokr_w1`, low-rank
/// `lokr_w2_a`/`lokr_w2_b`) in turn on the linear projections, each with alpha = rank / 2. The changes are of
/// the size [`write_tiny_lora`]'s make.
pub fn write_tiny_lycoris(model_dir: &Path, path: &Path, seed: u64) -> Result<(), EngineError> {
    const RANK: usize = 2;
    let mut generator = TorchGenerator::new(seed);
    let mut draw = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let mut v = generator.randn(n.max(16));
        v.truncate(n);
        (
            shape.to_vec(),
            v.iter().map(|x| x * scale).collect::<Vec<f32>>(),
        )
    };
    // The smallest factor above 1 of `n` (or `n`), for LoKr's Kronecker split.
    let split = |n: usize| (2..=n).find(|d| n % d == 0).unwrap_or(1);
    let b_scale = 0.5 / (RANK as f32).sqrt();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (i, (is_text, module, shape)) in tiny_lora_targets(model_dir)?.into_iter().enumerate() {
        let stem = if is_text {
            format!("lora_te_text_model_{}", module.replace('.', "_"))
        } else {
            format!("lora_unet_{}", module.replace('.', "_"))
        };
        let (out, inputs) = (shape[0], shape[1..].iter().product::<usize>());
        let mut push = |leaf: &str, (shape, values): (Vec<usize>, Vec<f32>)| {
            tensors.push((format!("{stem}.{leaf}"), shape, values));
        };
        if let [_, channels, kh, kw] = shape[..] {
            for half in ["1", "2"] {
                push(&format!("hada_w{half}_a"), draw(&[RANK, out], 0.5));
                push(&format!("hada_w{half}_b"), draw(&[RANK, channels], b_scale));
                push(
                    &format!("hada_t{half}"),
                    draw(&[RANK, RANK, kh, kw], 1.0 / (RANK as f32).sqrt()),
                );
            }
        } else if i % 2 == 0 {
            for half in ["1", "2"] {
                push(&format!("hada_w{half}_a"), draw(&[out, RANK], 0.5));
                push(&format!("hada_w{half}_b"), draw(&[RANK, inputs], b_scale));
            }
        } else {
            let (f, g) = (split(out), split(inputs));
            push("lokr_w1", draw(&[f, g], 0.3));
            push("lokr_w2_a", draw(&[out / f, RANK], 0.5));
            push("lokr_w2_b", draw(&[RANK, inputs / g], b_scale));
        }
        push("alpha", (vec![], vec![RANK as f32 / 2.0]));
    }
    crate::weights::write_f32_safetensors(path, &tensors)
}
