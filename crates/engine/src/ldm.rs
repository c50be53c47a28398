//! Single-file (original LDM / CompVis) VAE weights: the tensor names of `AutoencoderKL` in a checkpoint
//! (`encoder.down.0.block.0.norm1.weight`, `encoder.mid.attn_1.q.weight`, `decoder.up.3.upsample.conv.weight`,
//! ...) and their diffusers names, both ways, and the configuration the weights' shapes imply.
//!
//! The decoder's `up.N` blocks run in reverse order compared with diffusers' `up_blocks.N`; the mid-block
//! attention's q/k/v/proj_out are 1×1 convolutions in LDM files and linear layers in diffusers (candle reads
//! either shape).
//!
//! Whole SD 1.x checkpoints add the UNet (`model.diffusion_model.input_blocks.*`, `middle_block.*`,
//! `output_blocks.*`, `time_embed.*`, `out.*`: [`unet_key_to_diffusers`], [`unet_from_ldm`]) and the OpenAI CLIP
//! text encoder (`cond_stage_model.transformer.`, already in transformers' names: [`clip_from_ldm`]). SD 2.x
//! checkpoints have the same UNet layout (linear transformer projections, 64-wide attention heads) and the
//! OpenCLIP ViT-H text encoder (`cond_stage_model.model.`, with fused q/k/v projections: [`clip_from_open_clip`]);
//! [`checkpoint_family`] tells the families apart. SDXL checkpoints (Stability's SGM layout) add the UNet's
//! `label_emb` (diffusers' `add_embedding`: [`unet_extras_from_ldm`]) and put their two text encoders under
//! `conditioner.embedders.0.transformer.` (OpenAI CLIP ViT-L: [`sdxl_clip_from_ldm`]) and
//! `conditioner.embedders.1.model.` (OpenCLIP ViT-bigG with its `text_projection`: [`sdxl_clip_from_open_clip`]).
//! SDXL refiner checkpoints have the same UNet layout (attention on the middle levels only, cross-attention width
//! 1280, `label_emb` sized for 5 time ids) and one text encoder, OpenCLIP ViT-bigG under
//! `conditioner.embedders.0.model.` ([`sdxl_refiner_clip_from_open_clip`]).
//! Checked against diffusers' `from_single_file` by `tools/reference/check_ldm_checkpoint.py`.

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use crate::clip::{Activation, ClipTextConfig};
use crate::config::{UNetExtras, UNetSpec, VaeSpec};
use crate::unet::TextTime;
use crate::weights::SafetensorsFiles;
use crate::EngineError;

/// The prefix a whole SD checkpoint puts before its VAE's tensors.
const FULL_CHECKPOINT_PREFIX: &str = "first_stage_model.";

fn resnet_to_diffusers(layer: &str) -> Option<&'static str> {
    Some(match layer {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    })
}

fn resnet_to_ldm(layer: &str) -> Option<&'static str> {
    Some(match layer {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "conv_shortcut" => "nin_shortcut",
        _ => return None,
    })
}

const ATTENTION: [(&str, &str); 5] = [
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

/// The diffusers name of an LDM VAE tensor (`first_stage_model.` stripped), or `None` for a tensor that is not
/// part of the autoencoder. `up_blocks` is the number of decoder up blocks (the length of
/// `block_out_channels`).
pub fn vae_key_to_diffusers(name: &str, up_blocks: usize) -> Option<String> {
    let name = name.strip_prefix(FULL_CHECKPOINT_PREFIX).unwrap_or(name);
    let (side, rest) = name.split_once('.')?;
    match side {
        "quant_conv" | "post_quant_conv" => return Some(name.to_owned()),
        "encoder" | "decoder" => {}
        _ => return None,
    }
    let parts: Vec<&str> = rest.split('.').collect();
    let reversed =
        |i: &str| -> Option<usize> { up_blocks.checked_sub(1)?.checked_sub(i.parse().ok()?) };
    let mapped = match parts.as_slice() {
        [layer @ ("conv_in" | "conv_out"), p] => format!("{layer}.{p}"),
        ["norm_out", p] => format!("conv_norm_out.{p}"),
        ["down", i, "block", j, layer, p] => {
            format!(
                "down_blocks.{i}.resnets.{j}.{}.{p}",
                resnet_to_diffusers(layer)?
            )
        }
        ["down", i, "downsample", "conv", p] => format!("down_blocks.{i}.downsamplers.0.conv.{p}"),
        ["up", i, "block", j, layer, p] => format!(
            "up_blocks.{}.resnets.{j}.{}.{p}",
            reversed(i)?,
            resnet_to_diffusers(layer)?
        ),
        ["up", i, "upsample", "conv", p] => {
            format!("up_blocks.{}.upsamplers.0.conv.{p}", reversed(i)?)
        }
        ["mid", block, layer, p] if block.starts_with("block_") => {
            let index = match *block {
                "block_1" => 0,
                "block_2" => 1,
                _ => return None,
            };
            format!(
                "mid_block.resnets.{index}.{}.{p}",
                resnet_to_diffusers(layer)?
            )
        }
        ["mid", "attn_1", layer, p] => {
            let (_, to) = ATTENTION.iter().find(|(from, _)| from == layer)?;
            format!("mid_block.attentions.0.{to}.{p}")
        }
        _ => return None,
    };
    Some(format!("{side}.{mapped}"))
}

/// The LDM name of a diffusers VAE tensor (the inverse of [`vae_key_to_diffusers`]; for writing test files).
pub fn vae_key_to_ldm(name: &str, up_blocks: usize) -> Option<String> {
    let (side, rest) = name.split_once('.')?;
    match side {
        "quant_conv" | "post_quant_conv" => return Some(name.to_owned()),
        "encoder" | "decoder" => {}
        _ => return None,
    }
    let parts: Vec<&str> = rest.split('.').collect();
    let reversed =
        |i: &str| -> Option<usize> { up_blocks.checked_sub(1)?.checked_sub(i.parse().ok()?) };
    let mapped = match parts.as_slice() {
        [layer @ ("conv_in" | "conv_out"), p] => format!("{layer}.{p}"),
        ["conv_norm_out", p] => format!("norm_out.{p}"),
        ["down_blocks", i, "resnets", j, layer, p] => {
            format!("down.{i}.block.{j}.{}.{p}", resnet_to_ldm(layer)?)
        }
        ["down_blocks", i, "downsamplers", "0", "conv", p] => {
            format!("down.{i}.downsample.conv.{p}")
        }
        ["up_blocks", i, "resnets", j, layer, p] => {
            format!(
                "up.{}.block.{j}.{}.{p}",
                reversed(i)?,
                resnet_to_ldm(layer)?
            )
        }
        ["up_blocks", i, "upsamplers", "0", "conv", p] => {
            format!("up.{}.upsample.conv.{p}", reversed(i)?)
        }
        ["mid_block", "resnets", index, layer, p] => {
            let block = match *index {
                "0" => "block_1",
                "1" => "block_2",
                _ => return None,
            };
            format!("mid.{block}.{}.{p}", resnet_to_ldm(layer)?)
        }
        ["mid_block", "attentions", "0", layer, p] => {
            let (to, _) = ATTENTION.iter().find(|(_, from)| from == layer)?;
            format!("mid.attn_1.{to}.{p}")
        }
        ["mid_block", "attentions", "0", "to_out", "0", p] => format!("mid.attn_1.proj_out.{p}"),
        _ => return None,
    };
    Some(format!("{side}.{mapped}"))
}

/// Renames an LDM VAE file's tensors to diffusers names and works out the configuration from their shapes
/// (`norm_num_groups` is 32, as in every SD 1.x/2.x/XL VAE). `scaling_factor` comes from the model's family
/// (0.18215 for SD 1.x/2.x, 0.13025 for SDXL): a checkpoint does not record it.
pub fn vae_from_ldm(
    files: &mut SafetensorsFiles,
    scaling_factor: f64,
) -> Result<VaeSpec, EngineError> {
    let invalid =
        |what: &str| EngineError::InvalidModel(format!("not an LDM VAE checkpoint: {what}"));
    let full = files.contains(&format!("{FULL_CHECKPOINT_PREFIX}encoder.conv_in.weight"));
    let prefix = if full { FULL_CHECKPOINT_PREFIX } else { "" };
    let shape = |files: &SafetensorsFiles, name: &str| -> Result<Vec<usize>, EngineError> {
        files
            .shape(&format!("{prefix}{name}"))
            .map(<[usize]>::to_vec)
            .ok_or_else(|| invalid(&format!("no tensor '{name}'")))
    };
    let mut block_out_channels = Vec::new();
    while let Ok(s) = shape(
        files,
        &format!(
            "encoder.down.{}.block.0.conv1.weight",
            block_out_channels.len()
        ),
    ) {
        block_out_channels.push(*s.first().ok_or_else(|| invalid("a 0-d conv1 weight"))?);
    }
    if block_out_channels.is_empty() {
        return Err(invalid("no encoder.down.0.block.0.conv1.weight"));
    }
    let mut layers_per_block = 0;
    while shape(
        files,
        &format!("encoder.down.0.block.{layers_per_block}.conv1.weight"),
    )
    .is_ok()
    {
        layers_per_block += 1;
    }
    let conv_in = shape(files, "encoder.conv_in.weight")?;
    let conv_out = shape(files, "decoder.conv_out.weight")?;
    let latent = shape(files, "decoder.conv_in.weight")?;
    let (Some(&in_channels), Some(&out_channels), Some(&latent_channels)) =
        (conv_in.get(1), conv_out.first(), latent.get(1))
    else {
        return Err(invalid("conv weights that are not 4-d"));
    };
    let use_quant_conv = files.contains(&format!("{prefix}quant_conv.weight"));
    let use_post_quant_conv = files.contains(&format!("{prefix}post_quant_conv.weight"));
    let up_blocks = block_out_channels.len();
    files.rename(|name| {
        if full && !name.starts_with(FULL_CHECKPOINT_PREFIX) {
            return None;
        }
        vae_key_to_diffusers(name, up_blocks)
    })?;
    Ok(VaeSpec {
        config: AutoEncoderKLConfig {
            block_out_channels,
            layers_per_block,
            latent_channels,
            norm_num_groups: 32,
            use_quant_conv,
            use_post_quant_conv,
        },
        scaling_factor,
        in_channels,
        out_channels,
    })
}

/// The prefix a whole SD checkpoint puts before its UNet's tensors.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// The prefix an SD 1.x checkpoint puts before its (transformers-named) CLIP text encoder's tensors.
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

const UNET_RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

fn unet_resnet_to_diffusers(rest: &str) -> Option<String> {
    UNET_RESNET.iter().find_map(|(from, to)| {
        let p = rest.strip_prefix(from)?.strip_prefix('.')?;
        Some(format!("{to}.{p}"))
    })
}

fn unet_resnet_to_ldm(rest: &str) -> Option<String> {
    UNET_RESNET.iter().find_map(|(to, from)| {
        let p = rest.strip_prefix(from)?.strip_prefix('.')?;
        Some(format!("{to}.{p}"))
    })
}

/// The diffusers name of an LDM UNet tensor (`model.diffusion_model.` stripped), or `None` for a tensor that is
/// not part of the UNet. `layers_per_block` is the number of resnets per down block (2 in SD 1.x/2.x/XL).
/// The spatial transformers' inner names (`norm`, `proj_in`, `transformer_blocks.N.attn1.to_q`, ...) are the
/// same in both layouts.
pub fn unet_key_to_diffusers(name: &str, layers_per_block: usize) -> Option<String> {
    let name = name.strip_prefix(UNET_PREFIX).unwrap_or(name);
    let stride = layers_per_block + 1;
    let (head, rest) = name.split_once('.')?;
    let fixed = |map: &[(&str, &str)]| {
        map.iter().find_map(|(from, to)| {
            let p = rest.strip_prefix(from)?.strip_prefix('.')?;
            (!p.contains('.')).then(|| format!("{to}.{p}"))
        })
    };
    match head {
        "time_embed" => {
            return fixed(&[
                ("0", "time_embedding.linear_1"),
                ("2", "time_embedding.linear_2"),
            ])
        }
        "out" => return fixed(&[("0", "conv_norm_out"), ("2", "conv_out")]),
        "label_emb" => {
            return fixed(&[
                ("0.0", "add_embedding.linear_1"),
                ("0.2", "add_embedding.linear_2"),
            ])
        }
        _ => {}
    }
    let (index, rest) = rest.split_once('.')?;
    let (layer, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    match (head, layer) {
        ("input_blocks", "0") if index == 0 => {
            (!rest.contains('.')).then(|| format!("conv_in.{rest}"))
        }
        ("input_blocks", _) => {
            let k = index.checked_sub(1)?;
            let (block, j) = (k / stride, k % stride);
            match layer {
                "0" if j == layers_per_block => {
                    let p = rest.strip_prefix("op.")?;
                    Some(format!("down_blocks.{block}.downsamplers.0.conv.{p}"))
                }
                "0" => Some(format!(
                    "down_blocks.{block}.resnets.{j}.{}",
                    unet_resnet_to_diffusers(rest)?
                )),
                "1" if j < layers_per_block => {
                    Some(format!("down_blocks.{block}.attentions.{j}.{rest}"))
                }
                _ => None,
            }
        }
        ("middle_block", _) => {
            // `middle_block.N.<name>`: `index` is the layer, `layer` the first part of its name.
            let full = format!("{layer}.{rest}");
            match index {
                0 | 2 => Some(format!(
                    "mid_block.resnets.{}.{}",
                    index / 2,
                    unet_resnet_to_diffusers(&full)?
                )),
                1 => Some(format!("mid_block.attentions.0.{full}")),
                _ => None,
            }
        }
        ("output_blocks", _) => {
            let (block, j) = (index / stride, index % stride);
            match (layer, rest.strip_prefix("conv.")) {
                ("0", _) => Some(format!(
                    "up_blocks.{block}.resnets.{j}.{}",
                    unet_resnet_to_diffusers(rest)?
                )),
                ("1" | "2", Some(p)) if j == layers_per_block => {
                    Some(format!("up_blocks.{block}.upsamplers.0.conv.{p}"))
                }
                ("1", None) => Some(format!("up_blocks.{block}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The LDM name of a diffusers UNet tensor (the inverse of [`unet_key_to_diffusers`], without the
/// `model.diffusion_model.` prefix; for writing test files). `up_attention[i]` says whether up block `i` has
/// attentions (its upsampler is then layer 2 of the last output block, else layer 1).
pub fn unet_key_to_ldm(
    name: &str,
    layers_per_block: usize,
    up_attention: &[bool],
) -> Option<String> {
    let stride = layers_per_block + 1;
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    let rest_from = |n: usize| -> String { parts[n..].join(".") };
    Some(match parts.as_slice() {
        ["time_embedding", "linear_1", p] => format!("time_embed.0.{p}"),
        ["time_embedding", "linear_2", p] => format!("time_embed.2.{p}"),
        ["add_embedding", "linear_1", p] => format!("label_emb.0.0.{p}"),
        ["add_embedding", "linear_2", p] => format!("label_emb.0.2.{p}"),
        ["conv_norm_out", p] => format!("out.0.{p}"),
        ["conv_out", p] => format!("out.2.{p}"),
        ["conv_in", p] => format!("input_blocks.0.0.{p}"),
        ["down_blocks", i, "downsamplers", "0", rest] => {
            let i: usize = i.parse().ok()?;
            let p = rest.strip_prefix("conv.")?;
            format!(
                "input_blocks.{}.0.op.{p}",
                1 + i * stride + layers_per_block
            )
        }
        ["down_blocks", i, kind @ ("resnets" | "attentions"), j, _] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            let k = 1 + i * stride + j;
            if *kind == "resnets" {
                format!("input_blocks.{k}.0.{}", unet_resnet_to_ldm(&rest_from(4))?)
            } else {
                format!("input_blocks.{k}.1.{}", rest_from(4))
            }
        }
        ["mid_block", "resnets", j, _, _] => {
            let j: usize = j.parse().ok()?;
            format!(
                "middle_block.{}.{}",
                j * 2,
                unet_resnet_to_ldm(&rest_from(3))?
            )
        }
        ["mid_block", "attentions", "0", _, _] | ["mid_block", "attentions", "0", _] => {
            format!("middle_block.1.{}", rest_from(3))
        }
        ["up_blocks", i, "upsamplers", "0", rest] => {
            let i: usize = i.parse().ok()?;
            let p = rest.strip_prefix("conv.")?;
            let layer = if *up_attention.get(i)? { 2 } else { 1 };
            format!(
                "output_blocks.{}.{layer}.conv.{p}",
                i * stride + layers_per_block
            )
        }
        ["up_blocks", i, kind @ ("resnets" | "attentions"), j, _] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            let k = i * stride + j;
            if *kind == "resnets" {
                format!("output_blocks.{k}.0.{}", unet_resnet_to_ldm(&rest_from(4))?)
            } else {
                format!("output_blocks.{k}.1.{}", rest_from(4))
            }
        }
        _ => return None,
    })
}

/// How many attention heads each UNet block has: a checkpoint does not record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionHeads {
    /// A fixed count per block (the last entry repeats for further blocks): SD 1.x has 8 everywhere.
    PerBlock(Vec<usize>),
    /// Heads of this width: a block of `c` channels has `c / width` heads (SD 2.x: 64, so 5, 10, 20, 20).
    Width(usize),
}

/// Renames an LDM checkpoint's UNet tensors (under `model.diffusion_model.`) to diffusers names, drops every
/// other tensor, and works out the configuration from the shapes: block channels, layers per block, which
/// blocks have cross-attention (and how many transformer layers), the cross-attention width (from
/// `attn2.to_k`), conv or linear transformer projections. `attention_heads` is not recorded in a checkpoint
/// (8 per block for SD 1.x, 64-wide heads for SD 2.x).
pub fn unet_from_ldm(
    files: &mut SafetensorsFiles,
    attention_heads: &AttentionHeads,
) -> Result<UNetSpec, EngineError> {
    let invalid =
        |what: &str| EngineError::InvalidModel(format!("not an LDM UNet checkpoint: {what}"));
    let shape = |name: &str| {
        files
            .shape(&format!("{UNET_PREFIX}{name}"))
            .map(<[usize]>::to_vec)
    };
    let has = |name: &str| files.contains(&format!("{UNET_PREFIX}{name}"));
    let conv_in =
        shape("input_blocks.0.0.weight").ok_or_else(|| invalid("no input_blocks.0.0.weight"))?;
    let conv_out = shape("out.2.weight").ok_or_else(|| invalid("no out.2.weight"))?;
    let (Some(&in_channels), Some(&out_channels)) = (conv_in.get(1), conv_out.first()) else {
        return Err(invalid("conv weights that are not 4-d"));
    };
    // Input blocks after conv_in: resnets (with or without attention) until the first downsampler.
    let mut layers_per_block = 0;
    while has(&format!(
        "input_blocks.{}.0.in_layers.0.weight",
        layers_per_block + 1
    )) {
        layers_per_block += 1;
    }
    if layers_per_block == 0 {
        return Err(invalid("no input_blocks.1.0 resnet"));
    }
    let stride = layers_per_block + 1;
    let mut blocks = Vec::new();
    let mut cross_attention_dim = None;
    let mut use_linear_projection = false;
    loop {
        let first = 1 + blocks.len() * stride;
        let Some(out) = shape(&format!("input_blocks.{first}.0.out_layers.3.weight")) else {
            break;
        };
        let out_channels = *out.first().ok_or_else(|| invalid("a 0-d resnet weight"))?;
        let attention = format!("input_blocks.{first}.1");
        let use_cross_attn = if has(&format!("{attention}.proj_in.weight")) {
            let mut layers = 0;
            while has(&format!(
                "{attention}.transformer_blocks.{layers}.attn2.to_k.weight"
            )) {
                layers += 1;
            }
            let to_k = shape(&format!(
                "{attention}.transformer_blocks.0.attn2.to_k.weight"
            ))
            .ok_or_else(|| invalid("a spatial transformer without attn2.to_k"))?;
            cross_attention_dim = to_k.get(1).copied();
            use_linear_projection =
                shape(&format!("{attention}.proj_in.weight")).is_some_and(|s| s.len() == 2);
            Some(layers)
        } else {
            None
        };
        let index = blocks.len();
        let heads = match attention_heads {
            AttentionHeads::PerBlock(heads) => {
                heads.get(index).or(heads.last()).copied().unwrap_or(8)
            }
            AttentionHeads::Width(width) if *width > 0 && out_channels % width == 0 => {
                out_channels / width
            }
            AttentionHeads::Width(_) => 0,
        };
        if heads == 0 || out_channels % heads != 0 {
            return Err(invalid(
                "attention heads that do not divide the block's channels",
            ));
        }
        blocks.push(BlockConfig {
            out_channels,
            use_cross_attn,
            attention_head_dim: heads,
        });
        if !has(&format!(
            "input_blocks.{}.0.op.weight",
            first + layers_per_block
        )) {
            break;
        }
    }
    if blocks.is_empty() {
        return Err(invalid("no down blocks"));
    }
    let cross_attention_dim =
        cross_attention_dim.ok_or_else(|| invalid("no cross-attention (attn2.to_k)"))?;
    if blocks.iter().any(|b| b.out_channels % 32 != 0) {
        return Err(invalid("block channels that are not multiples of 32"));
    }
    files.rename(|name| {
        let rest = name.strip_prefix(UNET_PREFIX)?;
        unet_key_to_diffusers(rest, layers_per_block)
    })?;
    Ok(UNetSpec {
        in_channels,
        out_channels,
        config: UNet2DConditionModelConfig {
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            blocks,
            layers_per_block,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection,
        },
    })
}

/// What an LDM checkpoint's UNet (under `model.diffusion_model.`, before [`unet_from_ldm`] renames it) holds
/// beyond [`UNetSpec`]: the mid block's transformer depth (from its `transformer_blocks`) and SDXL's addition
/// embedding (`label_emb.0.0`/`label_emb.0.2`, diffusers' `add_embedding`: `projection_class_embeddings_input_dim`
/// from `label_emb.0.0.weight`'s shape, `time_embed_dim` from the caller, [`SDXL_ADDITION_TIME_EMBED_DIM`]).
pub fn unet_extras_from_ldm(
    files: &SafetensorsFiles,
    time_embed_dim: usize,
) -> Result<UNetExtras, EngineError> {
    let has = |name: &str| files.contains(&format!("{UNET_PREFIX}{name}"));
    let mut mid_transformer_layers = 0;
    while has(&format!(
        "middle_block.1.transformer_blocks.{mid_transformer_layers}.attn2.to_k.weight"
    )) {
        mid_transformer_layers += 1;
    }
    let text_time = match files.shape(&format!("{UNET_PREFIX}label_emb.0.0.weight")) {
        None => None,
        Some(&[_, input_dim]) if time_embed_dim > 0 && input_dim > 5 * time_embed_dim => {
            Some(TextTime {
                time_embed_dim,
                input_dim,
            })
        }
        Some(s) => {
            return Err(EngineError::InvalidModel(format!(
                "not an SDXL UNet checkpoint: label_emb.0.0.weight has shape {s:?} (expected (_, pooled + 6 × \
                 {time_embed_dim}), the refiner's pooled + 5 × {time_embed_dim})"
            )))
        }
    };
    Ok(UNetExtras {
        mid_transformer_layers: mid_transformer_layers.max(1),
        text_time,
    })
}

/// Strips an SD 1.x checkpoint's `cond_stage_model.transformer.` prefix (dropping every other tensor) and works
/// out the transformers `CLIPTextConfig` from the shapes: vocabulary, width, layers, MLP width, positions; 64-wide
/// heads and quick-GELU, as in OpenAI's CLIP ViT-L/14 text tower.
pub fn clip_from_ldm(files: &mut SafetensorsFiles) -> Result<ClipTextConfig, EngineError> {
    clip_from_ldm_at(files, CLIP_PREFIX, "an SD 1.x (OpenAI CLIP)")
}

/// [`clip_from_ldm`] for an SDXL checkpoint's first text encoder (OpenAI CLIP ViT-L/14 under
/// `conditioner.embedders.0.transformer.`, transformers' names): all its layers are kept.
pub fn sdxl_clip_from_ldm(files: &mut SafetensorsFiles) -> Result<ClipTextConfig, EngineError> {
    clip_from_ldm_at(files, SDXL_CLIP_PREFIX, "an SDXL (OpenAI CLIP)")
}

fn clip_from_ldm_at(
    files: &mut SafetensorsFiles,
    prefix: &str,
    family: &str,
) -> Result<ClipTextConfig, EngineError> {
    let invalid =
        |what: &str| EngineError::InvalidModel(format!("not {family} checkpoint: {what}"));
    let prefixed = files.contains(&format!(
        "{prefix}text_model.embeddings.token_embedding.weight"
    ));
    let base = if prefixed {
        format!("{prefix}text_model.")
    } else {
        prefix.to_string()
    };
    let shape = |name: &str| files.shape(&format!("{base}{name}")).map(<[usize]>::to_vec);
    let token = shape("embeddings.token_embedding.weight")
        .ok_or_else(|| invalid(&format!("no {prefix} token embedding")))?;
    let positions = shape("embeddings.position_embedding.weight")
        .ok_or_else(|| invalid("no position embedding"))?;
    let fc1 =
        shape("encoder.layers.0.mlp.fc1.weight").ok_or_else(|| invalid("no encoder layer 0"))?;
    let (&[vocab_size, hidden_size], Some(&max_position_embeddings), Some(&intermediate_size)) =
        (token.as_slice(), positions.first(), fc1.first())
    else {
        return Err(invalid("a token embedding that is not 2-d"));
    };
    let mut num_hidden_layers = 0;
    while shape(&format!(
        "encoder.layers.{num_hidden_layers}.mlp.fc1.weight"
    ))
    .is_some()
    {
        num_hidden_layers += 1;
    }
    if hidden_size % 64 != 0 {
        return Err(invalid("a width that is not a multiple of 64"));
    }
    files.rename(|name| name.strip_prefix(prefix).map(str::to_owned))?;
    Ok(ClipTextConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: hidden_size / 64,
        max_position_embeddings,
        hidden_act: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
        projection_dim: None,
        eos_token_id: Some(2),
    })
}

/// The prefix an SD 2.x checkpoint puts before its OpenCLIP text encoder's tensors.
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// The prefix an SDXL checkpoint puts before its text encoders' tensors.
pub const SDXL_CONDITIONER_PREFIX: &str = "conditioner.embedders.";

/// The prefix an SDXL checkpoint puts before its first (OpenAI CLIP ViT-L, transformers-named) text encoder.
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";

/// The prefix an SDXL checkpoint puts before its second (OpenCLIP ViT-bigG) text encoder.
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// The prefix an SDXL refiner checkpoint puts before its only text encoder (OpenCLIP ViT-bigG, diffusers'
/// `text_encoder_2`).
pub const SDXL_REFINER_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.0.model.";

/// SDXL's `addition_time_embed_dim` (a checkpoint does not record it; diffusers' conversion assumes 256).
pub const SDXL_ADDITION_TIME_EMBED_DIM: usize = 256;

/// The model family of a whole single-file checkpoint, from its text encoder's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFamily {
    /// SD 1.x: OpenAI CLIP ViT-L/14 under `cond_stage_model.transformer.`.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 under `cond_stage_model.model.`.
    Sd2,
    /// SDXL: two text encoders under `conditioner.embedders.` (OpenAI CLIP ViT-L and OpenCLIP ViT-bigG).
    Sdxl,
    /// The SDXL refiner: one text encoder, OpenCLIP ViT-bigG under `conditioner.embedders.0.model.`.
    SdxlRefiner,
}

impl CheckpointFamily {
    /// The family's name in messages ("SD 1.x", "SD 2.x", "SDXL", "SDXL refiner").
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFamily::Sd1 => "SD 1.x",
            CheckpointFamily::Sd2 => "SD 2.x",
            CheckpointFamily::Sdxl => "SDXL",
            CheckpointFamily::SdxlRefiner => "SDXL refiner",
        }
    }

    /// Whether this is SDXL, base or refiner (Stability's SGM layout, the UNet's addition embedding).
    pub fn is_sdxl(self) -> bool {
        matches!(self, CheckpointFamily::Sdxl | CheckpointFamily::SdxlRefiner)
    }
}

/// Which family a whole LDM checkpoint belongs to, from where its text encoder lives
/// (`conditioner.embedders.0.model.`: the SDXL refiner, other `conditioner.embedders.`: SDXL,
/// `cond_stage_model.model.`: SD 2.x, `cond_stage_model.transformer.`: SD 1.x); a file with none of them (a bare
/// UNet, a VAE, a diffusers weights file) is not a whole checkpoint. The UNet's cross-attention width must then
/// agree with it (768 for SD 1.x, 1024 for SD 2.x).
pub fn checkpoint_family(files: &SafetensorsFiles) -> Result<CheckpointFamily, EngineError> {
    let has = |prefix: &str| files.names().any(|n| n.starts_with(prefix));
    let family = if has(SDXL_REFINER_OPEN_CLIP_PREFIX) {
        CheckpointFamily::SdxlRefiner
    } else if has(SDXL_CONDITIONER_PREFIX) {
        CheckpointFamily::Sdxl
    } else if has(OPEN_CLIP_PREFIX) {
        CheckpointFamily::Sd2
    } else if has(CLIP_PREFIX) {
        CheckpointFamily::Sd1
    } else {
        return Err(EngineError::InvalidModel(format!(
            "not a whole Stable Diffusion checkpoint: no text encoder ({CLIP_PREFIX}, {OPEN_CLIP_PREFIX} or \
             {SDXL_CONDITIONER_PREFIX} tensors)"
        )));
    };
    let expected = match family {
        CheckpointFamily::Sd1 => 768,
        CheckpointFamily::Sd2 => 1024,
        CheckpointFamily::Sdxl | CheckpointFamily::SdxlRefiner => return Ok(family),
    };
    let width = files
        .shape(&format!(
            "{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        ))
        .and_then(|s| s.last().copied());
    match width {
        Some(w) if w != expected => Err(EngineError::InvalidModel(format!(
            "an {} text encoder with a UNet of cross-attention width {w} (expected {expected})",
            family.name()
        ))),
        _ => Ok(family),
    }
}

/// The transformers name of an OpenCLIP text-encoder tensor (`cond_stage_model.model.` stripped or not), or
/// `None` for a tensor that has none: the fused `attn.in_proj_weight`/`in_proj_bias` (split by
/// [`clip_from_open_clip`]), `text_projection`, `logit_scale` and anything outside the text encoder.
pub fn open_clip_key_to_diffusers(name: &str) -> Option<String> {
    let name = name.strip_prefix(OPEN_CLIP_PREFIX).unwrap_or(name);
    Some(match name {
        "token_embedding.weight" => "text_model.embeddings.token_embedding.weight".into(),
        "positional_embedding" => "text_model.embeddings.position_embedding.weight".into(),
        "ln_final.weight" => "text_model.final_layer_norm.weight".into(),
        "ln_final.bias" => "text_model.final_layer_norm.bias".into(),
        _ => {
            let rest = name.strip_prefix("transformer.resblocks.")?;
            let (index, layer) = rest.split_once('.')?;
            let index: usize = index.parse().ok()?;
            let (module, p) = layer.rsplit_once('.')?;
            let module = match module {
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "attn.out_proj" => "self_attn.out_proj",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                _ => return None,
            };
            if !matches!(p, "weight" | "bias") {
                return None;
            }
            format!("text_model.encoder.layers.{index}.{module}.{p}")
        }
    })
}

/// The OpenCLIP name (without `cond_stage_model.model.`) of a transformers text-encoder tensor: the inverse of
/// [`open_clip_key_to_diffusers`] (for writing test files; q/k/v are fused by the caller).
pub fn open_clip_key_to_ldm(name: &str) -> Option<String> {
    let name = name.strip_prefix("text_model.").unwrap_or(name);
    Some(match name {
        "embeddings.token_embedding.weight" => "token_embedding.weight".into(),
        "embeddings.position_embedding.weight" => "positional_embedding".into(),
        "final_layer_norm.weight" => "ln_final.weight".into(),
        "final_layer_norm.bias" => "ln_final.bias".into(),
        _ => {
            let rest = name.strip_prefix("encoder.layers.")?;
            let (index, layer) = rest.split_once('.')?;
            let index: usize = index.parse().ok()?;
            let (module, p) = layer.rsplit_once('.')?;
            let module = match module {
                "layer_norm1" => "ln_1",
                "layer_norm2" => "ln_2",
                "self_attn.out_proj" => "attn.out_proj",
                "mlp.fc1" => "mlp.c_fc",
                "mlp.fc2" => "mlp.c_proj",
                _ => return None,
            };
            format!("transformer.resblocks.{index}.{module}.{p}")
        }
    })
}

/// Maps an SD 2.x checkpoint's OpenCLIP text encoder (`cond_stage_model.model.`) to a transformers
/// `CLIPTextModel` (dropping every other tensor) and works out its configuration from the shapes. The fused
/// `attn.in_proj_weight`/`in_proj_bias` are split into q, k and v (views of the file's bytes). SD 2.x
/// conditions on the penultimate layer, so diffusers' converted encoder has 23 of ViT-H's 24 layers and ignores
/// the last one (and `text_projection`): `max_layers` keeps at most that many (`None`: all). GELU, 64-wide
/// heads, as in OpenCLIP.
pub fn clip_from_open_clip(
    files: &mut SafetensorsFiles,
    max_layers: Option<usize>,
) -> Result<ClipTextConfig, EngineError> {
    open_clip_at(files, OPEN_CLIP_PREFIX, max_layers, None)
}

/// [`clip_from_open_clip`] for an SDXL checkpoint's second text encoder (OpenCLIP ViT-bigG under
/// `conditioner.embedders.1.model.`) as a transformers `CLIPTextModelWithProjection`, as diffusers converts it:
/// all its layers, and its `text_projection` (OpenCLIP's (width, projection) matrix, applied as `x @ P`)
/// transposed into the `text_projection.weight` of a linear layer (read now, held in memory: width ×
/// projection values). `projection_dim` is the projection's width.
pub fn sdxl_clip_from_open_clip(
    files: &mut SafetensorsFiles,
) -> Result<ClipTextConfig, EngineError> {
    open_clip_at(files, SDXL_OPEN_CLIP_PREFIX, None, Some("an SDXL"))
}

/// [`sdxl_clip_from_open_clip`] for an SDXL refiner checkpoint's only text encoder (OpenCLIP ViT-bigG under
/// `conditioner.embedders.0.model.`), diffusers' `text_encoder_2`: the same mapping, another prefix.
pub fn sdxl_refiner_clip_from_open_clip(
    files: &mut SafetensorsFiles,
) -> Result<ClipTextConfig, EngineError> {
    open_clip_at(
        files,
        SDXL_REFINER_OPEN_CLIP_PREFIX,
        None,
        Some("an SDXL refiner"),
    )
}

/// The OpenCLIP ViT-bigG text encoder (diffusers' `text_encoder_2`) of an SDXL or SDXL refiner checkpoint
/// ([`sdxl_clip_from_open_clip`], [`sdxl_refiner_clip_from_open_clip`]).
pub fn sdxl_open_clip_of(
    files: &mut SafetensorsFiles,
    family: CheckpointFamily,
) -> Result<ClipTextConfig, EngineError> {
    match family {
        CheckpointFamily::SdxlRefiner => sdxl_refiner_clip_from_open_clip(files),
        _ => sdxl_clip_from_open_clip(files),
    }
}

/// The OpenCLIP text encoder under `prefix`; `projection` (the family's name in messages) keeps its
/// `text_projection`, as SDXL's second encoder; `None`: SD 2.x's, without it.
fn open_clip_at(
    files: &mut SafetensorsFiles,
    prefix: &str,
    max_layers: Option<usize>,
    projection: Option<&str>,
) -> Result<ClipTextConfig, EngineError> {
    let family = projection.unwrap_or("an SD 2.x");
    let invalid = |what: &str| {
        EngineError::InvalidModel(format!("not {family} (OpenCLIP) checkpoint: {what}"))
    };
    let shape = |name: &str| {
        files
            .shape(&format!("{prefix}{name}"))
            .map(<[usize]>::to_vec)
    };
    let token = shape("token_embedding.weight")
        .ok_or_else(|| invalid(&format!("no {prefix}token_embedding.weight")))?;
    let positions =
        shape("positional_embedding").ok_or_else(|| invalid("no positional_embedding"))?;
    let fc = shape("transformer.resblocks.0.mlp.c_fc.weight")
        .ok_or_else(|| invalid("no transformer.resblocks.0"))?;
    let (&[vocab_size, hidden_size], Some(&max_position_embeddings), Some(&intermediate_size)) =
        (token.as_slice(), positions.first(), fc.first())
    else {
        return Err(invalid("a token embedding that is not 2-d"));
    };
    if hidden_size == 0 || hidden_size % 64 != 0 {
        return Err(invalid("a width that is not a multiple of 64"));
    }
    let mut blocks = 0;
    while shape(&format!("transformer.resblocks.{blocks}.mlp.c_fc.weight")).is_some() {
        blocks += 1;
    }
    let layers = max_layers.map_or(blocks, |m| blocks.min(m));
    if layers == 0 {
        return Err(invalid("no transformer layers"));
    }
    for i in 0..layers {
        for (p, want) in [
            ("weight", vec![3 * hidden_size, hidden_size]),
            ("bias", vec![3 * hidden_size]),
        ] {
            let name = format!("transformer.resblocks.{i}.attn.in_proj_{p}");
            match shape(&name) {
                Some(s) if s == want => {}
                Some(s) => return Err(invalid(&format!("{name} has shape {s:?}"))),
                None => return Err(invalid(&format!("no {name}"))),
            }
        }
    }
    let projection = if projection.is_some() {
        let name = format!("{prefix}text_projection");
        match shape("text_projection").as_deref() {
            Some(&[w, p]) if w == hidden_size && p > 0 => {
                let t = files.load(&name, candle_core::DType::F32, &candle_core::Device::Cpu)?;
                Some((p, t.t()?.contiguous()?))
            }
            Some(s) => return Err(invalid(&format!("text_projection has shape {s:?}"))),
            None => return Err(invalid(&format!("no {name}"))),
        }
    } else {
        None
    };
    let fused = |i: usize, p: &str| format!("text_model.encoder.layers.{i}.self_attn.in_proj.{p}");
    files.rename(|name| {
        let rest = name.strip_prefix(prefix)?;
        if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
            let (index, layer) = block.split_once('.')?;
            let index: usize = index.parse().ok()?;
            if index >= layers {
                return None;
            }
            match layer {
                "attn.in_proj_weight" => return Some(fused(index, "weight")),
                "attn.in_proj_bias" => return Some(fused(index, "bias")),
                _ => {}
            }
        }
        open_clip_key_to_diffusers(rest)
    })?;
    for i in 0..layers {
        for p in ["weight", "bias"] {
            let parts: Vec<String> = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|q| format!("text_model.encoder.layers.{i}.self_attn.{q}.{p}"))
                .collect();
            files.split_rows(&fused(i, p), &parts)?;
        }
    }
    let projection_dim = match projection {
        Some((p, t)) => {
            files.set_override("text_projection.weight", t);
            Some(p)
        }
        None => None,
    };
    Ok(ClipTextConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers: layers,
        num_attention_heads: hidden_size / 64,
        max_position_embeddings,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-5,
        projection_dim,
        eos_token_id: Some(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
            (
                "encoder.down.0.block.1.norm1.weight",
                "encoder.down_blocks.0.resnets.1.norm1.weight",
            ),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "encoder.mid.block_2.conv2.weight",
                "encoder.mid_block.resnets.1.conv2.weight",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "decoder.mid.attn_1.norm.bias",
                "decoder.mid_block.attentions.0.group_norm.bias",
            ),
            (
                "decoder.mid.attn_1.proj_out.bias",
                "decoder.mid_block.attentions.0.to_out.0.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            ("quant_conv.weight", "quant_conv.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
        ];
        for (ldm, diffusers) in pairs {
            assert_eq!(
                vae_key_to_diffusers(ldm, 4).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
            assert_eq!(
                vae_key_to_ldm(diffusers, 4).as_deref(),
                Some(ldm),
                "{diffusers}"
            );
        }
        assert_eq!(
            vae_key_to_diffusers("first_stage_model.decoder.up.0.block.0.conv1.weight", 4)
                .as_deref(),
            Some("decoder.up_blocks.3.resnets.0.conv1.weight")
        );
        for other in [
            "model_ema.decay",
            "loss.logvar",
            "decoder.up.4.block.0.conv1.weight",
            "encoder.mid.attn_1.x.weight",
        ] {
            assert_eq!(vae_key_to_diffusers(other, 4), None, "{other}");
        }
    }

    #[test]
    fn unet_names_map_both_ways() {
        // SD 1.5's layout: 2 layers per block; up block 0 has no attentions.
        let up_attention = [false, true, true, true];
        let pairs = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.0.emb_layers.1.bias",
                "down_blocks.0.resnets.1.time_emb_proj.bias",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.0.out_layers.0.bias",
                "mid_block.resnets.0.norm2.bias",
            ),
            (
                "middle_block.1.proj_in.weight",
                "mid_block.attentions.0.proj_in.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
                "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
            ),
            (
                "middle_block.2.in_layers.2.weight",
                "mid_block.resnets.1.conv1.weight",
            ),
            (
                "output_blocks.0.0.in_layers.0.weight",
                "up_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.4.1.norm.weight",
                "up_blocks.1.attentions.1.norm.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.11.1.proj_out.weight",
                "up_blocks.3.attentions.2.proj_out.weight",
            ),
        ];
        for (ldm, diffusers) in pairs {
            assert_eq!(
                unet_key_to_diffusers(ldm, 2).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
            assert_eq!(
                unet_key_to_diffusers(&format!("{UNET_PREFIX}{ldm}"), 2).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
            assert_eq!(
                unet_key_to_ldm(diffusers, 2, &up_attention).as_deref(),
                Some(ldm),
                "{diffusers}"
            );
        }
        for other in [
            "model_ema.decay",
            "input_blocks.3.1.norm.weight",
            "output_blocks.1.2.conv.weight",
            "middle_block.3.in_layers.0.weight",
        ] {
            assert_eq!(unet_key_to_diffusers(other, 2), None, "{other}");
        }
    }

    fn write(
        dir: &std::path::Path,
        name: &str,
        tensors: &[(&str, Vec<usize>)],
    ) -> SafetensorsFiles {
        let path = dir.join(name);
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
            .iter()
            .map(|(n, shape)| {
                let len = shape.iter().product();
                (
                    n.to_string(),
                    shape.clone(),
                    (0..len).map(|i| i as f32).collect(),
                )
            })
            .collect();
        crate::weights::write_f32_safetensors(&path, &tensors).expect("write");
        SafetensorsFiles::open(&[path]).expect("open")
    }

    #[test]
    fn families_from_text_encoder_prefixes_and_widths() {
        let dir = tempfile::tempdir().expect("dir");
        let to_k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
        type Case<'a> = (
            &'a [(&'a str, Vec<usize>)],
            Result<CheckpointFamily, &'a str>,
        );
        let cases: [Case<'_>; 7] = [
            (
                &[
                    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", vec![4]),
                    (to_k, vec![4, 768]),
                ],
                Ok(CheckpointFamily::Sd1),
            ),
            (
                &[
                    ("cond_stage_model.model.ln_final.weight", vec![4]),
                    (to_k, vec![4, 1024]),
                ],
                Ok(CheckpointFamily::Sd2),
            ),
            (
                &[("cond_stage_model.model.ln_final.weight", vec![4])],
                Ok(CheckpointFamily::Sd2),
            ),
            (
                &[
                    ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", vec![4]),
                    ("conditioner.embedders.1.model.ln_final.weight", vec![4]),
                ],
                Ok(CheckpointFamily::Sdxl),
            ),
            (
                &[
                    ("conditioner.embedders.0.model.ln_final.weight", vec![4]),
                    ("conditioner.embedders.0.model.text_projection", vec![4, 4]),
                    (to_k, vec![4, 1280]),
                ],
                Ok(CheckpointFamily::SdxlRefiner),
            ),
            (
                &[
                    ("cond_stage_model.model.ln_final.weight", vec![4]),
                    (to_k, vec![4, 768]),
                ],
                Err("an SD 2.x text encoder with a UNet of cross-attention width 768 (expected 1024)"),
            ),
            (
                &[("model.diffusion_model.out.2.weight", vec![4])],
                Err("not a whole Stable Diffusion checkpoint"),
            ),
        ];
        for (i, (tensors, want)) in cases.into_iter().enumerate() {
            let files = write(dir.path(), &format!("{i}.safetensors"), tensors);
            match (checkpoint_family(&files), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {i}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "case {i}: {e}"),
                (got, want) => panic!("case {i}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn open_clip_names_map_both_ways() {
        let pairs = [
            (
                "token_embedding.weight",
                "text_model.embeddings.token_embedding.weight",
            ),
            (
                "positional_embedding",
                "text_model.embeddings.position_embedding.weight",
            ),
            ("ln_final.bias", "text_model.final_layer_norm.bias"),
            (
                "transformer.resblocks.0.ln_1.weight",
                "text_model.encoder.layers.0.layer_norm1.weight",
            ),
            (
                "transformer.resblocks.22.ln_2.bias",
                "text_model.encoder.layers.22.layer_norm2.bias",
            ),
            (
                "transformer.resblocks.3.attn.out_proj.weight",
                "text_model.encoder.layers.3.self_attn.out_proj.weight",
            ),
            (
                "transformer.resblocks.3.mlp.c_fc.bias",
                "text_model.encoder.layers.3.mlp.fc1.bias",
            ),
            (
                "transformer.resblocks.3.mlp.c_proj.weight",
                "text_model.encoder.layers.3.mlp.fc2.weight",
            ),
        ];
        for (ldm, diffusers) in pairs {
            assert_eq!(
                open_clip_key_to_diffusers(&format!("{OPEN_CLIP_PREFIX}{ldm}")).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
            assert_eq!(
                open_clip_key_to_ldm(diffusers).as_deref(),
                Some(ldm),
                "{diffusers}"
            );
        }
        for other in [
            "text_projection",
            "logit_scale",
            "transformer.resblocks.0.attn.in_proj_weight",
            "transformer.resblocks.x.ln_1.weight",
            "visual.proj",
        ] {
            assert_eq!(open_clip_key_to_diffusers(other), None, "{other}");
        }
    }

    #[test]
    fn open_clip_layers_split_qkv_and_drop_the_last() {
        let dir = tempfile::tempdir().expect("dir");
        let h = 64;
        let p = |name: &str| format!("{OPEN_CLIP_PREFIX}{name}");
        let mut tensors = vec![
            (p("token_embedding.weight"), vec![10, h]),
            (p("positional_embedding"), vec![77, h]),
            (p("ln_final.weight"), vec![h]),
            (p("ln_final.bias"), vec![h]),
            (p("text_projection"), vec![h, h]),
            (p("logit_scale"), vec![]),
            ("model.diffusion_model.out.2.weight".to_string(), vec![4]),
        ];
        for i in 0..3 {
            let r = |n: &str| p(&format!("transformer.resblocks.{i}.{n}"));
            tensors.extend([
                (r("ln_1.weight"), vec![h]),
                (r("ln_1.bias"), vec![h]),
                (r("attn.in_proj_weight"), vec![3 * h, h]),
                (r("attn.in_proj_bias"), vec![3 * h]),
                (r("attn.out_proj.weight"), vec![h, h]),
                (r("attn.out_proj.bias"), vec![h]),
                (r("ln_2.weight"), vec![h]),
                (r("ln_2.bias"), vec![h]),
                (r("mlp.c_fc.weight"), vec![4 * h, h]),
                (r("mlp.c_fc.bias"), vec![4 * h]),
                (r("mlp.c_proj.weight"), vec![h, 4 * h]),
                (r("mlp.c_proj.bias"), vec![h]),
            ]);
        }
        let refs: Vec<(&str, Vec<usize>)> = tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect();
        let mut files = write(dir.path(), "clip.safetensors", &refs);
        let config = clip_from_open_clip(&mut files, Some(2)).expect("config");
        assert_eq!(
            (
                config.vocab_size,
                config.hidden_size,
                config.intermediate_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                config.max_position_embeddings,
                config.hidden_act
            ),
            (10, h, 4 * h, 2, 1, 77, Activation::Gelu)
        );
        let mut names: Vec<&str> = files.names().collect();
        names.sort_unstable();
        assert_eq!(names.len(), 4 + 2 * 16, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("text_model.")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("layers.2.")), "{names:?}");
        // q, k and v are the fused tensor's thirds (its values count up from 0).
        let cpu = candle_core::Device::Cpu;
        for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let w = files
                .load(
                    &format!("text_model.encoder.layers.1.self_attn.{proj}.weight"),
                    candle_core::DType::F32,
                    &cpu,
                )
                .expect("weight");
            assert_eq!(w.dims(), &[h, h]);
            let first = w
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values")[0];
            assert_eq!(first, (k * h * h) as f32, "{proj}");
            let b = files
                .load(
                    &format!("text_model.encoder.layers.0.self_attn.{proj}.bias"),
                    candle_core::DType::F32,
                    &cpu,
                )
                .and_then(|t| Ok(t.to_vec1::<f32>()?))
                .expect("bias");
            assert_eq!(b[0], (k * h) as f32, "{proj}");
        }
        // Without a limit every layer is kept.
        let mut files = write(dir.path(), "clip2.safetensors", &refs);
        assert_eq!(
            clip_from_open_clip(&mut files, None)
                .expect("config")
                .num_hidden_layers,
            3
        );
    }
}
