//! Noise schedulers with diffusers semantics and InvokeAI's per-name overrides (spec `generation.md` §10.3, §10.6).
//!
//! Each scheduler follows the diffusers class InvokeAI maps its name to (`invokeai/backend/stable_diffusion/
//! schedulers/schedulers.py`), including the stateful parts the denoise loop relies on:
//!
//! - the step index is found from the first timestep passed to `scale_model_input` or `step` (the *second*
//!   occurrence when a timestep appears twice, as in Heun's schedule) and then advances by one per `step`, so a
//!   loop that starts part-way into the schedule (image to image) works as in diffusers;
//! - values that diffusers keeps as float32 tensors (the training `alphas_cumprod`, the sigmas, float timesteps)
//!   are rounded to f32 at the same points, and the per-element arithmetic runs in f64, which keeps results within
//!   float32 rounding noise of PyTorch's;
//! - stochastic schedulers draw their per-step noise from a [`TorchGenerator`], continuing its stream like
//!   `torch.randn(..., generator=g)`; the denoise loop seeds it with [`crate::noise::stochastic_seed`] through
//!   [`Scheduler::seed_noise`]. `dpmpp_sde*` instead seed their Brownian tree ([`crate::brownian`]) with the seed
//!   itself, as InvokeAI passes it as `noise_sampler_seed`.
//!
//! [`by_name`] knows every name of §10.6 and builds each of them; names outside that list are refused.

mod common;
mod ddim;
mod ddpm;
mod deis;
mod dpm_multistep;
mod dpm_sde;
mod dpm_singlestep;
mod er_sde;
mod euler;
mod heun;
mod kdpm2;
mod lcm;
mod lms;
mod pndm;
mod unipc;

use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// What the model predicts (diffusers `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε (SD 1.x, SD 2.x base, SDXL).
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768-v models).
    VPrediction,
}

/// How inference timesteps are spread over the training range (diffusers `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly from the last training step down to 0.
    Linspace,
    /// Multiples of `num_train_timesteps / steps`, plus `steps_offset`.
    Leading,
    /// Evenly from the end, minus one.
    Trailing,
}

/// The training beta schedule (diffusers `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// Betas linear in β.
    Linear,
    /// Betas linear in √β, then squared (Stable Diffusion).
    ScaledLinear,
}

/// Which formula `add_noise` uses (§10.3 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseFamily {
    /// `x + σ·noise` (`euler*`, `heun*`, `lms*`, `kdpm_2*`, `dpmpp_sde*`).
    VarianceExploding,
    /// `√ᾱ·x + √(1−ᾱ)·noise` (`ddim`, `ddpm`, `pndm`, `deis*`, `dpmpp_2s*`, `dpmpp_*m*`, `unipc*`, `er_sde`,
    /// `lcm`, `tcd`).
    VariancePreserving,
}

/// A model's scheduler configuration (its diffusers `scheduler_config.json`) before the per-name overrides.
///
/// `timestep_spacing: None` means the model's file does not set it; diffusers then uses the scheduler class's
/// own default (`leading` for DDIM, DDPM and PNDM, `linspace` for the others). InvokeAI inherits this: with
/// SD 1.5's file, which has no `timestep_spacing`, `euler` runs `linspace` spacing while `ddim` runs `leading`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Training steps (1000 for every SD family).
    pub num_train_timesteps: usize,
    /// First training beta.
    pub beta_start: f64,
    /// Last training beta.
    pub beta_end: f64,
    /// How the betas run between the two.
    pub beta_schedule: BetaSchedule,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// The spacing the model's config sets, or `None` for the class default.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// What the UNet predicts.
    pub prediction_type: PredictionType,
    /// DDIM/DDPM: clamp the predicted x₀ to [−1, 1]. Every SD config sets `false`.
    pub clip_sample: bool,
    /// DDIM/PNDM: use ᾱ = 1 after the last step instead of ᾱ₀. Every SD config sets `false`.
    pub set_alpha_to_one: bool,
    /// Karras sigmas (the `_k` names turn it on).
    pub use_karras_sigmas: bool,
    /// Order of the DPM-Solver-style solvers (`dpmpp_2m`, `dpmpp_2s`, UniPC: 2; `dpmpp_3m`, `er_sde`: 3).
    pub solver_order: usize,
}

impl SchedulerConfig {
    /// SD 1.x: `stable-diffusion-v1-5/scheduler/scheduler_config.json` (a PNDMScheduler config without
    /// `timestep_spacing` or `prediction_type`).
    pub fn sd15() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            timestep_spacing: None,
            prediction_type: PredictionType::Epsilon,
            clip_sample: false,
            set_alpha_to_one: false,
            use_karras_sigmas: false,
            solver_order: 2,
        }
    }

    /// SD 2.x 768-v: `stable-diffusion-2-1/scheduler/scheduler_config.json` (a DDIMScheduler config with
    /// `prediction_type: v_prediction` and no `timestep_spacing`).
    pub fn sd2_v() -> Self {
        Self {
            prediction_type: PredictionType::VPrediction,
            ..Self::sd15()
        }
    }

    /// SDXL: `stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json` (an EulerDiscreteScheduler config
    /// with `timestep_spacing: leading`).
    pub fn sdxl() -> Self {
        Self {
            timestep_spacing: Some(TimestepSpacing::Leading),
            ..Self::sd15()
        }
    }

    pub(crate) fn spacing_or(&self, class_default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(class_default)
    }
}

impl Default for SchedulerConfig {
    /// The training parameters shared by SD 1.x/2.x/XL with explicit `leading` spacing (SDXL's config).
    fn default() -> Self {
        Self::sdxl()
    }
}

/// A noise scheduler as the denoise loop drives it (diffusers semantics).
pub trait Scheduler: Send {
    /// Computes the schedule for `steps` inference steps and resets all per-run state.
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError>;
    /// The descending timesteps of the current schedule (values as the UNet receives them; Euler-family
    /// schedulers may have fractional ones).
    fn timesteps(&self) -> &[f64];
    /// The sigmas of the current schedule when the scheduler keeps them (all but DDIM).
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    /// How many entries of `timesteps()` one inference step uses (2 for Heun, 1 otherwise).
    fn order(&self) -> usize {
        1
    }
    /// diffusers' `init_noise_sigma` (InvokeAI does not apply it; see §10.3).
    fn init_noise_sigma(&self) -> f64;
    /// Which `add_noise` formula this scheduler uses.
    fn noise_family(&self) -> NoiseFamily;
    /// Scales the latents before the UNet call at timestep `t`.
    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError>;
    /// One denoising step: the UNet's output at `t` and the current latents give the next latents.
    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError>;
    /// Noises clean latents to the level of timestep `t`.
    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError>;
    /// Whether `step` draws random noise.
    fn is_stochastic(&self) -> bool {
        false
    }
    /// Replaces the generator the per-step noise comes from (ignored by deterministic schedulers and by
    /// `dpmpp_sde*`). Until this is called, stochastic schedulers use `TorchGenerator::new(stochastic_seed(0))`.
    fn set_noise_generator(&mut self, _generator: TorchGenerator) {}
    /// Seeds the per-step noise from the generation seed as InvokeAI does (§10.1): a generator seeded with
    /// `seed ^ 0xFFFFFFFF` for the schedulers that take one, the seed itself for the `dpmpp_sde*` Brownian tree
    /// (which otherwise uses InvokeAI's default seed 0).
    fn seed_noise(&mut self, seed: u32) {
        if self.is_stochastic() {
            self.set_noise_generator(TorchGenerator::new(u64::from(stochastic_seed(seed))));
        }
    }
}

/// Every scheduler name InvokeAI accepts, in its own order (§10.6).
pub const SCHEDULER_NAMES: [&str; 31] = [
    "ddim",
    "ddpm",
    "deis",
    "deis_k",
    "lms",
    "lms_k",
    "pndm",
    "heun",
    "heun_k",
    "euler",
    "euler_k",
    "euler_a",
    "kdpm_2",
    "kdpm_2_k",
    "kdpm_2_a",
    "kdpm_2_a_k",
    "dpmpp_2s",
    "dpmpp_2s_k",
    "dpmpp_2m",
    "dpmpp_2m_k",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_k",
    "dpmpp_3m",
    "dpmpp_3m_k",
    "dpmpp_sde",
    "dpmpp_sde_k",
    "er_sde",
    "unipc",
    "unipc_k",
    "lcm",
    "tcd",
];

/// The names [`by_name`] can build (all of [`SCHEDULER_NAMES`]).
pub const IMPLEMENTED_SCHEDULERS: [&str; 31] = [
    "euler",
    "euler_k",
    "euler_a",
    "ddim",
    "dpmpp_2m",
    "dpmpp_2m_k",
    "dpmpp_3m",
    "dpmpp_3m_k",
    "lms",
    "lms_k",
    "heun",
    "heun_k",
    "unipc",
    "unipc_k",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_k",
    "ddpm",
    "pndm",
    "kdpm_2",
    "kdpm_2_k",
    "kdpm_2_a",
    "kdpm_2_a_k",
    "deis",
    "deis_k",
    "dpmpp_2s",
    "dpmpp_2s_k",
    "lcm",
    "tcd",
    "er_sde",
    "dpmpp_sde",
    "dpmpp_sde_k",
];

/// Whether [`by_name`] can build `name`.
pub fn is_implemented(name: &str) -> bool {
    IMPLEMENTED_SCHEDULERS.contains(&name)
}

/// Builds the scheduler InvokeAI uses for `name` from the model's scheduler config, applying the per-name
/// overrides of §10.6 (Karras sigmas for `_k`, the DPM-Solver order). The caller still sets the prediction
/// type in `config` from the model and calls `set_timesteps`.
pub fn by_name(name: &str, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>, EngineError> {
    if !SCHEDULER_NAMES.contains(&name) {
        return Err(EngineError::UnknownScheduler(name.to_string()));
    }
    let karras = name.ends_with("_k");
    let with = |use_karras_sigmas: bool, solver_order: usize| SchedulerConfig {
        use_karras_sigmas,
        solver_order,
        ..config.clone()
    };
    let scheduler: Box<dyn Scheduler> = match name {
        "euler" | "euler_k" => Box::new(euler::EulerDiscrete::new(&with(karras, 2))?),
        "euler_a" => Box::new(euler::EulerAncestral::new(config)?),
        "ddim" => Box::new(ddim::Ddim::new(config)?),
        "dpmpp_2m" | "dpmpp_2m_k" => Box::new(dpm_multistep::DpmSolverMultistep::new(
            &with(karras, 2),
            dpm_multistep::Algorithm::DpmSolverPlusPlus,
        )?),
        "dpmpp_2m_sde" | "dpmpp_2m_sde_k" => Box::new(dpm_multistep::DpmSolverMultistep::new(
            &with(karras, 2),
            dpm_multistep::Algorithm::SdeDpmSolverPlusPlus,
        )?),
        "dpmpp_3m" | "dpmpp_3m_k" => Box::new(dpm_multistep::DpmSolverMultistep::new(
            &with(karras, 3),
            dpm_multistep::Algorithm::DpmSolverPlusPlus,
        )?),
        "lms" | "lms_k" => Box::new(lms::LmsDiscrete::new(&with(karras, 2))?),
        "heun" | "heun_k" => Box::new(heun::HeunDiscrete::new(&with(karras, 2))?),
        "unipc" | "unipc_k" => Box::new(unipc::UniPcMultistep::new(&with(karras, 2))?),
        "ddpm" => Box::new(ddpm::Ddpm::new(config)?),
        "deis" | "deis_k" => Box::new(deis::DeisMultistep::new(&with(karras, 2))?),
        "pndm" => Box::new(pndm::Pndm::new(config)?),
        "kdpm_2" | "kdpm_2_k" => Box::new(kdpm2::Kdpm2::new(&with(karras, 2), false)?),
        "kdpm_2_a" | "kdpm_2_a_k" => Box::new(kdpm2::Kdpm2::new(&with(karras, 2), true)?),
        "dpmpp_2s" | "dpmpp_2s_k" => {
            Box::new(dpm_singlestep::DpmSolverSinglestep::new(&with(karras, 2))?)
        }
        "lcm" => Box::new(lcm::Lcm::new(config)?),
        // InvokeAI steps TCD with eta = 1.
        "tcd" => Box::new(lcm::Tcd::new(config, 1.0)?),
        // InvokeAI's ERSDEScheduler for SD models: third order, VP sigmas, stochastic.
        "er_sde" => Box::new(er_sde::ErSde::new(&with(false, 3), true)?),
        "dpmpp_sde" | "dpmpp_sde_k" => Box::new(dpm_sde::DpmSolverSde::new(&with(karras, 2))?),
        _ => return Err(EngineError::UnsupportedScheduler(name.to_string())),
    };
    Ok(scheduler)
}

/// The part of a schedule that one `denoise_latents` call runs (§10.3 step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestepSlice {
    /// First index into the full schedule.
    pub start: usize,
    /// One past the last index (≤ the schedule's length).
    pub end: usize,
    /// Index of the timestep passed to `add_noise` (`start`), or `None` when `start` is past the end.
    pub init_index: Option<usize>,
}

impl TimestepSlice {
    /// Whether no step runs (the input latents are then returned unchanged).
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// InvokeAI's `init_scheduler` slicing for `denoising_start`/`denoising_end`: count, over every `order`-th entry,
/// those ≥ round(T·(1 − start)) to skip and then those ≥ round(T·(1 − end)) to keep, multiply both counts by the
/// order and take the full schedule's `[skip, skip + keep)` (clamped to its length).
pub fn slice_timesteps(
    timesteps: &[f64],
    order: usize,
    num_train_timesteps: usize,
    denoising_start: f64,
    denoising_end: f64,
) -> TimestepSlice {
    let order = order.max(1);
    let first_order: Vec<f64> = timesteps.iter().copied().step_by(order).collect();
    // Python's round() rounds halves to even, and the product is computed in f64 exactly as in Python.
    let train = num_train_timesteps as f64;
    let start_value = (train * (1.0 - denoising_start)).round_ties_even();
    let end_value = (train * (1.0 - denoising_end)).round_ties_even();
    let skip = first_order.iter().filter(|&&t| t >= start_value).count();
    let keep = first_order[skip..]
        .iter()
        .filter(|&&t| t >= end_value)
        .count();
    let start = (skip * order).min(timesteps.len());
    let end = (skip * order + keep * order).min(timesteps.len());
    TimestepSlice {
        start,
        end,
        init_index: (start < timesteps.len()).then_some(start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_known_and_unimplemented_ones_are_refused_with_the_api_message() {
        let config = SchedulerConfig::default();
        for name in SCHEDULER_NAMES {
            match by_name(name, &config) {
                Ok(_) => assert!(is_implemented(name), "{name} built but not listed"),
                Err(e) => {
                    assert!(!is_implemented(name), "{name} listed but not built: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("scheduler '{name}' is not supported by this server")
                    );
                }
            }
        }
        for name in IMPLEMENTED_SCHEDULERS {
            assert!(SCHEDULER_NAMES.contains(&name), "{name}");
        }
        // Every name InvokeAI accepts is implemented now.
        for name in SCHEDULER_NAMES {
            assert!(is_implemented(name), "{name}");
        }
        assert!(matches!(
            by_name("nope", &config),
            Err(EngineError::UnknownScheduler(_))
        ));
    }

    #[test]
    fn names_get_invokeai_overrides() {
        let config = SchedulerConfig::default();
        let mut s = by_name("dpmpp_3m_k", &config).unwrap();
        s.set_timesteps(10).unwrap();
        // Karras timesteps for 10 steps start at the top of the training range.
        assert_eq!(s.timesteps()[0], 999.0);
        let mut plain = by_name("dpmpp_3m", &config).unwrap();
        plain.set_timesteps(10).unwrap();
        assert_ne!(s.timesteps(), plain.timesteps());
        assert!(by_name("euler_a", &config).unwrap().is_stochastic());
        assert!(!by_name("euler", &config).unwrap().is_stochastic());
        for name in ["lcm", "tcd", "er_sde", "dpmpp_sde", "dpmpp_sde_k"] {
            assert!(by_name(name, &config).unwrap().is_stochastic(), "{name}");
        }
        assert!(!by_name("dpmpp_2s_k", &config).unwrap().is_stochastic());
    }

    #[test]
    fn default_slice_keeps_everything() {
        let ts = [981.0, 961.0, 941.0, 1.0];
        let s = slice_timesteps(&ts, 1, 1000, 0.0, 1.0);
        assert_eq!(
            s,
            TimestepSlice {
                start: 0,
                end: 4,
                init_index: Some(0)
            }
        );
    }

    #[test]
    fn strength_skips_the_noisiest_part() {
        // 10 leading steps: 901, 801, ..., 1. denoising_start 0.25 → skip those ≥ 750.
        let ts: Vec<f64> = (0..10).rev().map(|i| f64::from(i) * 100.0 + 1.0).collect();
        let s = slice_timesteps(&ts, 1, 1000, 0.25, 1.0);
        assert_eq!((s.start, s.end, s.init_index), (2, 10, Some(2)));
        // denoising_end 0.5 → keep those ≥ 500 after the skip.
        let s = slice_timesteps(&ts, 1, 1000, 0.25, 0.5);
        assert_eq!((s.start, s.end), (2, 5));
        // Everything skipped: empty, no init timestep.
        let s = slice_timesteps(&ts, 1, 1000, 1.0, 1.0);
        assert!(s.is_empty());
        assert_eq!(s.init_index, None);
    }

    #[test]
    fn second_order_slices_use_pairs() {
        // Heun-style schedule: t0, t1, t1, t2, t2.
        let ts = [999.0, 666.0, 666.0, 333.0, 333.0];
        let s = slice_timesteps(&ts, 2, 1000, 0.0, 1.0);
        assert_eq!((s.start, s.end), (0, 5));
        let s = slice_timesteps(&ts, 2, 1000, 0.5, 1.0);
        // First-order entries 999, 666, 333: two are ≥ 500, so skip 2 pairs → start 4.
        assert_eq!((s.start, s.end, s.init_index), (4, 5, Some(4)));
    }

    #[test]
    fn python_rounding_is_half_to_even() {
        // 1000 · (1 − 0.0005) = 999.5 rounds to 1000 in Python, so 999 is not skipped.
        let ts = [999.0, 500.0];
        let s = slice_timesteps(&ts, 1, 1000, 0.0005, 1.0);
        assert_eq!(s.start, 0);
    }
}
