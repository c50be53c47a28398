//! The SD 1.x / 2.x pipeline on candle: prompt encoding (§10.2), the denoising loop (§10.3), VAE decode (§10.4)
//! and encode (§10.5), with InvokeAI's semantics rather than diffusers' pipelines'.
//!
//! Latents cross this API as candle [`Tensor`]s of shape (1, 4, H/8, W/8) in f32 on the CPU;
//! [`latents_from_vec`] and [`latents_to_vec`] convert from and to the plain row-major buffers the server
//! stores. Conditioning tensors are (1, 77·k, dim).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use crate::clip::ClipTextTransformer;
use crate::config::{scheduler_config, unet_spec, vae_spec, UNetSpec, VaeSpec};
use crate::lora::{apply_loras, Lora, LoraSelection, LoraTarget};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::schedulers::{by_name, slice_timesteps, PredictionType, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::weights::{component_files, SafetensorsFiles};
use crate::EngineError;

/// What the progress sink hears after every denoising step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// Steps done so far in this call (1-based).
    pub step: usize,
    /// Steps this call runs.
    pub total_steps: usize,
    /// The timestep just taken.
    pub timestep: f64,
    /// The latents after the step (for previews).
    pub latents: &'a Tensor,
}

/// Receives progress after every step.
pub trait ProgressSink {
    /// Called after each denoising step.
    fn on_step(&mut self, progress: &StepProgress<'_>);
}

/// A sink that ignores progress.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn on_step(&mut self, _progress: &StepProgress<'_>) {}
}

impl<F: FnMut(&StepProgress<'_>)> ProgressSink for F {
    fn on_step(&mut self, progress: &StepProgress<'_>) {
        self(progress)
    }
}

/// The guidance scale: one value, or one per step of the full schedule (InvokeAI's `cfg_scale` list).
#[derive(Debug, Clone, PartialEq)]
pub enum CfgScale {
    /// The same scale at every step.
    Scalar(f64),
    /// A scale per step; index = step number within this call.
    PerStep(Vec<f64>),
}

/// One `denoise_latents` call (§10.3).
#[derive(Debug, Clone)]
pub struct DenoiseRequest {
    /// Positive conditioning (1, 77·k, dim).
    pub positive: Tensor,
    /// Negative conditioning (1, 77·k', dim).
    pub negative: Tensor,
    /// Initial noise (1, 4, h, w); text-to-image needs it, image-to-image usually has it.
    pub noise: Option<Tensor>,
    /// Start latents (image-to-image); zeros shaped like the noise when absent.
    pub latents: Option<Tensor>,
    /// Scheduler steps for the full schedule.
    pub steps: usize,
    /// Guidance scale.
    pub cfg_scale: CfgScale,
    /// CFG rescale multiplier in [0, 1): 0 disables it.
    pub cfg_rescale_multiplier: f64,
    /// Scheduler name (§10.6).
    pub scheduler: String,
    /// Fraction of the schedule to skip (image-to-image: 1 − strength).
    pub denoising_start: f64,
    /// Fraction of the schedule where this call stops.
    pub denoising_end: f64,
    /// The seed (the noise's seed); stochastic schedulers draw from `seed ^ 0xFFFFFFFF`.
    pub seed: u32,
}

/// What a single-file checkpoint does not record, by model family ([`Sd::load_checkpoint`]).
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Attention heads per UNet block (the last entry repeats for further blocks).
    pub attention_heads: Vec<usize>,
    /// The family's standard scheduler configuration (with its prediction type).
    pub scheduler: SchedulerConfig,
    /// The VAE's latent scaling factor.
    pub vae_scaling_factor: f64,
}

impl CheckpointConfig {
    /// SD 1.x: 8 heads in every block, `SchedulerConfig::sd15()` (ε-prediction), scaling factor 0.18215.
    pub fn sd1() -> Self {
        Self {
            attention_heads: vec![8],
            scheduler: SchedulerConfig::sd15(),
            vae_scaling_factor: 0.18215,
        }
    }
}

/// A loaded SD 1.x / 2.x model: tokenizer, text encoder, UNet, VAE and scheduler configuration.
pub struct Sd {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextTransformer,
    unet: UNet2DConditionModel,
    unet_spec: UNetSpec,
    vae: Vae,
    scheduler_config: SchedulerConfig,
    device: Device,
    dtype: DType,
}

fn check_dir(dir: &Path) -> Result<(), EngineError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(EngineError::InvalidModel(format!(
            "{}: not a folder",
            dir.display()
        )))
    }
}

/// Loads a diffusers UNet folder.
pub fn load_unet(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(UNet2DConditionModel, UNetSpec), EngineError> {
    load_unet_with_loras(dir, dtype, device, &[])
}

/// Loads a diffusers UNet folder with LoRAs merged into its weights ([`crate::lora`]).
pub fn load_unet_with_loras(
    dir: &Path,
    dtype: DType,
    device: &Device,
    loras: &[(&Lora, f32)],
) -> Result<(UNet2DConditionModel, UNetSpec), EngineError> {
    check_dir(dir)?;
    let spec = unet_spec(&dir.join("config.json"))?;
    let mut files = SafetensorsFiles::open(&component_files(
        dir,
        &["diffusion_pytorch_model", "model"],
    )?)?;
    apply_loras(&mut files, LoraTarget::Unet, loras)?;
    let vb = files.into_var_builder(dtype, device);
    let unet = UNet2DConditionModel::new(
        vb,
        spec.in_channels,
        spec.out_channels,
        false,
        spec.config.clone(),
    )
    .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", dir.display())))?;
    Ok((unet, spec))
}

/// Loads a diffusers VAE folder. The encoder's `quant_conv` is rewritten so that candle's distribution
/// "sample" is exactly the mean (§10.5: we encode to the mean, deterministically): the log-variance rows get
/// zero weights and a −10⁴ bias, so σ = exp(−5000) = 0.
pub fn load_vae(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(AutoEncoderKL, VaeSpec), EngineError> {
    check_dir(dir)?;
    let spec = vae_spec(&dir.join("config.json"))?;
    let files = SafetensorsFiles::open(&component_files(
        dir,
        &["diffusion_pytorch_model", "model"],
    )?)?;
    build_vae(files, spec, dtype, device, dir)
}

/// Builds the VAE from diffusers-named weights, with the `quant_conv` rewrite of [`load_vae`].
fn build_vae(
    mut files: SafetensorsFiles,
    mut spec: VaeSpec,
    dtype: DType,
    device: &Device,
    dir: &Path,
) -> Result<(AutoEncoderKL, VaeSpec), EngineError> {
    let l = spec.config.latent_channels;
    let cpu = Device::Cpu;
    let (weight, bias) = if spec.config.use_quant_conv {
        let w = files.load("quant_conv.weight", DType::F32, &cpu)?;
        let b = files.load("quant_conv.bias", DType::F32, &cpu)?;
        if w.dims() != [2 * l, 2 * l, 1, 1] || b.dims() != [2 * l] {
            return Err(EngineError::InvalidModel(format!(
                "{}: quant_conv has shape {:?}",
                dir.display(),
                w.dims()
            )));
        }
        (w.narrow(0, 0, l)?, b.narrow(0, 0, l)?)
    } else {
        // No quant_conv: an identity on the mean channels.
        let mut eye = vec![0f32; l * 2 * l];
        for i in 0..l {
            eye[i * 2 * l + i] = 1.0;
        }
        (
            Tensor::from_vec(eye, (l, 2 * l, 1, 1), &cpu)?,
            Tensor::zeros(l, DType::F32, &cpu)?,
        )
    };
    let weight = Tensor::cat(
        &[weight, Tensor::zeros((l, 2 * l, 1, 1), DType::F32, &cpu)?],
        0,
    )?;
    let bias = Tensor::cat(&[bias, Tensor::full(-1e4f32, l, &cpu)?], 0)?;
    files.set_override("quant_conv.weight", weight);
    files.set_override("quant_conv.bias", bias);
    spec.config.use_quant_conv = true;
    let vb = files.into_var_builder(dtype, device);
    let vae = AutoEncoderKL::new(vb, spec.in_channels, spec.out_channels, spec.config.clone())
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", dir.display())))?;
    Ok((vae, spec))
}

/// A loaded VAE (`AutoencoderKL`): the model, its configuration (latent channels, scaling factor) and where it
/// runs. [`Sd`] holds one for its `vae/` folder; a separate VAE model loads the same way from its own folder.
pub struct Vae {
    model: AutoEncoderKL,
    spec: VaeSpec,
    device: Device,
    dtype: DType,
}

impl Vae {
    /// Loads a diffusers `AutoencoderKL` folder (`config.json` + `diffusion_pytorch_model.safetensors`), as
    /// [`load_vae`] does.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        let _span = tracing::info_span!("vae_load", path = %dir.display()).entered();
        check_dir(dir)?;
        check_vae_class(&dir.join("config.json"))?;
        let (model, spec) = load_vae(dir, dtype, device)?;
        Ok(Self {
            model,
            spec,
            device: device.clone(),
            dtype,
        })
    }

    /// Loads a single-file VAE checkpoint in the original LDM layout (safetensors; a whole SD checkpoint's
    /// `first_stage_model.` works too): the names are mapped to diffusers' ([`crate::ldm`]) and the
    /// configuration follows from the shapes. A checkpoint does not record its `scaling_factor`, so the caller
    /// gives it (0.18215 for SD 1.x/2.x, 0.13025 for SDXL). Decodes and encodes exactly as the same weights in
    /// a diffusers folder.
    pub fn load_checkpoint(
        file: &Path,
        scaling_factor: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        let _span = tracing::info_span!("vae_load", path = %file.display()).entered();
        if !file.is_file() {
            return Err(EngineError::InvalidModel(format!(
                "{}: not a file",
                file.display()
            )));
        }
        let mut files = SafetensorsFiles::open(&[file])?;
        let spec = crate::ldm::vae_from_ldm(&mut files, scaling_factor)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        let (model, spec) = build_vae(files, spec, dtype, device, file)?;
        Ok(Self {
            model,
            spec,
            device: device.clone(),
            dtype,
        })
    }

    /// The candle model.
    pub fn model(&self) -> &AutoEncoderKL {
        &self.model
    }

    /// The configuration.
    pub fn spec(&self) -> &VaeSpec {
        &self.spec
    }

    /// The latent scaling factor.
    pub fn scaling_factor(&self) -> f64 {
        self.spec.scaling_factor
    }

    /// Latent channels (4 for SD 1.x/2.x/XL).
    pub fn latent_channels(&self) -> usize {
        self.spec.config.latent_channels
    }

    /// `l2i` (§10.4) before quantisation: `vae.decode(latents / scaling_factor) / 2 + 0.5`, clamped to [0, 1],
    /// as a (3, H, W) f32 tensor.
    pub fn decode_to_tensor(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        let _span = tracing::debug_span!("vae_decode").entered();
        let dims = latents.dims();
        if dims.len() != 4 || dims[0] != 1 || dims[1] != self.spec.config.latent_channels {
            return Err(EngineError::InvalidArgument(format!(
                "latents have shape {dims:?}, expected (1, {}, h, w)",
                self.spec.config.latent_channels
            )));
        }
        let z = (latents.to_dtype(DType::F32)? / self.spec.scaling_factor)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let image = self
            .model
            .decode(&z)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        Ok(((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.squeeze(0)?)
    }

    /// `l2i` (§10.4): the 8-bit RGB image of latents (×255, rounded).
    pub fn decode(&self, latents: &Tensor) -> Result<image::RgbImage, EngineError> {
        let image = self.decode_to_tensor(latents)?;
        let (c, h, w) = image.dims3()?;
        if c != 3 {
            return Err(EngineError::InvalidModel(format!(
                "the VAE decodes {c} channels, not 3"
            )));
        }
        let pixels: Vec<u8> = (image * 255.0)?
            .round()?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            // Values are in [0, 255] after the clamp.
            .map(|v| v as u8)
            .collect();
        let (w, h) = (
            u32::try_from(w).map_err(|_| EngineError::InvalidArgument("image too wide".into()))?,
            u32::try_from(h).map_err(|_| EngineError::InvalidArgument("image too tall".into()))?,
        );
        image::RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| EngineError::Backend("decoded image has the wrong size".into()))
    }

    /// `i2l` (§10.5): resize to the largest multiple of 8 (Lanczos) when needed, scale to [−1, 1], encode, and
    /// return the distribution's mean × scaling_factor: (1, 4, H/8, W/8) f32.
    pub fn encode(&self, image: &image::RgbImage) -> Result<Tensor, EngineError> {
        let _span = tracing::debug_span!("vae_encode").entered();
        let (w, h) = (image.width() / 8 * 8, image.height() / 8 * 8);
        if w == 0 || h == 0 {
            return Err(EngineError::InvalidArgument(format!(
                "image {}x{} is smaller than 8x8",
                image.width(),
                image.height()
            )));
        }
        let resized;
        let image = if (w, h) == image.dimensions() {
            image
        } else {
            resized = image::imageops::resize(image, w, h, image::imageops::FilterType::Lanczos3);
            &resized
        };
        let data: Vec<f32> = image
            .as_raw()
            .iter()
            .map(|&v| f32::from(v) / 255.0 * 2.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(data, (1, h as usize, w as usize, 3), &Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let dist = self.model.encode(&x)?;
        // `load_vae` made σ exactly 0, so the sample is the mean.
        let mean = dist.sample()?;
        Ok((mean.to_dtype(DType::F32)?.to_device(&Device::Cpu)? * self.spec.scaling_factor)?)
    }
}

/// Refuses VAE configs of another class (`AutoencoderTiny`, ...) that the KL autoencoder cannot load.
fn check_vae_class(config: &Path) -> Result<(), EngineError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", config.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", config.display())))?;
    match value.get("_class_name").and_then(serde_json::Value::as_str) {
        None | Some("AutoencoderKL") => Ok(()),
        Some(other) => Err(EngineError::InvalidModel(format!(
            "{}: a {other} VAE is not supported (only AutoencoderKL)",
            config.display()
        ))),
    }
}

/// A (1, 4, h, w) f32 tensor on the CPU from a row-major buffer.
pub fn latents_from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor, EngineError> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(EngineError::LengthMismatch {
            what: "latents",
            expected: n,
            actual: data.len(),
        });
    }
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The row-major f32 values of a tensor.
pub fn latents_to_vec(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Standard deviation over C, H, W of a (1, C, H, W) tensor, unbiased (torch.std's default).
fn std_chw(t: &Tensor) -> Result<f64, EngineError> {
    let v = latents_to_vec(t)?;
    let n = v.len() as f64;
    if n < 2.0 {
        return Ok(0.0);
    }
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    Ok(var.sqrt())
}

impl Sd {
    /// Loads a diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        Self::load_with_loras(dir, device, dtype, LoraSelection::NONE)
    }

    /// [`Sd::load`] with LoRAs merged into the UNet's and the text encoder's weights ([`crate::lora`]).
    pub fn load_with_loras(
        dir: &Path,
        device: &Device,
        dtype: DType,
        loras: LoraSelection<'_>,
    ) -> Result<Self, EngineError> {
        check_dir(dir)?;
        let _span = tracing::info_span!("sd_load", path = %dir.display()).entered();
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let text_dir = dir.join("text_encoder");
        let text_config = crate::clip::ClipTextConfig::from_file(&text_dir.join("config.json"))?;
        let mut text_files = SafetensorsFiles::open(&component_files(&text_dir, &["model"])?)?;
        apply_loras(&mut text_files, LoraTarget::TextEncoder, loras.text_encoder)?;
        let text_encoder = ClipTextTransformer::from_files(text_config, text_files, dtype, device)?;
        let (unet, unet_spec) = load_unet_with_loras(&dir.join("unet"), dtype, device, loras.unet)?;
        let vae = Vae::load(&dir.join("vae"), device, dtype)?;
        let scheduler_config =
            scheduler_config(&dir.join("scheduler").join("scheduler_config.json"))?;
        Self::assemble(
            tokenizer,
            text_encoder,
            (unet, unet_spec),
            vae,
            scheduler_config,
            device,
            dtype,
        )
    }

    /// Loads an SD 1.x single-file checkpoint in the original LDM layout (`.safetensors`: the UNet under
    /// `model.diffusion_model.`, the VAE under `first_stage_model.`, the OpenAI CLIP text encoder under
    /// `cond_stage_model.transformer.`). The tensor names are mapped to diffusers' ([`crate::ldm`]), the
    /// configurations follow from the shapes, and what a checkpoint does not record (attention heads, the
    /// scheduler, the VAE's scaling factor) comes from `config`. The tokenizer is the bundled OpenAI CLIP one
    /// ([`ClipTokenizer::openai_clip`]). Runs exactly as the same weights in a diffusers folder.
    pub fn load_checkpoint(
        file: &Path,
        config: &CheckpointConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        Self::load_checkpoint_with_loras(file, config, device, dtype, LoraSelection::NONE)
    }

    /// [`Sd::load_checkpoint`] with LoRAs merged into the UNet's and the text encoder's weights.
    pub fn load_checkpoint_with_loras(
        file: &Path,
        config: &CheckpointConfig,
        device: &Device,
        dtype: DType,
        loras: LoraSelection<'_>,
    ) -> Result<Self, EngineError> {
        let _span = tracing::info_span!("sd_load", path = %file.display()).entered();
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
        let mut text_files = SafetensorsFiles::open(&[file])?;
        if !text_files
            .names()
            .any(|n| n.starts_with(crate::ldm::CLIP_PREFIX))
            && text_files
                .names()
                .any(|n| n.starts_with("cond_stage_model.model."))
        {
            return Err(EngineError::InvalidModel(format!(
                "{}: an SD 2.x checkpoint (OpenCLIP text encoder): single-file SD 2.x models are not \
                 supported yet",
                file.display()
            )));
        }
        let clip_config = crate::ldm::clip_from_ldm(&mut text_files).map_err(in_file)?;
        apply_loras(&mut text_files, LoraTarget::TextEncoder, loras.text_encoder)?;
        let text_encoder = ClipTextTransformer::from_files(clip_config, text_files, dtype, device)?;
        let mut unet_files = SafetensorsFiles::open(&[file])?;
        let unet_spec =
            crate::ldm::unet_from_ldm(&mut unet_files, &config.attention_heads).map_err(in_file)?;
        apply_loras(&mut unet_files, LoraTarget::Unet, loras.unet)?;
        let unet = UNet2DConditionModel::new(
            unet_files.into_var_builder(dtype, device),
            unet_spec.in_channels,
            unet_spec.out_channels,
            false,
            unet_spec.config.clone(),
        )
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        let vae = Vae::load_checkpoint(file, config.vae_scaling_factor, device, dtype)?;
        let tokenizer = ClipTokenizer::openai_clip()?;
        Self::assemble(
            tokenizer,
            text_encoder,
            (unet, unet_spec),
            vae,
            config.scheduler.clone(),
            device,
            dtype,
        )
    }

    fn assemble(
        tokenizer: ClipTokenizer,
        text_encoder: ClipTextTransformer,
        (unet, unet_spec): (UNet2DConditionModel, UNetSpec),
        vae: Vae,
        scheduler_config: SchedulerConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        if text_encoder.config().hidden_size != unet_spec.config.cross_attention_dim {
            return Err(EngineError::InvalidModel(format!(
                "the text encoder's width {} does not match the UNet's cross_attention_dim {}",
                text_encoder.config().hidden_size,
                unet_spec.config.cross_attention_dim
            )));
        }
        if tokenizer.vocab_size() > text_encoder.config().vocab_size {
            return Err(EngineError::InvalidModel(
                "the tokenizer's vocabulary is larger than the text encoder's".into(),
            ));
        }
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            unet_spec,
            vae,
            scheduler_config,
            device: device.clone(),
            dtype,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &ClipTextTransformer {
        &self.text_encoder
    }

    /// The UNet (for benchmarks and parity tests).
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &Vae {
        &self.vae
    }

    /// The model's scheduler configuration (from `scheduler_config.json`).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// What the UNet predicts.
    pub fn prediction_type(&self) -> PredictionType {
        self.scheduler_config.prediction_type
    }

    /// The VAE's latent scaling factor.
    pub fn vae_scaling_factor(&self) -> f64 {
        self.vae.scaling_factor()
    }

    /// The width of the conditioning (768 for SD 1.x, 1024 for SD 2.x).
    pub fn conditioning_dim(&self) -> usize {
        self.unet_spec.config.cross_attention_dim
    }

    /// `compel` for SD 1.x/2.x (§10.2): the prompt parsed with compel's syntax ([`crate::prompt`]), its 77-token
    /// windows through the text encoder without its last `skipped_layers` layers, with the final layer norm,
    /// weighted as compel weights them and concatenated: (1, 77·k, dim) in f32. Text without syntax is encoded
    /// as is.
    pub fn encode_prompt(&self, text: &str, skipped_layers: usize) -> Result<Tensor, EngineError> {
        let _span = tracing::debug_span!("encode_prompt").entered();
        crate::prompt::encode(&self.tokenizer, &self.text_encoder, text, skipped_layers)
    }

    /// One UNet evaluation, in the model's dtype, returning f32.
    pub fn unet_forward(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, EngineError> {
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let context = context.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(self
            .unet
            .forward(&x, timestep, &context)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?)
    }

    /// ε (or v) for [negative, positive] at timestep `t`: one batch of two when the conditionings have the same
    /// length, else two passes (equivalent to InvokeAI's zero padding with a cross-attention mask).
    fn predict(
        &self,
        x_in: &Tensor,
        t: f64,
        negative: &Tensor,
        positive: &Tensor,
    ) -> Result<(Tensor, Tensor), EngineError> {
        if negative.dims() == positive.dims() {
            let x2 = Tensor::cat(&[x_in, x_in], 0)?;
            let context = Tensor::cat(&[negative, positive], 0)?;
            let out = self.unet_forward(&x2, t, &context)?;
            Ok((out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?))
        } else {
            Ok((
                self.unet_forward(x_in, t, negative)?,
                self.unet_forward(x_in, t, positive)?,
            ))
        }
    }

    /// `denoise_latents` (§10.3).
    pub fn denoise(
        &self,
        request: &DenoiseRequest,
        progress: &mut dyn ProgressSink,
        cancel: &AtomicBool,
    ) -> Result<Tensor, EngineError> {
        let _span =
            tracing::info_span!("denoise", steps = request.steps, scheduler = %request.scheduler)
                .entered();
        let dim = self.conditioning_dim();
        for (what, c) in [
            ("positive", &request.positive),
            ("negative", &request.negative),
        ] {
            let ok = c.rank() == 3 && c.dim(0)? == 1 && c.dim(2)? == dim && c.dim(1)? > 0;
            if !ok {
                return Err(EngineError::InvalidArgument(format!(
                    "{what} conditioning has shape {:?}, expected (1, n, {dim})",
                    c.dims()
                )));
            }
        }
        if request.steps == 0 {
            return Err(EngineError::InvalidArgument(
                "steps must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&request.denoising_start)
            || !(0.0..=1.0).contains(&request.denoising_end)
            || request.denoising_start > request.denoising_end
        {
            return Err(EngineError::InvalidArgument(format!(
                "denoising_start {} and denoising_end {} must satisfy 0 ≤ start ≤ end ≤ 1",
                request.denoising_start, request.denoising_end
            )));
        }
        if !(0.0..1.0).contains(&request.cfg_rescale_multiplier) {
            return Err(EngineError::InvalidArgument(format!(
                "cfg_rescale_multiplier {} must be in [0, 1)",
                request.cfg_rescale_multiplier
            )));
        }
        let channels = self.unet_spec.in_channels;
        let check_latent = |what: &str, t: &Tensor| -> Result<(), EngineError> {
            let dims = t.dims();
            if dims.len() != 4
                || dims[0] != 1
                || dims[1] != channels
                || dims[2] == 0
                || dims[3] == 0
            {
                return Err(EngineError::InvalidArgument(format!(
                    "{what} has shape {dims:?}, expected (1, {channels}, h, w)"
                )));
            }
            Ok(())
        };
        let noise = match &request.noise {
            Some(n) => {
                check_latent("noise", n)?;
                Some(n.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
            }
            None => None,
        };
        let latents = match (&request.latents, &noise) {
            (Some(l), _) => {
                check_latent("latents", l)?;
                l.to_dtype(DType::F32)?.to_device(&Device::Cpu)?
            }
            (None, Some(n)) => n.zeros_like()?,
            (None, None) => {
                return Err(EngineError::InvalidArgument(
                    "denoise needs noise or latents".into(),
                ))
            }
        };
        if let Some(n) = &noise {
            if n.dims() != latents.dims() {
                return Err(EngineError::InvalidArgument(format!(
                    "noise {:?} and latents {:?} differ in shape",
                    n.dims(),
                    latents.dims()
                )));
            }
        }
        let shape = latents.dims().to_vec();

        let mut config = self.scheduler_config.clone();
        config.prediction_type = self.prediction_type();
        let mut scheduler = by_name(&request.scheduler, &config)?;
        scheduler.set_timesteps(request.steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        let slice = slice_timesteps(
            &timesteps,
            scheduler.order(),
            config.num_train_timesteps,
            request.denoising_start,
            request.denoising_end,
        );
        let Some(init_index) = slice.init_index.filter(|_| !slice.is_empty()) else {
            return Ok(latents);
        };
        let mut x = latents_to_vec(&latents)?;
        if let Some(n) = &noise {
            x = scheduler.add_noise(&x, &latents_to_vec(n)?, timesteps[init_index])?;
        }
        if scheduler.is_stochastic() {
            scheduler.set_noise_generator(TorchGenerator::new(u64::from(stochastic_seed(
                request.seed,
            ))));
        }
        let negative = request.negative.to_dtype(DType::F32)?;
        let positive = request.positive.to_dtype(DType::F32)?;
        let run = &timesteps[slice.start..slice.end];
        let total = run.len();
        for (i, &t) in run.iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                return Err(EngineError::Canceled);
            }
            let cfg = match &request.cfg_scale {
                CfgScale::Scalar(s) => *s,
                CfgScale::PerStep(list) => *list.get(i).ok_or_else(|| {
                    EngineError::InvalidArgument(format!(
                        "cfg_scale list has {} entries, step {} needs one",
                        list.len(),
                        i + 1
                    ))
                })?,
            };
            let x_in = scheduler.scale_model_input(&x, t)?;
            let x_in = latents_from_vec(&shape, x_in)?;
            let (neg, pos) = self.predict(&x_in, t, &negative, &positive)?;
            let mut guided = (&neg + ((&pos - &neg)? * cfg)?)?;
            let m = request.cfg_rescale_multiplier;
            if m > 0.0 {
                let ratio = std_chw(&pos)? / std_chw(&guided)?;
                let rescaled = (&guided * ratio)?;
                guided = ((rescaled * m)? + (&guided * (1.0 - m))?)?;
            }
            x = scheduler.step(&latents_to_vec(&guided)?, t, &x)?;
            let current = latents_from_vec(&shape, x.clone())?;
            progress.on_step(&StepProgress {
                step: i + 1,
                total_steps: total,
                timestep: t,
                latents: &current,
            });
        }
        latents_from_vec(&shape, x)
    }

    /// `l2i` (§10.4) before quantisation with the model's VAE; see [`Vae::decode_to_tensor`].
    pub fn decode_to_tensor(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        self.vae.decode_to_tensor(latents)
    }

    /// `l2i` (§10.4) with the model's VAE; see [`Vae::decode`].
    pub fn decode(&self, latents: &Tensor) -> Result<image::RgbImage, EngineError> {
        self.vae.decode(latents)
    }

    /// `i2l` (§10.5) with the model's VAE; see [`Vae::encode`].
    pub fn encode(&self, image: &image::RgbImage) -> Result<Tensor, EngineError> {
        self.vae.encode(image)
    }

    /// The initial noise of the `noise` node as a tensor (§10.1).
    pub fn noise(seed: u32, width: u32, height: u32) -> Result<Tensor, EngineError> {
        let shape = crate::noise::sd_latent_shape(width, height)?;
        latents_from_vec(&shape, crate::noise::sd_latent_noise(seed, width, height)?)
    }
}
