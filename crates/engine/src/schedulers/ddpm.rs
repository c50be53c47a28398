//! `ddpm`: diffusers' `DDPMScheduler` (`variance_type: fixed_small`, InvokeAI passes nothing else), a stochastic
//! ancestral sampler.
//!
//! Variance-preserving like DDIM, with the class default spacing `leading`. The previous timestep is the next
//! entry of the schedule (ᾱ = 1 after the last); every step with t > 0 draws fresh noise from the generator and
//! adds it with the posterior's standard deviation.

use super::common::{add_noise_vp, check_len, check_steps, integer_timesteps, TrainSchedule};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// Integer timestep from the f64 the trait carries.
pub(crate) fn as_train_index(t: f64) -> Result<i64, EngineError> {
    if t.fract() != 0.0 || !t.is_finite() {
        return Err(EngineError::TimestepNotInSchedule(t));
    }
    Ok(t as i64)
}

/// diffusers' `DDPMScheduler`.
pub struct Ddpm {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    generator: TorchGenerator,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
        })
    }
}

impl Scheduler for Ddpm {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        check_steps(steps, &self.config)?;
        let spacing = self.config.spacing_or(TimestepSpacing::Leading);
        self.timesteps = integer_timesteps(spacing, steps, &self.config);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        if self.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("step"));
        }
        check_len("model_output", model_output, sample.len())?;
        let index = self
            .timesteps
            .iter()
            .position(|&s| s == t)
            .ok_or(EngineError::TimestepNotInSchedule(t))?;
        let ti = as_train_index(t)?;
        let alpha_t = self.train.alpha_cumprod(ti)?;
        let alpha_prev = match self.timesteps.get(index + 1) {
            Some(&prev) => self.train.alpha_cumprod(as_train_index(prev)?)?,
            None => 1.0,
        };
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let x0_coeff = alpha_prev.sqrt() * current_beta / beta_t;
        let x_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        let std = (beta_prev / beta_t * current_beta).max(1e-20).sqrt();
        let noise = if ti > 0 {
            self.generator.randn(sample.len())
        } else {
            Vec::new()
        };
        let prediction = self.config.prediction_type;
        let clip = self.config.clip_sample;
        Ok(sample
            .iter()
            .zip(model_output)
            .enumerate()
            .map(|(k, (&x, &m))| {
                let (x, m) = (f64::from(x), f64::from(m));
                let mut x0 = match prediction {
                    PredictionType::Epsilon => (x - sqrt_b * m) / sqrt_a,
                    PredictionType::VPrediction => sqrt_a * x - sqrt_b * m,
                };
                if clip {
                    x0 = x0.clamp(-1.0, 1.0);
                }
                let prev = (x0_coeff * x0 + x_coeff * x) as f32;
                match noise.get(k) {
                    Some(&n) => (f64::from(prev) + std * f64::from(n)) as f32,
                    None => prev,
                }
            })
            .collect())
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let alpha = self.train.alpha_cumprod(as_train_index(t)?)?;
        add_noise_vp(original, noise, alpha.sqrt(), (1.0 - alpha).sqrt())
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.generator = generator;
    }
}
