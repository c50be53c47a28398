//! `ddim`: diffusers' `DDIMScheduler` with η = 0 (InvokeAI passes no `eta`), so it is deterministic.
//!
//! Variance-preserving: the UNet sees the latents unscaled and `add_noise` mixes √ᾱ·x with √(1−ᾱ)·ε. The class
//! default spacing is `leading`. The previous timestep is always `t − T/steps` (diffusers' rule, even for
//! `linspace` spacing), and past the start of training it uses ᾱ₀ (`set_alpha_to_one: false`, every SD config).

use super::common::{add_noise_vp, check_len, check_steps, integer_timesteps, TrainSchedule};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// diffusers' `DDIMScheduler`.
pub struct Ddim {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    steps: usize,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            steps: 0,
        })
    }

    fn final_alpha_cumprod(&self) -> f64 {
        if self.config.set_alpha_to_one {
            1.0
        } else {
            f64::from(self.train.alphas_cumprod[0])
        }
    }
}

/// Integer timestep from the f64 the trait carries; DDIM's schedule only holds integers.
fn as_train_index(t: f64) -> Result<i64, EngineError> {
    if t.fract() != 0.0 || !t.is_finite() {
        return Err(EngineError::TimestepNotInSchedule(t));
    }
    Ok(t as i64)
}

impl Scheduler for Ddim {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        check_steps(steps, &self.config)?;
        let spacing = self.config.spacing_or(TimestepSpacing::Leading);
        self.timesteps = integer_timesteps(spacing, steps, &self.config);
        self.steps = steps;
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
        if self.steps == 0 {
            return Err(EngineError::TimestepsNotSet("step"));
        }
        check_len("model_output", model_output, sample.len())?;
        let t = as_train_index(t)?;
        let prev_t = t - (self.config.num_train_timesteps / self.steps) as i64;
        let alpha_t = self.train.alpha_cumprod(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.train.alpha_cumprod(prev_t)?
        } else {
            self.final_alpha_cumprod()
        };
        let beta_t = 1.0 - alpha_t;
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        let direction = (1.0 - alpha_prev).sqrt();
        let sqrt_a_prev = alpha_prev.sqrt();
        let prediction = self.config.prediction_type;
        let clip = self.config.clip_sample;
        Ok(sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let (x, m) = (f64::from(x), f64::from(m));
                let (mut x0, eps) = match prediction {
                    PredictionType::Epsilon => ((x - sqrt_b * m) / sqrt_a, m),
                    PredictionType::VPrediction => {
                        (sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x)
                    }
                };
                if clip {
                    x0 = x0.clamp(-1.0, 1.0);
                }
                (sqrt_a_prev * x0 + direction * eps) as f32
            })
            .collect())
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let alpha = self.train.alpha_cumprod(as_train_index(t)?)?;
        add_noise_vp(original, noise, alpha.sqrt(), (1.0 - alpha).sqrt())
    }
}
