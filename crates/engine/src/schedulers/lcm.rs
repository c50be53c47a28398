//! Consistency-model samplers: `lcm` (diffusers' `LCMScheduler`) and `tcd` (diffusers' `TCDScheduler`, which
//! InvokeAI steps with `eta = 1`).
//!
//! Both pick their timesteps from the distillation schedule of `original_inference_steps` (50) evenly spaced
//! training steps `k − 1, 2k − 1, …, 999` (k = 1000 / 50), taking `steps` of them from the top at evenly spaced
//! indices; the model's `timestep_spacing` and `steps_offset` play no part, and more than 50 steps is an error.
//! Both are variance-preserving and stochastic: every step except the schedule's last predicts a clean (LCM) or
//! less noisy (TCD) sample and re-noises it to the next timestep with fresh noise from the generator. The step
//! index is found from the first timestep like the Euler family (an absent timestep is an error).

use super::common::{add_noise_vp, check_len, index_for_timestep, TrainSchedule};
use super::ddpm::as_train_index;
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// diffusers' default `original_inference_steps` for both classes (the distillation schedule's length).
const ORIGINAL_INFERENCE_STEPS: usize = 50;

/// LCM's `timestep_scaling` for the boundary-condition scalings.
const TIMESTEP_SCALING: f64 = 10.0;

/// The inference timesteps of `LCMScheduler`/`TCDScheduler.set_timesteps(steps)` (strength 1).
fn consistency_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<f64>, EngineError> {
    let train = config.num_train_timesteps;
    let original = ORIGINAL_INFERENCE_STEPS;
    if original > train {
        return Err(EngineError::InvalidArgument(format!(
            "original_inference_steps {original} exceeds num_train_timesteps {train}"
        )));
    }
    if steps == 0 || steps > original {
        return Err(EngineError::InvalidArgument(format!(
            "steps must be between 1 and {original} for this scheduler, got {steps}"
        )));
    }
    let k = train / original;
    // The distillation schedule, highest first.
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    // np.floor(np.linspace(0, len, steps, endpoint=False)).
    let stride = origin.len() as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| origin[(i as f64 * stride).floor() as usize] as f64)
        .collect())
}

/// The state both samplers share.
struct Consistency {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    step_index: Option<usize>,
    generator: TorchGenerator,
}

impl Consistency {
    fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            step_index: None,
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
        })
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.timesteps = consistency_timesteps(&self.config, steps)?;
        self.step_index = None;
        Ok(())
    }

    /// The step index for a `step` call at `t` (found from `t` on first use) and whether it is the last step of
    /// the schedule.
    fn index(&mut self, t: f64) -> Result<(usize, bool), EngineError> {
        if self.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("step"));
        }
        let i = match self.step_index {
            Some(i) => i,
            None => index_for_timestep(&self.timesteps, t)
                .ok_or(EngineError::TimestepNotInSchedule(t))?,
        };
        let n = self.timesteps.len();
        if i >= n {
            return Err(EngineError::ScheduleExhausted(n));
        }
        Ok((i, i == n - 1))
    }

    /// ᾱ at `t` as diffusers holds it (float32), and 1 − ᾱ computed in float32.
    fn alpha_beta(&self, t: f64) -> Result<(f64, f64), EngineError> {
        let a = self.train.alpha_cumprod(as_train_index(t)?)? as f32;
        Ok((f64::from(a), f64::from(1.0f32 - a)))
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let (alpha, beta) = self.alpha_beta(t)?;
        add_noise_vp(original, noise, alpha.sqrt(), beta.sqrt())
    }
}

/// x₀ and ε predicted from the model output at ᾱ (as √ᾱ, √(1 − ᾱ)).
fn predict(prediction: PredictionType, x: f64, out: f64, sqrt_a: f64, sqrt_b: f64) -> (f64, f64) {
    match prediction {
        PredictionType::Epsilon => ((x - sqrt_b * out) / sqrt_a, out),
        PredictionType::VPrediction => (sqrt_a * x - sqrt_b * out, sqrt_a * out + sqrt_b * x),
    }
}

/// diffusers' `LCMScheduler`.
pub struct Lcm {
    state: Consistency,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            state: Consistency::new(config)?,
        })
    }
}

impl Scheduler for Lcm {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.state.set_timesteps(steps)
    }

    fn timesteps(&self) -> &[f64] {
        &self.state.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VariancePreserving
    }

    fn scale_model_input(&mut self, sample: &[f32], _t: f64) -> Result<Vec<f32>, EngineError> {
        Ok(sample.to_vec())
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let (i, last) = self.state.index(t)?;
        // After the last step the "previous" timestep is the current one (it only matters for the noise, which
        // the last step does not add).
        let prev_t = self.state.timesteps.get(i + 1).copied().unwrap_or(t);
        let (alpha_t, beta_t) = self.state.alpha_beta(t)?;
        let (alpha_prev, beta_prev) = self.state.alpha_beta(prev_t)?;
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        // Boundary-condition scalings with σ_data = 0.5.
        let scaled = t * TIMESTEP_SCALING;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let noise = if last {
            Vec::new()
        } else {
            self.state.generator.randn(sample.len())
        };
        let (prediction, clip) = (
            self.state.config.prediction_type,
            self.state.config.clip_sample,
        );
        let out = sample
            .iter()
            .zip(model_output)
            .enumerate()
            .map(|(k, (&x, &m))| {
                let x = f64::from(x);
                let (mut x0, _) = predict(prediction, x, f64::from(m), sqrt_a, sqrt_b);
                if clip {
                    x0 = x0.clamp(-1.0, 1.0);
                }
                let denoised = c_out * x0 + c_skip * x;
                match noise.get(k) {
                    Some(&z) => {
                        (alpha_prev.sqrt() * denoised + beta_prev.sqrt() * f64::from(z)) as f32
                    }
                    None => denoised as f32,
                }
            })
            .collect();
        self.state.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.state.add_noise(original, noise, t)
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.state.generator = generator;
    }
}

/// diffusers' `TCDScheduler`, stepped with a fixed `eta` (InvokeAI passes 1).
pub struct Tcd {
    state: Consistency,
    eta: f64,
}

impl Tcd {
    /// The stochasticity `eta` (γ in the paper) must lie in [0, 1].
    pub fn new(config: &SchedulerConfig, eta: f64) -> Result<Self, EngineError> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(EngineError::InvalidArgument(format!(
                "TCD eta must be between 0 and 1, got {eta}"
            )));
        }
        Ok(Self {
            state: Consistency::new(config)?,
            eta,
        })
    }
}

impl Scheduler for Tcd {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.state.set_timesteps(steps)
    }

    fn timesteps(&self) -> &[f64] {
        &self.state.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VariancePreserving
    }

    fn scale_model_input(&mut self, sample: &[f32], _t: f64) -> Result<Vec<f32>, EngineError> {
        Ok(sample.to_vec())
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let (i, last) = self.state.index(t)?;
        let prev_t = self.state.timesteps.get(i + 1).copied().unwrap_or(0.0);
        // floor((1 − eta)·t_prev), computed on a float32 tensor.
        let s_t = f64::from(((1.0 - self.eta) as f32 * prev_t as f32).floor());
        let (alpha_t, beta_t) = self.state.alpha_beta(t)?;
        let (alpha_prev, _) = self.state.alpha_beta(prev_t)?;
        let (alpha_s, beta_s) = self.state.alpha_beta(s_t)?;
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        let (sqrt_as, sqrt_bs) = (alpha_s.sqrt(), beta_s.sqrt());
        let noise = if self.eta > 0.0 && !last {
            self.state.generator.randn(sample.len())
        } else {
            Vec::new()
        };
        // √(ᾱ_prev/ᾱ_s) and √(1 − ᾱ_prev/ᾱ_s), the ratio and difference in float32 as in diffusers.
        let ratio = alpha_prev as f32 / alpha_s as f32;
        let keep = f64::from(ratio).sqrt();
        let fresh = f64::from(1.0f32 - ratio).sqrt();
        let prediction = self.state.config.prediction_type;
        let out = sample
            .iter()
            .zip(model_output)
            .enumerate()
            .map(|(k, (&x, &m))| {
                let (x0, eps) = predict(prediction, f64::from(x), f64::from(m), sqrt_a, sqrt_b);
                let noised = sqrt_as * x0 + sqrt_bs * eps;
                match noise.get(k) {
                    Some(&z) => (keep * noised + fresh * f64::from(z)) as f32,
                    None => noised as f32,
                }
            })
            .collect();
        self.state.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.state.add_noise(original, noise, t)
    }

    fn is_stochastic(&self) -> bool {
        self.eta > 0.0
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.state.generator = generator;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_come_from_the_distillation_schedule() {
        let config = SchedulerConfig::sdxl();
        assert_eq!(
            consistency_timesteps(&config, 4).unwrap(),
            [999.0, 759.0, 499.0, 259.0]
        );
        assert_eq!(consistency_timesteps(&config, 1).unwrap(), [999.0]);
        let fifty = consistency_timesteps(&config, 50).unwrap();
        assert_eq!((fifty[0], fifty[49]), (999.0, 19.0));
        assert!(consistency_timesteps(&config, 51).is_err());
        assert!(consistency_timesteps(&config, 0).is_err());
    }

    #[test]
    fn tcd_eta_is_checked() {
        let config = SchedulerConfig::sdxl();
        assert!(Tcd::new(&config, 1.5).is_err());
        assert!(!Tcd::new(&config, 0.0).unwrap().is_stochastic());
        assert!(Tcd::new(&config, 0.3).unwrap().is_stochastic());
    }
}
