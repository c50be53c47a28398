//! The Stable Diffusion engine: everything between a validated generation request and latents.
//!
//! So far this crate holds the two parts that need no neural network:
//!
//! - [`noise`]: PyTorch-exact CPU random numbers (MT19937 plus `torch.randn`'s Box-Muller layout), so that a
//!   seed gives InvokeAI's initial latents bit for bit (spec `generation.md` §10.1).
//! - [`schedulers`]: diffusers-compatible noise schedulers with InvokeAI's per-name overrides (§10.3, §10.6).
//!
//! The crate is a pure library: no I/O, no printing, errors as [`EngineError`]. Latents are plain `f32` slices
//! in row-major (N, C, H, W) order; the UNet call sits outside the schedulers.

mod error;
pub mod noise;
pub mod schedulers;

pub use error::EngineError;
