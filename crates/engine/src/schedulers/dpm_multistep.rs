//! DPM-Solver++ multistep (`dpmpp_2m`, `dpmpp_2m_k`, `dpmpp_3m`, `dpmpp_3m_k`, `dpmpp_2m_sde`, `dpmpp_2m_sde_k`):
//! diffusers' `DPMSolverMultistepScheduler` with `algorithm_type` `dpmsolver++` or `sde-dpmsolver++`, the
//! `midpoint` solver type, `lower_order_final` and `final_sigmas_type: zero`.
//!
//! Invariants kept from diffusers: the model output is converted to a predicted x₀ and remembered for the next
//! steps; the first step is first order, the second at most second order; the last step is always first order
//! (σ = 0 at the end), and with fewer than 15 steps the one before it at most second order. The SDE variant draws
//! one noise tensor per step from its generator. Variance-preserving, class default spacing `linspace`.

use super::common::{
    add_noise_vp, check_len, check_steps, f32_round, index_for_timestep, karras_sigmas,
    multistep_timesteps, TrainSchedule,
};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// The update rule (diffusers `algorithm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Deterministic DPM-Solver++.
    DpmSolverPlusPlus,
    /// SDE-DPM-Solver++, which injects noise every step.
    SdeDpmSolverPlusPlus,
}

/// `(α_t, σ_t)` of the VP process at noise level σ.
pub(crate) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = ln α − ln σ (∞ at σ = 0).
pub(crate) fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

/// Builds the sigmas and integer timesteps shared by the multistep solvers: interpolated sigmas at the spaced
/// timesteps, or Karras sigmas over the whole training range with rounded timesteps; a final σ of 0.
pub(crate) fn multistep_schedule(
    train: &TrainSchedule,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f64>), EngineError> {
    check_steps(steps, config)?;
    let spacing = config.spacing_or(TimestepSpacing::Linspace);
    let mut timesteps = multistep_timesteps(spacing, steps, config);
    let sigmas: Vec<f64> = if config.use_karras_sigmas {
        let min = f64::from(train.sigmas[0]);
        let max = f64::from(train.sigmas[train.sigmas.len() - 1]);
        let sigmas = karras_sigmas(min, max, steps);
        timesteps = sigmas
            .iter()
            .map(|&s| train.sigma_to_t(s).round_ties_even())
            .collect();
        sigmas
    } else {
        timesteps.iter().map(|&t| train.interp_sigma(t)).collect()
    };
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32_round).collect();
    sigmas.push(0.0);
    Ok((timesteps, sigmas))
}

/// The multistep solvers' step-index rule: the position of `t`, the second one if repeated, the last index if
/// absent.
pub(crate) fn multistep_index(timesteps: &[f64], t: f64) -> usize {
    index_for_timestep(timesteps, t).unwrap_or(timesteps.len().saturating_sub(1))
}

/// The start of every multistep solver's `step`: the schedule must be set and the output the
/// sample's size; the step index is fixed from the first timestep seen (diffusers'
/// `_init_step_index`) and then advances by one per step, so a step past the end is refused.
/// Returns the step index and the schedule's length.
pub(crate) fn begin_multistep(
    step_index: &mut Option<usize>,
    timesteps: &[f64],
    t: f64,
    model_output: &[f32],
    sample: &[f32],
) -> Result<(usize, usize), EngineError> {
    if timesteps.is_empty() {
        return Err(EngineError::TimestepsNotSet("step"));
    }
    check_len("model_output", model_output, sample.len())?;
    let i = *step_index.get_or_insert_with(|| multistep_index(timesteps, t));
    let n = timesteps.len();
    if i >= n {
        return Err(EngineError::ScheduleExhausted(n));
    }
    Ok((i, n))
}

/// diffusers' `DPMSolverMultistepScheduler` (dpmsolver++ family).
pub struct DpmSolverMultistep {
    config: SchedulerConfig,
    algorithm: Algorithm,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// Converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Vec<f64>>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    generator: TorchGenerator,
}

impl DpmSolverMultistep {
    pub fn new(config: &SchedulerConfig, algorithm: Algorithm) -> Result<Self, EngineError> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(EngineError::InvalidArgument(format!(
                "DPM-Solver order must be 1, 2 or 3, got {}",
                config.solver_order
            )));
        }
        Ok(Self {
            config: config.clone(),
            algorithm,
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            step_index: None,
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
        })
    }

    fn first_order(&self, i: usize, x: f64, m0: f64, noise: f64) -> f64 {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(self.sigmas[i + 1]) - lambda(self.sigmas[i]);
        match self.algorithm {
            Algorithm::DpmSolverPlusPlus => {
                sigma_t / sigma_s * x - alpha_t * ((-h).exp() - 1.0) * m0
            }
            Algorithm::SdeDpmSolverPlusPlus => {
                sigma_t / sigma_s * (-h).exp() * x
                    + alpha_t * (1.0 - (-2.0 * h).exp()) * m0
                    + sigma_t * (1.0 - (-2.0 * h).exp()).sqrt() * noise
            }
        }
    }

    fn second_order(&self, i: usize, x: f64, m0: f64, m1: f64, noise: f64) -> f64 {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (l_t, l_s0, l_s1) = (
            lambda(self.sigmas[i + 1]),
            lambda(self.sigmas[i]),
            lambda(self.sigmas[i - 1]),
        );
        let (h, h0) = (l_t - l_s0, l_s0 - l_s1);
        let r0 = h0 / h;
        let d0 = m0;
        let d1 = (1.0 / r0) * (m0 - m1);
        match self.algorithm {
            Algorithm::DpmSolverPlusPlus => {
                let e = (-h).exp() - 1.0;
                sigma_t / sigma_s0 * x - alpha_t * e * d0 - 0.5 * (alpha_t * e) * d1
            }
            Algorithm::SdeDpmSolverPlusPlus => {
                let e = 1.0 - (-2.0 * h).exp();
                sigma_t / sigma_s0 * (-h).exp() * x
                    + alpha_t * e * d0
                    + 0.5 * (alpha_t * e) * d1
                    + sigma_t * e.sqrt() * noise
            }
        }
    }

    fn third_order(&self, i: usize, x: f64, m: [f64; 3]) -> f64 {
        let [m0, m1, m2] = m;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (l_t, l_s0, l_s1, l_s2) = (
            lambda(self.sigmas[i + 1]),
            lambda(self.sigmas[i]),
            lambda(self.sigmas[i - 1]),
            lambda(self.sigmas[i - 2]),
        );
        let (h, h0, h1) = (l_t - l_s0, l_s0 - l_s1, l_s1 - l_s2);
        let (r0, r1) = (h0 / h, h1 / h);
        let d1_0 = (1.0 / r0) * (m0 - m1);
        let d1_1 = (1.0 / r1) * (m1 - m2);
        let d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1);
        let d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1);
        let e = (-h).exp() - 1.0;
        sigma_t / sigma_s0 * x - alpha_t * e * m0 + alpha_t * (e / h + 1.0) * d1
            - alpha_t * ((e + h) / (h * h) - 0.5) * d2
    }
}

impl Scheduler for DpmSolverMultistep {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let (timesteps, sigmas) = multistep_schedule(&self.train, &self.config, steps)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
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
        // final_sigmas_type "zero" makes the last step first order whatever the step count.
        let lower_order_final = i == n - 1;
        let lower_order_second = i + 2 == n && n < 15;

        let sigma = self.sigmas[i];
        let (alpha_s, sigma_s) = alpha_sigma(sigma);
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
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(converted);

        let noise = match self.algorithm {
            Algorithm::SdeDpmSolverPlusPlus => self.generator.randn(sample.len()),
            Algorithm::DpmSolverPlusPlus => Vec::new(),
        };
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
        let out = (0..sample.len())
            .map(|k| {
                let x = f64::from(sample[k]);
                let z = noise.get(k).copied().map_or(0.0, f64::from);
                let v = match use_order {
                    1 => self.first_order(i, x, outputs[0][k], z),
                    2 => self.second_order(i, x, outputs[0][k], outputs[1][k], z),
                    _ => self.third_order(i, x, [outputs[0][k], outputs[1][k], outputs[2][k]]),
                };
                v as f32
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

    fn is_stochastic(&self) -> bool {
        self.algorithm == Algorithm::SdeDpmSolverPlusPlus
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.generator = generator;
    }
}
