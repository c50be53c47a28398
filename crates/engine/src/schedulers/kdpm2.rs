//! `kdpm_2`, `kdpm_2_k` (diffusers' `KDPM2DiscreteScheduler`) and `kdpm_2_a`, `kdpm_2_a_k`
//! (`KDPM2AncestralDiscreteScheduler`): second-order DPM-Solver-2 steps through an interpolated sigma.
//!
//! Both are variance-exploding and order 2. Each inference step but the last is a pair of UNet calls: a first-order
//! call at σₖ that moves to the geometric midpoint σ and remembers the sample, then a second call at the
//! midpoint (at its fractional timestep) whose derivative takes the remembered sample to σₖ₊₁ (ancestral: to σ_down
//! plus fresh noise of size σ_up). The last step is a single Euler step to σ = 0. The arrays are kept expanded and
//! indexed exactly as diffusers indexes them; `_k` uses Karras sigmas with rounded timesteps.

use super::common::{
    add_noise_ve, check_len, check_steps, discrete_timesteps, f32_round, index_for_timestep,
    karras_sigmas, scale_by_sigma, TrainSchedule,
};
use super::euler::predict_x0;
use super::{NoiseFamily, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::{stochastic_seed, TorchGenerator};
use crate::EngineError;

/// `start.lerp(end, 0.5)` as torch computes it on float32 (for weight ≥ 0.5: `end − (end − start)·(1 − w)`).
fn lerp_half_f32(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5f32
}

/// `exp(log(a).lerp(log(b), 0.5))` in float32: the geometric mean the way diffusers computes it.
fn geometric_mid(a: f32, b: f32) -> f32 {
    lerp_half_f32(a.ln(), b.ln()).exp()
}

/// `cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`.
fn expand(v: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * v.len() + 1);
    out.push(v[0]);
    for &x in &v[1..] {
        out.push(x);
        out.push(x);
    }
    out.push(v[v.len() - 1]);
    out
}

/// The expanded schedule of both KDPM2 variants.
#[derive(Debug, Clone, Default)]
struct Kdpm2Schedule {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_interpol: Vec<f64>,
    sigmas_up: Vec<f64>,
    sigmas_down: Vec<f64>,
}

fn build(
    train: &TrainSchedule,
    config: &SchedulerConfig,
    steps: usize,
    ancestral: bool,
) -> Result<Kdpm2Schedule, EngineError> {
    check_steps(steps, config)?;
    let spacing = config.spacing_or(TimestepSpacing::Linspace);
    let mut timesteps = discrete_timesteps(spacing, steps, config);
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| train.interp_sigma(t)).collect();
    let karras = config.use_karras_sigmas;
    if karras {
        let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
        sigmas = karras_sigmas(min, max, steps);
        timesteps = sigmas
            .iter()
            .map(|&s| train.sigma_to_t(s).round_ties_even())
            .collect();
    }
    // float32 from here on, as diffusers' tensors.
    let mut s: Vec<f32> = sigmas.iter().map(|&v| v as f32).collect();
    s.push(0.0);
    let n1 = s.len();
    let (interpol, up, down): (Vec<f32>, Vec<f32>, Vec<f32>) = if ancestral {
        let next: Vec<f32> = (0..n1)
            .map(|i| if i + 1 < n1 { s[i + 1] } else { 0.0 })
            .collect();
        let up: Vec<f32> = (0..n1)
            .map(|i| (next[i] * next[i] * (s[i] * s[i] - next[i] * next[i]) / (s[i] * s[i])).sqrt())
            .collect();
        let mut down: Vec<f32> = (0..n1)
            .map(|i| (next[i] * next[i] - up[i] * up[i]).sqrt())
            .collect();
        down[n1 - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..n1).map(|i| geometric_mid(s[i], down[i])).collect();
        interpol[n1 - 2] = 0.0;
        interpol[n1 - 1] = 0.0;
        (interpol, up, down)
    } else {
        let interpol = (0..n1)
            .map(|i| geometric_mid(s[i], s[(i + n1 - 1) % n1]))
            .collect();
        (interpol, Vec::new(), Vec::new())
    };
    let to64 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
    // The interpolated timesteps keep the dtype of the plain ones (float32, or float64 with Karras).
    let t_of = |sigma: f32| {
        let t = train.sigma_to_t(f64::from(sigma));
        if karras {
            t
        } else {
            f32_round(t)
        }
    };
    let paired: Vec<f64> = if ancestral {
        interpol[..n1 - 2].iter().map(|&v| t_of(v)).collect()
    } else {
        interpol[1..n1 - 1].iter().map(|&v| t_of(v)).collect()
    };
    let mut all = Vec::with_capacity(2 * steps - 1);
    all.push(timesteps[0]);
    for (ti, &t) in paired.iter().zip(&timesteps[1..]) {
        all.push(*ti);
        all.push(t);
    }
    Ok(Kdpm2Schedule {
        timesteps: all,
        sigmas: expand(&to64(&s)),
        sigmas_interpol: expand(&to64(&interpol)),
        sigmas_up: if ancestral {
            expand(&to64(&up))
        } else {
            Vec::new()
        },
        sigmas_down: if ancestral {
            expand(&to64(&down))
        } else {
            Vec::new()
        },
    })
}

/// diffusers' `KDPM2DiscreteScheduler` or `KDPM2AncestralDiscreteScheduler`.
pub struct Kdpm2 {
    config: SchedulerConfig,
    train: TrainSchedule,
    ancestral: bool,
    schedule: Kdpm2Schedule,
    step_index: Option<usize>,
    /// The sample remembered by the first-order half (diffusers' `self.sample`).
    pending: Option<Vec<f64>>,
    generator: TorchGenerator,
}

impl Kdpm2 {
    pub fn new(config: &SchedulerConfig, ancestral: bool) -> Result<Self, EngineError> {
        Ok(Self {
            config: config.clone(),
            train: TrainSchedule::new(config)?,
            ancestral,
            schedule: Kdpm2Schedule::default(),
            step_index: None,
            pending: None,
            generator: TorchGenerator::new(u64::from(stochastic_seed(0))),
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
}

impl Scheduler for Kdpm2 {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), EngineError> {
        self.schedule = build(&self.train, &self.config, steps, self.ancestral)?;
        self.step_index = None;
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
        let max = self.schedule.sigmas.iter().copied().fold(0.0f64, f64::max);
        match self.config.spacing_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Leading => f32_round((max * max + 1.0).sqrt()),
            _ => max,
        }
    }

    fn noise_family(&self) -> NoiseFamily {
        NoiseFamily::VarianceExploding
    }

    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>, EngineError> {
        let i = self.index(t)?;
        let sigma = match (&self.pending, self.ancestral) {
            (None, _) => self.schedule.sigmas[i],
            (Some(_), false) => self.schedule.sigmas_interpol[i],
            (Some(_), true) => self.schedule.sigmas_interpol[i.saturating_sub(1)],
        };
        Ok(scale_by_sigma(sample, sigma))
    }

    fn step(
        &mut self,
        model_output: &[f32],
        t: f64,
        sample: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        check_len("model_output", model_output, sample.len())?;
        let i = self.index(t)?;
        let s = &self.schedule;
        if i + 1 >= s.sigmas.len() || (self.pending.is_some() && i == 0) {
            return Err(EngineError::ScheduleExhausted(s.timesteps.len()));
        }
        let first = self.pending.is_none();
        let prediction = self.config.prediction_type;
        // (σ, σ_interpol, σ_next or σ_down, σ_up)
        let (sigma, interpol, target, up) = match (first, self.ancestral) {
            (true, false) => (s.sigmas[i], s.sigmas_interpol[i + 1], s.sigmas[i + 1], 0.0),
            (false, false) => (s.sigmas[i - 1], s.sigmas_interpol[i], s.sigmas[i], 0.0),
            (true, true) => (s.sigmas[i], s.sigmas_interpol[i], 0.0, s.sigmas_up[i]),
            (false, true) => (
                s.sigmas[i - 1],
                s.sigmas_interpol[i - 1],
                s.sigmas_down[i - 1],
                s.sigmas_up[i - 1],
            ),
        };
        let out: Vec<f32> = if first {
            let dt = interpol - sigma;
            let kept: Vec<f64> = sample.iter().map(|&x| f64::from(x)).collect();
            let out = kept
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| {
                    let x0 = f64::from(predict_x0(prediction, x, f64::from(m), sigma) as f32);
                    let d = f64::from(((x - x0) / sigma) as f32);
                    (x + d * dt) as f32
                })
                .collect();
            self.pending = Some(kept);
            out
        } else {
            let kept = self.pending.take().unwrap_or_default();
            if kept.len() != sample.len() {
                return Err(EngineError::LengthMismatch {
                    what: "sample (changed between the two KDPM2 stages)",
                    expected: kept.len(),
                    actual: sample.len(),
                });
            }
            let dt = target - sigma;
            let noise = if self.ancestral {
                self.generator.randn(sample.len())
            } else {
                Vec::new()
            };
            (0..sample.len())
                .map(|k| {
                    let x = f64::from(sample[k]);
                    let m = f64::from(model_output[k]);
                    let x0 = f64::from(predict_x0(prediction, x, m, interpol) as f32);
                    let d = f64::from(((x - x0) / interpol) as f32);
                    let prev = (kept[k] + d * dt) as f32;
                    match noise.get(k) {
                        Some(&n) => (f64::from(prev) + f64::from(n) * up) as f32,
                        None => prev,
                    }
                })
                .collect()
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
        add_noise_ve(original, noise, self.schedule.sigmas[i])
    }

    fn is_stochastic(&self) -> bool {
        self.ancestral
    }

    fn set_noise_generator(&mut self, generator: TorchGenerator) {
        self.generator = generator;
    }
}
