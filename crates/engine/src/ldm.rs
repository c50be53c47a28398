//! Single-file (original LDM / CompVis) VAE weights: the tensor names of `AutoencoderKL` in a checkpoint
//! (`encoder.down.0.block.0.norm1.weight`, `encoder.mid.attn_1.q.weight`, `decoder.up.3.upsample.conv.weight`,
//! ...) and their diffusers names, both ways, and the configuration the weights' shapes imply.
//!
//! The decoder's `up.N` blocks run in reverse order compared with diffusers' `up_blocks.N`; the mid-block
//! attention's q/k/v/proj_out are 1×1 convolutions in LDM files and linear layers in diffusers (candle reads
//! either shape).

use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use crate::config::VaeSpec;
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
}
