//! `lms`, `lms_k`: diffusers' `LMSDiscreteScheduler` (linear multistep over the last four derivatives).
//!
//! The schedule is Euler's (same sigmas, same Karras option, variance-exploding, `linspace` by default). Each
//! step integrates the Lagrange polynomial through the previous sigmas over [σᵢ, σᵢ₊₁]; diffusers does this with
//! `scipy.integrate.quad`, which is exact for these low-degree polynomials, so we use Gauss-Legendre quadrature.
//! Like diffusers, the polynomial's order is `min(step_index + 1, 4)` even when fewer derivatives exist (a run that
//! starts mid-schedule), and only as many coefficients as stored derivatives are used.

use super::common::{check_len, TrainSchedule};
use super::euler::{predict_x0, SigmaSchedule};
use super::{NoiseFamily, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

const MAX_ORDER: usize = 4;

/// Four-point Gauss-Legendre nodes and weights on [−1, 1] (exact for degree ≤ 7).
const GAUSS_NODES: [f64; 4] = [
    -0.861_136_311_594_052_6,
    -0.339_981_043_584_856_3,
    0.339_981_043_584_856_3,
    0.861_136_311_594_052_6,
];
const GAUSS_WEIGHTS: [f64; 4] = [
    0.347_854_845_137_453_8,
    0.652_145_154_862_546_2,
    0.652_145_154_862_546_2,
    0.347_854_845_137_453_8,
];

/// diffusers' `LMSDiscreteScheduler`.
pub struct LmsDiscrete {
    config: SchedulerConfig,
    train: TrainSchedule,
    schedule: SigmaSchedule,
    /// Derivatives of the last steps, oldest first (at most four).
    derivatives: Vec<Vec<f64>>,
}

impl LmsDiscrete {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            schedule: SigmaSchedule::default(),
            derivatives: Vec::new(),
        })
    }

    /// ∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial for node `current` among σ_i, σ_{i−1}, ….
    fn coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let s = &self.schedule.sigmas;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s[i - k]) / (s[i - current] - s[i - k]))
                .product::<f64>()
        };
        let (a, b) = (s[i], s[i + 1]);
        let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
        half * GAUSS_NODES
            .iter()
            .zip(GAUSS_WEIGHTS)
            .map(|(&x, w)| w * basis(mid + half * x))
            .sum::<f64>()
    }
}

impl Scheduler for LmsDiscrete {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.schedule = SigmaSchedule::build(&self.train, &self.config, steps)?;
        self.derivatives.clear();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.schedule.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule
            .init_noise_sigma(self.config.spacing_or(TimestepSpacing::Linspace))
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VarianceExploding
    }

    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.schedule.scale(sample, t)
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let i = self.schedule.step_index(t)?;
        let sigma = self.schedule.sigmas[i];
        let prediction = self.config.prediction_type;
        let derivative: Vec<f64> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let x = f64::from(x);
                let x0 = f64::from(predict_x0(prediction, x, f64::from(m), sigma) as f32);
                f64::from(((x - x0) / sigma) as f32)
            })
            .collect();
        if self.derivatives.iter().any(|d| d.len() != sample.len()) {
            self.derivatives.clear();
        }
        self.derivatives.push(derivative);
        if self.derivatives.len() > MAX_ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(MAX_ORDER);
        let coefficients: Vec<f64> = (0..order).map(|c| self.coefficient(order, i, c)).collect();
        let out = (0..sample.len())
            .map(|k| {
                let update: f64 = coefficients
                    .iter()
                    .zip(self.derivatives.iter().rev())
                    .map(|(c, d)| c * d[k])
                    .sum();
                (f64::from(sample[k]) + update) as f32
            })
            .collect();
        self.schedule.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.schedule.add_noise(original, noise, t)
    }
}
