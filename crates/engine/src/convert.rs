//! Single-file LDM checkpoints → diffusers folders (the model manager's `PUT /convert/{key}`).
//!
//! [`checkpoint_to_diffusers`] maps the checkpoint's tensors exactly as [`crate::pipeline::Sd::load_checkpoint`]
//! does ([`crate::ldm`]: the UNet, the VAE and the SD 1.x CLIP or SD 2.x OpenCLIP text encoder, or SDXL's two),
//! then writes `model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` (SDXL: also
//! `text_encoder_2/` and `tokenizer_2/`; the SDXL refiner: those two without `text_encoder/` and `tokenizer/`, a
//! `StableDiffusionXLImg2ImgPipeline`) as diffusers' `save_pretrained` lays them out: each component's
//! `config.json` (what the checkpoint does not record comes from the [`CheckpointConfig`]) and its safetensors
//! weights, in the checkpoint's own dtypes. The tokenizer is the bundled CLIP BPE vocabulary (`vocab.json`,
//! `merges.txt`), with `!` padding for OpenCLIP encoders (SD 2.x's, SDXL's second).
//!
//! Tensors are streamed: each is read, converted to bytes and written before the next is read, so memory stays
//! at one tensor. The folder loads with [`crate::pipeline::Sd::load`] and runs exactly as the checkpoint does, and
//! with diffusers' `StableDiffusionPipeline.from_pretrained` (SDXL: `StableDiffusionXLPipeline`, the refiner:
//! `StableDiffusionXLImg2ImgPipeline`). SDXL's second text encoder's `text_projection` is written in f32 (it is
//! transposed in memory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device};
use serde_json::{json, Value};

use crate::clip::{Activation, ClipTextConfig};
use crate::config::{UNetExtras, UNetSpec, VaeSpec};
use crate::ldm::CheckpointFamily;
use crate::pipeline::CheckpointConfig;
use crate::schedulers::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::weights::SafetensorsFiles;
use crate::EngineError;

/// The diffusers version written into the configs (the format, not a dependency).
const DIFFUSERS_VERSION: &str = "0.27.2";

use crate::tiny::{io, mkdir, write_json};

/// One component's tensors under their diffusers names, read on demand.
struct Component {
    files: SafetensorsFiles,
    /// The diffusers names to write, sorted, with the shape each is written with.
    tensors: Vec<(String, Vec<usize>)>,
}

impl Component {
    /// Keeps the tensors `keep` returns a shape for (the file's shape, or a reshaped one of as many elements).
    fn new(
        files: SafetensorsFiles,
        mut keep: impl FnMut(&str, &[usize]) -> Option<Vec<usize>>,
    ) -> Result<Self, EngineError> {
        let mut tensors = Vec::new();
        for name in files.names() {
            let Some(shape) = files.shape(name) else {
                continue;
            };
            if let Some(out) = keep(name, shape) {
                if out.iter().product::<usize>() != shape.iter().product::<usize>() {
                    return Err(EngineError::InvalidModel(format!(
                        "tensor '{name}' of shape {shape:?} cannot be written as {out:?}"
                    )));
                }
                tensors.push((name.to_owned(), out));
            }
        }
        tensors.sort();
        if tensors.is_empty() {
            return Err(EngineError::InvalidModel(
                "a component without tensors".into(),
            ));
        }
        Ok(Self { files, tensors })
    }

    /// The dtype most of the floating-point tensors have (what the component's weights are stored in).
    fn main_dtype(&self) -> DType {
        let mut counts: BTreeMap<&'static str, (usize, DType)> = BTreeMap::new();
        for (name, _) in &self.tensors {
            if let Some(dtype) = self.files.dtype(name).filter(|d| d.is_float()) {
                counts.entry(dtype.as_str()).or_insert((0, dtype)).0 += 1;
            }
        }
        counts
            .into_values()
            .max_by_key(|(n, _)| *n)
            .map_or(DType::F32, |(_, d)| d)
    }

    /// Writes the tensors to one safetensors file, one tensor at a time, each in its own dtype.
    fn write(&self, path: &Path) -> Result<(), EngineError> {
        use safetensors::tensor::View;
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        let mut dtypes = Vec::with_capacity(self.tensors.len());
        for (name, shape) in &self.tensors {
            let dtype = self
                .files
                .dtype(name)
                .ok_or_else(|| EngineError::InvalidModel(format!("missing tensor '{name}'")))?;
            let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
            header.insert(
                name.clone(),
                json!({"dtype": dtype_name(dtype)?, "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
            dtypes.push(dtype);
        }
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut header = serde_json::to_vec(&Value::Object(header)).map_err(|e| io(path, e))?;
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(|e| io(path, e))?;
        out.write_all(&header).map_err(|e| io(path, e))?;
        for ((name, shape), dtype) in self.tensors.iter().zip(dtypes) {
            let tensor = self
                .files
                .load(name, dtype, &Device::Cpu)?
                .reshape(shape.as_slice())?
                .contiguous()?;
            out.write_all(&tensor.data()).map_err(|e| io(path, e))?;
        }
        out.flush().map_err(|e| io(path, e))?;
        out.into_inner()
            .map_err(|e| io(path, e.error()))?
            .sync_all()
            .map_err(|e| io(path, e))
    }
}

fn dtype_name(dtype: DType) -> Result<&'static str, EngineError> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        other => {
            return Err(EngineError::InvalidModel(format!(
                "tensors of dtype {other:?} cannot be written"
            )))
        }
    })
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Converts the single-file LDM checkpoint `file` into a diffusers folder at `out_dir` (created; it should be
/// empty or missing). `config` supplies what the checkpoint does not record, as for
/// [`crate::pipeline::Sd::load_checkpoint`], and its family must be the file's. Errors leave a partial folder
/// behind: write into a scratch folder and move it into place afterwards.
pub fn checkpoint_to_diffusers(
    file: &Path,
    config: &CheckpointConfig,
    out_dir: &Path,
) -> Result<(), EngineError> {
    let _span = tracing::info_span!("convert_checkpoint", path = %file.display()).entered();
    if !file.is_file() {
        return Err(EngineError::InvalidModel(format!(
            "{}: not a file",
            file.display()
        )));
    }
    let in_file = |e: EngineError| match e {
        EngineError::InvalidModel(m) => {
            EngineError::InvalidModel(format!("{}: {m}", file.display()))
        }
        other => other,
    };
    let open = || SafetensorsFiles::open(&[file]);

    // Text encoder (first: it tells the family).
    let mut text_files = open()?;
    let family = crate::ldm::checkpoint_family(&text_files).map_err(in_file)?;
    if family != config.family {
        return Err(EngineError::InvalidModel(format!(
            "{}: an {} checkpoint, converted as an {} model",
            file.display(),
            family.name(),
            config.family.name()
        )));
    }
    let refiner = family == CheckpointFamily::SdxlRefiner;
    // The first text encoder (the refiner has none).
    let text = if refiner {
        None
    } else {
        let clip = match family {
            CheckpointFamily::Sd2 => {
                crate::ldm::clip_from_open_clip(&mut text_files, config.text_encoder_layers)
                    .map_err(in_file)?
            }
            CheckpointFamily::Sdxl => {
                crate::ldm::sdxl_clip_from_ldm(&mut text_files).map_err(in_file)?
            }
            _ => {
                let mut clip = crate::ldm::clip_from_ldm(&mut text_files).map_err(in_file)?;
                if let Some(max) = config.text_encoder_layers {
                    clip.num_hidden_layers = clip.num_hidden_layers.min(max);
                }
                clip
            }
        };
        // transformers' names all start with `text_model.`; layers past the kept ones and the position-id
        // buffer (not a parameter) are dropped.
        text_files.rename(|name| {
            let name = if name.starts_with("text_model.") {
                name.to_owned()
            } else {
                format!("text_model.{name}")
            };
            if name == "text_model.embeddings.position_ids" {
                return None;
            }
            if let Some(rest) = name.strip_prefix("text_model.encoder.layers.") {
                let index: usize = rest.split('.').next()?.parse().ok()?;
                if index >= clip.num_hidden_layers {
                    return None;
                }
            }
            Some(name)
        })?;
        let component =
            Component::new(text_files, |_, shape| Some(shape.to_vec())).map_err(in_file)?;
        Some((clip, component))
    };
    let sdxl = family.is_sdxl();
    // SDXL's second text encoder, with its projection (transposed, held in memory).
    let text_2 = if sdxl {
        let mut files = open()?;
        let clip = crate::ldm::sdxl_open_clip_of(&mut files, family).map_err(in_file)?;
        let mut component =
            Component::new(files, |_, shape| Some(shape.to_vec())).map_err(in_file)?;
        let projection = vec![
            clip.projection_dim.unwrap_or(clip.hidden_size),
            clip.hidden_size,
        ];
        component
            .tensors
            .push(("text_projection.weight".to_owned(), projection));
        component.tensors.sort();
        Some((clip, component))
    } else {
        None
    };

    // UNet.
    let mut unet_files = open()?;
    let extras =
        crate::ldm::unet_extras_from_ldm(&unet_files, crate::ldm::SDXL_ADDITION_TIME_EMBED_DIM)
            .map_err(in_file)?;
    let unet_spec =
        crate::ldm::unet_from_ldm(&mut unet_files, &config.attention_heads).map_err(in_file)?;
    let unet = Component::new(unet_files, |_, shape| Some(shape.to_vec())).map_err(in_file)?;

    // VAE: the mid-block attention's q/k/v/out are 1×1 convolutions in LDM files, linear layers in diffusers.
    let mut vae_files = open()?;
    let vae_spec =
        crate::ldm::vae_from_ldm(&mut vae_files, config.vae_scaling_factor).map_err(in_file)?;
    let vae = Component::new(vae_files, |name, shape| {
        let attention = name.contains("mid_block.attentions.")
            && [
                ".to_q.weight",
                ".to_k.weight",
                ".to_v.weight",
                ".to_out.0.weight",
            ]
            .iter()
            .any(|s| name.ends_with(s));
        Some(match shape {
            [o, i, 1, 1] if attention => vec![*o, *i],
            _ => shape.to_vec(),
        })
    })
    .map_err(in_file)?;

    let sd2 = family == CheckpointFamily::Sd2;
    let v_prediction = config.scheduler.prediction_type == PredictionType::VPrediction;
    // The training resolution (latent sample size ×8): SD 2.x v-prediction models are the 768 px ones.
    let image_size = if sdxl {
        1024
    } else if sd2 && v_prediction {
        768
    } else {
        512
    };

    for sub in ["unet", "vae", "scheduler"] {
        mkdir(&out_dir.join(sub))?;
    }
    let scheduler_class = if sdxl {
        "EulerDiscreteScheduler"
    } else if sd2 {
        "DDIMScheduler"
    } else {
        "PNDMScheduler"
    };
    let pipeline_class = match (sdxl, unet_spec.in_channels == 9) {
        _ if refiner => "StableDiffusionXLImg2ImgPipeline",
        (true, true) => "StableDiffusionXLInpaintPipeline",
        (true, false) => "StableDiffusionXLPipeline",
        (false, true) => "StableDiffusionInpaintPipeline",
        (false, false) => "StableDiffusionPipeline",
    };
    let model_index = if refiner {
        // As stabilityai/stable-diffusion-xl-refiner-1.0's: text encoder 2 alone, the aesthetic-score time id.
        json!({
            "_class_name": pipeline_class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "force_zeros_for_empty_prompt": false,
            "requires_aesthetics_score": true,
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": [null, null],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": [null, null],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    } else if sdxl {
        json!({
            "_class_name": pipeline_class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [null, null],
            "force_zeros_for_empty_prompt": true,
            "image_encoder": [null, null],
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    } else {
        json!({
            "_class_name": pipeline_class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    };
    write_json(&out_dir.join("model_index.json"), &model_index)?;
    write_json(
        &out_dir.join("scheduler").join("scheduler_config.json"),
        &scheduler_json(&config.scheduler, scheduler_class),
    )?;
    if let Some((clip, text)) = text {
        mkdir(&out_dir.join("tokenizer"))?;
        write_tokenizer(&out_dir.join("tokenizer"), sd2)?;
        let te = out_dir.join("text_encoder");
        mkdir(&te)?;
        write_json(
            &te.join("config.json"),
            &text_encoder_json(&clip, torch_dtype(text.main_dtype())),
        )?;
        text.write(&te.join("model.safetensors"))?;
    }
    if let Some((clip_2, text_2)) = text_2 {
        mkdir(&out_dir.join("tokenizer_2"))?;
        write_tokenizer(&out_dir.join("tokenizer_2"), true)?;
        let te = out_dir.join("text_encoder_2");
        mkdir(&te)?;
        let mut config = text_encoder_json(&clip_2, torch_dtype(text_2.main_dtype()));
        config["architectures"] = json!(["CLIPTextModelWithProjection"]);
        write_json(&te.join("config.json"), &config)?;
        text_2.write(&te.join("model.safetensors"))?;
    }

    let unet_dir = out_dir.join("unet");
    write_json(
        &unet_dir.join("config.json"),
        &unet_json(&unet_spec, image_size / 8, sd2 && v_prediction, extras),
    )?;
    unet.write(&unet_dir.join("diffusion_pytorch_model.safetensors"))?;
    drop(unet);

    let vae_dir = out_dir.join("vae");
    write_json(
        &vae_dir.join("config.json"),
        &vae_json(&vae_spec, image_size),
    )?;
    vae.write(&vae_dir.join("diffusion_pytorch_model.safetensors"))?;
    Ok(())
}

/// A diffusers `UNet2DConditionModel` config for `spec` (heads per block as diffusers' SD configs write them,
/// in `attention_head_dim`), with SDXL's `text_time` addition embedding when `extras` has one.
fn unet_json(
    spec: &UNetSpec,
    sample_size: usize,
    upcast_attention: bool,
    extras: UNetExtras,
) -> Value {
    let c = &spec.config;
    let down: Vec<&str> = c
        .blocks
        .iter()
        .map(|b| {
            if b.use_cross_attn.is_some() {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = c
        .blocks
        .iter()
        .rev()
        .map(|b| {
            if b.use_cross_attn.is_some() {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let heads: Vec<usize> = c.blocks.iter().map(|b| b.attention_head_dim).collect();
    let heads = if heads.windows(2).all(|w| w[0] == w[1]) {
        json!(heads[0])
    } else {
        json!(heads)
    };
    let mut value = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": c.blocks.iter().map(|b| b.out_channels).collect::<Vec<_>>(),
        "center_input_sample": c.center_input_sample,
        "cross_attention_dim": c.cross_attention_dim,
        "down_block_types": down,
        "downsample_padding": c.downsample_padding,
        "flip_sin_to_cos": c.flip_sin_to_cos,
        "freq_shift": c.freq_shift,
        "in_channels": spec.in_channels,
        "layers_per_block": c.layers_per_block,
        "mid_block_scale_factor": c.mid_block_scale_factor,
        "norm_eps": c.norm_eps,
        "norm_num_groups": c.norm_num_groups,
        "out_channels": spec.out_channels,
        "sample_size": sample_size,
        "up_block_types": up,
        "upcast_attention": upcast_attention,
        "use_linear_projection": c.use_linear_projection,
    });
    // diffusers' mid block takes the last entry's depth: a last block without attention (the SDXL refiner's)
    // carries the mid block's.
    let last = c.blocks.len().saturating_sub(1);
    let layers: Vec<usize> = c
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.use_cross_attn.unwrap_or(if i == last {
                extras.mid_transformer_layers
            } else {
                1
            })
        })
        .collect();
    if layers.iter().any(|&l| l != 1) {
        value["transformer_layers_per_block"] = json!(layers);
    }
    if let Some(t) = extras.text_time {
        value["addition_embed_type"] = json!("text_time");
        value["addition_time_embed_dim"] = json!(t.time_embed_dim);
        value["projection_class_embeddings_input_dim"] = json!(t.input_dim);
    }
    value
}

/// A diffusers `AutoencoderKL` config for `spec`.
fn vae_json(spec: &VaeSpec, sample_size: usize) -> Value {
    let c = &spec.config;
    let n = c.block_out_channels.len();
    let mut value = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": c.block_out_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "in_channels": spec.in_channels,
        "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "norm_num_groups": c.norm_num_groups,
        "out_channels": spec.out_channels,
        "sample_size": sample_size,
        "scaling_factor": spec.scaling_factor,
        "up_block_types": vec!["UpDecoderBlock2D"; n],
    });
    if !c.use_quant_conv {
        value["use_quant_conv"] = json!(false);
    }
    if !c.use_post_quant_conv {
        value["use_post_quant_conv"] = json!(false);
    }
    value
}

/// A transformers `CLIPTextConfig` for `clip` (special-token ids as in the SD 1.x/2.x text encoders' configs).
fn text_encoder_json(clip: &ClipTextConfig, torch_dtype: &str) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": clip.eos_token_id.unwrap_or(2),
        "hidden_act": match clip.hidden_act {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
        },
        "hidden_size": clip.hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": clip.intermediate_size,
        "layer_norm_eps": clip.layer_norm_eps,
        "max_position_embeddings": clip.max_position_embeddings,
        "model_type": "clip_text_model",
        "num_attention_heads": clip.num_attention_heads,
        "num_hidden_layers": clip.num_hidden_layers,
        "pad_token_id": 1,
        "projection_dim": clip.projection_dim.unwrap_or(clip.hidden_size),
        "torch_dtype": torch_dtype,
        "vocab_size": clip.vocab_size,
    })
}

/// The scheduler config `Sd::load` reads back as `config` (`steps_offset` and `prediction_type` always
/// written: their absence means something else).
fn scheduler_json(config: &SchedulerConfig, class: &str) -> Value {
    let mut value = json!({
        "_class_name": class,
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": config.beta_end,
        "beta_schedule": match config.beta_schedule {
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::Linear => "linear",
        },
        "beta_start": config.beta_start,
        "clip_sample": config.clip_sample,
        "num_train_timesteps": config.num_train_timesteps,
        "prediction_type": match config.prediction_type {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
        },
        "set_alpha_to_one": config.set_alpha_to_one,
        "skip_prk_steps": true,
        "steps_offset": config.steps_offset,
    });
    if let Some(spacing) = config.timestep_spacing {
        value["timestep_spacing"] = json!(match spacing {
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Trailing => "trailing",
        });
    }
    value
}

/// The bundled CLIP BPE tokenizer as a transformers `CLIPTokenizer` folder; SD 2.x (OpenCLIP) pads with `!`.
fn write_tokenizer(dir: &Path, sd2: bool) -> Result<(), EngineError> {
    let (tokens, merges) = crate::tokenizer::openai_clip_bpe()?;
    let pad = if sd2 { "!" } else { "<|endoftext|>" };
    crate::tiny::write_clip_tokenizer(
        dir,
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32)),
        &merges,
        pad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Sd;

    type Writer = fn(&Path, &Path, u64) -> Result<(), EngineError>;

    #[test]
    fn a_converted_sd1_checkpoint_loads_like_the_checkpoint() {
        converts_like_the_twin(
            crate::tiny::write_tiny_sd1_checkpoint,
            &CheckpointConfig::sd1(),
        );
    }

    #[test]
    fn a_converted_sdxl_checkpoint_loads_like_the_checkpoint() {
        converts_like_the_twin(
            crate::tiny_sdxl::write_tiny_sdxl_checkpoint,
            &CheckpointConfig::sdxl(),
        );
    }

    #[test]
    fn a_converted_sdxl_refiner_checkpoint_loads_like_the_checkpoint() {
        converts_like_the_twin(
            crate::tiny_sdxl::write_tiny_sdxl_refiner_checkpoint,
            &CheckpointConfig::sdxl_refiner(),
        );
    }

    #[test]
    fn a_converted_sd2_checkpoint_loads_like_the_checkpoint() {
        converts_like_the_twin(
            crate::tiny::write_tiny_sd2_checkpoint,
            &CheckpointConfig::sd2_v(),
        );
    }

    /// Converts the checkpoint `write` makes and compares the folder with the checkpoint's diffusers
    /// twin (tensor for tensor) and with the checkpoint as loaded (scheduler, prompt encoding).
    fn converts_like_the_twin(write: Writer, config: &CheckpointConfig) {
        let dir = tempfile::tempdir().unwrap();
        let twin = dir.path().join("twin");
        let file = dir.path().join("tiny.safetensors");
        write(&twin, &file, 7).unwrap();
        let out = dir.path().join("converted");
        checkpoint_to_diffusers(&file, config, &out).unwrap();
        let sdxl = twin.join("text_encoder_2").is_dir();
        let refiner = config.family == CheckpointFamily::SdxlRefiner;
        let mut expected = vec![
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
        ];
        let first = [
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
        ];
        let second = [
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/vocab.json",
            "tokenizer_2/merges.txt",
        ];
        if !refiner {
            expected.extend(first);
        }
        if sdxl {
            expected.extend(second);
        }
        for f in expected {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        if refiner {
            assert!(!out.join("text_encoder").exists() && !out.join("tokenizer").exists());
        }
        // The model index is the twin's (the refiner's: text encoder 2 alone, as diffusers saves it).
        let index = |dir: &Path| crate::config::read_json(&dir.join("model_index.json")).unwrap();
        let (ours, theirs) = (index(&out), index(&twin));
        for field in [
            "_class_name",
            "text_encoder",
            "tokenizer",
            "text_encoder_2",
            "requires_aesthetics_score",
        ] {
            assert_eq!(ours.get(field), theirs.get(field), "model_index {field}");
        }
        // Same tensor names and shapes as the diffusers twin the checkpoint was written from.
        let mut parts = vec![
            ("unet", "diffusion_pytorch_model"),
            ("vae", "diffusion_pytorch_model"),
        ];
        if !refiner {
            parts.push(("text_encoder", "model"));
        }
        if sdxl {
            parts.push(("text_encoder_2", "model"));
        }
        for (sub, stem) in parts {
            let ours = SafetensorsFiles::open(&[out.join(sub).join(format!("{stem}.safetensors"))])
                .unwrap();
            let theirs =
                SafetensorsFiles::open(&[twin.join(sub).join(format!("{stem}.safetensors"))])
                    .unwrap();
            let mut a: Vec<(String, Vec<usize>)> = ours
                .names()
                .map(|n| (n.to_owned(), ours.shape(n).unwrap().to_vec()))
                .collect();
            let mut b: Vec<(String, Vec<usize>)> = theirs
                .names()
                .map(|n| (n.to_owned(), theirs.shape(n).unwrap().to_vec()))
                .collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{sub}");
            for (name, _) in &a {
                let x = ours.load(name, DType::F32, &Device::Cpu).unwrap();
                let y = theirs.load(name, DType::F32, &Device::Cpu).unwrap();
                let diff = (x - y)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{sub}/{name}");
            }
        }
        let converted = Sd::load(&out, &Device::Cpu, DType::F32).unwrap();
        let checkpoint = Sd::load_checkpoint(&file, config, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            converted.scheduler_config(),
            checkpoint.scheduler_config(),
            "scheduler"
        );
        assert_eq!(
            converted.vae_scaling_factor(),
            checkpoint.vae_scaling_factor()
        );
        assert_eq!(converted.is_sdxl_refiner(), refiner);
        assert_eq!(checkpoint.is_sdxl_refiner(), refiner);
        let (a, b) = if refiner {
            let a = converted
                .encode_prompt_sdxl_refiner("a photo of a cat", 0)
                .unwrap();
            let b = checkpoint
                .encode_prompt_sdxl_refiner("a photo of a cat", 0)
                .unwrap();
            let pooled = (a.pooled - b.pooled).unwrap().abs().unwrap();
            let pooled = pooled.flatten_all().unwrap().max(0).unwrap();
            assert_eq!(pooled.to_scalar::<f32>().unwrap(), 0.0, "pooled");
            (a.embeds, b.embeds)
        } else if sdxl {
            let a = converted
                .encode_prompt_sdxl("a photo of a cat", "", 0, 0)
                .unwrap();
            let b = checkpoint
                .encode_prompt_sdxl("a photo of a cat", "", 0, 0)
                .unwrap();
            let pooled = (a.pooled - b.pooled).unwrap().abs().unwrap();
            let pooled = pooled.flatten_all().unwrap().max(0).unwrap();
            assert_eq!(pooled.to_scalar::<f32>().unwrap(), 0.0, "pooled");
            (a.embeds, b.embeds)
        } else {
            let a = converted.encode_prompt("a photo of a cat", 0).unwrap();
            let b = checkpoint.encode_prompt("a photo of a cat", 0).unwrap();
            (a, b)
        };
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    /// The real SDXL refiner's UNet (attention on the middle levels, depth 4, a mid block of depth 4 after a last
    /// block without attention) and SDXL's (depths 1, 2, 10; mid 10): diffusers reads the mid block's depth
    /// from the last entry of `transformer_layers_per_block`.
    #[test]
    fn unet_configs_carry_the_mid_blocks_depth_last() {
        use candle_transformers::models::stable_diffusion::unet_2d::{
            BlockConfig, UNet2DConditionModelConfig,
        };
        let spec = |blocks: &[(usize, Option<usize>)]| UNetSpec {
            in_channels: 4,
            out_channels: 4,
            config: UNet2DConditionModelConfig {
                blocks: blocks
                    .iter()
                    .map(|&(out_channels, use_cross_attn)| BlockConfig {
                        out_channels,
                        use_cross_attn,
                        attention_head_dim: out_channels / 64,
                    })
                    .collect(),
                layers_per_block: 2,
                cross_attention_dim: 1280,
                use_linear_projection: true,
                ..UNet2DConditionModelConfig::default()
            },
        };
        let extras = |mid| UNetExtras {
            mid_transformer_layers: mid,
            text_time: Some(crate::unet::TextTime {
                time_embed_dim: 256,
                input_dim: 2560,
            }),
        };
        let refiner = unet_json(
            &spec(&[(384, None), (768, Some(4)), (1536, Some(4)), (1536, None)]),
            128,
            false,
            extras(4),
        );
        assert_eq!(refiner["transformer_layers_per_block"], json!([1, 4, 4, 4]));
        assert_eq!(refiner["attention_head_dim"], json!([6, 12, 24, 24]));
        assert_eq!(
            refiner["down_block_types"],
            json!([
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ])
        );
        assert_eq!(refiner["projection_class_embeddings_input_dim"], 2560);
        let base = unet_json(
            &spec(&[(320, None), (640, Some(2)), (1280, Some(10))]),
            128,
            false,
            extras(10),
        );
        assert_eq!(base["transformer_layers_per_block"], json!([1, 2, 10]));
    }

    #[test]
    fn the_wrong_family_and_non_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let twin = dir.path().join("twin");
        let file = dir.path().join("tiny.safetensors");
        crate::tiny::write_tiny_sd1_checkpoint(&twin, &file, 7).unwrap();
        let err = checkpoint_to_diffusers(&file, &CheckpointConfig::sd2(), &dir.path().join("o"))
            .unwrap_err();
        assert!(err.to_string().contains("SD 1.x checkpoint"), "{err}");
        let unet = twin
            .join("unet")
            .join("diffusion_pytorch_model.safetensors");
        let err = checkpoint_to_diffusers(&unet, &CheckpointConfig::sd1(), &dir.path().join("p"))
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    }
}
