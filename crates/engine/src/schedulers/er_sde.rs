//! `er_sde`: InvokeAI's own `ERSDEScheduler` (`invokeai/backend/rectified_flow/er_sde_scheduler.py`) as it builds
//! it for SD models: the VP-SDE form (`use_flow_sigmas: false`), `solver_order: 3`, stochastic.
//!
//! ER-SDE (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDE for diffusion models")
//! is a multistep Taylor solver in λ = σ_t/α_t (for the VP process, the schedule's σ) with the noise-scale
//! function f(λ) = λ·(e^(λ^0.3) + 10). Each step converts the model output to x₀ and remembers it with its σ;
//! the first step is first order, the second at most second order, later ones third order. The higher-order
//! terms use 100-point left Riemann sums of ∫1/f and ∫(λ − λ_s)/f, computed exactly as InvokeAI computes them,
//! and are skipped on the last step (σ = 0). Every step but the last draws one noise tensor from the generator.
//!
//! The schedule is the model's `timestep_spacing` (class default `linspace`) with interpolated sigmas and a final
//! σ of 0, the same as DPM-Solver's without Karras sigmas; the step index follows the multistep rule (an absent
//! timestep maps to the last step). Variance-preserving.

use super::common::{add_noise_vp, TrainSchedule};
use super::dpm_multistep::{alpha_sigma, begin_multistep, multistep_index, multistep_schedule};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// Sample points of the Riemann sums (the reference implementation's `nums_intergrate`).
const INTEGRAL_POINTS: usize = 100;

/// The noise-scale function f(λ) = λ·(e^(λ^0.3) + 10) (the paper's ER-SDE 5).
fn noise_scale(x: f64) -> f64 {
    x * (x.powf(0.3).exp() + 10.0)
}

/// Left Riemann sum of ∫ 1/f(λ) dλ from `lambda_next` to `lambda_curr` (needs `lambda_next` > 0).
fn integral_one_over_f(lambda_next: f64, lambda_curr: f64) -> f64 {
    let delta = lambda_curr - lambda_next;
    if delta <= 0.0 {
        return 0.0;
    }
    let step = delta / INTEGRAL_POINTS as f64;
    let mut total = 0.0;
    for k in 0..INTEGRAL_POINTS {
        let lam = lambda_next + k as f64 * step;
        total += step / noise_scale(lam);
    }
    total
}

/// Left Riemann sum of ∫ (λ − `lambda_curr`)/f(λ) dλ from `lambda_next` to `lambda_curr`.
fn integral_offset_over_f(lambda_next: f64, lambda_curr: f64) -> f64 {
    let delta = lambda_curr - lambda_next;
    if delta <= 0.0 {
        return 0.0;
    }
    let step = delta / INTEGRAL_POINTS as f64;
    let mut total = 0.0;
    for k in 0..INTEGRAL_POINTS {
        let lam = lambda_next + k as f64 * step;
        total += step * (lam - lambda_curr) / noise_scale(lam);
    }
    total
}

/// λ = σ_t/α_t of the VP process at noise level σ (0 at σ = 0).
fn er_lambda(sigma: f64) -> f64 {
    let (alpha, sigma_t) = alpha_sigma(sigma);
    if sigma_t > 0.0 {
        sigma_t / alpha
    } else {
        0.0
    }
}

/// The per-step scalars of the update x' = a·x + b·x₀ + c·Δ₁ + d·Δ₂ + e·z, where Δ₁ = (x₀ − x₀′)/(λ − λ′) and
/// Δ₂ = 2·(Δ₁ − Δ₁′)/(λ − λ″) are the divided differences of the remembered predictions.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    sample: f64,
    x0: f64,
    first_difference: Option<(f64, f64)>,
    second_difference: Option<(f64, f64, f64)>,
    noise: f64,
}

/// diffusers-style `ERSDEScheduler` in its VP-SDE form.
pub struct ErSde {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// The last `solver_order` predicted x₀ with the σ each was made at, oldest first.
    history: Vec<Option<(Vec<f64>, f64)>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    stochastic: bool,
    generator: TorchGenerator,
}

impl ErSde {
    pub fn new(config: &SchedulerConfig, stochastic: bool) -> Result<Self, EngineError> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(EngineError::InvalidArgument(format!(
                "ER-SDE order must be 1, 2 or 3, got {}",
                config.solver_order
            )));
        }
        // The class has no Karras option.
        let config = SchedulerConfig {
            use_karras_sigmas: false,
            ..config.clone()
        };
        Ok(Self {
            train: TrainSchedule::new(&config)?,
            history: vec![None; config.solver_order],
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            lower_order_nums: 0,
            step_index: None,
            stochastic,
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
        })
    }

    /// The scalars of one step from σ to σ_next using `order` remembered predictions (the newest last in
    /// `history`).
    fn coefficients(&self, order: usize, sigma: f64, sigma_next: f64) -> Coefficients {
        let (alpha, _) = alpha_sigma(sigma);
        let (alpha_next, _) = alpha_sigma(sigma_next);
        let lambda = er_lambda(sigma);
        let lambda_next = er_lambda(sigma_next);
        let f = noise_scale(lambda);
        let f_next = noise_scale(lambda_next);
        let r_f = if f != 0.0 { f_next / f } else { 0.0 };
        let r_alphas = alpha_next / alpha;
        let inner = (lambda_next.powi(2) - lambda.powi(2) * r_f.powi(2)).max(0.0);
        let mut c = Coefficients {
            sample: r_alphas * r_f,
            x0: alpha_next * (1.0 - r_f),
            first_difference: None,
            second_difference: None,
            noise: inner.sqrt() * alpha_next,
        };
        if order < 2 || sigma_next <= 0.0 {
            return c;
        }
        let level = |back: usize| {
            self.history[self.history.len() - 1 - back]
                .as_ref()
                .map_or(0.0, |(_, s)| *s)
        };
        let lambda_prev = er_lambda(level(1));
        let denom = lambda - lambda_prev;
        if denom == 0.0 {
            return c;
        }
        let s_int = integral_one_over_f(lambda_next, lambda);
        c.first_difference = Some((alpha_next * (lambda_next - lambda + s_int * f_next), denom));
        if order < 3 {
            return c;
        }
        let lambda_pprev = er_lambda(level(2));
        let (denom_prev, denom_dd) = (lambda_prev - lambda_pprev, lambda - lambda_pprev);
        if denom_prev == 0.0 || denom_dd == 0.0 {
            return c;
        }
        let s_d_int = integral_offset_over_f(lambda_next, lambda);
        let h = lambda_next - lambda;
        c.second_difference = Some((
            alpha_next * (h * h / 2.0 + s_d_int * f_next),
            denom_prev,
            denom_dd,
        ));
        c
    }
}

impl Scheduler for ErSde {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let (timesteps, sigmas) = multistep_schedule(&self.train, &self.config, steps)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.history = vec![None; self.config.solver_order];
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
        let (i, _) = begin_multistep(
            &mut self.step_index,
            &self.timesteps,
            t,
            model_output,
            sample,
        )?;
        let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
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
        self.history.rotate_left(1);
        let last = self.history.len() - 1;
        self.history[last] = Some((converted, sigma));

        let noise = if self.stochastic && sigma_next > 0.0 {
            self.generator.randn(sample.len())
        } else {
            Vec::new()
        };
        let order = self.config.solver_order;
        let use_order = if order == 1 || self.lower_order_nums < 1 {
            1
        } else if order == 2 || self.lower_order_nums < 2 {
            2
        } else {
            3
        };
        let c = self.coefficients(use_order, sigma, sigma_next);
        let outputs: Vec<&[f64]> = self
            .history
            .iter()
            .rev()
            .take(use_order)
            .map(|h| h.as_ref().map_or(&[][..], |(o, _)| o.as_slice()))
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
                let x0 = outputs[0][k];
                let mut v = c.sample * f64::from(sample[k]) + c.x0 * x0;
                if let Some(&z) = noise.get(k) {
                    v += c.noise * f64::from(z);
                }
                if let Some((coef, denom)) = c.first_difference {
                    let d = (x0 - outputs[1][k]) / denom;
                    v += coef * d;
                    if let Some((coef2, denom_prev, denom_dd)) = c.second_difference {
                        let d_prev = (outputs[1][k] - outputs[2][k]) / denom_prev;
                        v += coef2 * 2.0 * (d - d_prev) / denom_dd;
                    }
                }
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
        self.stochastic
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.generator = generator;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riemann_sums_approximate_the_integrals() {
        // ∫ 1/f over [1, 2] and ∫ (λ − 2)/f over it, against a fine midpoint rule.
        let fine = |g: &dyn Fn(f64) -> f64| {
            let n = 100_000;
            let h = 1.0 / f64::from(n);
            (0..n)
                .map(|k| g(1.0 + (f64::from(k) + 0.5) * h) * h)
                .sum::<f64>()
        };
        let a = integral_one_over_f(1.0, 2.0);
        let b = integral_offset_over_f(1.0, 2.0);
        assert!((a - fine(&|l| 1.0 / noise_scale(l))).abs() < 1e-2 * a.abs());
        assert!((b - fine(&|l| (l - 2.0) / noise_scale(l))).abs() < 5e-2 * b.abs());
        assert_eq!(integral_one_over_f(2.0, 1.0), 0.0);
    }

    #[test]
    fn the_last_step_lands_on_the_prediction() {
        let mut s = ErSde::new(
            &SchedulerConfig {
                solver_order: 3,
                ..SchedulerConfig::sd15()
            },
            true,
        )
        .unwrap();
        s.set_timesteps(1).unwrap();
        let x = [0.5f32, -1.0];
        let eps = [0.1f32, 0.2];
        let out = s.step(&eps, s.timesteps()[0], &x).unwrap();
        let (alpha, sigma) = alpha_sigma(s.sigmas().unwrap()[0]);
        for k in 0..2 {
            let x0 = (f64::from(x[k]) - sigma * f64::from(eps[k])) / alpha;
            assert!((f64::from(out[k]) - x0).abs() < 1e-5, "{out:?}");
        }
    }
}
