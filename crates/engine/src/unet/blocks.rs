//! The UNet's ResNet blocks, down/up samplers and down, mid and up blocks.
//!
//! Vendored from candle-transformers 0.11.1, `src/models/stable_diffusion/resnet.rs` and
//! `src/models/stable_diffusion/unet_2d_blocks.rs` (MIT OR Apache-2.0, Copyright the candle authors).
//! Changes: the resnets of every block use the block's group count (candle's down and up blocks used 32 whatever
//! the configuration said); the VAE's blocks, tracing spans, flash attention and attention slicing are left out;
//! layers come from `layers.rs`.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::attention::{SpatialTransformer, SpatialTransformerConfig};
use super::layers::{conv2d, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, Linear};

/// Configuration for a ResNet block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetBlock2DConfig {
    /// The number of output channels, defaults to the number of input channels.
    pub out_channels: Option<usize>,
    pub temb_channels: Option<usize>,
    /// The number of groups to use in group normalization.
    pub groups: usize,
    /// The epsilon to be used in the group normalization operations.
    pub eps: f64,
    /// The final output is scaled by dividing by this value.
    pub output_scale_factor: f64,
}

#[derive(Debug)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    config: ResnetBlock2DConfig,
}

impl ResnetBlock2D {
    pub(crate) fn new(
        vs: VarBuilder,
        in_channels: usize,
        config: ResnetBlock2DConfig,
    ) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let conv_cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let norm1 = group_norm(config.groups, in_channels, config.eps, vs.pp("norm1"))?;
        let conv1 = conv2d(in_channels, out_channels, 3, conv_cfg, vs.pp("conv1"))?;
        let norm2 = group_norm(config.groups, out_channels, config.eps, vs.pp("norm2"))?;
        let conv2 = conv2d(out_channels, out_channels, 3, conv_cfg, vs.pp("conv2"))?;
        let conv_shortcut = if in_channels != out_channels {
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                Default::default(),
                vs.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let time_emb_proj = match config.temb_channels {
            None => None,
            Some(temb_channels) => {
                Some(linear(temb_channels, out_channels, vs.pp("time_emb_proj"))?)
            }
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            time_emb_proj,
            conv_shortcut,
            config,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut_xs = match &self.conv_shortcut {
            Some(conv_shortcut) => conv_shortcut.forward(xs)?,
            None => xs.clone(),
        };
        let xs = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let xs = match (temb, &self.time_emb_proj) {
            (Some(temb), Some(time_emb_proj)) => time_emb_proj
                .forward(&candle_nn::ops::silu(temb)?)?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&xs)?,
            _ => xs,
        };
        let xs = self.conv2.forward(&self.norm2.forward_silu(&xs)?)?;
        let sum = (shortcut_xs + xs)?;
        if self.config.output_scale_factor == 1.0 {
            Ok(sum)
        } else {
            sum / self.config.output_scale_factor
        }
    }
}

#[derive(Debug)]
struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    fn new(vs: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let config = Conv2dConfig {
            stride: 2,
            padding,
            ..Default::default()
        };
        let conv = conv2d(channels, channels, 3, config, vs.pp("conv"))?;
        Ok(Self { conv, padding })
    }
}

impl Module for Downsample2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let xs = xs
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

// This does not support the conv-transpose mode.
#[derive(Debug)]
struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    fn new(vs: VarBuilder, channels: usize) -> Result<Self> {
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = conv2d(channels, channels, 3, config, vs.pp("conv"))?;
        Ok(Self { conv })
    }

    fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let xs = match size {
            None => crate::ops::upsample_nearest2x(xs)?,
            Some((h, w)) => xs.upsample_nearest2d(h, w)?,
        };
        self.conv.forward(&xs)
    }
}

/// What every block shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCommon {
    /// ResNets in the block.
    pub num_layers: usize,
    pub resnet_eps: f64,
    pub resnet_groups: usize,
    pub temb_channels: usize,
}

/// The cross-attention part of a block: heads and transformer depth.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrossAttnConfig {
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub transformer_layers: usize,
}

fn transformers(
    vs: VarBuilder,
    channels: usize,
    common: BlockCommon,
    cross: Option<CrossAttnConfig>,
) -> Result<Vec<SpatialTransformer>> {
    let Some(cross) = cross else {
        return Ok(Vec::new());
    };
    let cfg = SpatialTransformerConfig {
        depth: cross.transformer_layers,
        context_dim: Some(cross.cross_attention_dim),
        num_groups: common.resnet_groups,
        use_linear_projection: cross.use_linear_projection,
    };
    let vs_attn = vs.pp("attentions");
    (0..common.num_layers)
        .map(|i| {
            SpatialTransformer::new(
                vs_attn.pp(i.to_string()),
                channels,
                cross.heads,
                channels / cross.heads,
                cfg,
            )
        })
        .collect()
}

/// `DownBlock2D` (no `attentions`) or `CrossAttnDownBlock2D`.
#[derive(Debug)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub(crate) fn new(
        vs: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        common: BlockCommon,
        cross: Option<CrossAttnConfig>,
        downsample_padding: Option<usize>,
    ) -> Result<Self> {
        let vs_resnets = vs.pp("resnets");
        let resnet_cfg = ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            temb_channels: Some(common.temb_channels),
            groups: common.resnet_groups,
            eps: common.resnet_eps,
            output_scale_factor: 1.0,
        };
        let resnets = (0..common.num_layers)
            .map(|i| {
                let in_channels = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(vs_resnets.pp(i.to_string()), in_channels, resnet_cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers(vs.clone(), out_channels, common, cross)?;
        let downsampler = match downsample_padding {
            Some(padding) => Some(Downsample2D::new(
                vs.pp("downsamplers").pp("0"),
                out_channels,
                padding,
            )?),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut output_states = vec![];
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, Some(encoder_hidden_states))?;
            }
            output_states.push(xs.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            xs = downsampler.forward(&xs)?;
            output_states.push(xs.clone());
        }
        Ok((xs, output_states))
    }
}

/// `UNetMidBlock2DCrossAttn` (one attention layer).
#[derive(Debug)]
pub(crate) struct MidBlock {
    resnet: ResnetBlock2D,
    attn_resnets: Vec<(SpatialTransformer, ResnetBlock2D)>,
}

impl MidBlock {
    pub(crate) fn new(
        vs: VarBuilder,
        channels: usize,
        common: BlockCommon,
        cross: CrossAttnConfig,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let vs_resnets = vs.pp("resnets");
        let vs_attns = vs.pp("attentions");
        let resnet_cfg = ResnetBlock2DConfig {
            out_channels: None,
            temb_channels: Some(common.temb_channels),
            groups: common.resnet_groups,
            eps: common.resnet_eps,
            output_scale_factor,
        };
        let resnet = ResnetBlock2D::new(vs_resnets.pp("0"), channels, resnet_cfg)?;
        let attn_cfg = SpatialTransformerConfig {
            depth: cross.transformer_layers,
            num_groups: common.resnet_groups,
            context_dim: Some(cross.cross_attention_dim),
            use_linear_projection: cross.use_linear_projection,
        };
        let attn_resnets = (0..common.num_layers)
            .map(|index| {
                let attn = SpatialTransformer::new(
                    vs_attns.pp(index.to_string()),
                    channels,
                    cross.heads,
                    channels / cross.heads,
                    attn_cfg,
                )?;
                let resnet = ResnetBlock2D::new(
                    vs_resnets.pp((index + 1).to_string()),
                    channels,
                    resnet_cfg,
                )?;
                Ok((attn, resnet))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            resnet,
            attn_resnets,
        })
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let mut xs = self.resnet.forward(xs, Some(temb))?;
        for (attn, resnet) in self.attn_resnets.iter() {
            xs = resnet.forward(&attn.forward(&xs, Some(encoder_hidden_states))?, Some(temb))?
        }
        Ok(xs)
    }
}

/// `UpBlock2D` (no `attentions`) or `CrossAttnUpBlock2D`.
#[derive(Debug)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: VarBuilder,
        in_channels: usize,
        prev_output_channels: usize,
        out_channels: usize,
        common: BlockCommon,
        cross: Option<CrossAttnConfig>,
        add_upsample: bool,
    ) -> Result<Self> {
        let vs_resnets = vs.pp("resnets");
        let resnet_cfg = ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            temb_channels: Some(common.temb_channels),
            groups: common.resnet_groups,
            eps: common.resnet_eps,
            output_scale_factor: 1.0,
        };
        let resnets = (0..common.num_layers)
            .map(|i| {
                let res_skip_channels = if i == common.num_layers - 1 {
                    in_channels
                } else {
                    out_channels
                };
                let resnet_in_channels = if i == 0 {
                    prev_output_channels
                } else {
                    out_channels
                };
                ResnetBlock2D::new(
                    vs_resnets.pp(i.to_string()),
                    resnet_in_channels + res_skip_channels,
                    resnet_cfg,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers(vs.clone(), out_channels, common, cross)?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(vs.pp("upsamplers").pp("0"), out_channels)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// The number of skip connections the block consumes.
    pub(crate) fn n_resnets(&self) -> usize {
        self.resnets.len()
    }

    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        res_xs: &[Tensor],
        temb: &Tensor,
        upsample_size: Option<(usize, usize)>,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (index, resnet) in self.resnets.iter().enumerate() {
            xs = Tensor::cat(&[&xs, &res_xs[res_xs.len() - index - 1]], 1)?;
            xs = xs.contiguous()?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(index) {
                xs = attn.forward(&xs, Some(encoder_hidden_states))?;
            }
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }
}
