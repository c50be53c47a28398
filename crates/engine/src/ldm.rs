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
//! text encoder (`cond_stage_model.transformer.`, already in transformers' names: [`clip_from_ldm`]). Checked
//! against diffusers' `from_single_file` by `tools/reference/check_ldm_checkpoint.py`.

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use crate::clip::{Activation, ClipTextConfig};
use crate::config::{UNetSpec, VaeSpec};
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

/// Renames an LDM checkpoint's UNet tensors (under `model.diffusion_model.`) to diffusers names, drops every
/// other tensor, and works out the configuration from the shapes: block channels, layers per block, which
/// blocks have cross-attention (and how many transformer layers), the cross-attention width (from
/// `attn2.to_k`), conv or linear transformer projections. `attention_heads` is not recorded in a checkpoint
/// (8 for SD 1.x).
pub fn unet_from_ldm(
    files: &mut SafetensorsFiles,
    attention_heads: &[usize],
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
        let heads = attention_heads
            .get(index)
            .or(attention_heads.last())
            .copied()
            .unwrap_or(8);
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

/// Strips an SD 1.x checkpoint's `cond_stage_model.transformer.` prefix (dropping every other tensor) and works
/// out the transformers `CLIPTextConfig` from the shapes: vocabulary, width, layers, MLP width, positions; 64-wide
/// heads and quick-GELU, as in OpenAI's CLIP ViT-L/14 text tower.
pub fn clip_from_ldm(files: &mut SafetensorsFiles) -> Result<ClipTextConfig, EngineError> {
    let invalid = |what: &str| {
        EngineError::InvalidModel(format!("not an SD 1.x (OpenAI CLIP) checkpoint: {what}"))
    };
    let prefixed = files.contains(&format!(
        "{CLIP_PREFIX}text_model.embeddings.token_embedding.weight"
    ));
    let base = if prefixed {
        format!("{CLIP_PREFIX}text_model.")
    } else {
        CLIP_PREFIX.to_string()
    };
    let shape = |name: &str| files.shape(&format!("{base}{name}")).map(<[usize]>::to_vec);
    let token = shape("embeddings.token_embedding.weight")
        .ok_or_else(|| invalid("no cond_stage_model.transformer token embedding"))?;
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
    files.rename(|name| name.strip_prefix(CLIP_PREFIX).map(str::to_owned))?;
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
}
