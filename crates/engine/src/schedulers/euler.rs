//! Euler (`euler`, `euler_k`) and Euler ancestral (`euler_a`): diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler`.
//!
//! Both are variance-exploding: latents live at scale σ, the UNet sees `x / √(σ² + 1)`. The class default spacing
//! is `linspace`. `euler_k` replaces the interpolated sigmas by Karras sigmas spanning the same range and maps
//! each back to a fractional timestep. `euler_a` adds fresh noise every step, drawn from its generator.

use super::common::{
    add_noise_ve, check_len, check_steps, discrete_timesteps, f32_round, index_for_timestep,
    karras_sigmas, scale_by_sigma, TrainSchedule,
};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// The schedule state shared by the sigma-based single-step schedulers.
#[derive(Debug, Clone, Default)]
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    /// One more than `timesteps` (a trailing 0).
    pub sigmas: Vec<f64>,
    pub step_index: Option<usize>,
}

impl SigmaSchedule {
    /// Interpolated (or Karras) sigmas for float timesteps, as Euler, LMS and Heun compute them.
    pub fn build(
        train: &TrainSchedule,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Self, EngineError> {
        check_steps(steps, config)?;
        let spacing = config.spacing_or(TimestepSpacing::Linspace);
        let mut timesteps = discrete_timesteps(spacing, steps, config);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| train.interp_sigma(t)).collect();
        if config.use_karras_sigmas {
            let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
            sigmas = karras_sigmas(min, max, steps);
            timesteps = sigmas
                .iter()
                .map(|&s| f32_round(train.sigma_to_t(s)))
                .collect();
        }
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32_round).collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            sigmas,
            step_index: None,
        })
    }

    /// The step index, found from `t` on first use.
    pub fn index(&mut self, t: f64) -> Result<usize, EngineError> {
        if self.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("stepping"));
        }
        match self.step_index {
            Some(i) => Ok(i),
            None => {
                let i = index_for_timestep(&self.timesteps, t)
                    .ok_or(EngineError::TimestepNotInSchedule(t))?;
                self.step_index = Some(i);
                Ok(i)
            }
        }
    }

    /// The step index for a `step` call, which needs a following sigma.
    pub fn step_index(&mut self, t: f64) -> Result<usize, EngineError> {
        let i = self.index(t)?;
        if i + 1 >= self.sigmas.len() {
            return Err(EngineError::ScheduleExhausted(self.timesteps.len()));
        }
        Ok(i)
    }

    /// `init_noise_sigma` for sigma schedules: σ_max for `linspace`/`trailing`, √(σ_max² + 1) for `leading`.
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0f64, f64::max);
        match spacing {
            TimestepSpacing::Leading => f32_round((max * max + 1.0).sqrt()),
            _ => max,
        }
    }

    /// `add_noise` at `t`: σ of the index diffusers would pick for `t`.
    pub fn add_noise(
        &self,
        original: &[f32],
        noise: &[f32],
        t: f64,
    ) -> Result<Vec<f32>, EngineError> {
        if self.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("add_noise"));
        }
        let i =
            index_for_timestep(&self.timesteps, t).ok_or(EngineError::TimestepNotInSchedule(t))?;
        add_noise_ve(original, noise, self.sigmas[i])
    }

    pub fn scale(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let i = self.index(t)?;
        Ok(scale_by_sigma(sample, self.sigmas[i]))
    }
}

/// x₀ predicted from the model output at noise level σ (epsilon: x − σε; v: −σ/√(σ²+1)·v + x/(σ²+1)).
pub(crate) fn predict_x0(prediction: PredictionType, x: f64, out: f64, sigma: f64) -> f64 {
    match prediction {
        PredictionType::Epsilon => x - sigma * out,
        PredictionType::VPrediction => {
            out * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0)
        }
    }
}

/// `EulerDiscreteScheduler` with `s_churn = 0` (InvokeAI passes no churn), so it is deterministic.
pub struct EulerDiscrete {
    config: SchedulerConfig,
    train: TrainSchedule,
    schedule: SigmaSchedule,
}

impl EulerDiscrete {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            schedule: SigmaSchedule::default(),
        })
    }
}

impl Scheduler for EulerDiscrete {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.schedule = SigmaSchedule::build(&self.train, &self.config, steps)?;
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
        let dt = self.schedule.sigmas[i + 1] - sigma;
        let prediction = self.config.prediction_type;
        let out = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &e)| {
                let (x, e) = (f64::from(x), f64::from(e));
                let x0 = predict_x0(prediction, x, e, sigma);
                let derivative = (x - x0) / sigma;
                (x + derivative * dt) as f32
            })
            .collect();
        self.schedule.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.schedule.add_noise(original, noise, t)
    }
}

/// `EulerAncestralDiscreteScheduler`: an Euler step to σ_down, then fresh noise of size σ_up.
pub struct EulerAncestral {
    config: SchedulerConfig,
    train: TrainSchedule,
    schedule: SigmaSchedule,
    generator: TorchGenerator,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        // diffusers' EulerAncestralDiscreteScheduler has no Karras option.
        let config = SchedulerConfig {
            use_karras_sigmas: false,
            ..config.clone()
        };
        Ok(Self {
            train: TrainSchedule::new(&config)?,
            config,
            schedule: SigmaSchedule::default(),
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
        })
    }
}

impl Scheduler for EulerAncestral {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.schedule = SigmaSchedule::build(&self.train, &self.config, steps)?;
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
        let sigma_from = self.schedule.sigmas[i];
        let sigma_to = self.schedule.sigmas[i + 1];
        // diffusers computes these on float32 tensors.
        let sigma_up = f32_round(
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
                / (sigma_from * sigma_from))
                .sqrt(),
        );
        let sigma_down = f32_round((sigma_to * sigma_to - sigma_up * sigma_up).sqrt());
        let dt = sigma_down - sigma_from;
        let noise = self.generator.randn(sample.len());
        let prediction = self.config.prediction_type;
        let out = sample
            .iter()
            .zip(model_output)
            .zip(&noise)
            .map(|((&x, &e), &n)| {
                let (x, e) = (f64::from(x), f64::from(e));
                let x0 = predict_x0(prediction, x, e, sigma_from);
                let derivative = (x - x0) / sigma_from;
                let prev = (x + derivative * dt) as f32;
                (f64::from(prev) + f64::from(n) * sigma_up) as f32
            })
            .collect();
        self.schedule.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        self.schedule.add_noise(original, noise, t)
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.generator = generator;
    }
}
