//! Pieces shared by the schedulers: the training noise schedule, timestep spacings, Karras sigmas, the
//! sigma → timestep mapping and the step-index lookup.
//!
//! These mirror the numerics of diffusers (which builds the training schedule with float32 torch ops and the
//! inference schedule with float64 numpy) closely enough that our schedules equal diffusers' to float32
//! precision; the fixtures in `tests/fixtures` pin that.

use super::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::EngineError;

/// The training noise schedule, kept in float32 as diffusers keeps it.
#[derive(Debug, Clone)]
pub(crate) struct TrainSchedule {
    /// ᾱ for each training timestep.
    pub alphas_cumprod: Vec<f32>,
    /// √((1 − ᾱ)/ᾱ) for each training timestep (ascending with t).
    pub sigmas: Vec<f32>,
    /// ln σ, rounded to float32 like `np.log` of a float32 array.
    pub log_sigmas: Vec<f32>,
}

impl TrainSchedule {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(EngineError::InvalidArgument(format!(
                "num_train_timesteps must be at least 2, got {n}"
            )));
        }
        let betas: Vec<f32> = match config.beta_schedule {
            BetaSchedule::Linear => {
                torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, n)
            }
            BetaSchedule::ScaledLinear => torch_linspace_f32(
                config.beta_start.sqrt() as f32,
                config.beta_end.sqrt() as f32,
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
        };
        // torch.cumprod on CPU accumulates in double and stores each prefix as float.
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();
        let sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0f32 - a) / a).sqrt())
            .collect();
        let log_sigmas = sigmas.iter().map(|&s| s.ln()).collect();
        Ok(Self {
            alphas_cumprod,
            sigmas,
            log_sigmas,
        })
    }

    /// ᾱ at an integer training timestep.
    pub fn alpha_cumprod(&self, t: i64) -> Result<f64, EngineError> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i))
            .map(|&a| f64::from(a))
            .ok_or(EngineError::TimestepNotInSchedule(t as f64))
    }

    /// `np.interp(t, arange(len), sigmas)`.
    pub fn interp_sigma(&self, t: f64) -> f64 {
        interp(t, &self.sigmas)
    }

    /// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma interpolates to `sigma`.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let logs = &self.log_sigmas;
        let log_sigma = sigma.max(1e-10).ln();
        // Index of the last log-sigma ≤ log_sigma (0 if none), clipped so that a right neighbour exists.
        let low = logs
            .iter()
            .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
            .unwrap_or(0)
            .min(logs.len() - 2);
        let lo = f64::from(logs[low]);
        let hi = f64::from(logs[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)` on CPU: float arithmetic, the first half counted from the
/// start and the second half from the end.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64 (endpoint included).
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `np.arange(start, stop, step)` for a negative float step: ⌈(stop − start)/step⌉ values `start + i·step`.
fn numpy_arange_down(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// `np.interp(x, arange(len(fp)), fp)`.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (y0, y1) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    let slope = y1 - y0;
    slope * (x - j as f64) + y0
}

/// Karras et al. (2022) sigmas with ρ = 7, from `sigma_max` down to `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    numpy_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Rounds to float32 and back, where diffusers stores a value as a float32 tensor.
pub(crate) fn f32_round(v: f64) -> f64 {
    f64::from(v as f32)
}

/// Timesteps of the single-step sigma schedulers (Euler, Euler ancestral, LMS, Heun): `steps` float32 values.
pub(crate) fn discrete_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    config: &SchedulerConfig,
) -> Vec<f64> {
    discrete_timesteps_f64(spacing, steps, config)
        .into_iter()
        .map(f32_round)
        .collect()
}

/// The same timesteps kept in float64, for the schedulers that never store them as float32 (DPM-Solver SDE).
pub(crate) fn discrete_timesteps_f64(
    spacing: TimestepSpacing,
    steps: usize,
    config: &SchedulerConfig,
) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v = numpy_linspace(0.0, (train - 1) as f64, steps);
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f64 + config.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            numpy_arange_down(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// Integer timesteps of DDIM-style schedulers (`steps` values).
pub(crate) fn integer_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    config: &SchedulerConfig,
) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = numpy_linspace(0.0, (train - 1) as f64, steps)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            numpy_arange_down(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even().trunc() - 1.0)
                .collect()
        }
    }
}

/// Integer timesteps of the multistep solvers (DPM-Solver, UniPC, DEIS): `steps + 1` points, the last dropped.
pub(crate) fn multistep_timesteps(
    spacing: TimestepSpacing,
    steps: usize,
    config: &SchedulerConfig,
) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = numpy_linspace(0.0, (train - 1) as f64, steps + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v.truncate(steps);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = train / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            numpy_arange_down(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// diffusers' `index_for_timestep`: the position of `t` in the schedule, taking the second occurrence when
/// there are several (so a second-order scheduler entering mid-schedule starts on a fresh pair).
pub(crate) fn index_for_timestep(schedule: &[f64], t: f64) -> Option<usize> {
    let mut hits = schedule
        .iter()
        .enumerate()
        .filter(|(_, &s)| s == t)
        .map(|(i, _)| i);
    let first = hits.next()?;
    Some(hits.next().unwrap_or(first))
}

/// Errors unless `values` has `expected` elements.
pub(crate) fn check_len(
    what: &'static str,
    values: &[f32],
    expected: usize,
) -> Result<(), EngineError> {
    if values.len() == expected {
        Ok(())
    } else {
        Err(EngineError::LengthMismatch {
            what,
            expected,
            actual: values.len(),
        })
    }
}

/// Errors unless `steps` is usable with `num_train_timesteps`.
pub(crate) fn check_steps(steps: usize, config: &SchedulerConfig) -> Result<(), EngineError> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(EngineError::InvalidArgument(format!(
            "steps must be between 1 and {}, got {steps}",
            config.num_train_timesteps
        )));
    }
    Ok(())
}

/// The sigma-based `add_noise`: `original + σ·noise`.
pub(crate) fn add_noise_ve(
    original: &[f32],
    noise: &[f32],
    sigma: f64,
) -> Result<Vec<f32>, EngineError> {
    check_len("noise", noise, original.len())?;
    Ok(original
        .iter()
        .zip(noise)
        .map(|(&x, &n)| (f64::from(x) + f64::from(n) * sigma) as f32)
        .collect())
}

/// The variance-preserving `add_noise`: `α·original + σ·noise`.
pub(crate) fn add_noise_vp(
    original: &[f32],
    noise: &[f32],
    alpha: f64,
    sigma: f64,
) -> Result<Vec<f32>, EngineError> {
    check_len("noise", noise, original.len())?;
    Ok(original
        .iter()
        .zip(noise)
        .map(|(&x, &n)| (alpha * f64::from(x) + sigma * f64::from(n)) as f32)
        .collect())
}

/// `sample / √(σ² + 1)`, the input scaling of the sigma-based schedulers.
pub(crate) fn scale_by_sigma(sample: &[f32], sigma: f64) -> Vec<f32> {
    let scale = (sigma * sigma + 1.0).sqrt();
    sample
        .iter()
        .map(|&x| (f64::from(x) / scale) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_spacing_matches_diffusers() {
        let config = SchedulerConfig::sdxl();
        assert_eq!(
            discrete_timesteps(TimestepSpacing::Leading, 4, &config),
            [751.0, 501.0, 251.0, 1.0]
        );
        assert_eq!(
            multistep_timesteps(TimestepSpacing::Leading, 4, &config),
            [801.0, 601.0, 401.0, 201.0]
        );
        assert_eq!(
            multistep_timesteps(TimestepSpacing::Linspace, 4, &config),
            [999.0, 749.0, 500.0, 250.0]
        );
        assert_eq!(
            integer_timesteps(TimestepSpacing::Linspace, 4, &config),
            [999.0, 666.0, 333.0, 0.0]
        );
    }

    #[test]
    fn interp_is_linear_between_integers() {
        let fp = [0.0f32, 1.0, 3.0];
        assert_eq!(interp(0.5, &fp), 0.5);
        assert_eq!(interp(1.25, &fp), 1.5);
        assert_eq!(interp(2.0, &fp), 3.0);
        assert_eq!(interp(-1.0, &fp), 0.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_training_sigmas() {
        let s = TrainSchedule::new(&SchedulerConfig::sdxl()).unwrap();
        for t in [0usize, 10, 500, 998] {
            let got = s.sigma_to_t(f64::from(s.sigmas[t]));
            assert!((got - t as f64).abs() < 1e-4, "{t}: {got}");
        }
        // Beyond the ends it clamps.
        assert_eq!(s.sigma_to_t(1e-6), 0.0);
        assert_eq!(s.sigma_to_t(1e6), 999.0);
    }

    #[test]
    fn second_occurrence_wins() {
        assert_eq!(index_for_timestep(&[9.0, 5.0, 5.0, 1.0], 5.0), Some(2));
        assert_eq!(index_for_timestep(&[9.0, 5.0, 1.0], 5.0), Some(1));
        assert_eq!(index_for_timestep(&[9.0, 5.0, 1.0], 4.0), None);
    }
}
