//! The KL autoencoder (diffusers' `AutoencoderKL`) on the fast primitives of [`crate::ops`].
//!
//! Forked from candle-transformers 0.11.1, `models/stable_diffusion/vae.rs` (with the parts of `resnet.rs`,
//! `attention.rs` and `unet_2d_blocks.rs` it uses), by the candle authors, licensed MIT OR Apache-2.0. The
//! module structure, the tensor names and the configuration ([`AutoEncoderKLConfig`], reused from candle) are
//! unchanged; the layers are [`ops::GroupNorm`] (with SiLU fused), [`ops::Conv2d`], [`ops::SpatialAttention`]
//! and [`ops::upsample_nearest2x`], which fall back to candle's ops off the CPU.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
pub use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use crate::ops::{self, Conv2d, GroupNorm, SpatialAttention};

fn conv3x3(
    c_in: usize,
    c_out: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    ops::conv2d(c_in, c_out, 3, cfg, vb)
}

/// diffusers' `ResnetBlock2D` without the time embedding, output scale factor 1.
#[derive(Debug)]
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let conv_shortcut = if in_channels != out_channels {
            Some(ops::conv2d(
                in_channels,
                out_channels,
                1,
                Conv2dConfig::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: ops::group_norm(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: conv3x3(in_channels, out_channels, 1, 1, vb.pp("conv1"))?,
            norm2: ops::group_norm(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: conv3x3(out_channels, out_channels, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)? + h,
            None => xs + h,
        }
    }
}

/// diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, attention, resnet.
#[derive(Debug)]
struct MidBlock {
    resnet: ResnetBlock2D,
    attn_resnets: Vec<(SpatialAttention, ResnetBlock2D)>,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let eps = 1e-6;
        let resnet = ResnetBlock2D::new(vb.pp("resnets").pp("0"), channels, channels, groups, eps)?;
        let attn = SpatialAttention::new(vb.pp("attentions").pp("0"), channels, groups, eps, 1.0)?;
        let resnet1 =
            ResnetBlock2D::new(vb.pp("resnets").pp("1"), channels, channels, groups, eps)?;
        Ok(Self {
            resnet,
            attn_resnets: vec![(attn, resnet1)],
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.resnet.forward(xs)?;
        for (attn, resnet) in &self.attn_resnets {
            xs = resnet.forward(&attn.forward(&xs)?)?;
        }
        Ok(xs)
    }
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    /// Each block's resnets and its downsampling convolution (stride 2 after a (0, 1) zero pad).
    down_blocks: Vec<(Vec<ResnetBlock2D>, Option<Conv2d>)>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &AutoEncoderKLConfig,
    ) -> Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let conv_in = conv3x3(in_channels, channels[0], 1, 1, vb.pp("conv_in"))?;
        let mut down_blocks = vec![];
        for (index, &out_c) in channels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(index.to_string());
            let in_c = channels[index.saturating_sub(1)];
            let resnets = (0..config.layers_per_block)
                .map(|i| {
                    let c = if i == 0 { in_c } else { out_c };
                    ResnetBlock2D::new(vb.pp("resnets").pp(i.to_string()), c, out_c, groups, 1e-6)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if index + 1 < channels.len() {
                Some(conv3x3(
                    out_c,
                    out_c,
                    2,
                    0,
                    vb.pp("downsamplers").pp("0").pp("conv"),
                )?)
            } else {
                None
            };
            down_blocks.push((resnets, downsampler));
        }
        let last = channels.last().copied().unwrap_or_default();
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, groups)?,
            conv_norm_out: ops::group_norm(groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(last, 2 * out_channels, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for (resnets, downsampler) in &self.down_blocks {
            for resnet in resnets {
                xs = resnet.forward(&xs)?;
            }
            if let Some(conv) = downsampler {
                let padded = xs
                    .pad_with_zeros(D::Minus1, 0, 1)?
                    .pad_with_zeros(D::Minus2, 0, 1)?;
                xs = conv.forward(&padded)?;
            }
        }
        let xs = self.mid_block.forward(&xs)?;
        self.conv_out
            .forward(&self.conv_norm_out.forward_silu(&xs)?)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    /// Each block's resnets and its upsampling convolution (after a nearest 2× upsample).
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Conv2d>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &AutoEncoderKLConfig,
    ) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().copied().rev().collect();
        let groups = config.norm_num_groups;
        let last = reversed.first().copied().unwrap_or_default();
        let conv_in = conv3x3(in_channels, last, 1, 1, vb.pp("conv_in"))?;
        let mid_block = MidBlock::new(vb.pp("mid_block"), last, groups)?;
        let mut up_blocks = vec![];
        for (index, &out_c) in reversed.iter().enumerate() {
            let vb = vb.pp("up_blocks").pp(index.to_string());
            let in_c = reversed[index.saturating_sub(1)];
            let resnets = (0..config.layers_per_block + 1)
                .map(|i| {
                    let c = if i == 0 { in_c } else { out_c };
                    ResnetBlock2D::new(vb.pp("resnets").pp(i.to_string()), c, out_c, groups, 1e-6)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if index + 1 < reversed.len() {
                Some(conv3x3(
                    out_c,
                    out_c,
                    1,
                    1,
                    vb.pp("upsamplers").pp("0").pp("conv"),
                )?)
            } else {
                None
            };
            up_blocks.push((resnets, upsampler));
        }
        let first = config
            .block_out_channels
            .first()
            .copied()
            .unwrap_or_default();
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: ops::group_norm(groups, first, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(first, out_channels, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid_block.forward(&self.conv_in.forward(xs)?)?;
        for (resnets, upsampler) in &self.up_blocks {
            for resnet in resnets {
                xs = resnet.forward(&xs)?;
            }
            if let Some(conv) = upsampler {
                xs = conv.forward(&ops::upsample_nearest2x(&xs)?)?;
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward_silu(&xs)?)
    }
}

/// The latent distribution: its mean and standard deviation.
pub struct DiagonalGaussianDistribution {
    mean: Tensor,
    std: Tensor,
}

impl DiagonalGaussianDistribution {
    /// Splits `parameters` (mean and log-variance along dim 1).
    pub fn new(parameters: &Tensor) -> Result<Self> {
        let mut parameters = parameters.chunk(2, 1)?.into_iter();
        let (Some(mean), Some(logvar)) = (parameters.next(), parameters.next()) else {
            candle_core::bail!("the encoder's output has fewer than two channels")
        };
        let std = (logvar * 0.5)?.exp()?;
        Ok(Self { mean, std })
    }

    /// The mean.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// A sample: mean + std · N(0, 1).
    pub fn sample(&self) -> Result<Tensor> {
        let sample = self.mean.randn_like(0., 1.)?;
        &self.mean + &self.std * sample
    }
}

/// diffusers' `AutoencoderKL` (the SD 1.x/2.x/XL VAE).
#[derive(Debug)]
pub struct AutoEncoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    pub config: AutoEncoderKLConfig,
}

impl AutoEncoderKL {
    /// Loads the model from diffusers-named weights (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: AutoEncoderKLConfig,
    ) -> Result<Self> {
        let l = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), in_channels, l, &config)?;
        let decoder = Decoder::new(vb.pp("decoder"), l, out_channels, &config)?;
        let quant_conv = if config.use_quant_conv {
            Some(ops::conv2d(
                2 * l,
                2 * l,
                1,
                Conv2dConfig::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(ops::conv2d(
                l,
                l,
                1,
                Conv2dConfig::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config,
        })
    }

    /// The distribution in the latent space of images in [−1, 1], (b, 3, h, w).
    pub fn encode(&self, xs: &Tensor) -> Result<DiagonalGaussianDistribution> {
        let xs = self.encoder.forward(xs)?;
        let parameters = match &self.quant_conv {
            None => xs,
            Some(conv) => conv.forward(&xs)?,
        };
        DiagonalGaussianDistribution::new(&parameters)
    }

    /// Decodes (unscaled) latents to images in about [−1, 1].
    pub fn decode(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = match &self.post_quant_conv {
            None => xs.clone(),
            Some(conv) => conv.forward(xs)?,
        };
        self.decoder.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Our VAE against candle's on the same random weights (a small config with every block kind).
    #[test]
    fn matches_candle_vae() -> Result<()> {
        let config = AutoEncoderKLConfig {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            use_quant_conv: true,
            use_post_quant_conv: true,
        };
        // Build candle's model on a VarMap to get every name and shape, then fill it with random values.
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let _ = candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
            vb,
            3,
            3,
            config.clone(),
        )?;
        let mut tensors = HashMap::new();
        for (i, (name, var)) in varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("lock".into()))?
            .iter()
            .enumerate()
        {
            let shape = var.dims().to_vec();
            let n = shape.iter().product();
            let scale = if name.ends_with("bias") { 0.1 } else { 0.2 };
            let data: Vec<f32> = crate::noise::randn(100 + i as u64, n)
                .iter()
                .map(|v| v * scale)
                .collect();
            tensors.insert(name.clone(), Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        let cpu = Device::Cpu;
        if let (Some(w), Some(b)) = (
            tensors.get("quant_conv.weight"),
            tensors.get("quant_conv.bias"),
        ) {
            let w = Tensor::cat(
                &[
                    w.narrow(0, 0, 4)?,
                    Tensor::zeros((4, 8, 1, 1), DType::F32, &cpu)?,
                ],
                0,
            )?;
            let b = Tensor::cat(&[b.narrow(0, 0, 4)?, Tensor::full(-1e4f32, 4, &cpu)?], 0)?;
            tensors.insert("quant_conv.weight".into(), w);
            tensors.insert("quant_conv.bias".into(), b);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let theirs = candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
            vb.clone(),
            3,
            3,
            config.clone(),
        )?;
        let ours = AutoEncoderKL::new(vb, 3, 3, config)?;
        let z = Tensor::from_vec(
            crate::noise::randn(7, 4 * 6 * 5),
            (1, 4, 6, 5),
            &Device::Cpu,
        )?;
        let (a, e) = (ours.decode(&z)?, theirs.decode(&z)?);
        let diff = (a - &e)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = e.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-5 * scale, "decode: {diff} vs {scale}");
        // σ = 0 (the log-variance rows of quant_conv zeroed, bias −10⁴) makes candle's sample its mean.
        let x = Tensor::from_vec(
            crate::noise::randn(8, 3 * 12 * 10),
            (1, 3, 12, 10),
            &Device::Cpu,
        )?;
        let (a, e) = (ours.encode(&x)?, theirs.encode(&x)?.sample()?);
        let diff = (a.mean() - &e)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = e.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-5 * scale, "encode: {diff} vs {scale}");
        Ok(())
    }
}
