//! A tiny random-weight SDXL model in diffusers layout (`StableDiffusionXLPipeline`), for tests and benchmarks:
//! [`write_tiny_sdxl`] writes `model_index.json`, `unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`,
//! `tokenizer/`, `tokenizer_2/` and `scheduler/` from a seed, deterministically, and diffusers/transformers load
//! it as they load the real model (the SDXL parity fixtures are made that way).
//!
//! Shapes follow SDXL in miniature: text encoder 1 is an OpenAI CLIP (quick GELU, `<|endoftext|>` padding) of
//! width 32, text encoder 2 a `CLIPTextModelWithProjection` (GELU, `!` padding) of width 64 with 3 layers and a
//! 64-wide `text_projection`; the UNet has block_out_channels [32, 64] with `DownBlock2D` then
//! `CrossAttnDownBlock2D` (as SDXL's first two levels), `transformer_layers_per_block` [1, 2],
//! cross_attention_dim 96 (= 32 + 64), linear projections and the `text_time` addition embedding
//! (addition_time_embed_dim 8, so projection_class_embeddings_input_dim = 64 + 6·8 = 112); the VAE is the SD
//! tiny VAE with SDXL's scaling factor 0.13025; the scheduler is SDXL's `EulerDiscreteScheduler` configuration.
//! All group norms use 32 groups.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{unet_extras, unet_spec};
use crate::lora::{sdxl_diffusers_to_ldm, LoraTarget};
use crate::noise::TorchGenerator;
use crate::tiny::TensorSpecs;
use crate::tiny::{mkdir, tiny_vocab, vae_config, write_json, write_random, Recorder};
use crate::unet::UNet2DConditionModel;
use crate::EngineError;

const POSITIONS: usize = 77;
/// (hidden, layers, intermediate, heads) of the two text encoders.
const ENCODER_1: (usize, usize, usize, usize) = (32, 2, 64, 2);
const ENCODER_2: (usize, usize, usize, usize) = (64, 3, 128, 4);
/// SDXL's addition_time_embed_dim, in miniature.
const TIME_EMBED_DIM: usize = 8;

/// The sizes of one tiny SDXL model.
struct Dims {
    /// (hidden, layers, intermediate, heads) of the two text encoders.
    encoders: [(usize, usize, usize, usize); 2],
    /// The UNet's block_out_channels and attention heads per block.
    channels: [usize; 2],
    heads: [usize; 2],
    /// addition_time_embed_dim.
    time_embed_dim: usize,
    /// The full bundled OpenAI CLIP vocabulary (else the tiny one).
    full_vocab: bool,
    /// The refiner: no first text encoder, cross-attention width = the second encoder's, 5 time ids.
    refiner: bool,
}

const TINY: Dims = Dims {
    encoders: [ENCODER_1, ENCODER_2],
    channels: [32, 64],
    heads: [2, 4],
    time_embed_dim: TIME_EMBED_DIM,
    full_vocab: false,
    refiner: false,
};

/// [`write_tiny_sdxl_refiner`]'s sizes: [`TINY`] without the first encoder.
const REFINER: Dims = Dims {
    refiner: true,
    ..TINY
};

/// [`write_tiny_sdxl_twin`]'s sizes: what a single-file checkpoint cannot record is SDXL's (64-wide heads,
/// addition_time_embed_dim 256, the full vocabulary).
const TWIN: Dims = Dims {
    encoders: [(64, 2, 128, 1), (128, 2, 256, 2)],
    channels: [64, 128],
    heads: [1, 2],
    time_embed_dim: crate::ldm::SDXL_ADDITION_TIME_EMBED_DIM,
    full_vocab: true,
    refiner: false,
};

/// [`write_tiny_sdxl_refiner_twin`]'s sizes: [`TWIN`] without the first encoder (cross-attention width 128,
/// projection_class_embeddings_input_dim 128 + 5·256 = 1408).
const REFINER_TWIN: Dims = Dims {
    refiner: true,
    ..TWIN
};

fn unet_config(d: &Dims) -> Value {
    let [e1, e2] = d.encoders;
    let (cross, time_ids) = if d.refiner {
        (e2.0, 5)
    } else {
        (e1.0 + e2.0, 6)
    };
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": d.time_embed_dim,
        "attention_head_dim": d.heads,
        "block_out_channels": d.channels,
        "center_input_sample": false,
        "cross_attention_dim": cross,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": e2.0 + time_ids * d.time_embed_dim,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "sample_size": 8,
        "time_embedding_type": "positional",
        "transformer_layers_per_block": [1, 2],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": true,
    })
}

/// stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json
fn scheduler_config() -> Value {
    json!({
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null,
        "use_karras_sigmas": false,
    })
}

fn encoder_names(
    vocab_size: usize,
    (h, layers, intermediate, _): (usize, usize, usize, usize),
    projection: bool,
) -> TensorSpecs {
    crate::tiny::clip_names(vocab_size, h, layers, intermediate, projection)
}

/// The tiny vocabulary or the full bundled OpenAI CLIP one, with its merges.
type Vocab = (
    std::collections::BTreeMap<String, u32>,
    Vec<(String, String)>,
);

fn vocabulary(full: bool) -> Result<Vocab, EngineError> {
    if !full {
        return Ok(tiny_vocab());
    }
    let (tokens, merges) = crate::tokenizer::openai_clip_bpe()?;
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    Ok((vocab, merges))
}

fn write_tokenizer(dir: &Path, pad: &str, full: bool) -> Result<usize, EngineError> {
    let (vocab, merges) = vocabulary(full)?;
    crate::tiny::write_clip_tokenizer(
        dir,
        vocab.iter().map(|(k, &v)| (k.as_str(), v)),
        &merges,
        pad,
    )?;
    Ok(vocab.len())
}

fn write_encoder(
    dir: &Path,
    shape: (usize, usize, usize, usize),
    projection: bool,
    pad: &str,
    seed: u64,
    full: bool,
) -> Result<(), EngineError> {
    mkdir(dir)?;
    let (vocab, _) = vocabulary(full)?;
    let id = |t: &str| vocab.get(t).copied().unwrap_or(0);
    let (h, layers, intermediate, heads) = shape;
    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": [if projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
            "attention_dropout": 0.0,
            "bos_token_id": id("<|startoftext|>"),
            "dropout": 0.0,
            "eos_token_id": id("<|endoftext|>"),
            "hidden_act": if projection { "gelu" } else { "quick_gelu" },
            "hidden_size": h,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": intermediate,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": POSITIONS,
            "model_type": "clip_text_model",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "pad_token_id": id(pad),
            "projection_dim": h,
            "torch_dtype": "float32",
            "vocab_size": vocab.len(),
        }),
    )?;
    write_random(
        &dir.join("model.safetensors"),
        &encoder_names(vocab.len(), shape, projection),
        seed,
    )
}

/// Writes the tiny random-weight SDXL model into `dir` (created if needed), deterministically from `seed`.
pub fn write_tiny_sdxl(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_sdxl(dir, seed, &TINY)
}

/// Writes a tiny random-weight SDXL refiner (`StableDiffusionXLImg2ImgPipeline` with
/// `requires_aesthetics_score`) into `dir`, deterministically from `seed`: [`write_tiny_sdxl`]'s model without
/// `text_encoder/` and `tokenizer/` (null in `model_index.json`), its UNet's cross-attention width that of text
/// encoder 2 (64) and its addition embedding sized for 5 time ids (64 + 5·8 = 104).
pub fn write_tiny_sdxl_refiner(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_sdxl(dir, seed, &REFINER)
}

/// Writes the diffusers twin of [`write_tiny_sdxl_checkpoint`]'s checkpoint: a tiny SDXL model shaped like the
/// real thing where a single-file checkpoint's loader looks: the full OpenAI CLIP vocabulary in both tokenizers
/// (`!` padding in the second), text encoders of widths 64 and 128 (64-wide heads; the second with a 128-wide
/// `text_projection`), a UNet with block channels 64 and 128 (64-wide attention heads),
/// `transformer_layers_per_block` [1, 2], cross-attention width 192 and addition_time_embed_dim 256. (Not the
/// model manager's idea of SDXL: its probe wants cross-attention width 2048.)
pub fn write_tiny_sdxl_twin(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_sdxl(dir, seed, &TWIN)
}

/// Writes a tiny SDXL single-file checkpoint in Stability's SGM layout to `file`
/// ([`crate::tiny::write_ldm_checkpoint`]), with its diffusers twin ([`write_tiny_sdxl_twin`]) in `twin_dir`: the
/// same weights, so both generate the same images.
pub fn write_tiny_sdxl_checkpoint(
    twin_dir: &Path,
    file: &Path,
    seed: u64,
) -> Result<(), EngineError> {
    write_tiny_sdxl_twin(twin_dir, seed)?;
    crate::tiny::write_ldm_checkpoint(twin_dir, file)
}

/// Writes the diffusers twin of [`write_tiny_sdxl_refiner_checkpoint`]'s checkpoint: [`write_tiny_sdxl_twin`]'s
/// model as a refiner (`StableDiffusionXLImg2ImgPipeline` without `text_encoder/` and `tokenizer/`, as
/// [`write_tiny_sdxl_refiner`]), so its UNet's cross-attention width is text encoder 2's (128) and its addition
/// embedding takes 5 time ids (128 + 5·256 = 1408).
pub fn write_tiny_sdxl_refiner_twin(dir: &Path, seed: u64) -> Result<(), EngineError> {
    write_sdxl(dir, seed, &REFINER_TWIN)
}

/// Writes a tiny SDXL refiner single-file checkpoint in Stability's SGM layout to `file` (its one text encoder,
/// OpenCLIP-named, under `conditioner.embedders.0.model.`), with its diffusers twin
/// ([`write_tiny_sdxl_refiner_twin`]) in `twin_dir`: the same weights, so both generate the same images.
pub fn write_tiny_sdxl_refiner_checkpoint(
    twin_dir: &Path,
    file: &Path,
    seed: u64,
) -> Result<(), EngineError> {
    write_tiny_sdxl_refiner_twin(twin_dir, seed)?;
    crate::tiny::write_ldm_checkpoint(twin_dir, file)
}

fn write_sdxl(dir: &Path, seed: u64, d: &Dims) -> Result<(), EngineError> {
    for sub in ["unet", "vae", "scheduler"] {
        mkdir(&dir.join(sub))?;
    }
    let index = if d.refiner {
        json!({
            "_class_name": "StableDiffusionXLImg2ImgPipeline",
            "_diffusers_version": "0.42.1",
            "force_zeros_for_empty_prompt": false,
            "requires_aesthetics_score": true,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": [null, null],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": [null, null],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    } else {
        json!({
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": "0.42.1",
            "force_zeros_for_empty_prompt": true,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    };
    write_json(&dir.join("model_index.json"), &index)?;
    write_json(
        &dir.join("scheduler").join("scheduler_config.json"),
        &scheduler_config(),
    )?;
    if !d.refiner {
        write_tokenizer(&dir.join("tokenizer"), "<|endoftext|>", d.full_vocab)?;
        write_encoder(
            &dir.join("text_encoder"),
            d.encoders[0],
            false,
            "<|endoftext|>",
            seed.wrapping_add(1),
            d.full_vocab,
        )?;
    }
    write_tokenizer(&dir.join("tokenizer_2"), "!", d.full_vocab)?;
    write_encoder(
        &dir.join("text_encoder_2"),
        d.encoders[1],
        true,
        "!",
        seed.wrapping_add(4),
        d.full_vocab,
    )?;

    // UNet: the tensor names and shapes are those our model asks for.
    let unet_dir = dir.join("unet");
    let config_path = unet_dir.join("config.json");
    write_json(&config_path, &unet_config(d))?;
    let spec = unet_spec(&config_path)?;
    let extras = unet_extras(&config_path)?;
    let recorder = Recorder::default();
    UNet2DConditionModel::new(
        recorder.builder(),
        spec.in_channels,
        spec.out_channels,
        &spec.config,
        Some(extras.mid_transformer_layers),
        extras.text_time,
    )?;
    write_random(
        &unet_dir.join("diffusion_pytorch_model.safetensors"),
        &recorder.names(),
        seed.wrapping_add(2),
    )?;

    // VAE: the SD tiny VAE with SDXL's scaling factor.
    let mut vae = vae_config();
    vae["scaling_factor"] = json!(0.13025);
    vae["force_upcast"] = json!(true);
    let vae_dir = dir.join("vae");
    crate::tiny::write_random_vae(&vae_dir, &vae, seed.wrapping_add(3))
}

/// How [`write_tiny_sdxl_lora`] names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdxlLoraNaming {
    /// kohya as SDXL LoRAs are usually named: `lora_te1_text_model_...`, `lora_te2_text_model_...` and LDM
    /// (Stability AI) UNet names, `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` (SDXL's fixed map,
    /// [`crate::lora::sdxl_diffusers_to_ldm`]), each with `.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    KohyaLdm,
    /// kohya with flattened diffusers UNet names (`lora_unet_down_blocks_1_attentions_0_...`), te1/te2 as above.
    KohyaDiffusers,
    /// diffusers/PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` / `.alpha`,
    /// `text_encoder.text_model...`, `text_encoder_2.text_model...`.
    Peft,
}

/// The modules [`write_tiny_sdxl_lora`] patches in the tiny SDXL model: every attention projection of the UNet
/// and its transformers' `proj_in`, the first resnet's 3x3 `conv1` and the mid block's second `time_emb_proj`;
/// text encoder 1's `q_proj`, `v_proj` and `out_proj`, text encoder 2's and its `mlp.fc1`. Returns
/// `(target, module, weight shape)`; text-encoder modules carry no `text_model.` prefix.
pub fn tiny_sdxl_lora_targets(
    model_dir: &Path,
) -> Result<Vec<(LoraTarget, String, Vec<usize>)>, EngineError> {
    use crate::weights::{component_files, SafetensorsFiles};
    let open = |sub: &str, stems: &[&str]| {
        SafetensorsFiles::open(&component_files(&model_dir.join(sub), stems)?)
    };
    let parts = [
        (
            LoraTarget::Unet,
            open("unet", &["diffusion_pytorch_model", "model"])?,
        ),
        (LoraTarget::TextEncoder, open("text_encoder", &["model"])?),
        (
            LoraTarget::TextEncoder2,
            open("text_encoder_2", &["model"])?,
        ),
    ];
    let mut targets = Vec::new();
    for (target, files) in &parts {
        let mut names: Vec<&str> = files.names().collect();
        names.sort_unstable();
        for name in names {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let wanted = match target {
                LoraTarget::Unet => {
                    [".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in"]
                        .iter()
                        .any(|p| module.ends_with(p))
                        || module == "down_blocks.0.resnets.0.conv1"
                        || module == "mid_block.resnets.1.time_emb_proj"
                }
                LoraTarget::TextEncoder | LoraTarget::TextEncoder2 => {
                    ["self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj"]
                        .iter()
                        .any(|p| module.ends_with(p))
                        || (*target == LoraTarget::TextEncoder2 && module.ends_with("mlp.fc1"))
                }
            };
            if wanted {
                let module = module.strip_prefix("text_model.").unwrap_or(module);
                let shape = files.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
                targets.push((*target, module.to_string(), shape));
            }
        }
    }
    Ok(targets)
}

/// Writes a random rank-`rank` LoRA (alpha = rank / 2, so a scale of 0.5) over [`tiny_sdxl_lora_targets`] of the
/// tiny SDXL model in `model_dir` to `path`. The same `seed` gives the same factors in every naming.
pub fn write_tiny_sdxl_lora(
    model_dir: &Path,
    path: &Path,
    naming: SdxlLoraNaming,
    rank: usize,
    seed: u64,
) -> Result<(), EngineError> {
    let mut generator = TorchGenerator::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (target, module, shape) in tiny_sdxl_lora_targets(model_dir)? {
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
        let flat = module.replace('.', "_");
        let (stem, [down_leaf, up_leaf]) = match (naming, target) {
            (SdxlLoraNaming::Peft, LoraTarget::Unet) => (format!("unet.{module}"), PEFT_LEAVES),
            (SdxlLoraNaming::Peft, LoraTarget::TextEncoder) => {
                (format!("text_encoder.text_model.{module}"), PEFT_LEAVES)
            }
            (SdxlLoraNaming::Peft, LoraTarget::TextEncoder2) => {
                (format!("text_encoder_2.text_model.{module}"), PEFT_LEAVES)
            }
            (_, LoraTarget::TextEncoder) => (format!("lora_te1_text_model_{flat}"), KOHYA_LEAVES),
            (_, LoraTarget::TextEncoder2) => (format!("lora_te2_text_model_{flat}"), KOHYA_LEAVES),
            (SdxlLoraNaming::KohyaDiffusers, LoraTarget::Unet) => {
                (format!("lora_unet_{flat}"), KOHYA_LEAVES)
            }
            (SdxlLoraNaming::KohyaLdm, LoraTarget::Unet) => {
                let ldm = sdxl_diffusers_to_ldm(&module).ok_or_else(|| {
                    EngineError::InvalidArgument(format!("{module}: not in SDXL's LDM map"))
                })?;
                (format!("lora_unet_{ldm}"), KOHYA_LEAVES)
            }
        };
        tensors.push((format!("{stem}.{down_leaf}"), down_shape, down));
        tensors.push((format!("{stem}.{up_leaf}"), up_shape, up));
        tensors.push((format!("{stem}.alpha"), vec![], vec![rank as f32 / 2.0]));
    }
    crate::weights::write_f32_safetensors(path, &tensors)
}

const KOHYA_LEAVES: [&str; 2] = ["lora_down.weight", "lora_up.weight"];
const PEFT_LEAVES: [&str; 2] = ["lora_A.weight", "lora_B.weight"];
