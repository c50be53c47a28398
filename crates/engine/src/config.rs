//! diffusers `config.json` files → candle model configurations and our [`SchedulerConfig`].
//!
//! Only what SD 1.x/2.x and SDXL use is accepted (SDXL: the `text_time` addition embedding, per-block
//! `transformer_layers_per_block`, read by [`unet_extras`]); anything that would make our UNet or candle's VAE
//! compute something other than diffusers (another addition embedding, a class embedding, a custom group count,
//! ...) is an [`EngineError::InvalidModel`] naming the field.

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde_json::Value;

use crate::schedulers::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::unet::TextTime;
use crate::EngineError;

/// Reads a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))
}

struct Fields<'a> {
    path: &'a Path,
    value: &'a Value,
}

impl Fields<'_> {
    fn bad(&self, key: &str, why: &str) -> EngineError {
        EngineError::InvalidModel(format!("{}: '{key}' {why}", self.path.display()))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.bad(key, "must be a non-negative integer")),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "must be a number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(key, "must be a boolean")),
        }
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, "must be a string")),
        }
    }

    /// An integer or a list of `n` integers (diffusers allows both for per-block values).
    fn per_block(&self, key: &str, n: usize, default: usize) -> Result<Vec<usize>, EngineError> {
        match self.get(key) {
            None => Ok(vec![default; n]),
            Some(Value::Array(items)) => {
                let values = items
                    .iter()
                    .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.bad(key, "must hold integers"))?;
                if values.len() != n {
                    return Err(self.bad(key, "must have one entry per block"));
                }
                Ok(values)
            }
            Some(_) => Ok(vec![self.usize_or(key, default)?; n]),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, EngineError> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| self.bad(key, "must be a list of strings"))
    }

    fn require_default(&self, key: &str, default: &Value) -> Result<(), EngineError> {
        match self.get(key) {
            Some(v) if v != default => Err(self.bad(key, &format!("= {v} is not supported"))),
            _ => Ok(()),
        }
    }
}

/// A UNet's channels and configuration, read from `unet/config.json`.
#[derive(Debug, Clone)]
pub struct UNetSpec {
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
    /// The candle configuration.
    pub config: UNet2DConditionModelConfig,
}

/// Parses a diffusers `UNet2DConditionModel` config for SD 1.x/2.x/XL (SDXL's extras: [`unet_extras`]).
pub fn unet_spec(path: &Path) -> Result<UNetSpec, EngineError> {
    let value = read_json(path)?;
    let f = Fields {
        path,
        value: &value,
    };
    match f.get("addition_embed_type") {
        None => {}
        Some(v) if v == &Value::from("text_time") => {}
        Some(_) => {
            return Err(f.bad(
                "addition_embed_type",
                "is set: this UNet needs an SDXL-style or conditioned model, not supported yet",
            ))
        }
    }
    for key in [
        "class_embed_type",
        "encoder_hid_dim",
        "time_cond_proj_dim",
        "num_class_embeds",
    ] {
        if f.get(key).is_some() {
            return Err(f.bad(
                key,
                "is set: this UNet needs an SDXL-style or conditioned model, not supported yet",
            ));
        }
    }
    if f.get("reverse_transformer_layers_per_block").is_some() {
        return Err(f.bad("reverse_transformer_layers_per_block", "is not supported"));
    }
    f.require_default("resnet_time_scale_shift", &Value::from("default"))?;
    f.require_default("time_embedding_type", &Value::from("positional"))?;
    f.require_default("act_fn", &Value::from("silu"))?;
    f.require_default("mid_block_type", &Value::from("UNetMidBlock2DCrossAttn"))?;
    f.require_default("only_cross_attention", &Value::from(false))?;
    f.require_default("dual_cross_attention", &Value::from(false))?;
    f.require_default("conv_in_kernel", &Value::from(3))?;
    f.require_default("conv_out_kernel", &Value::from(3))?;
    let channels = f
        .get("block_out_channels")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| f.bad("block_out_channels", "must be a non-empty list of integers"))?;
    let n = channels.len();
    let down = f.strings("down_block_types")?;
    let up = f.strings("up_block_types")?;
    if down.len() != n || up.len() != n {
        return Err(f.bad(
            "down_block_types",
            "and up_block_types need one entry per block",
        ));
    }
    let groups = f.usize_or("norm_num_groups", 32)?;
    if groups != 32 {
        // candle's down and up blocks always use 32 groups.
        return Err(f.bad("norm_num_groups", "must be 32"));
    }
    if channels.iter().any(|c| c % 32 != 0) {
        return Err(f.bad("block_out_channels", "must be multiples of 32"));
    }
    // diffusers: `num_attention_heads` or else `attention_head_dim`, which SD 1.x/2.x use as a head count.
    let heads = if f.get("num_attention_heads").is_some() {
        f.per_block("num_attention_heads", n, 8)?
    } else {
        f.per_block("attention_head_dim", n, 8)?
    };
    let transformer_layers = f.per_block("transformer_layers_per_block", n, 1)?;
    let layers_per_block = f.usize_or("layers_per_block", 2)?;
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let cross = match down[i].as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            other => {
                return Err(f.bad(
                    "down_block_types",
                    &format!("entry '{other}' is not supported"),
                ))
            }
        };
        let expected_up = if cross {
            "CrossAttnUpBlock2D"
        } else {
            "UpBlock2D"
        };
        if up[n - 1 - i] != expected_up {
            return Err(f.bad("up_block_types", "must mirror down_block_types"));
        }
        if heads[i] == 0 || channels[i] % heads[i] != 0 {
            return Err(f.bad("attention_head_dim", "must divide the block's channels"));
        }
        blocks.push(BlockConfig {
            out_channels: channels[i],
            use_cross_attn: cross.then_some(transformer_layers[i]),
            attention_head_dim: heads[i],
        });
    }
    let cross_attention_dim = match f.get("cross_attention_dim") {
        Some(Value::Array(_)) => {
            return Err(f.bad("cross_attention_dim", "per-block values are not supported"))
        }
        _ => f.usize_or("cross_attention_dim", 1280)?,
    };
    let config = UNet2DConditionModelConfig {
        center_input_sample: f.bool_or("center_input_sample", false)?,
        flip_sin_to_cos: f.bool_or("flip_sin_to_cos", true)?,
        freq_shift: f.f64_or("freq_shift", 0.0)?,
        blocks,
        layers_per_block,
        downsample_padding: f.usize_or("downsample_padding", 1)?,
        mid_block_scale_factor: f.f64_or("mid_block_scale_factor", 1.0)?,
        norm_num_groups: groups,
        norm_eps: f.f64_or("norm_eps", 1e-5)?,
        cross_attention_dim,
        sliced_attention_size: None,
        use_linear_projection: f.bool_or("use_linear_projection", false)?,
    };
    Ok(UNetSpec {
        in_channels: f.usize_or("in_channels", 4)?,
        out_channels: f.usize_or("out_channels", 4)?,
        config,
    })
}

/// What a UNet config holds beyond [`UNetSpec`]: the mid block's transformer depth and SDXL's addition
/// embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetExtras {
    /// The mid block's transformer depth: the last entry of `transformer_layers_per_block`.
    pub mid_transformer_layers: usize,
    /// SDXL's `addition_embed_type: "text_time"` with its sizes.
    pub text_time: Option<TextTime>,
}

/// Reads [`UNetExtras`] from a diffusers `UNet2DConditionModel` config that [`unet_spec`] accepts.
pub fn unet_extras(path: &Path) -> Result<UNetExtras, EngineError> {
    let value = read_json(path)?;
    let f = Fields {
        path,
        value: &value,
    };
    let n = f
        .get("block_out_channels")
        .and_then(Value::as_array)
        .map_or(1, Vec::len)
        .max(1);
    let layers = f.per_block("transformer_layers_per_block", n, 1)?;
    let text_time = match f.get("addition_embed_type") {
        Some(v) if v == &Value::from("text_time") => {
            let time_embed_dim = f.usize_or("addition_time_embed_dim", 0)?;
            let input_dim = f.usize_or("projection_class_embeddings_input_dim", 0)?;
            if time_embed_dim == 0 {
                return Err(f.bad("addition_time_embed_dim", "must be set for text_time"));
            }
            // The pooled width + 6 time ids (SDXL) or 5 (the refiner): checked against the text encoder later.
            if input_dim <= 5 * time_embed_dim {
                return Err(f.bad(
                    "projection_class_embeddings_input_dim",
                    "must exceed 5 × addition_time_embed_dim",
                ));
            }
            Some(TextTime {
                time_embed_dim,
                input_dim,
            })
        }
        _ => None,
    };
    Ok(UNetExtras {
        mid_transformer_layers: layers.last().copied().unwrap_or(1),
        text_time,
    })
}

/// A VAE's configuration, read from `vae/config.json`.
#[derive(Debug, Clone)]
pub struct VaeSpec {
    /// The candle configuration.
    pub config: AutoEncoderKLConfig,
    /// `scaling_factor` (0.18215 for SD 1.x/2.x).
    pub scaling_factor: f64,
    /// Image channels (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
}

/// Parses a diffusers `AutoencoderKL` config.
pub fn vae_spec(path: &Path) -> Result<VaeSpec, EngineError> {
    let value = read_json(path)?;
    let f = Fields {
        path,
        value: &value,
    };
    for key in ["shift_factor", "latents_mean", "latents_std"] {
        if f.get(key).is_some() {
            return Err(f.bad(key, "is set: not an SD 1.x/2.x/XL VAE"));
        }
    }
    f.require_default("act_fn", &Value::from("silu"))?;
    f.require_default("mid_block_add_attention", &Value::from(true))?;
    let block_out_channels = f
        .get("block_out_channels")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| f.bad("block_out_channels", "must be a non-empty list of integers"))?;
    let norm_num_groups = f.usize_or("norm_num_groups", 32)?;
    if norm_num_groups == 0 || block_out_channels.iter().any(|c| c % norm_num_groups != 0) {
        return Err(f.bad("norm_num_groups", "must divide every block's channels"));
    }
    let config = AutoEncoderKLConfig {
        block_out_channels,
        layers_per_block: f.usize_or("layers_per_block", 1)?,
        latent_channels: f.usize_or("latent_channels", 4)?,
        norm_num_groups,
        use_quant_conv: f.bool_or("use_quant_conv", true)?,
        use_post_quant_conv: f.bool_or("use_post_quant_conv", true)?,
    };
    Ok(VaeSpec {
        config,
        scaling_factor: f.f64_or("scaling_factor", 0.18215)?,
        in_channels: f.usize_or("in_channels", 3)?,
        out_channels: f.usize_or("out_channels", 3)?,
    })
}

/// Parses `scheduler/scheduler_config.json` into the training parameters the schedulers start from.
pub fn scheduler_config(path: &Path) -> Result<SchedulerConfig, EngineError> {
    let value = read_json(path)?;
    let f = Fields {
        path,
        value: &value,
    };
    if f.get("trained_betas").is_some() {
        return Err(f.bad("trained_betas", "is not supported"));
    }
    let defaults = SchedulerConfig::sd15();
    let beta_schedule = match f.str_or("beta_schedule", "scaled_linear")? {
        "scaled_linear" => BetaSchedule::ScaledLinear,
        "linear" => BetaSchedule::Linear,
        other => return Err(f.bad("beta_schedule", &format!("'{other}' is not supported"))),
    };
    let timestep_spacing = match f.get("timestep_spacing").and_then(Value::as_str) {
        None => None,
        Some("leading") => Some(TimestepSpacing::Leading),
        Some("linspace") => Some(TimestepSpacing::Linspace),
        Some("trailing") => Some(TimestepSpacing::Trailing),
        Some(other) => {
            return Err(f.bad("timestep_spacing", &format!("'{other}' is not supported")))
        }
    };
    let prediction_type = match f.str_or("prediction_type", "epsilon")? {
        "epsilon" => PredictionType::Epsilon,
        "v_prediction" => PredictionType::VPrediction,
        other => return Err(f.bad("prediction_type", &format!("'{other}' is not supported"))),
    };
    Ok(SchedulerConfig {
        num_train_timesteps: f.usize_or("num_train_timesteps", 1000)?,
        beta_start: f.f64_or("beta_start", defaults.beta_start)?,
        beta_end: f.f64_or("beta_end", defaults.beta_end)?,
        beta_schedule,
        steps_offset: f.usize_or("steps_offset", 0)?,
        timestep_spacing,
        prediction_type,
        clip_sample: f.bool_or("clip_sample", false)?,
        set_alpha_to_one: f.bool_or("set_alpha_to_one", false)?,
        use_karras_sigmas: false,
        solver_order: 2,
    })
}
