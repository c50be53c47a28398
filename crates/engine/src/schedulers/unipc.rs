//! `unipc`, `unipc_k`: diffusers' `UniPCMultistepScheduler` with its defaults (order 2, `bh2`, x₀ prediction,
//! `lower_order_final`, no disabled correctors). InvokeAI computes its timesteps on the CPU (`cpu_only`), which
//! changes nothing here.
//!
//! Each step first corrects the latents it is given with the UniC corrector (using this step's model output and
//! the sample the previous step started from), then predicts the next latents with UniP. The schedule and
//! `add_noise` are the DPM-Solver ones (variance-preserving, `linspace` by default).

use super::common::{add_noise_vp, TrainSchedule};
use super::dpm_multistep::{
    alpha_sigma, begin_multistep, lambda, multistep_index, multistep_schedule,
};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig};
use crate::EngineError;

/// diffusers' `UniPCMultistepScheduler`.
pub struct UniPcMultistep {
    config: SchedulerConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// Converted (x₀) outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Vec<f64>>>,
    lower_order_nums: usize,
    /// The order the last predictor used, which the next corrector reuses.
    this_order: usize,
    last_sample: Option<Vec<f64>>,
    step_index: Option<usize>,
}

/// Solves the small dense system `a · x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>, EngineError> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return Err(EngineError::InvalidArgument(
                "UniPC coefficient system is singular".to_string(),
            ));
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// The `R` matrix rows (rkᵏ⁻¹) and `b` vector of the UniPC bh2 variant, plus h·φ₁ and B(h).
struct Coefficients {
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
    h_phi_1: f64,
    b_h: f64,
}

fn coefficients(rks: &[f64], order: usize, h: f64) -> Coefficients {
    // predict_x0 is on, so the solver works with −h.
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        r.push(rks.iter().map(|&rk| rk.powi(i as i32 - 1)).collect());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    Coefficients { r, b, h_phi_1, b_h }
}

impl UniPcMultistep {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        let order = config.solver_order.max(1);
        Ok(Self {
            config: SchedulerConfig {
                solver_order: order,
                ..config.clone()
            },
            train: TrainSchedule::new(config)?,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
            step_index: None,
        })
    }

    /// The stored output `back` steps ago (0 = the newest).
    fn output(&self, back: usize) -> Result<&[f64], EngineError> {
        self.model_outputs
            .iter()
            .rev()
            .nth(back)
            .and_then(|o| o.as_deref())
            .ok_or(EngineError::InvalidArgument(
                "UniPC history is shorter than its order".to_string(),
            ))
    }

    /// UniP, the predictor, from step `i` to `i + 1`.
    fn predict(&self, i: usize, x: &[f64], order: usize) -> Result<Vec<f64>, EngineError> {
        let m0 = self.output(0)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda_s0 = lambda(self.sigmas[i]);
        let h = lambda(self.sigmas[i + 1]) - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s: Vec<Vec<f64>> = Vec::new();
        for k in 1..order {
            let mk = self.output(k)?;
            let rk = (lambda(self.sigmas[i - k]) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(mk.iter().zip(m0).map(|(a, b)| (a - b) / rk).collect());
        }
        rks.push(1.0);
        let c = coefficients(&rks, order, h);
        let rhos_p = if d1s.is_empty() {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let r = c.r[..order - 1]
                .iter()
                .map(|row| row[..order - 1].to_vec())
                .collect();
            solve(r, c.b[..order - 1].to_vec())?
        };
        Ok((0..x.len())
            .map(|k| {
                let base = sigma_t / sigma_s0 * x[k] - alpha_t * c.h_phi_1 * m0[k];
                let res: f64 = rhos_p.iter().zip(&d1s).map(|(r, d)| r * d[k]).sum();
                base - alpha_t * c.b_h * res
            })
            .collect())
    }

    /// UniC, the corrector of the sample that step `i − 1` produced, given step `i`'s converted output.
    fn correct(
        &self,
        i: usize,
        this_output: &[f64],
        last_sample: &[f64],
        order: usize,
    ) -> Result<Vec<f64>, EngineError> {
        let m0 = self.output(0)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_s0 = lambda(self.sigmas[i - 1]);
        let h = lambda(self.sigmas[i]) - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s: Vec<Vec<f64>> = Vec::new();
        for k in 1..order {
            let mk = self.output(k)?;
            let rk = (lambda(self.sigmas[i - (k + 1)]) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(mk.iter().zip(m0).map(|(a, b)| (a - b) / rk).collect());
        }
        rks.push(1.0);
        let c = coefficients(&rks, order, h);
        let rhos_c = if order == 1 {
            vec![0.5]
        } else {
            solve(c.r.clone(), c.b.clone())?
        };
        let last_rho = rhos_c[rhos_c.len() - 1];
        Ok((0..last_sample.len())
            .map(|k| {
                let base = sigma_t / sigma_s0 * last_sample[k] - alpha_t * c.h_phi_1 * m0[k];
                let res: f64 = rhos_c.iter().zip(&d1s).map(|(r, d)| r * d[k]).sum();
                let d1_t = this_output[k] - m0[k];
                f64::from((base - alpha_t * c.b_h * (res + last_rho * d1_t)) as f32)
            })
            .collect())
    }
}

impl Scheduler for UniPcMultistep {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        let (timesteps, sigmas) = multistep_schedule(&self.train, &self.config, steps)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.last_sample = None;
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
        let mut current: Vec<f64> = sample.iter().map(|&x| f64::from(x)).collect();
        if i > 0 {
            if let Some(last) = self.last_sample.take() {
                if last.len() != current.len() {
                    return Err(EngineError::LengthMismatch {
                        what: "sample (changed between steps)",
                        expected: last.len(),
                        actual: current.len(),
                    });
                }
                current = self.correct(i, &converted, &last, self.this_order)?;
            }
        }
        self.model_outputs.rotate_left(1);
        let newest = self.model_outputs.len() - 1;
        self.model_outputs[newest] = Some(converted);
        let order = self.config.solver_order;
        // lower_order_final: the last steps never look further ahead than the schedule has left.
        self.this_order = order.min(n - i).min(self.lower_order_nums + 1);
        let next = self.predict(i, &current, self.this_order)?;
        self.last_sample = Some(current);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(next.into_iter().map(|v| v as f32).collect())
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
    fn solve_handles_a_permuted_system() {
        let x = solve(vec![vec![0.0, 2.0], vec![1.0, 1.0]], vec![4.0, 3.0]).unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        assert!(solve(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_err());
    }
}
