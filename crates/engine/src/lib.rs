//! The Stable Diffusion engine: everything between a validated generation request and pixels.
//!
//! - [`noise`]: PyTorch-exact CPU random numbers, so that a seed gives InvokeAI's initial latents bit for bit
//!   (spec `generation.md` §10.1).
//! - [`schedulers`]: diffusers-compatible noise schedulers with InvokeAI's per-name overrides (§10.3, §10.6).
//! - [`brownian`]: numpy's `SeedSequence` and torchsde's Brownian interval, the seeded noise of `dpmpp_sde*`.
//! - [`tokenizer`] and [`clip`]: our CLIP BPE tokenizer and text transformer (§10.2).
//! - [`prompt`]: compel's prompt syntax (`word+`, `(phrase)1.3`, `.blend()`, `.and()`) and weighting (§10.2).
//! - [`textual_inversion`]: textual-inversion embeddings (`<name>` in a prompt), read and applied as InvokeAI does.
//! - [`pipeline`]: SD 1.x/2.x/XL on candle — [`pipeline::Sd`] loads a diffusers folder and runs prompt encoding,
//!   the denoising loop, VAE decode and encode with InvokeAI's semantics (§10.3–§10.5); [`pipeline::Vae`] is
//!   the VAE on its own (a model's `vae/` folder, a separate VAE folder or an LDM checkpoint).
//! - [`ldm`]: single-file (original LDM layout) checkpoints: the tensor names and configurations of the VAE,
//!   the UNet, the SD 1.x CLIP and SD 2.x OpenCLIP text encoders, and which family a checkpoint is.
//! - [`convert`]: single-file LDM checkpoints written out as diffusers folders (the model manager's conversion).
//! - [`lora`]: LoRA files (kohya and diffusers/PEFT names) merged into the UNet and text encoder at load.
//! - [`tiny`]: random-weight tiny models in diffusers layout, for tests and benchmarks.
//! - [`tiny_sdxl`]: the same for SDXL (two text encoders, the UNet's addition embedding).
//! - [`unet`]: our UNet (forked from candle's) for SD 1.x, 2.x and XL, with SDXL's addition embedding.
//!
//! The crate never downloads anything and never prints; it reads model files when asked to load them. Errors
//! are [`EngineError`]. CPU f32 is the default; the `cuda` feature forwards to candle's CUDA back end.

pub mod brownian;
pub mod clip;
pub mod config;
pub mod convert;
mod error;
pub mod ldm;
pub mod lora;
pub mod lycoris;
pub mod noise;
pub mod ops;
pub mod pipeline;
pub mod prompt;
pub mod schedulers;
pub mod textual_inversion;
pub mod tiny;
pub mod tiny_sdxl;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use candle_core as candle;
pub use error::EngineError;
pub use pipeline::{SdxlAdded, SdxlConditioning};
