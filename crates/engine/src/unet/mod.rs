//! Our UNet (diffusers' `UNet2DConditionModel`) for SD 1.x, 2.x and XL.
//!
//! Vendored from candle-transformers 0.11.1, `src/models/stable_diffusion/unet_2d.rs` and
//! `src/models/stable_diffusion/embeddings.rs` (MIT OR Apache-2.0, Copyright the candle authors), with the block
//! files next to this one. Changes against candle:
//! - SDXL's addition embedding (`addition_embed_type: "text_time"`): the six time ids through `add_time_proj`
//!   (sinusoidal, `addition_time_embed_dim` channels each), flattened per sample, appended to the pooled text
//!   embedding and through `add_embedding`, then added to the time embedding, as diffusers does;
//! - the GEGLU gate of the transformer blocks is the exact (erf) GELU, as diffusers';
//! - the mid block's transformer depth is configured on its own (diffusers: the last entry of
//!   `transformer_layers_per_block`, whatever the last block's type);
//! - every block's resnets use the configured group count;
//! - no flash attention, attention slicing, ControlNet residuals or tracing spans;
//! - convolutions, group norms and linear layers come from `layers.rs`, the one place to swap faster ones in.
//!
//! The configuration is candle's [`UNet2DConditionModelConfig`] (what `crate::config` and `crate::ldm` build)
//! plus [`TextTime`].

mod attention;
mod blocks;
pub(crate) mod layers;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
pub use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};

use blocks::{BlockCommon, CrossAttnConfig, DownBlock, MidBlock, UpBlock};
use layers::{conv2d, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, Linear};

/// SDXL's addition embedding (`addition_embed_type: "text_time"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// `addition_time_embed_dim`: sinusoidal channels per time id (256 for SDXL).
    pub time_embed_dim: usize,
    /// `projection_class_embeddings_input_dim`: pooled text width + 6 × `time_embed_dim` (2816 for SDXL).
    pub input_dim: usize,
}

/// diffusers' `TimestepEmbedding` (silu).
#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vs: VarBuilder, channel: usize, time_embed_dim: usize) -> Result<Self> {
        let linear_1 = linear(channel, time_embed_dim, vs.pp("linear_1"))?;
        let linear_2 = linear(time_embed_dim, time_embed_dim, vs.pp("linear_2"))?;
        Ok(Self { linear_1, linear_2 })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = candle_nn::ops::silu(&self.linear_1.forward(xs)?)?;
        self.linear_2.forward(&xs)
    }
}

/// diffusers' `Timesteps`: sinusoidal embeddings of a 1-D tensor, computed in f32.
#[derive(Debug)]
struct Timesteps {
    num_channels: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
}

impl Module for Timesteps {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let half_dim = (self.num_channels / 2) as u32;
        let exponent =
            (Tensor::arange(0, half_dim, xs.device())?.to_dtype(DType::F32)? * -f64::ln(10000.))?;
        let exponent = (exponent / (f64::from(half_dim) - self.downscale_freq_shift))?;
        let emb = exponent.exp()?;
        // emb = timesteps[:, None].float() * emb[None, :]
        let emb = xs
            .to_dtype(DType::F32)?
            .unsqueeze(D::Minus1)?
            .broadcast_mul(&emb.unsqueeze(0)?)?;
        let (cos, sin) = (emb.cos()?, emb.sin()?);
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[&cos, &sin], D::Minus1)?
        } else {
            Tensor::cat(&[&sin, &cos], D::Minus1)?
        };
        if self.num_channels % 2 == 1 {
            emb.pad_with_zeros(D::Minus1, 0, 1)
        } else {
            Ok(emb)
        }
    }
}

#[derive(Debug)]
struct AddEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    config: TextTime,
}

/// The UNet.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<AddEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNet2DConditionModelConfig,
}

impl UNet2DConditionModel {
    /// Builds the model from diffusers-named weights. `mid_transformer_layers` is the mid block's transformer
    /// depth (`None`: the last block's, as candle); `text_time` is SDXL's addition embedding.
    pub fn new(
        vs: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &UNet2DConditionModelConfig,
        mid_transformer_layers: Option<usize>,
        text_time: Option<TextTime>,
    ) -> Result<Self> {
        let config = config.clone();
        let n_blocks = config.blocks.len();
        let (Some(first), Some(last)) = (config.blocks.first(), config.blocks.last()) else {
            candle_core::bail!("the UNet has no blocks");
        };
        let b_channels = first.out_channels;
        let bl_channels = last.out_channels;
        let time_embed_dim = b_channels * 4;
        let conv_cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = conv2d(in_channels, b_channels, 3, conv_cfg, vs.pp("conv_in"))?;
        let time_proj = Timesteps {
            num_channels: b_channels,
            flip_sin_to_cos: config.flip_sin_to_cos,
            downscale_freq_shift: config.freq_shift,
        };
        let time_embedding =
            TimestepEmbedding::new(vs.pp("time_embedding"), b_channels, time_embed_dim)?;
        let add_embedding = match text_time {
            None => None,
            Some(tt) => Some(AddEmbedding {
                time_proj: Timesteps {
                    num_channels: tt.time_embed_dim,
                    flip_sin_to_cos: config.flip_sin_to_cos,
                    downscale_freq_shift: config.freq_shift,
                },
                embedding: TimestepEmbedding::new(
                    vs.pp("add_embedding"),
                    tt.input_dim,
                    time_embed_dim,
                )?,
                config: tt,
            }),
        };
        let common = |num_layers| BlockCommon {
            num_layers,
            resnet_eps: config.norm_eps,
            resnet_groups: config.norm_num_groups,
            temb_channels: time_embed_dim,
        };
        let cross = |block: &BlockConfig| {
            block.use_cross_attn.map(|layers| CrossAttnConfig {
                heads: block.attention_head_dim,
                cross_attention_dim: config.cross_attention_dim,
                use_linear_projection: config.use_linear_projection,
                transformer_layers: layers,
            })
        };

        let vs_db = vs.pp("down_blocks");
        let down_blocks = (0..n_blocks)
            .map(|i| {
                let block = &config.blocks[i];
                let in_channels = if i > 0 {
                    config.blocks[i - 1].out_channels
                } else {
                    b_channels
                };
                DownBlock::new(
                    vs_db.pp(i.to_string()),
                    in_channels,
                    block.out_channels,
                    common(config.layers_per_block),
                    cross(block),
                    (i < n_blocks - 1).then_some(config.downsample_padding),
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let mid_cross = CrossAttnConfig {
            heads: last.attention_head_dim,
            cross_attention_dim: config.cross_attention_dim,
            use_linear_projection: config.use_linear_projection,
            transformer_layers: mid_transformer_layers
                .unwrap_or_else(|| last.use_cross_attn.unwrap_or(1)),
        };
        let mid_block = MidBlock::new(
            vs.pp("mid_block"),
            bl_channels,
            common(1),
            mid_cross,
            config.mid_block_scale_factor,
        )?;

        let vs_ub = vs.pp("up_blocks");
        let up_blocks = (0..n_blocks)
            .map(|i| {
                let block = &config.blocks[n_blocks - 1 - i];
                let prev_out_channels = if i > 0 {
                    config.blocks[n_blocks - i].out_channels
                } else {
                    bl_channels
                };
                let in_channels = {
                    let index = if i == n_blocks - 1 {
                        0
                    } else {
                        n_blocks - i - 2
                    };
                    config.blocks[index].out_channels
                };
                UpBlock::new(
                    vs_ub.pp(i.to_string()),
                    in_channels,
                    prev_out_channels,
                    block.out_channels,
                    common(config.layers_per_block + 1),
                    cross(block),
                    i < n_blocks - 1,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let conv_norm_out = group_norm(
            config.norm_num_groups,
            b_channels,
            config.norm_eps,
            vs.pp("conv_norm_out"),
        )?;
        let conv_out = conv2d(b_channels, out_channels, 3, conv_cfg, vs.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNet2DConditionModelConfig {
        &self.config
    }

    /// SDXL's addition embedding, when the model has one.
    pub fn text_time(&self) -> Option<TextTime> {
        self.add_embedding.as_ref().map(|a| a.config)
    }

    /// One evaluation of a model without an addition embedding.
    pub fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.forward_with_added(xs, timestep, encoder_hidden_states, None)
    }

    /// One evaluation; `added` is SDXL's `(text_embeds (B, pooled), time_ids (B, 6))`, required when the model
    /// has an addition embedding and refused otherwise.
    pub fn forward_with_added(
        &self,
        xs: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (bsize, _channels, height, width) = xs.dims4()?;
        let device = xs.device();
        let n_blocks = self.config.blocks.len();
        let num_upsamplers = n_blocks - 1;
        let default_overall_up_factor = 2usize.pow(num_upsamplers as u32);
        let forward_upsample_size =
            height % default_overall_up_factor != 0 || width % default_overall_up_factor != 0;
        // 0. center input if necessary
        let xs = if self.config.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        // 1. time
        let t = (Tensor::ones(bsize, DType::F32, device)? * timestep)?;
        let emb = self.time_proj.forward(&t)?.to_dtype(xs.dtype())?;
        let mut emb = self.time_embedding.forward(&emb)?;
        match (&self.add_embedding, added) {
            (None, None) => {}
            (Some(add), Some((text_embeds, time_ids))) => {
                let time_embeds = add
                    .time_proj
                    .forward(&time_ids.flatten_all()?)?
                    .reshape((text_embeds.dim(0)?, ()))?;
                let add_embeds = Tensor::cat(
                    &[&text_embeds.to_dtype(DType::F32)?, &time_embeds],
                    D::Minus1,
                )?
                .to_dtype(emb.dtype())?;
                emb = (emb + add.embedding.forward(&add_embeds)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet needs text_embeds and time_ids (SDXL)")
            }
            (None, Some(_)) => {
                candle_core::bail!(
                    "this UNet has no addition embedding for text_embeds and time_ids"
                )
            }
        }
        // 2. pre-process
        let xs = self.conv_in.forward(&xs)?;
        // 3. down
        let mut down_block_res_xs = vec![xs.clone()];
        let mut xs = xs;
        for down_block in self.down_blocks.iter() {
            let (next, res_xs) = down_block.forward(&xs, &emb, encoder_hidden_states)?;
            down_block_res_xs.extend(res_xs);
            xs = next;
        }
        // 4. mid
        let mut xs = self.mid_block.forward(&xs, &emb, encoder_hidden_states)?;
        // 5. up
        let mut upsample_size = None;
        for (i, up_block) in self.up_blocks.iter().enumerate() {
            let n_resnets = up_block.n_resnets();
            let res_xs = down_block_res_xs.split_off(down_block_res_xs.len() - n_resnets);
            if i < n_blocks - 1 && forward_upsample_size {
                if let Some(last) = down_block_res_xs.last() {
                    let (_, _, h, w) = last.dims4()?;
                    upsample_size = Some((h, w))
                }
            }
            xs = up_block.forward(&xs, &res_xs, &emb, upsample_size, encoder_hidden_states)?;
        }
        // 6. post-process
        let xs = self.conv_norm_out.forward(&xs)?;
        let xs = candle_nn::ops::silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}
