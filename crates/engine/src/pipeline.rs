//! The SD 1.x / 2.x / XL pipeline on candle: prompt encoding (§10.2), the denoising loop (§10.3), VAE decode
//! (§10.4) and encode (§10.5), with InvokeAI's semantics rather than diffusers' pipelines'.
//!
//! Latents cross this API as candle [`Tensor`]s of shape (1, 4, H/8, W/8) in f32 on the CPU;
//! [`latents_from_vec`] and [`latents_to_vec`] convert from and to the plain row-major buffers the server
//! stores. Conditioning tensors are (1, 77·k, dim).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::clip::ClipTextTransformer;
use crate::config::{scheduler_config, unet_extras, unet_spec, vae_spec, UNetSpec, VaeSpec};
use crate::ldm::{AttentionHeads, CheckpointFamily};
use crate::lora::{apply_loras, Lora, LoraSelection, LoraTarget};
use crate::schedulers::{by_name, slice_timesteps, PredictionType, SchedulerConfig};
use crate::textual_inversion::{TextualInversion, TiVocabulary};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoEncoderKL;
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
    /// SDXL's added conditioning: required for an SDXL model, `None` for SD 1.x/2.x.
    pub sdxl: Option<SdxlAdded>,
}

/// SDXL's added conditioning of one `denoise_latents` call: the pooled text embeddings and the time ids of each
/// side: the base's 6 `[original_h, original_w, crop_top, crop_left, target_h, target_w]`, the refiner's 5
/// `[original_h, original_w, crop_top, crop_left, aesthetic_score]` ([`Sd::time_id_count`]).
#[derive(Debug, Clone)]
pub struct SdxlAdded {
    /// Pooled embedding of the positive prompt (1, pooled_dim).
    pub positive_pooled: Tensor,
    /// Pooled embedding of the negative prompt (1, pooled_dim).
    pub negative_pooled: Tensor,
    /// Time ids of the positive side ([`Sd::time_id_count`] of them).
    pub positive_time_ids: Vec<f64>,
    /// Time ids of the negative side.
    pub negative_time_ids: Vec<f64>,
}

/// An SDXL prompt's conditioning ([`Sd::encode_prompt_sdxl`], [`Sd::encode_prompt_sdxl_refiner`]).
#[derive(Debug, Clone)]
pub struct SdxlConditioning {
    /// Both encoders' penultimate hidden states side by side: (1, 77·k, dim1 + dim2), f32 (the refiner: the
    /// second encoder's alone, (1, 77·k, dim2)).
    pub embeds: Tensor,
    /// The second encoder's pooled, projected embedding: (1, pooled_dim), f32.
    pub pooled: Tensor,
}

/// A text encoder with its tokenizer.
type TokenizedEncoder = (ClipTokenizer, ClipTextTransformer);

/// SDXL's second text encoder (`CLIPTextModelWithProjection`) with its tokenizer.
struct SecondEncoder {
    tokenizer: ClipTokenizer,
    encoder: ClipTextTransformer,
}

/// What a single-file checkpoint does not record, by model family ([`Sd::load_checkpoint`]).
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The family the checkpoint must be ([`crate::ldm::checkpoint_family`]); another is an error.
    pub family: CheckpointFamily,
    /// Attention heads per UNet block.
    pub attention_heads: AttentionHeads,
    /// At most this many text-encoder layers are loaded (SD 2.x: 23 of OpenCLIP's 24, as diffusers converts
    /// them: SD 2.x conditions on the penultimate layer); `None`: all of them.
    pub text_encoder_layers: Option<usize>,
    /// The family's standard scheduler configuration (with its prediction type).
    pub scheduler: SchedulerConfig,
    /// The VAE's latent scaling factor.
    pub vae_scaling_factor: f64,
}

impl CheckpointConfig {
    /// SD 1.x: 8 heads in every block, `SchedulerConfig::sd15()` (ε-prediction), scaling factor 0.18215.
    pub fn sd1() -> Self {
        Self {
            family: CheckpointFamily::Sd1,
            attention_heads: AttentionHeads::PerBlock(vec![8]),
            text_encoder_layers: None,
            scheduler: SchedulerConfig::sd15(),
            vae_scaling_factor: 0.18215,
        }
    }

    /// SD 2.x base (512 px, ε-prediction: `stable-diffusion-2-1-base`'s scheduler): 64-wide attention heads,
    /// 23 text-encoder layers, scaling factor 0.18215.
    pub fn sd2() -> Self {
        Self {
            family: CheckpointFamily::Sd2,
            attention_heads: AttentionHeads::Width(64),
            text_encoder_layers: Some(23),
            scheduler: SchedulerConfig::sd15(),
            vae_scaling_factor: 0.18215,
        }
    }

    /// SD 2.x 768-v: as [`CheckpointConfig::sd2`] with v-prediction (`SchedulerConfig::sd2_v()`).
    pub fn sd2_v() -> Self {
        Self {
            scheduler: SchedulerConfig::sd2_v(),
            ..Self::sd2()
        }
    }

    /// SDXL (base): 64-wide attention heads, both text encoders whole, `SchedulerConfig::sdxl()` (ε-prediction,
    /// `leading` spacing), scaling factor 0.13025; the UNet's `addition_time_embed_dim` is 256
    /// ([`crate::ldm::SDXL_ADDITION_TIME_EMBED_DIM`]).
    pub fn sdxl() -> Self {
        Self {
            family: CheckpointFamily::Sdxl,
            attention_heads: AttentionHeads::Width(64),
            text_encoder_layers: None,
            scheduler: SchedulerConfig::sdxl(),
            vae_scaling_factor: 0.13025,
        }
    }

    /// The SDXL refiner: as [`CheckpointConfig::sdxl`] (the refiner's scheduler and VAE are the base's; the UNet's
    /// addition embedding takes 5 time ids, read off `label_emb`'s shape).
    pub fn sdxl_refiner() -> Self {
        Self {
            family: CheckpointFamily::SdxlRefiner,
            ..Self::sdxl()
        }
    }

    /// This configuration with another prediction type (a model record's, which a checkpoint cannot tell).
    pub fn with_prediction_type(mut self, prediction_type: PredictionType) -> Self {
        self.scheduler.prediction_type = prediction_type;
        self
    }
}

/// A loaded SD 1.x / 2.x / XL model: tokenizer, text encoder (SDXL: and the second tokenizer and text encoder),
/// UNet, VAE and scheduler configuration.
pub struct Sd {
    /// The (first) tokenizer and text encoder; `None` for the SDXL refiner, which has only the second.
    first: Option<TokenizedEncoder>,
    text_encoder_2: Option<SecondEncoder>,
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
    let extras = unet_extras(&dir.join("config.json"))?;
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
        &spec.config,
        Some(extras.mid_transformer_layers),
        extras.text_time,
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
        self.encode_compensated(image, 1.0, 0.0)
    }

    /// [`Vae::encode`] with InvokeAI's colour compensation: the image, scaled to [-1, 1], becomes
    /// `x · scale + bias` before encoding (`i2l`'s `color_compensation: "SDXL"` is 1.015 and -0.002).
    pub fn encode_compensated(
        &self,
        image: &image::RgbImage,
        scale: f32,
        bias: f32,
    ) -> Result<Tensor, EngineError> {
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
            .map(|&v| (f32::from(v) / 255.0 * 2.0 - 1.0) * scale + bias)
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

/// The dtype a whole pipeline's VAE runs in, whatever the dtype of the rest: float32, as InvokeAI's `l2i`/`i2l`
/// default (`fp32: true`) upcasts it. SDXL's VAE overflows in float16, and the VAE is small next to the UNet.
pub const VAE_DTYPE: DType = DType::F32;

impl Sd {
    /// Loads a diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`; SDXL also
    /// `text_encoder_2/` and `tokenizer_2/`).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, EngineError> {
        Self::load_with_loras(dir, device, dtype, LoraSelection::NONE)
    }

    /// [`Sd::load`] with LoRAs merged into the UNet's and the text encoders' weights ([`crate::lora`]);
    /// `loras.text_encoder_2` is for SDXL's second text encoder and ignored for SD 1.x/2.x.
    pub fn load_with_loras(
        dir: &Path,
        device: &Device,
        dtype: DType,
        loras: LoraSelection<'_>,
    ) -> Result<Self, EngineError> {
        check_dir(dir)?;
        let _span = tracing::info_span!("sd_load", path = %dir.display()).entered();
        if dir.join("text_encoder_2").is_dir() {
            return Self::load_sdxl(dir, device, dtype, loras);
        }
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let text_dir = dir.join("text_encoder");
        let text_config = crate::clip::ClipTextConfig::from_file(&text_dir.join("config.json"))?;
        let mut text_files = SafetensorsFiles::open(&component_files(&text_dir, &["model"])?)?;
        apply_loras(&mut text_files, LoraTarget::TextEncoder, loras.text_encoder)?;
        let text_encoder = ClipTextTransformer::from_files(text_config, text_files, dtype, device)?;
        let (unet, unet_spec) = load_unet_with_loras(&dir.join("unet"), dtype, device, loras.unet)?;
        let vae = Vae::load(&dir.join("vae"), device, VAE_DTYPE)?;
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

    /// Loads an SD 1.x, 2.x or XL single-file checkpoint in the original LDM layout (`.safetensors`: the UNet
    /// under `model.diffusion_model.`, the VAE under `first_stage_model.`, the text encoder under
    /// `cond_stage_model.transformer.` (SD 1.x, OpenAI CLIP) or `cond_stage_model.model.` (SD 2.x, OpenCLIP);
    /// SDXL's two under `conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.`, the SDXL
    /// refiner's one under `conditioner.embedders.0.model.`).
    /// The tensor names are mapped to diffusers' ([`crate::ldm`]), the configurations follow from the shapes,
    /// and what a checkpoint does not record (attention heads, text-encoder depth, the scheduler and its
    /// prediction type, the VAE's scaling factor) comes from `config`, whose family must be the file's. The
    /// tokenizer is the bundled CLIP one ([`ClipTokenizer::openai_clip`], or [`ClipTokenizer::open_clip`]'s `!`
    /// padding for SD 2.x and SDXL's second encoder). Runs exactly as the same weights in a diffusers folder.
    pub fn load_checkpoint(
        file: &Path,
        config: &CheckpointConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        Self::load_checkpoint_with_loras(file, config, device, dtype, LoraSelection::NONE)
    }

    /// [`Sd::load_checkpoint`] with LoRAs merged into the UNet's and the text encoders' weights
    /// (`loras.text_encoder_2`: SDXL's second encoder).
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
        let family = crate::ldm::checkpoint_family(&text_files).map_err(in_file)?;
        if family != config.family {
            return Err(EngineError::InvalidModel(format!(
                "{}: an {} checkpoint, loaded as an {} model",
                file.display(),
                family.name(),
                config.family.name()
            )));
        }
        if family.is_sdxl() {
            return Self::load_sdxl_checkpoint(file, text_files, config, device, dtype, loras);
        }
        let (clip_config, tokenizer) = match family {
            CheckpointFamily::Sd2 => (
                crate::ldm::clip_from_open_clip(&mut text_files, config.text_encoder_layers)
                    .map_err(in_file)?,
                ClipTokenizer::open_clip()?,
            ),
            _ => {
                let mut clip = crate::ldm::clip_from_ldm(&mut text_files).map_err(in_file)?;
                if let Some(max) = config.text_encoder_layers {
                    clip.num_hidden_layers = clip.num_hidden_layers.min(max);
                }
                (clip, ClipTokenizer::openai_clip()?)
            }
        };
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
            &unet_spec.config,
            None,
            None,
        )
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        let vae = Vae::load_checkpoint(file, config.vae_scaling_factor, device, VAE_DTYPE)?;
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
        if unet.text_time().is_some() {
            return Err(EngineError::InvalidModel(
                "the UNet has SDXL's addition embedding but the model has one text encoder".into(),
            ));
        }
        Ok(Self {
            first: Some((tokenizer, text_encoder)),
            text_encoder_2: None,
            unet,
            unet_spec,
            vae,
            scheduler_config,
            device: device.clone(),
            dtype,
        })
    }

    /// The (first) tokenizer; `None` for the SDXL refiner.
    pub fn tokenizer(&self) -> Option<&ClipTokenizer> {
        self.first.as_ref().map(|(t, _)| t)
    }

    /// The (first) text encoder; `None` for the SDXL refiner.
    pub fn text_encoder(&self) -> Option<&ClipTextTransformer> {
        self.first.as_ref().map(|(_, e)| e)
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

    /// The width of the conditioning, the UNet's cross_attention_dim (768 for SD 1.x, 1024 for SD 2.x, 2048 for
    /// SDXL).
    pub fn conditioning_dim(&self) -> usize {
        self.unet_spec.config.cross_attention_dim
    }

    /// `compel` for SD 1.x/2.x (§10.2): the prompt parsed with compel's syntax ([`crate::prompt`]), its 77-token
    /// windows through the text encoder without its last `skipped_layers` layers, with the final layer norm,
    /// weighted as compel weights them and concatenated: (1, 77·k, dim) in f32. Text without syntax is encoded
    /// as is.
    pub fn encode_prompt(&self, text: &str, skipped_layers: usize) -> Result<Tensor, EngineError> {
        self.encode_prompt_with_ti(text, skipped_layers, &[])
    }

    /// [`Sd::encode_prompt`] with textual-inversion embeddings: those of `embeddings` (by trigger name) whose
    /// `<name>` the prompt writes are applied as InvokeAI applies them ([`crate::textual_inversion`]).
    pub fn encode_prompt_with_ti(
        &self,
        text: &str,
        skipped_layers: usize,
        embeddings: &[(&str, &TextualInversion)],
    ) -> Result<Tensor, EngineError> {
        let _span = tracing::debug_span!("encode_prompt").entered();
        if self.is_sdxl() {
            return Err(EngineError::InvalidArgument(
                "an SDXL model's prompts are encoded with encode_prompt_sdxl".into(),
            ));
        }
        let Some((tokenizer, text_encoder)) = &self.first else {
            return Err(EngineError::InvalidArgument(
                "this model has no first text encoder".into(),
            ));
        };
        let conjunction = crate::prompt::parse(text)?;
        let ti = TiVocabulary::for_text(tokenizer, text_encoder, text, embeddings)?;
        crate::prompt::PromptEncoder::new(tokenizer, text_encoder, skipped_layers)
            .with_textual_inversions(&ti)
            .encode(&conjunction)
    }

    /// One UNet evaluation, in the model's dtype, returning f32.
    pub fn unet_forward(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, EngineError> {
        self.unet_forward_added(x, timestep, context, None)
    }

    /// [`Sd::unet_forward`] with SDXL's added conditioning `(text_embeds (B, pooled_dim), time_ids (B, n))`
    /// (n = [`Sd::time_id_count`]), which an SDXL model requires and other models refuse.
    pub fn unet_forward_added(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor, EngineError> {
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let context = context.to_device(&self.device)?.to_dtype(self.dtype)?;
        let added = match added {
            None => None,
            Some((text_embeds, time_ids)) => Some((
                text_embeds.to_device(&self.device)?.to_dtype(self.dtype)?,
                time_ids.to_device(&self.device)?.to_dtype(DType::F32)?,
            )),
        };
        Ok(self
            .unet
            .forward_with_added(&x, timestep, &context, added.as_ref().map(|(a, b)| (a, b)))?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?)
    }

    /// ε (or v) for [negative, positive] at timestep `t`: one batch of two when the conditionings have the same
    /// length, else two passes (equivalent to InvokeAI's zero padding with a cross-attention mask).
    /// `added`: SDXL's `[negative, positive]` (text_embeds, time_ids), each (1, ·).
    fn predict(
        &self,
        x_in: &Tensor,
        t: f64,
        negative: &Tensor,
        positive: &Tensor,
        added: Option<&[(Tensor, Tensor); 2]>,
    ) -> Result<(Tensor, Tensor), EngineError> {
        if negative.dims() == positive.dims() {
            let x2 = Tensor::cat(&[x_in, x_in], 0)?;
            let context = Tensor::cat(&[negative, positive], 0)?;
            let batched = match added {
                None => None,
                Some([(n_text, n_time), (p_text, p_time)]) => Some((
                    Tensor::cat(&[n_text, p_text], 0)?,
                    Tensor::cat(&[n_time, p_time], 0)?,
                )),
            };
            let out =
                self.unet_forward_added(&x2, t, &context, batched.as_ref().map(|(a, b)| (a, b)))?;
            Ok((out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?))
        } else {
            let side = |i: usize| added.map(|a| (&a[i].0, &a[i].1));
            Ok((
                self.unet_forward_added(x_in, t, negative, side(0))?,
                self.unet_forward_added(x_in, t, positive, side(1))?,
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
        let added = self.sdxl_added(request.sdxl.as_ref())?;
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
        scheduler.seed_noise(request.seed);
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
            let (neg, pos) = self.predict(&x_in, t, &negative, &positive, added.as_ref())?;
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

impl Sd {
    /// Loads a diffusers SDXL folder (`text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `unet/`,
    /// `vae/`, `scheduler/`); [`Sd::load`] comes here when `text_encoder_2/` exists. `loras.text_encoder` are
    /// merged into the first text encoder, `loras.text_encoder_2` into the second, `loras.unet` into the UNet
    /// (LDM-named kohya UNet keys renamed with SDXL's map, [`crate::lora`]).
    fn load_sdxl(
        dir: &Path,
        device: &Device,
        dtype: DType,
        loras: LoraSelection<'_>,
    ) -> Result<Self, EngineError> {
        let clip = |name: &str, target: LoraTarget, loras: &[(&Lora, f32)]| {
            let text_dir = dir.join(name);
            let config = crate::clip::ClipTextConfig::from_file(&text_dir.join("config.json"))?;
            let mut files = SafetensorsFiles::open(&component_files(&text_dir, &["model"])?)?;
            apply_loras(&mut files, target, loras)?;
            ClipTextTransformer::from_files(config, files, dtype, device)
        };
        // The SDXL refiner has no first text encoder (model_index.json: `"text_encoder": [null, null]`).
        let first = if dir.join("text_encoder").is_dir() {
            Some((
                ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
                clip("text_encoder", LoraTarget::TextEncoder, loras.text_encoder)?,
            ))
        } else {
            None
        };
        let tokenizer_2 = ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?;
        let text_encoder_2 = clip(
            "text_encoder_2",
            LoraTarget::TextEncoder2,
            loras.text_encoder_2,
        )?;
        let (unet, unet_spec) = load_unet_with_loras(&dir.join("unet"), dtype, device, loras.unet)?;
        let vae = Vae::load(&dir.join("vae"), device, VAE_DTYPE)?;
        let scheduler_config =
            scheduler_config(&dir.join("scheduler").join("scheduler_config.json"))?;
        Self::assemble_sdxl(
            dir,
            (first, (tokenizer_2, text_encoder_2)),
            (unet, unet_spec),
            vae,
            scheduler_config,
            device,
            dtype,
        )
    }

    /// An SDXL (base or refiner) single-file checkpoint ([`Sd::load_checkpoint_with_loras`]): `text_files` is
    /// the file, opened. Text encoder 1 is `conditioner.embedders.0.transformer.` (OpenAI CLIP, the bundled
    /// tokenizer), text encoder 2 `conditioner.embedders.1.model.` (OpenCLIP bigG with its projection, `!`
    /// padding), both whole; the refiner has text encoder 2 alone, under `conditioner.embedders.0.model.`. The
    /// UNet's `label_emb` is its addition embedding. LoRAs go where [`Sd::load_sdxl`] puts them (the refiner has
    /// no first text encoder for `loras.text_encoder`).
    fn load_sdxl_checkpoint(
        file: &Path,
        mut text_files: SafetensorsFiles,
        config: &CheckpointConfig,
        device: &Device,
        dtype: DType,
        loras: LoraSelection<'_>,
    ) -> Result<Self, EngineError> {
        let in_file = |e: EngineError| match e {
            EngineError::InvalidModel(m) => {
                EngineError::InvalidModel(format!("{}: {m}", file.display()))
            }
            other => other,
        };
        let refiner = config.family == CheckpointFamily::SdxlRefiner;
        let (first, mut text_files_2) = if refiner {
            (None, text_files)
        } else {
            let mut clip_1 = crate::ldm::sdxl_clip_from_ldm(&mut text_files).map_err(in_file)?;
            if let Some(max) = config.text_encoder_layers {
                clip_1.num_hidden_layers = clip_1.num_hidden_layers.min(max);
            }
            apply_loras(&mut text_files, LoraTarget::TextEncoder, loras.text_encoder)?;
            let text_encoder = ClipTextTransformer::from_files(clip_1, text_files, dtype, device)?;
            (
                Some((ClipTokenizer::openai_clip()?, text_encoder)),
                SafetensorsFiles::open(&[file])?,
            )
        };
        let clip_2 =
            crate::ldm::sdxl_open_clip_of(&mut text_files_2, config.family).map_err(in_file)?;
        apply_loras(
            &mut text_files_2,
            LoraTarget::TextEncoder2,
            loras.text_encoder_2,
        )?;
        let text_encoder_2 = ClipTextTransformer::from_files(clip_2, text_files_2, dtype, device)?;
        let mut unet_files = SafetensorsFiles::open(&[file])?;
        let extras =
            crate::ldm::unet_extras_from_ldm(&unet_files, crate::ldm::SDXL_ADDITION_TIME_EMBED_DIM)
                .map_err(in_file)?;
        let unet_spec =
            crate::ldm::unet_from_ldm(&mut unet_files, &config.attention_heads).map_err(in_file)?;
        apply_loras(&mut unet_files, LoraTarget::Unet, loras.unet)?;
        let unet = UNet2DConditionModel::new(
            unet_files.into_var_builder(dtype, device),
            unet_spec.in_channels,
            unet_spec.out_channels,
            &unet_spec.config,
            Some(extras.mid_transformer_layers),
            extras.text_time,
        )
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        let vae = Vae::load_checkpoint(file, config.vae_scaling_factor, device, VAE_DTYPE)?;
        Self::assemble_sdxl(
            file,
            (first, (ClipTokenizer::open_clip()?, text_encoder_2)),
            (unet, unet_spec),
            vae,
            config.scheduler.clone(),
            device,
            dtype,
        )
    }

    /// Checks an SDXL model's parts against each other (widths, the addition embedding, the projection) and
    /// puts them together; `origin` (the folder or file) is named in errors. Without a first encoder it is the
    /// refiner: the UNet's cross-attention width is the second encoder's and it takes 5 time ids, not 6.
    fn assemble_sdxl(
        origin: &Path,
        (first, (tokenizer_2, text_encoder_2)): (Option<TokenizedEncoder>, TokenizedEncoder),
        (unet, unet_spec): (UNet2DConditionModel, UNetSpec),
        vae: Vae,
        scheduler_config: SchedulerConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        let bad = |m: String| {
            Err(EngineError::InvalidModel(format!(
                "{}: {m}",
                origin.display()
            )))
        };
        let (h1, h2) = (
            first.as_ref().map_or(0, |(_, e)| e.config().hidden_size),
            text_encoder_2.config().hidden_size,
        );
        if h1 + h2 != unet_spec.config.cross_attention_dim {
            return bad(format!(
                "the text encoders' widths {h1} + {h2} do not add up to the UNet's cross_attention_dim {}",
                unet_spec.config.cross_attention_dim
            ));
        }
        let Some(text_time) = unet.text_time() else {
            return bad(
                "the UNet has no addition embedding (addition_embed_type \"text_time\")".into(),
            );
        };
        let Some(pooled_dim) = text_encoder_2.config().projection_dim else {
            return bad("text_encoder_2 has no projection_dim".into());
        };
        if !text_encoder_2.has_projection() {
            return bad("text_encoder_2 has no text_projection".into());
        }
        let time_ids = if first.is_some() { 6 } else { 5 };
        if pooled_dim + time_ids * text_time.time_embed_dim != text_time.input_dim {
            return bad(format!(
                "the pooled width {pooled_dim} + {time_ids} × {} does not match the UNet's \
                 projection_class_embeddings_input_dim {}",
                text_time.time_embed_dim, text_time.input_dim
            ));
        }
        for (t, e) in first
            .iter()
            .map(|(t, e)| (t, e))
            .chain([(&tokenizer_2, &text_encoder_2)])
        {
            if t.vocab_size() > e.config().vocab_size {
                return bad("a tokenizer's vocabulary is larger than its text encoder's".into());
            }
        }
        Ok(Self {
            first,
            text_encoder_2: Some(SecondEncoder {
                tokenizer: tokenizer_2,
                encoder: text_encoder_2,
            }),
            unet,
            unet_spec,
            vae,
            scheduler_config,
            device: device.clone(),
            dtype,
        })
    }

    /// Whether this is an SDXL model (two text encoders, the UNet's addition embedding), base or refiner.
    pub fn is_sdxl(&self) -> bool {
        self.text_encoder_2.is_some()
    }

    /// Whether this is the SDXL refiner: the second text encoder alone, 5 time ids
    /// ([`Sd::encode_prompt_sdxl_refiner`]).
    pub fn is_sdxl_refiner(&self) -> bool {
        self.text_encoder_2.is_some() && self.first.is_none()
    }

    /// How many time ids [`SdxlAdded`] carries per side: 6 for the SDXL base, 5 for the refiner, `None` for
    /// SD 1.x/2.x.
    pub fn time_id_count(&self) -> Option<usize> {
        let text_time = self.unet.text_time()?;
        let pooled = self.pooled_dim()?;
        Some((text_time.input_dim - pooled) / text_time.time_embed_dim.max(1))
    }

    /// SDXL's second tokenizer and text encoder (`CLIPTextModelWithProjection`).
    pub fn text_encoder_2(&self) -> Option<(&ClipTokenizer, &ClipTextTransformer)> {
        self.text_encoder_2
            .as_ref()
            .map(|s| (&s.tokenizer, &s.encoder))
    }

    /// The width of SDXL's pooled text embedding (`text_encoder_2`'s `projection_dim`).
    pub fn pooled_dim(&self) -> Option<usize> {
        self.text_encoder_2
            .as_ref()
            .and_then(|s| s.encoder.config().projection_dim)
    }

    /// InvokeAI's `sdxl_compel_prompt` without the time ids (§10.2): `c1` = the first encoder on `prompt`
    /// (compel's syntax, the penultimate hidden states without the final norm), `c2` and the pooled embedding =
    /// the second encoder on `style`, or on `prompt` when `style` is blank; the pooled embedding is compel's
    /// `get_pooled_embeddings`, the raw text truncated to one window. Empty text gives zeros
    /// ((1, max_position_embeddings, hidden) and (1, hidden)). The shorter of `c1`/`c2` is zero-padded in
    /// length; `embeds` = `cat([c1, c2], -1)`. `skipped_layers_*` drop each encoder's last layers (clip skip);
    /// the pooled embedding comes from the shortened second encoder.
    pub fn encode_prompt_sdxl(
        &self,
        prompt: &str,
        style: &str,
        skipped_layers_1: usize,
        skipped_layers_2: usize,
    ) -> Result<SdxlConditioning, EngineError> {
        self.encode_prompt_sdxl_with_ti(prompt, style, skipped_layers_1, skipped_layers_2, &[])
    }

    /// [`Sd::encode_prompt_sdxl`] with textual-inversion embeddings: each encoder applies those of `embeddings`
    /// whose `<name>` its own text writes (InvokeAI's `run_clip_compel` per encoder), SDXL embeddings with their
    /// `clip_l` vectors in encoder 1 and their `clip_g` vectors in encoder 2.
    pub fn encode_prompt_sdxl_with_ti(
        &self,
        prompt: &str,
        style: &str,
        skipped_layers_1: usize,
        skipped_layers_2: usize,
        embeddings: &[(&str, &TextualInversion)],
    ) -> Result<SdxlConditioning, EngineError> {
        let _span = tracing::debug_span!("encode_prompt_sdxl").entered();
        let Some(second) = &self.text_encoder_2 else {
            return Err(EngineError::InvalidArgument(
                "encode_prompt_sdxl needs an SDXL model".into(),
            ));
        };
        let Some((tokenizer, text_encoder)) = &self.first else {
            return Err(EngineError::InvalidArgument(
                "the SDXL refiner's prompts are encoded with encode_prompt_sdxl_refiner".into(),
            ));
        };
        let c1 = sdxl_states(
            tokenizer,
            text_encoder,
            prompt,
            skipped_layers_1,
            true,
            embeddings,
        )?;
        let text_2 = if style.trim().is_empty() {
            prompt
        } else {
            style
        };
        let c2 = sdxl_states(
            &second.tokenizer,
            &second.encoder,
            text_2,
            skipped_layers_2,
            true,
            embeddings,
        )?;
        let pooled = sdxl_pooled(second, text_2, skipped_layers_2, true, embeddings)?;
        let (l1, l2) = (c1.dim(1)?, c2.dim(1)?);
        let pad = |c: Tensor, to: usize| -> Result<Tensor, EngineError> {
            let (b, l, d) = c.dims3()?;
            if l >= to {
                return Ok(c);
            }
            let zeros = Tensor::zeros((b, to - l, d), DType::F32, c.device())?;
            Ok(Tensor::cat(&[&c, &zeros], 1)?)
        };
        let len = l1.max(l2);
        let embeds = Tensor::cat(&[pad(c1, len)?, pad(c2, len)?], 2)?;
        Ok(SdxlConditioning { embeds, pooled })
    }

    /// InvokeAI's `sdxl_refiner_compel_prompt` without the time ids: the second encoder alone on `style` (its
    /// penultimate hidden states as [`Sd::encode_prompt_sdxl`]'s `c2`, and its pooled embedding). Empty text
    /// is encoded like any other (InvokeAI: `zero_on_empty=False` here). Only for the refiner
    /// ([`Sd::is_sdxl_refiner`]).
    pub fn encode_prompt_sdxl_refiner(
        &self,
        style: &str,
        skipped_layers: usize,
    ) -> Result<SdxlConditioning, EngineError> {
        self.encode_prompt_sdxl_refiner_with_ti(style, skipped_layers, &[])
    }

    /// [`Sd::encode_prompt_sdxl_refiner`] with textual-inversion embeddings (their vectors of the second
    /// encoder's width). InvokeAI finds none for a refiner: no embedding has the refiner's base.
    pub fn encode_prompt_sdxl_refiner_with_ti(
        &self,
        style: &str,
        skipped_layers: usize,
        embeddings: &[(&str, &TextualInversion)],
    ) -> Result<SdxlConditioning, EngineError> {
        let _span = tracing::debug_span!("encode_prompt_sdxl_refiner").entered();
        let (Some(second), None) = (&self.text_encoder_2, &self.first) else {
            return Err(EngineError::InvalidArgument(
                "encode_prompt_sdxl_refiner needs an SDXL refiner model".into(),
            ));
        };
        let embeds = sdxl_states(
            &second.tokenizer,
            &second.encoder,
            style,
            skipped_layers,
            false,
            embeddings,
        )?;
        let pooled = sdxl_pooled(second, style, skipped_layers, false, embeddings)?;
        Ok(SdxlConditioning { embeds, pooled })
    }

    /// Checks a request's SDXL conditioning against the model: `[negative, positive]` (text_embeds, time_ids).
    fn sdxl_added(
        &self,
        sdxl: Option<&SdxlAdded>,
    ) -> Result<Option<[(Tensor, Tensor); 2]>, EngineError> {
        match (self.pooled_dim(), sdxl) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(EngineError::InvalidArgument(
                "SDXL conditioning was given for a model that is not SDXL".into(),
            )),
            (Some(_), None) => Err(EngineError::InvalidArgument(
                "an SDXL model needs the pooled embeddings and time ids (sdxl)".into(),
            )),
            (Some(dim), Some(a)) => {
                let count = self.time_id_count().unwrap_or(6);
                let side = |what: &str, pooled: &Tensor, ids: &[f64]| {
                    if pooled.dims() != [1, dim] {
                        return Err(EngineError::InvalidArgument(format!(
                            "{what} pooled embedding has shape {:?}, expected (1, {dim})",
                            pooled.dims()
                        )));
                    }
                    if ids.len() != count {
                        return Err(EngineError::InvalidArgument(format!(
                            "{what} side has {} time ids, the model takes {count} (the SDXL base 6, \
                             the refiner 5)",
                            ids.len()
                        )));
                    }
                    let ids: Vec<f32> = ids.iter().map(|&v| v as f32).collect();
                    Ok((
                        pooled.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                        Tensor::from_vec(ids, (1, count), &Device::Cpu)?,
                    ))
                };
                Ok(Some([
                    side("negative", &a.negative_pooled, &a.negative_time_ids)?,
                    side("positive", &a.positive_pooled, &a.positive_time_ids)?,
                ]))
            }
        }
    }
}

/// The second encoder's pooled, projected embedding of `text` (compel's `get_pooled_embeddings`: the raw text
/// truncated to one window), zeros (1, hidden) for empty text when `zero_on_empty`.
fn sdxl_pooled(
    second: &SecondEncoder,
    text: &str,
    skipped_layers: usize,
    zero_on_empty: bool,
    embeddings: &[(&str, &TextualInversion)],
) -> Result<Tensor, EngineError> {
    if text.is_empty() && zero_on_empty {
        return Ok(Tensor::zeros(
            (1, second.encoder.config().hidden_size),
            DType::F32,
            &Device::Cpu,
        )?);
    }
    let tok = &second.tokenizer;
    let ti = TiVocabulary::for_text(tok, &second.encoder, text, embeddings)?;
    let mut ids = ti.tokenize(tok, text);
    ids.truncate(tok.max_length().saturating_sub(2));
    let out =
        second
            .encoder
            .forward_extended(&[tok.window(&ids)], None, skipped_layers, ti.rows())?;
    Ok(out
        .pooled
        .ok_or_else(|| EngineError::InvalidModel("text_encoder_2 has no text_projection".into()))?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?)
}

/// One SDXL encoder's part of the conditioning: compel with the penultimate, non-normalized hidden states, or
/// zeros for empty text when `zero_on_empty` (InvokeAI's flag of that name).
fn sdxl_states(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextTransformer,
    text: &str,
    skipped_layers: usize,
    zero_on_empty: bool,
    embeddings: &[(&str, &TextualInversion)],
) -> Result<Tensor, EngineError> {
    if text.is_empty() && zero_on_empty {
        let c = encoder.config();
        return Ok(Tensor::zeros(
            (1, c.max_position_embeddings, c.hidden_size),
            DType::F32,
            &Device::Cpu,
        )?);
    }
    let conjunction = crate::prompt::parse(text)?;
    let ti = TiVocabulary::for_text(tokenizer, encoder, text, embeddings)?;
    crate::prompt::PromptEncoder::new(tokenizer, encoder, skipped_layers)
        .penultimate()
        .with_textual_inversions(&ti)
        .encode(&conjunction)
}
