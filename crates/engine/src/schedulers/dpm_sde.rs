//! `dpmpp_sde`, `dpmpp_sde_k`: diffusers' `DPMSolverSDEScheduler` (DPM-Solver++ (2S) SDE, Karras off/on), with
//! its noise from a Brownian tree seeded by the generation seed (spec `generation.md` §10.1, §10.6).
//!
//! Like Heun and KDPM2 it is variance-exploding and order 2: the schedule is t₀, m₀, t₁, m₁, …, tₙ₋₁ where mₖ is the
//! (fractional) timestep of the log-midpoint of σₖ and σₖ₊₁, and the sigmas are σ₀, σ₁, σ₁, …, σₙ₋₁, σₙ₋₁, 0. The
//! first call of a pair moves from σₖ to the midpoint with an ancestral step (deterministic part plus Brownian noise
//! of size σ_up) and remembers the sample; the second, at the midpoint, takes the remembered sample to σₖ₊₁ with
//! the midpoint's x₀ prediction. The last step (σ_next = 0) is a plain Euler step.
//!
//! The step's scalar arithmetic (t = −ln σ, the midpoint, σ_up/σ_down) runs in float32 as diffusers' 0-d tensors
//! do, because the noise query times it yields are rounded to 6 decimals by the tree: a time one float32 step off
//! can land in the neighbouring 1e-6 cell. We take ln/exp/expm1 (and the training sigmas' sqrt) correctly
//! rounded; PyTorch's x86 builds evaluate them with MKL, which is one bit off for a few percent of arguments
//! (about 20% for sqrt), so on some schedules a query time lands one cell away from PyTorch's and that step's
//! noise differs by about 1e-3 (see `tests/parity.rs`).

use super::common::{
    add_noise_ve, check_len, check_steps, discrete_timesteps_f64, index_for_timestep,
    karras_sigmas, TrainSchedule,
};
use super::{NoiseFamily, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::brownian::BrownianTreeNoiseSampler;
use crate::EngineError;

/// float32 natural log, correctly rounded.
fn ln32(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// float32 exp, correctly rounded.
fn exp32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

/// float32 expm1, correctly rounded.
fn expm1_32(x: f32) -> f32 {
    f64::from(x).exp_m1() as f32
}

/// The expanded schedule.
#[derive(Debug, Clone, Default)]
struct SdeSchedule {
    timesteps: Vec<f64>,
    /// float32 values: σ₀, σ₁, σ₁, …, σₙ₋₁, σₙ₋₁, 0.
    sigmas: Vec<f32>,
    /// The same as f64, for [`Scheduler::sigmas`].
    sigmas_f64: Vec<f64>,
}

fn build(
    train: &TrainSchedule,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<SdeSchedule, EngineError> {
    check_steps(steps, config)?;
    let spacing = config.spacing_or(TimestepSpacing::Linspace);
    let mut timesteps = discrete_timesteps_f64(spacing, steps, config);
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| train.interp_sigma(t)).collect();
    if config.use_karras_sigmas {
        let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
        sigmas = karras_sigmas(min, max, steps);
        timesteps = sigmas.iter().map(|&s| train.sigma_to_t(s)).collect();
    }
    // The midpoints in log-sigma, from the float64 sigmas.
    let midpoints: Vec<f64> = sigmas
        .windows(2)
        .map(|w| {
            let (t, t_next) = (-w[0].ln(), -w[1].ln());
            let proposed = t + (t_next - t) * 0.5;
            train.sigma_to_t((-proposed).exp())
        })
        .collect();
    let mut all = Vec::with_capacity(2 * steps - 1);
    all.push(timesteps[0]);
    for (&m, &t) in midpoints.iter().zip(&timesteps[1..]) {
        all.push(m);
        all.push(t);
    }
    let mut s32: Vec<f32> = Vec::with_capacity(2 * steps);
    s32.push(sigmas[0] as f32);
    for &s in &sigmas[1..] {
        s32.push(s as f32);
        s32.push(s as f32);
    }
    s32.push(0.0);
    Ok(SdeSchedule {
        timesteps: all,
        sigmas_f64: s32.iter().map(|&s| f64::from(s)).collect(),
        sigmas: s32,
    })
}

/// The first half of a step, kept for the second.
#[derive(Debug, Clone)]
struct Pending {
    sample: Vec<f32>,
    mid_point_sigma: f32,
}

/// diffusers' `DPMSolverSDEScheduler` with `noise_sampler_seed` (InvokeAI sets it to the generation seed).
pub struct DpmSolverSde {
    config: SchedulerConfig,
    train: TrainSchedule,
    schedule: SdeSchedule,
    step_index: Option<usize>,
    pending: Option<Pending>,
    seed: u64,
    sampler: Option<BrownianTreeNoiseSampler>,
}

impl DpmSolverSde {
    pub fn new(config: &SchedulerConfig) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            schedule: SdeSchedule::default(),
            step_index: None,
            pending: None,
            // InvokeAI's SCHEDULER_MAP default, replaced by the seed before denoising.
            seed: 0,
            sampler: None,
        })
    }

    fn index(&mut self, t: f64) -> Result<usize, EngineError> {
        if self.schedule.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("stepping"));
        }
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        let i = index_for_timestep(&self.schedule.timesteps, t)
            .ok_or(EngineError::TimestepNotInSchedule(t))?;
        self.step_index = Some(i);
        Ok(i)
    }

    /// The noise sampler, created on the first step from the whole schedule's σ range (as diffusers does).
    fn sampler(&mut self, len: usize) -> Result<&mut BrownianTreeNoiseSampler, EngineError> {
        match &mut self.sampler {
            Some(sampler) => Ok(sampler),
            slot @ None => {
                let sigmas = &self.schedule.sigmas;
                let min = sigmas
                    .iter()
                    .copied()
                    .filter(|&s| s > 0.0)
                    .fold(f32::INFINITY, f32::min);
                let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                Ok(slot.insert(BrownianTreeNoiseSampler::new(len, min, max, self.seed)?))
            }
        }
    }
}

/// x₀ from the model output at σ, in float32 as diffusers computes it.
fn predict_x0_f32(
    prediction: PredictionType,
    sample: &[f32],
    output: &[f32],
    sigma: f32,
) -> Vec<f32> {
    match prediction {
        PredictionType::Epsilon => sample
            .iter()
            .zip(output)
            .map(|(&x, &m)| x - sigma * m)
            .collect(),
        PredictionType::VPrediction => {
            let var = sigma * sigma + 1.0;
            let c_out = -sigma / var.sqrt();
            sample
                .iter()
                .zip(output)
                .map(|(&x, &m)| m * c_out + x / var)
                .collect()
        }
    }
}

impl Scheduler for DpmSolverSde {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.schedule = build(&self.train, &self.config, steps)?;
        self.step_index = None;
        self.pending = None;
        self.sampler = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.schedule.sigmas_f64)
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.schedule.sigmas.iter().copied().fold(0.0f32, f32::max);
        match self.config.spacing_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Leading => f64::from((max * max + 1.0).sqrt()),
            _ => f64::from(max),
        }
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VarianceExploding
    }

    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let i = self.index(t)?;
        let sigma = match &self.pending {
            None => self.schedule.sigmas[i],
            Some(p) => p.mid_point_sigma,
        };
        let scale = (sigma * sigma + 1.0).sqrt();
        Ok(sample.iter().map(|&x| x / scale).collect())
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let i = self.index(t)?;
        let sigmas = &self.schedule.sigmas;
        let first = self.pending.is_none();
        if i + 1 >= sigmas.len() || (!first && i == 0) {
            return Err(EngineError::ScheduleExhausted(
                self.schedule.timesteps.len(),
            ));
        }
        let (sigma, sigma_next) = if first {
            (sigmas[i], sigmas[i + 1])
        } else {
            (sigmas[i - 1], sigmas[i])
        };
        let t_cur = -ln32(sigma);
        let t_next = -ln32(sigma_next);
        let t_proposed = t_cur + (t_next - t_cur) * 0.5;
        let sigma_input = if first { sigma } else { exp32(-t_proposed) };
        let x0 = predict_x0_f32(
            self.config.prediction_type,
            sample,
            model_output,
            sigma_input,
        );
        let out: Vec<f32> = if sigma_next == 0.0 {
            let dt = sigma_next - sigma;
            sample
                .iter()
                .zip(&x0)
                .map(|(&x, &p)| x + ((x - p) / sigma) * dt)
                .collect()
        } else {
            let t_target = if first { t_proposed } else { t_next };
            let base: Vec<f32> = match &self.pending {
                None => sample.to_vec(),
                Some(p) => {
                    if p.sample.len() != sample.len() {
                        return Err(EngineError::LengthMismatch {
                            what: "sample (changed between the two DPM-Solver SDE stages)",
                            expected: p.sample.len(),
                            actual: sample.len(),
                        });
                    }
                    p.sample.clone()
                }
            };
            let sigma_from = exp32(-t_cur);
            let sigma_to = exp32(-t_target);
            let to2 = sigma_to * sigma_to;
            let from2 = sigma_from * sigma_from;
            let up_full = (to2 * (from2 - to2) / from2).sqrt();
            let sigma_up = if up_full < sigma_to {
                up_full
            } else {
                sigma_to
            };
            let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
            let ancestral_t = -ln32(sigma_down);
            let ratio = exp32(-ancestral_t) / sigma_from;
            let coef = expm1_32(t_cur - ancestral_t);
            let noise = self.sampler(sample.len())?.sample(sigma_from, sigma_to)?;

            let out = base
                .iter()
                .zip(&x0)
                .zip(&noise)
                .map(|((&x, &p), &n)| (ratio * x - coef * p) + n * sigma_up)
                .collect();
            self.pending = if first {
                Some(Pending {
                    sample: base,
                    mid_point_sigma: sigma_to,
                })
            } else {
                None
            };
            out
        };
        self.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        if self.schedule.timesteps.is_empty() {
            return Err(EngineError::TimestepsNotSet("add_noise"));
        }
        let i = index_for_timestep(&self.schedule.timesteps, t)
            .ok_or(EngineError::TimestepNotInSchedule(t))?;
        add_noise_ve(original, noise, self.schedule.sigmas_f64[i])
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn seed_noise(&mut self, seed: u32) {
        self.seed = u64::from(seed);
        self.sampler = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_midpoints_and_repeats_sigmas() {
        let mut s = DpmSolverSde::new(&SchedulerConfig::sd15()).unwrap();
        s.set_timesteps(4).unwrap();
        let ts = s.timesteps().to_vec();
        // t0, m0, t1, m1, t2, m2, t3 with linspace 999, 666, 333, 0 and log-sigma midpoints between them.
        assert_eq!(ts.len(), 7);
        assert_eq!([ts[0], ts[2], ts[4], ts[6]], [999.0, 666.0, 333.0, 0.0]);
        for k in 0..3 {
            assert!(
                ts[2 * k] > ts[2 * k + 1] && ts[2 * k + 1] > ts[2 * k + 2],
                "{ts:?}"
            );
        }
        let sigmas = s.sigmas().unwrap();
        assert_eq!(sigmas.len(), 8);
        assert_eq!(sigmas[1], sigmas[2]);
        assert_eq!(sigmas[5], sigmas[6]);
        assert_eq!(sigmas[7], 0.0);
        assert_eq!(s.order(), 2);
    }

    #[test]
    fn the_second_stage_scales_by_the_midpoint_sigma() {
        let mut s = DpmSolverSde::new(&SchedulerConfig::sd15()).unwrap();
        s.set_timesteps(3).unwrap();
        s.seed_noise(5);
        let ts = s.timesteps().to_vec();
        let x = vec![1.0f32; 16];
        let first = s.scale_model_input(&x, ts[0]).unwrap();
        let sigma0 = s.sigmas().unwrap()[0] as f32;
        assert_eq!(first[0], 1.0 / (sigma0 * sigma0 + 1.0).sqrt());
        let x = s.step(&[0.1f32; 16], ts[0], &x).unwrap();
        let mid = s.scale_model_input(&x, ts[1]).unwrap();
        let sigma1 = s.sigmas().unwrap()[1] as f32;
        // The geometric mean of σ0 and σ1 (up to float32 rounding of the log-space midpoint).
        let m = (sigma0 * sigma1).sqrt();
        let expected = x[0] / (m * m + 1.0).sqrt();
        assert!(
            (mid[0] - expected).abs() <= 1e-5 * expected.abs(),
            "{mid:?}"
        );
    }
}
