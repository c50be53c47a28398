//! `pndm`: diffusers' `PNDMScheduler` with `skip_prk_steps: true` (what every SD 1.x/2.x/XL scheduler config
//! sets), i.e. pseudo linear multistep (PLMS) steps only.
//!
//! Variance-preserving, class default spacing `leading`. The schedule repeats the second timestep
//! (t₀, t₁, t₁, t₂, …, steps + 1 entries): the first two calls form a second-order warm-up (an Euler-like step
//! from t₀ to t₁, then a step from the remembered sample at t₀ using the average of both outputs), after which
//! the model outputs are combined by Adams–Bashforth formulas of up to fourth order. Like diffusers, the state is
//! a call counter, not a lookup of the timestep.

use super::common::{add_noise_vp, check_len, check_steps, integer_timesteps, TrainSchedule};
use super::ddpm::as_train_index;
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// diffusers' `PNDMScheduler` (PLMS path).
pub struct Pndm {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    steps: usize,
    counter: usize,
    /// The last (up to four) model outputs.
    ets: Vec<Vec<f64>>,
    cur_sample: Option<Vec<f64>>,
}

impl Pndm {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            steps: 0,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
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

impl Scheduler for Pndm {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        check_steps(steps, &self.config)?;
        let spacing = self.config.spacing_or(TimestepSpacing::Leading);
        // Descending; diffusers' `_timesteps` is this ascending.
        let base = integer_timesteps(spacing, steps, &self.config);
        let mut timesteps = Vec::with_capacity(steps + 1);
        timesteps.push(base[0]);
        if steps > 1 {
            timesteps.push(base[1]);
        }
        timesteps.extend_from_slice(&base[1..]);
        self.timesteps = timesteps;
        self.steps = steps;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
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
        let ratio = (self.config.num_train_timesteps / self.steps) as i64;
        let mut timestep = as_train_index(t)?;
        let mut prev_timestep = timestep - ratio;
        let output: Vec<f64> = model_output.iter().map(|&m| f64::from(m)).collect();
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(output.clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio;
        }
        let mut x: Vec<f64> = sample.iter().map(|&v| f64::from(v)).collect();
        let e = &self.ets;
        let n = e.len();
        let combined: Vec<f64> = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(x.clone());
            output
        } else if n == 1 && self.counter == 1 {
            let kept = self.cur_sample.take().unwrap_or_default();
            if kept.len() != x.len() {
                return Err(EngineError::LengthMismatch {
                    what: "sample (changed between PNDM warm-up steps)",
                    expected: kept.len(),
                    actual: x.len(),
                });
            }
            x = kept;
            output
                .iter()
                .zip(&e[0])
                .map(|(&m, &p)| (m + p) / 2.0)
                .collect()
        } else if n == 2 {
            (0..x.len())
                .map(|k| (3.0 * e[1][k] - e[0][k]) / 2.0)
                .collect()
        } else if n == 3 {
            (0..x.len())
                .map(|k| (23.0 * e[2][k] - 16.0 * e[1][k] + 5.0 * e[0][k]) / 12.0)
                .collect()
        } else {
            (0..x.len())
                .map(|k| (55.0 * e[3][k] - 59.0 * e[2][k] + 37.0 * e[1][k] - 9.0 * e[0][k]) / 24.0)
                .collect()
        };
        let alpha_t = self.train.alpha_cumprod(timestep)?;
        let alpha_prev = if prev_timestep >= 0 {
            self.train.alpha_cumprod(prev_timestep)?
        } else {
            self.final_alpha_cumprod()
        };
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let diff = alpha_prev - alpha_t;
        let prediction = self.config.prediction_type;
        let out = x
            .iter()
            .zip(&combined)
            .map(|(&x, &m)| {
                let m = match prediction {
                    PredictionType::Epsilon => m,
                    PredictionType::VPrediction => alpha_t.sqrt() * m + beta_t.sqrt() * x,
                };
                (sample_coeff * x - diff * m / denom) as f32
            })
            .collect();
        self.counter += 1;
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let alpha = self.train.alpha_cumprod(as_train_index(t)?)?;
        add_noise_vp(original, noise, alpha.sqrt(), (1.0 - alpha).sqrt())
    }
}
