//! PyTorch-exact CPU random numbers: the initial latent noise and the per-step noise of stochastic schedulers.
//!
//! InvokeAI draws its noise with `torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))`, so
//! reproducing its images needs the same stream of numbers (spec `generation.md` §10.1). This module keeps these
//! invariants:
//!
//! - [`TorchGenerator`] is a 32-bit Mersenne Twister seeded with the low 32 bits of the seed, exactly like
//!   `torch.Generator().manual_seed(seed)`, and it keeps its state between draws, so consecutive
//!   [`TorchGenerator::randn`] calls continue the stream as consecutive `torch.randn(..., generator=g)` calls do.
//! - For n ≥ 16, float32 `randn` draws n uniforms (low 24 bits × 2⁻²⁴), transforms them in blocks of 16 with
//!   Box-Muller (u1 = 1 − v[j], u2 = v[j+8]), and when n is not a multiple of 16 redraws the last 16 positions
//!   with 16 fresh uniforms. This mirrors `normal_fill_AVX2` in PyTorch's
//!   `aten/src/ATen/native/cpu/DistributionKernels.cpp`, including its polynomial ln/sin/cos, so the values are
//!   bit-identical to x86-64 PyTorch's.
//! - For n < 16 PyTorch takes its scalar path: one double-precision Box-Muller pair per two values, 53-bit
//!   uniforms built from two 32-bit outputs, and the second value of each pair cached in the generator.

use crate::EngineError;

const MT_N: usize = 624;
const MT_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The standard 32-bit Mersenne Twister (MT19937), seeded the way PyTorch's `at::mt19937` seeds it.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    /// Seeds the twister with a 32-bit value (Knuth's initialisation, multiplier 1812433253).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for i in 1..MT_N {
            let prev = state[i - 1];
            // `i` < 624, so the cast cannot truncate.
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        for i in 0..MT_N {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % MT_N] & LOWER_MASK);
            let mut next = self.state[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= MATRIX_A;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A CPU `torch.Generator`: the twister plus the cached second value of PyTorch's scalar Box-Muller path.
#[derive(Clone)]
pub struct TorchGenerator {
    mt: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`: only the low 32 bits of the seed are used.
    pub fn new(seed: u64) -> Self {
        Self {
            mt: Mt19937::new((seed & 0xffff_ffff) as u32),
            next_double_normal: None,
        }
    }

    /// A float32 uniform in [0, 1): the low 24 bits of one output, times 2⁻²⁴.
    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A float64 uniform in [0, 1): 53 bits of two outputs (the first supplies the high word).
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        let bits = ((hi << 32) | lo) & ((1u64 << 53) - 1);
        bits as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One standard normal value from PyTorch's scalar path (`at::normal_distribution<double>`).
    fn scalar_normal(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n, generator=self)` in float32, continuing this generator's stream.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.scalar_normal() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if n % 16 != 0 {
            // PyTorch recomputes the last 16 values from 16 fresh uniforms, overwriting part of the last full block.
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

/// PyTorch's `normal_fill_16_AVX2`: float32 Box-Muller over 16 uniforms, pairing position j with j + 8.
///
/// x86-64 builds of PyTorch (the AVX2 and AVX-512 kernels) evaluate ln, sin and cos with the Cephes polynomials
/// of `avx_mathfun.h`, compiled with fused multiply-adds; [`cephes_logf`] and [`cephes_sincosf`] reproduce them
/// operation by operation, which makes our noise bit-identical to theirs. (Builds without AVX2, such as
/// PyTorch on ARM, use libm's `logf`/`cosf`/`sinf` instead and differ from this by about 1e-6.)
fn box_muller_16(data: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * cephes_logf(u1)).sqrt();
        let (sin, cos) = cephes_sincosf(two_pi * u2);
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

/// Natural logarithm of a positive normal float, as `log256_ps` computes it (Cephes `logf`).
fn cephes_logf(x: f32) -> f32 {
    const SQRTHF: f32 = 0.707_106_77;
    const P: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_5e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ];
    const Q1: f32 = -2.121_944_4e-4;
    const Q2: f32 = 0.693_359_4;
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    // Exponent and mantissa in [0.5, 1).
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0x3f00_0000);
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    if below {
        e -= 1.0;
    }
    m += tmp;
    let z = m * m;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(m, p);
    }
    y *= m;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    m += y;
    e.mul_add(Q2, m)
}

/// Sine and cosine, as `sincos256_ps` computes them (Cephes `sinf`/`cosf` with a three-part π/4 reduction).
fn cephes_sincosf(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_5;
    const DP1: f32 = -0.785_156_25;
    const DP2: f32 = -2.418_756_5e-4;
    const DP3: f32 = -3.774_895e-8;
    let sin_sign = if x.is_sign_negative() { -1.0f32 } else { 1.0 };
    let mut x = x.abs();
    // Octant, rounded up to even.
    let j = (((x * FOPI) as i32) + 1) & !1;
    let y = j as f32;
    let swap_sin = j & 4 != 0;
    let first_poly = j & 2 == 0;
    let cos_negative = !(j - 2) & 4 != 0;
    x = y.mul_add(DP1, x);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);
    let z = x * x;
    let mut c = 2.443_315_7e-5f32;
    c = c.mul_add(z, -1.388_731_6e-3);
    c = c.mul_add(z, 4.166_664_6e-2);
    c *= z;
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;
    let mut s = -1.951_529_6e-4f32;
    s = s.mul_add(z, 8.332_161e-3);
    s = s.mul_add(z, -1.666_665_5e-1);
    s *= z;
    s = s.mul_add(x, x);
    let (sin, cos) = if first_poly { (s, c) } else { (c, s) };
    let sin = if swap_sin {
        -sin * sin_sign
    } else {
        sin * sin_sign
    };
    let cos = if cos_negative { -cos } else { cos };
    (sin, cos)
}

/// `torch.randn(n, generator=torch.Generator().manual_seed(seed))` as float32 values.
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    TorchGenerator::new(seed).randn(n)
}

/// The shape (1, 4, height/8, width/8) of an SD latent for an image of `width` × `height` pixels.
pub fn sd_latent_shape(width: u32, height: u32) -> Result<[usize; 4], EngineError> {
    if width == 0 || height == 0 || width % 8 != 0 || height % 8 != 0 {
        return Err(EngineError::InvalidArgument(format!(
            "width and height must be positive multiples of 8, got {width}x{height}"
        )));
    }
    Ok([1, 4, (height / 8) as usize, (width / 8) as usize])
}

/// The initial noise of the `noise` node for `noise_type` "SD": a (1, 4, height/8, width/8) float32 tensor in
/// row-major order, drawn with the CPU generator whatever the device (we always record `rand_device: "cpu"`).
pub fn sd_latent_noise(seed: u32, width: u32, height: u32) -> Result<Vec<f32>, EngineError> {
    let shape = sd_latent_shape(width, height)?;
    Ok(randn(u64::from(seed), shape.iter().product()))
}

/// The `noise` node's seed rule: any integer is reduced modulo 2³² with a non-negative result, so −1 becomes
/// 4294967295.
pub fn normalize_seed(seed: i128) -> u32 {
    // rem_euclid with a positive modulus is in 0..2^32, so the cast is lossless.
    seed.rem_euclid(1i128 << 32) as u32
}

/// The seed of the per-step generator that InvokeAI hands to stochastic schedulers: `seed ^ 0xFFFFFFFF`.
pub fn stochastic_seed(seed: u32) -> u32 {
    seed ^ 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_outputs() {
        // The C++ standard requires the 10000th output of std::mt19937 with the default seed 5489 to be 4123659995.
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
        // The first output for seed 5489 is 3499211612 (Matsumoto and Nishimura's reference).
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_count() {
        assert_eq!(randn(7, 32), randn((1u64 << 32) + 7, 32));
        assert_ne!(randn(7, 32), randn(8, 32));
    }

    #[test]
    fn the_tail_rule_overwrites_only_the_last_sixteen_values() {
        let full = randn(3, 32);
        let odd = randn(3, 40);
        // The first 24 values come from the normal block pass; positions 24..40 are redrawn.
        assert_eq!(&full[..24], &odd[..24]);
        assert_ne!(&full[24..32], &odd[24..32]);
    }

    #[test]
    fn generator_draws_continue_the_stream() {
        let mut g = TorchGenerator::new(11);
        let first = g.randn(16);
        let second = g.randn(16);
        assert_eq!(first, randn(11, 16));
        assert_ne!(first, second);
        assert_eq!(&randn(11, 32)[..16], &first[..]);
    }

    #[test]
    fn seeds_are_normalised_modulo_two_to_the_32() {
        assert_eq!(normalize_seed(-1), 4_294_967_295);
        assert_eq!(normalize_seed(0), 0);
        assert_eq!(normalize_seed(4_294_967_296), 0);
        assert_eq!(normalize_seed(4_294_967_297), 1);
        assert_eq!(normalize_seed(-4_294_967_297), 4_294_967_295);
        assert_eq!(stochastic_seed(0), 0xffff_ffff);
        assert_eq!(stochastic_seed(0xffff_ffff), 0);
        assert_eq!(stochastic_seed(123), 123 ^ 0xffff_ffff);
    }

    #[test]
    fn latent_shape_requires_multiples_of_eight() {
        assert_eq!(sd_latent_shape(512, 768), Ok([1, 4, 96, 64]));
        assert!(sd_latent_shape(500, 512).is_err());
        assert!(sd_latent_shape(0, 512).is_err());
        let noise = sd_latent_noise(5, 64, 32);
        assert_eq!(noise.map(|n| n.len()), Ok(4 * 4 * 8));
    }
}
