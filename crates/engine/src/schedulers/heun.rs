//! `heun`, `heun_k`: diffusers' `HeunDiscreteScheduler`, a second-order scheduler (order 2).
//!
//! The schedule repeats every timestep but the first (t₀, t₁, t₁, t₂, t₂, …) and every sigma but the first and
//! last, so the denoise loop calls the UNet twice per inference step. A call with no pending Euler step is the
//! predictor (an Euler step, remembered); the next call is the corrector, which averages both derivatives and
//! restarts from the remembered sample. The predictor/corrector state, not the timestep, decides which one runs.

use super::common::{check_len, scale_by_sigma, TrainSchedule};
use super::euler::{predict_x0, SigmaSchedule};
use super::{NoiseFamily, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// The predictor's results that the corrector needs.
struct Pending {
    derivative: Vec<f64>,
    dt: f64,
    sample: Vec<f64>,
}

/// diffusers' `HeunDiscreteScheduler` (`s_churn` 0, no clipping).
pub struct HeunDiscrete {
    config: SchedulerConfig,
    train: TrainSchedule,
    schedule: SigmaSchedule,
    pending: Option<Pending>,
}

impl HeunDiscrete {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            schedule: SigmaSchedule::default(),
            pending: None,
        })
    }
}

impl Scheduler for HeunDiscrete {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let base = SigmaSchedule::build(&self.train, &self.config, steps)?;
        let mut timesteps = Vec::with_capacity(2 * steps);
        for (k, &t) in base.timesteps.iter().enumerate() {
            timesteps.push(t);
            if k > 0 {
                timesteps.push(t);
            }
        }
        let last = base.sigmas.len() - 1;
        let mut sigmas = Vec::with_capacity(2 * steps + 1);
        for (k, &s) in base.sigmas.iter().enumerate() {
            sigmas.push(s);
            if k > 0 && k < last {
                sigmas.push(s);
            }
        }
        self.schedule = SigmaSchedule {
            timesteps,
            sigmas,
            step_index: None,
        };
        self.pending = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.schedule.sigmas)
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule
            .init_noise_sigma(self.config.spacing_or(TimestepSpacing::Linspace))
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VarianceExploding
    }

    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let i = self.schedule.index(t)?;
        Ok(scale_by_sigma(sample, self.schedule.sigmas[i]))
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let i = self.schedule.step_index(t)?;
        let prediction = self.config.prediction_type;
        let sigmas = &self.schedule.sigmas;
        let out = match self.pending.take() {
            None => {
                let sigma = sigmas[i];
                let dt = sigmas[i + 1] - sigma;
                let mut derivative = Vec::with_capacity(sample.len());
                let mut kept = Vec::with_capacity(sample.len());
                let out = sample
                    .iter()
                    .zip(model_output)
                    .map(|(&x, &m)| {
                        let x = f64::from(x);
                        let x0 = f64::from(predict_x0(prediction, x, f64::from(m), sigma) as f32);
                        let d = f64::from(((x - x0) / sigma) as f32);
                        derivative.push(d);
                        kept.push(x);
                        (x + d * dt) as f32
                    })
                    .collect();
                self.pending = Some(Pending {
                    derivative,
                    dt,
                    sample: kept,
                });
                out
            }
            Some(pending) => {
                if pending.sample.len() != sample.len() {
                    return Err(EngineError::LengthMismatch {
                        what: "sample (changed between the two Heun stages)",
                        expected: pending.sample.len(),
                        actual: sample.len(),
                    });
                }
                let sigma_next = sigmas[i];
                (0..sample.len())
                    .map(|k| {
                        let x = f64::from(sample[k]);
                        let m = f64::from(model_output[k]);
                        let x0 = f64::from(predict_x0(prediction, x, m, sigma_next) as f32);
                        let d = f64::from(((x - x0) / sigma_next) as f32);
                        let avg = (pending.derivative[k] + d) / 2.0;
                        (pending.sample[k] + avg * pending.dt) as f32
                    })
                    .collect()
            }
        };
        self.schedule.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.schedule.add_noise(original, noise, t)
    }
}
