//! DPM-Solver++ single-step (`dpmpp_2s`, `dpmpp_2s_k`): diffusers' `DPMSolverSinglestepScheduler` with
//! `solver_order: 2`, `algorithm_type: dpmsolver++`, the `midpoint` solver type and `final_sigmas_type: zero`.
//!
//! Unlike the multistep solver, a second-order step here restarts from the sample of the step before it: the
//! schedule alternates first-order steps, which remember their input sample, and second-order steps, which go
//! from that remembered sample over two sigma intervals using both predicted x₀. The per-step orders are fixed
//! by `set_timesteps` (`1, 2, 1, 2, …` ending in first-order steps, because `final_sigmas_type: zero` forces
//! `lower_order_final`); a loop that starts part-way in (image to image) turns a second-order step without a
//! previous prediction into a first-order one. The timesteps are always `linspace`-spaced (the class ignores
//! `timestep_spacing`). Variance-preserving, deterministic.

use super::common::{add_noise_vp, TrainSchedule};
use super::dpm_multistep::{
    alpha_sigma, begin_multistep, lambda, multistep_index, multistep_schedule,
};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// diffusers' `DPMSolverSinglestepScheduler` (dpmsolver++, order 1 or 2).
pub struct DpmSolverSinglestep {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// The solver order of each step.
    orders: Vec<usize>,
    /// Predicted x₀ of the previous and the current step.
    previous_output: Option<Vec<f64>>,
    current_output: Option<Vec<f64>>,
    /// The input sample of the last first-order step, where the next second-order step starts from.
    anchor: Option<Vec<f32>>,
    step_index: Option<usize>,
}

/// diffusers' `get_order_list` with `lower_order_final` (forced on by `final_sigmas_type: zero`).
fn order_list(steps: usize, solver_order: usize) -> Vec<usize> {
    let mut orders = if solver_order == 2 {
        let mut v: Vec<usize> = (0..steps / 2).flat_map(|_| [1, 2]).collect();
        if steps % 2 == 0 {
            v.truncate(v.len().saturating_sub(2));
            v.extend([1, 1]);
        } else {
            v.push(1);
        }
        v
    } else {
        vec![1; steps]
    };
    if let Some(last) = orders.last_mut() {
        *last = 1;
    }
    orders
}

impl DpmSolverSinglestep {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        if !(1..=2).contains(&config.solver_order) {
            return Err(EngineError::InvalidArgument(format!(
                "single-step DPM-Solver order must be 1 or 2, got {}",
                config.solver_order
            )));
        }
        // The class always spaces its timesteps like `linspace`, whatever the model's config says.
        let config = SchedulerConfig {
            timestep_spacing: Some(TimestepSpacing::Linspace),
            ..config.clone()
        };
        Ok(Self {
            train: TrainSchedule::new(&config)?,
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            orders: Vec::new(),
            previous_output: None,
            current_output: None,
            anchor: None,
            step_index: None,
        })
    }
}

impl Scheduler for DpmSolverSinglestep {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let (timesteps, sigmas) = multistep_schedule(&self.train, &self.config, steps)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.orders = order_list(steps, self.config.solver_order);
        self.previous_output = None;
        self.current_output = None;
        self.anchor = None;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
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
        let (i, _) = begin_multistep(
            &mut self.step_index,
            &self.timesteps,
            t,
            model_output,
            sample,
        )?;
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let converted: Vec<f64> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let (x, m) = (f64::from(x), f64::from(m));
                let x0 = match self.config.prediction_type {
                    PredictionType::Epsilon => (x - sigma_s * m) / alpha_s,
                    PredictionType::VPrediction => alpha_s * x - sigma_s * m,
                };
                f64::from(x0 as f32)
            })
            .collect();
        if self.config.solver_order == 2 {
            self.previous_output = self.current_output.take();
        }
        self.current_output = Some(converted);

        let mut order = self.orders[i];
        // Entering mid-schedule on a second-order step: there is no earlier prediction to pair with.
        if order == 2 && (i == 0 || self.previous_output.is_none()) {
            order = 1;
        }
        if order == 1 {
            self.anchor = Some(sample.to_vec());
        }
        let anchor = self.anchor.as_deref().unwrap_or(sample);
        let m0 = self.current_output.as_deref().unwrap_or(&[]);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let out: Vec<f32> = if order == 1 {
            let h = lambda(self.sigmas[i + 1]) - lambda(self.sigmas[i]);
            let e = (-h).exp() - 1.0;
            anchor
                .iter()
                .zip(m0)
                .map(|(&x, &d0)| (sigma_t / sigma_s * f64::from(x) - alpha_t * e * d0) as f32)
                .collect()
        } else {
            let m1 = self.previous_output.as_deref().unwrap_or(&[]);
            if m1.len() != sample.len() || anchor.len() != sample.len() {
                return Err(EngineError::LengthMismatch {
                    what: "sample (changed between steps)",
                    expected: m1.len(),
                    actual: sample.len(),
                });
            }
            let (_, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let (l_t, l_s0, l_s1) = (
                lambda(self.sigmas[i + 1]),
                lambda(self.sigmas[i]),
                lambda(self.sigmas[i - 1]),
            );
            let (h, h0) = (l_t - l_s1, l_s0 - l_s1);
            let r0 = h0 / h;
            let e = (-h).exp() - 1.0;
            anchor
                .iter()
                .zip(m0.iter().zip(m1))
                .map(|(&x, (&m0, &m1))| {
                    let d1 = (1.0 / r0) * (m0 - m1);
                    (sigma_t / sigma_s1 * f64::from(x)
                        - alpha_t * e * m1
                        - 0.5 * (alpha_t * e) * d1) as f32
                })
                .collect()
        };
        self.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        if self.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("add_noise"));
        }
        let (alpha, sigma) = alpha_sigma(self.sigmas[multistep_index(&self.timesteps, t)]);
        add_noise_vp(original, noise, alpha, sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_alternate_and_end_first_order() {
        assert_eq!(order_list(1, 2), [1]);
        assert_eq!(order_list(2, 2), [1, 1]);
        assert_eq!(order_list(4, 2), [1, 2, 1, 1]);
        assert_eq!(order_list(5, 2), [1, 2, 1, 2, 1]);
        assert_eq!(order_list(10, 2), [1, 2, 1, 2, 1, 2, 1, 2, 1, 1]);
        assert_eq!(order_list(3, 1), [1, 1, 1]);
    }
}
