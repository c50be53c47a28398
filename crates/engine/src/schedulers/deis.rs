//! `deis`, `deis_k`: diffusers' `DEISMultistepScheduler` (`algorithm_type: deis`, `solver_type: logrho`,
//! `lower_order_final`), order 2 as InvokeAI builds it.
//!
//! Variance-preserving, class default spacing `linspace`, with the multistep solvers' timesteps. Unlike
//! DPM-Solver the schedule does not end at σ = 0: the final sigma is the training schedule's smallest (ᾱ₀), or
//! the last Karras sigma for `deis_k`. The model output is converted to ε form and remembered; the first step is
//! first order, and with fewer than 15 steps so is the last (the one before it at most second order).

use super::common::{add_noise_vp, f32_round, TrainSchedule};
use super::dpm_multistep::{alpha_sigma, begin_multistep, multistep_index, multistep_schedule};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig};
use crate::EngineError;

/// DEIS' integrated Lagrange basis for order 2: `t·(−ln c + ln t − 1)/(ln b − ln c)`.
fn ind2(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// The order-3 basis.
fn ind3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    numerator / ((lb - lc) * (lb - ld))
}

/// diffusers' `DEISMultistepScheduler`.
pub struct DeisMultistep {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// Converted (ε-form) outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Vec<f64>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
}

impl DeisMultistep {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(EngineError::InvalidArgument(format!(
                "DEIS order must be 1, 2 or 3, got {}",
                config.solver_order
            )));
        }
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            step_index: None,
        })
    }

    /// ρ = σ_t/α_t of the VP process at schedule index `i`, and α.
    fn rho_alpha(&self, i: usize) -> (f64, f64) {
        let (a, s) = alpha_sigma(self.sigmas[i]);
        (s / a, a)
    }
}

impl Scheduler for DeisMultistep {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let (timesteps, mut sigmas) = multistep_schedule(&self.train, &self.config, steps)?;
        // Replace the trailing σ = 0 by DEIS' final sigma.
        let last = sigmas.len() - 1;
        sigmas[last] = if self.config.use_karras_sigmas {
            sigmas[last - 1]
        } else {
            f64::from(self.train.sigmas[0])
        };
        self.timesteps = timesteps;
        self.sigmas = sigmas.into_iter().map(f32_round).collect();
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
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
        let (i, n) = begin_multistep(
            &mut self.step_index,
            &self.timesteps,
            t,
            model_output,
            sample,
        )?;
        let lower_order_final = i == n - 1 && n < 15;
        let lower_order_second = i + 2 == n && n < 15;

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
                let x0 = f64::from(x0 as f32);
                f64::from(((x - alpha_s * x0) / sigma_s) as f32)
            })
            .collect();
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(converted);

        let order = self.config.solver_order;
        let use_order = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let outputs: Vec<&[f64]> = self
            .model_outputs
            .iter()
            .rev()
            .take(use_order)
            .map(|o| o.as_deref().unwrap_or(&[]))
            .collect();
        if outputs.iter().any(|o| o.len() != sample.len()) {
            return Err(EngineError::LengthMismatch {
                what: "sample (changed between steps)",
                expected: outputs.iter().map(|o| o.len()).max().unwrap_or(0),
                actual: sample.len(),
            });
        }
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        // x_t = α_t·(x/α_s0 + Σ cⱼ·mⱼ); order 1 is the exponential-integrator Euler step.
        let (ratio, coefs): (f64, Vec<f64>) = match use_order {
            1 => {
                let h = (alpha_t.ln() - sigma_t.ln()) - (alpha_s.ln() - sigma_s.ln());
                (alpha_t / alpha_s, vec![-sigma_t * (h.exp() - 1.0)])
            }
            2 => {
                let (rt, _) = self.rho_alpha(i + 1);
                let (r0, a0) = self.rho_alpha(i);
                let (r1, _) = self.rho_alpha(i - 1);
                let c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1);
                let c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0);
                (alpha_t / a0, vec![alpha_t * c1, alpha_t * c2])
            }
            _ => {
                let (rt, _) = self.rho_alpha(i + 1);
                let (r0, a0) = self.rho_alpha(i);
                let (r1, _) = self.rho_alpha(i - 1);
                let (r2, _) = self.rho_alpha(i - 2);
                let c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2);
                let c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0);
                let c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1);
                (alpha_t / a0, vec![alpha_t * c1, alpha_t * c2, alpha_t * c3])
            }
        };
        let out = (0..sample.len())
            .map(|k| {
                let x = f64::from(sample[k]);
                let mix: f64 = coefs.iter().zip(&outputs).map(|(c, o)| c * o[k]).sum();
                (ratio * x + mix) as f32
            })
            .collect();
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
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
