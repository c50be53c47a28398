//! The Brownian-tree noise of `dpmpp_sde*` (diffusers' `DPMSolverSDEScheduler`), reproduced from the seed.
//!
//! diffusers draws that scheduler's noise from torchsde's `BrownianInterval` (built by its `BatchedBrownianTree`
//! with `entropy = seed`, `tol = 1e-6`, `pool_size = 24`, `halfway_tree = True`, no Lévy area). Its values depend
//! only on the seed and the query times, so they can be rebuilt exactly:
//!
//! - [`SeedSequence`] is numpy's `np.random.SeedSequence` (the hash-mix entropy pool of
//!   `numpy/random/bit_generator.pyx`): torchsde derives every random draw's seed from it, with the node's position
//!   in the tree as spawn key.
//! - [`BrownianInterval`] is the interval tree: with `halfway_tree` every node splits at its (rounded) midpoint, so
//!   the tree is the dyadic one whatever the order of the queries, and a query [ta, tb] is the sum of the increments
//!   of the maximal nodes inside it. A child's increment is a Brownian bridge sample from its parent's increment and
//!   one `torch.randn` drawn with a fresh generator seeded from the parent's `SeedSequence`. All times are rounded
//!   to 6 decimals (`round(x, 6)`, as `tol = 1e-6` makes torchsde do). torchsde's LRU cache only saves recomputation:
//!   the values do not depend on it.
//! - [`BrownianTreeNoiseSampler`] is diffusers' wrapper: the tree spans [σ_min, σ_max] of the schedule, and a draw
//!   for a step from σ to σ_next is the increment over that interval (negated, as σ decreases) divided by
//!   √|σ_next − σ|, in float32.

use std::collections::HashMap;

use crate::noise::TorchGenerator;
use crate::EngineError;

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// The entropy pool size torchsde's `BrownianInterval` is given by diffusers.
const POOL_SIZE: usize = 24;

/// numpy's `np.random.SeedSequence(entropy, spawn_key=..., pool_size=...)`: a pool of 32-bit words mixed from the
/// entropy and spawn key, from which `generate_state` draws seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSequence {
    pool: Vec<u32>,
}

/// A non-negative Python integer as numpy's `_int_to_uint32_array` splits it: 32-bit words, least significant
/// first, and `[0]` for zero.
fn int_words(mut n: u128) -> Vec<u32> {
    if n == 0 {
        return vec![0];
    }
    let mut words = Vec::new();
    while n > 0 {
        // The mask keeps 32 bits, so the cast is lossless.
        words.push((n & 0xffff_ffff) as u32);
        n >>= 32;
    }
    words
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

impl SeedSequence {
    /// The sequence for a non-negative integer `entropy`, a spawn key of non-negative integers (empty for none)
    /// and a pool of `pool_size` words (numpy's default is 4).
    pub fn new(entropy: u128, spawn_key: &[u64], pool_size: usize) -> Self {
        // get_assembled_entropy: with a spawn key, the run entropy is zero-padded to the pool size first.
        let mut assembled = int_words(entropy);
        if !spawn_key.is_empty() && assembled.len() < pool_size {
            assembled.resize(pool_size, 0);
        }
        for &k in spawn_key {
            assembled.extend(int_words(u128::from(k)));
        }
        // mix_entropy
        let mut hash_const = INIT_A;
        let mut pool: Vec<u32> = (0..pool_size)
            .map(|i| hashmix(assembled.get(i).copied().unwrap_or(0), &mut hash_const))
            .collect();
        for src in 0..pool_size {
            for dst in 0..pool_size {
                if src != dst {
                    let h = hashmix(pool[src], &mut hash_const);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &word in assembled.iter().skip(pool_size) {
            for slot in pool.iter_mut() {
                let h = hashmix(word, &mut hash_const);
                *slot = mix(*slot, h);
            }
        }
        Self { pool }
    }

    /// The mixed entropy pool (numpy's `SeedSequence.pool`).
    pub fn pool(&self) -> &[u32] {
        &self.pool
    }

    /// `generate_state(n_words)` with the default `dtype=np.uint32`.
    pub fn generate_state_u32(&self, n_words: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        self.pool
            .iter()
            .cycle()
            .take(n_words)
            .map(|&word| {
                let mut v = word ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }

    /// `generate_state(n_words, np.uint64)`: twice as many 32-bit words, paired little-endian.
    pub fn generate_state_u64(&self, n_words: usize) -> Vec<u64> {
        self.generate_state_u32(2 * n_words)
            .chunks_exact(2)
            .map(|w| u64::from(w[0]) | (u64::from(w[1]) << 32))
            .collect()
    }
}

/// Python's `round(x, 6)`: the double nearest to `x` correctly rounded to 6 decimals (ties to even).
fn round6(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact and rounds ties to even, like Python's dtoa mode 3.
    format!("{x:.6}").parse().unwrap_or(x)
}

/// A node of the dyadic tree: an interval, where it hangs and, once split, its children and noise seed.
#[derive(Debug, Clone)]
struct Node {
    start: f64,
    end: f64,
    /// The parent and whether this is its left child (`None` for the root).
    parent: Option<(usize, bool)>,
    /// torchsde's `_spawn_key`: the path from the root as binary digits (left 0, right 1).
    spawn_key: u64,
    depth: u64,
    split: Option<Split>,
}

#[derive(Debug, Clone, Copy)]
struct Split {
    midway: f64,
    left: usize,
    right: usize,
    /// The seed of the `torch.randn` that splits this node's increment between its children.
    w_seed: u32,
}

/// The deepest node we create: far below the 1e-6 resolution for any schedule (σ ranges of 10¹² would be needed).
const MAX_DEPTH: u64 = 62;

/// torchsde's `BrownianInterval` with `tol = 1e-6`, `pool_size = 24`, `halfway_tree = True` and no Lévy area, over
/// float32 tensors of `len` elements.
#[derive(Debug, Clone)]
pub struct BrownianInterval {
    len: usize,
    entropy: u64,
    nodes: Vec<Node>,
    /// The increment over the whole interval.
    w: Vec<f32>,
    /// Node increments computed by earlier queries (they never change), so a query re-derives only
    /// the new part of its path from the root, as torchsde's LRU cache saves it; emptied when it
    /// holds [`CACHED_NODES`] entries.
    cache: HashMap<usize, Vec<f32>>,
}

/// How many node increments [`BrownianInterval`] keeps between queries (torchsde keeps 45).
const CACHED_NODES: usize = 64;

impl BrownianInterval {
    /// `BrownianInterval(t0, t1, size=(len,), entropy=entropy, tol=1e-6, pool_size=24, halfway_tree=True)`.
    pub fn new(t0: f64, t1: f64, len: usize, entropy: u64) -> Result<Self, EngineError> {
        if !t0.is_finite() || !t1.is_finite() || t0 > t1 {
            return Err(EngineError::InvalidArgument(format!(
                "Brownian interval needs finite t0 <= t1, got [{t0}, {t1}]"
            )));
        }
        let seeds = SeedSequence::new(u128::from(entropy), &[], POOL_SIZE).generate_state_u32(3);
        // The top increment uses the unrounded times: randn · √(t1 − t0), the scalar as float32.
        let scale = (t1 - t0).sqrt() as f32;
        let w = TorchGenerator::new(u64::from(seeds[0]))
            .randn(len)
            .into_iter()
            .map(|x| x * scale)
            .collect();
        Ok(Self {
            len,
            entropy,
            nodes: vec![Node {
                start: round6(t0),
                end: round6(t1),
                parent: None,
                spawn_key: 0,
                depth: 0,
                split: None,
            }],
            w,
            cache: HashMap::new(),
        })
    }

    /// The increment W(tb) − W(ta) (torchsde's `__call__(ta, tb)`), with the times clamped into the interval.
    pub fn increment(&mut self, ta: f64, tb: f64) -> Result<Vec<f32>, EngineError> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let ta = ta.clamp(start, end);
        let tb = tb.clamp(start, end);
        if ta > tb {
            return Err(EngineError::InvalidArgument(format!(
                "Brownian query times must satisfy ta <= tb, got {ta} and {tb}"
            )));
        }
        let (ta, tb) = if ta == tb {
            (ta, tb)
        } else {
            (round6(ta), round6(tb))
        };
        // Equal times give zeros in torchsde; times that only become equal when rounded would make it split
        // without end (or give a zero-width node), so they are zeros here.
        if ta == tb {
            return Ok(vec![0.0; self.len]);
        }
        let mut pieces = Vec::new();
        self.locate(0, ta, tb, &mut pieces)?;
        let mut memo = std::mem::take(&mut self.cache);
        if memo.len() >= CACHED_NODES {
            memo.clear();
        }
        let mut total: Option<Vec<f32>> = None;
        for id in pieces {
            let w = self.node_increment(id, &mut memo);
            total = Some(match total {
                None => w,
                Some(acc) => acc.iter().zip(&w).map(|(a, b)| a + b).collect(),
            });
        }
        self.cache = memo;
        Ok(total.unwrap_or_else(|| vec![0.0; self.len]))
    }

    /// Splits a node at its rounded midpoint (torchsde's `_split_exact` with the halfway point).
    fn split(&mut self, id: usize) -> Result<Split, EngineError> {
        if let Some(split) = self.nodes[id].split {
            return Ok(split);
        }
        let node = self.nodes[id].clone();
        if node.depth >= MAX_DEPTH {
            return Err(EngineError::InvalidArgument(format!(
                "Brownian tree deeper than {MAX_DEPTH} levels at [{}, {}]",
                node.start, node.end
            )));
        }
        let midway = round6(0.5 * (node.end + node.start));
        let seeds = SeedSequence::new(
            u128::from(self.entropy),
            &[node.spawn_key, node.depth],
            POOL_SIZE,
        )
        .generate_state_u32(4);
        let left = self.nodes.len();
        let child = |start, end, is_left: bool| Node {
            start,
            end,
            parent: Some((id, is_left)),
            spawn_key: 2 * node.spawn_key + u64::from(!is_left),
            depth: node.depth + 1,
            split: None,
        };
        self.nodes.push(child(node.start, midway, true));
        self.nodes.push(child(midway, node.end, false));
        let split = Split {
            midway,
            left,
            right: left + 1,
            w_seed: seeds[0],
        };
        self.nodes[id].split = Some(split);
        Ok(split)
    }

    /// The maximal nodes covering [ta, tb] ⊆ the node's interval, left to right (torchsde's `_loc`).
    fn locate(
        &mut self,
        id: usize,
        ta: f64,
        tb: f64,
        out: &mut Vec<usize>,
    ) -> Result<(), EngineError> {
        let (start, end) = (self.nodes[id].start, self.nodes[id].end);
        if ta == start && tb == end {
            out.push(id);
            return Ok(());
        }
        let split = self.split(id)?;
        if tb <= split.midway {
            self.locate(split.left, ta, tb, out)
        } else if ta >= split.midway {
            self.locate(split.right, ta, tb, out)
        } else {
            self.locate(split.left, ta, split.midway, out)?;
            self.locate(split.right, split.midway, tb, out)
        }
    }

    /// A node's increment: the root's, or a Brownian bridge sample given its parent's (torchsde's
    /// `_increment_and_space_time_levy_area` without H), in float32 as torch computes it.
    fn node_increment(&self, id: usize, memo: &mut HashMap<usize, Vec<f32>>) -> Vec<f32> {
        let Some((parent, is_left)) = self.nodes[id].parent else {
            return self.w.clone();
        };
        if let Some(w) = memo.get(&id) {
            return w.clone();
        }
        let parent_w = self.node_increment(parent, memo);
        let p = &self.nodes[parent];
        let Some(split) = p.split else {
            // A node with a parent was made by splitting it.
            return vec![0.0; self.len];
        };
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = split.midway - p.start;
        let right_diff = p.end - split.midway;
        let var = left_diff * right_diff * h_reciprocal;
        // Python scalars times float32 tensors: the scalar is rounded to float32 first.
        let (ld, hr, sd) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        let noise = TorchGenerator::new(u64::from(split.w_seed)).randn(self.len);
        let out: Vec<f32> = parent_w
            .iter()
            .zip(&noise)
            .map(|(&w, &n)| {
                let left = w * ld * hr + n * sd;
                if is_left {
                    left
                } else {
                    w - left
                }
            })
            .collect();
        memo.insert(id, out.clone());
        out
    }
}

/// diffusers' `BrownianTreeNoiseSampler` for one (unbatched) sample with the identity transform.
#[derive(Debug, Clone)]
pub struct BrownianTreeNoiseSampler {
    tree: BrownianInterval,
}

impl BrownianTreeNoiseSampler {
    /// The sampler over [σ_min, σ_max] for samples of `len` elements, seeded like diffusers'
    /// `noise_sampler_seed`.
    pub fn new(len: usize, sigma_min: f32, sigma_max: f32, seed: u64) -> Result<Self, EngineError> {
        let (lo, hi) = if sigma_min < sigma_max {
            (sigma_min, sigma_max)
        } else {
            (sigma_max, sigma_min)
        };
        Ok(Self {
            tree: BrownianInterval::new(f64::from(lo), f64::from(hi), len, seed)?,
        })
    }

    /// The normalised noise for a step from σ to σ_next: W(σ, σ_next) / √|σ_next − σ|, all in float32.
    pub fn sample(&mut self, sigma: f32, sigma_next: f32) -> Result<Vec<f32>, EngineError> {
        let (lo, hi, sign) = if sigma < sigma_next {
            (sigma, sigma_next, 1.0f32)
        } else {
            (sigma_next, sigma, -1.0f32)
        };
        let w = self.tree.increment(f64::from(lo), f64::from(hi))?;
        let norm = (sigma_next - sigma).abs().sqrt();
        Ok(w.into_iter().map(|x| (x * sign) / norm).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from numpy 2.4.6:
    //   /work/venv-ref/bin/python -c 'import numpy as np
    //   s = np.random.SeedSequence(entropy=E, spawn_key=K, pool_size=P)
    //   print(s.pool.tolist(), s.generate_state(5).tolist(), s.generate_state(3, np.uint64).tolist())'
    #[test]
    fn seed_sequence_matches_numpy() {
        let s = SeedSequence::new(0, &[], 4);
        assert_eq!(s.pool(), [4265667335, 1328953910, 1320288413, 3365567143]);
        assert_eq!(
            s.generate_state_u32(5),
            [2968811710, 3677149159, 745650761, 2884920346, 2642120001]
        );
        assert_eq!(
            s.generate_state_u64(3),
            [
                15793235383387715774,
                12390638538380655177,
                2361836109651742017
            ]
        );

        let s = SeedSequence::new(1234, &[], 24);
        assert_eq!(
            s.pool()[..4],
            [3128901807, 3802102920, 1253488489, 2400442689]
        );
        assert_eq!(s.pool()[23], 1157247916);
        assert_eq!(
            s.generate_state_u32(5),
            [4280268349, 3829106894, 2675148735, 1502016262, 4231601701]
        );

        // More than 32 bits of entropy: two words.
        let s = SeedSequence::new(4294967301, &[], 24);
        assert_eq!(
            s.generate_state_u32(5),
            [3001752692, 252864033, 810806329, 58457048, 4205065337]
        );
        let s = SeedSequence::new((1u128 << 64) + 3, &[], 4);
        assert_eq!(
            s.generate_state_u64(3),
            [
                9708532199024898782,
                11784846304399175410,
                15798225885626702933
            ]
        );

        // Spawn keys as torchsde passes them: (spawn_key, depth).
        let s = SeedSequence::new(42, &[0, 0], 24);
        assert_eq!(
            s.generate_state_u32(5),
            [2102017995, 2891809698, 2144110403, 379559146, 304820076]
        );
        let s = SeedSequence::new(42, &[5, 3], 24);
        assert_eq!(
            s.generate_state_u32(5),
            [3084123560, 468215949, 242942938, 2650128260, 2657245645]
        );
        let s = SeedSequence::new(7, &[(1 << 33) + 1, 40], 24);
        assert_eq!(
            s.generate_state_u32(5),
            [3909081045, 573239554, 1076730425, 140184001, 2927977969]
        );
        // Entropy longer than the pool: the extra words are mixed in afterwards.
        let s = SeedSequence::new(123, &[1], 4);
        assert_eq!(s.pool(), [2963531256, 1685324498, 1095071997, 1226960330]);
        assert_eq!(
            s.generate_state_u32(5),
            [2306788707, 3416326135, 1045731340, 3609716808, 922595680]
        );
    }

    #[test]
    fn round6_is_pythons_round() {
        // python3 -c 'print(round(0.0078125, 6), round(14.6146412, 6), round(0.0291675, 6))'
        assert_eq!(round6(0.0078125), 0.007812);
        assert_eq!(round6(14.6146412), 14.614641);
        assert_eq!(round6(0.0291675), 0.029167);
        assert_eq!(round6(2.5e-7), 0.0);
        assert_eq!(round6(-1.0000005), -1.000001);
    }

    #[test]
    fn increments_add_up_and_do_not_depend_on_query_order() {
        let mut a = BrownianInterval::new(0.03, 14.6, 32, 5).unwrap();
        let whole = a.increment(0.03, 14.6).unwrap();
        let left = a.increment(0.03, 3.3).unwrap();
        let right = a.increment(3.3, 14.6).unwrap();
        for k in 0..32 {
            assert!((left[k] + right[k] - whole[k]).abs() < 1e-5, "{k}");
        }
        let mut b = BrownianInterval::new(0.03, 14.6, 32, 5).unwrap();
        assert_eq!(b.increment(3.3, 14.6).unwrap(), right);
        assert_eq!(b.increment(0.03, 3.3).unwrap(), left);
        assert_eq!(b.increment(1.0, 1.0).unwrap(), vec![0.0; 32]);
        // Another seed, another path.
        let mut c = BrownianInterval::new(0.03, 14.6, 32, 6).unwrap();
        assert_ne!(c.increment(0.03, 3.3).unwrap(), left);
        // The node cache kept between queries (and emptied when full) never changes a value: a
        // schedule's worth of queries on one tree equals each query on a fresh tree.
        let mut shared = BrownianInterval::new(0.03, 14.6, 16, 9).unwrap();
        let times: Vec<f64> = (0..120).map(|i| 14.6 * 0.97f64.powi(i)).collect();
        for pair in times.windows(2) {
            let (ta, tb) = (pair[1].max(0.03), pair[0]);
            let mut fresh = BrownianInterval::new(0.03, 14.6, 16, 9).unwrap();
            assert_eq!(
                shared.increment(ta, tb).unwrap(),
                fresh.increment(ta, tb).unwrap(),
                "[{ta}, {tb}]"
            );
        }
        assert!(shared.cache.len() <= CACHED_NODES + MAX_DEPTH as usize);
    }
}
