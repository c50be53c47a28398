//! Fast CPU f32 primitives for the SD models, as drop-in replacements for candle's layers.
//!
//! candle's CPU kernels spend most of a VAE decode outside the matrix products: its `GroupNorm` is eight
//! tensor passes, SiLU is a scalar `exp` per element, its tiled 3×3 convolution reorders the weights on every
//! call and scatters its im2col tiles and outputs element by element, and nearest upsampling walks a generic
//! index. These versions do the same maths with one pass where candle makes several:
//!
//! - [`GroupNorm`]: one parallel pass per (batch, group), with the SiLU that follows it fused in
//!   ([`GroupNorm::forward_silu`]) through a vectorisable `exp`.
//! - [`Conv2d`]: 3×3 stride-1 padding-1 convolutions (nearly all of the VAE's and the UNet's) by Winograd
//!   F(2×2, 3×3): the weights transformed once at load, 16 batched matmuls on candle's gemm with 2.25× fewer
//!   multiply-adds than im2col. Other shapes: the weights packed once as `[c_out, c_in·k·k + 1]` with the bias
//!   as the last column, and row-contiguous im2col tiles (with a row of ones for the bias) through the gemm,
//!   writing NCHW directly.
//! - [`upsample_nearest2x`]: row copies.
//! - [`softmax_last_dim`] and [`SpatialAttention`] (the VAE's single-head attention in channel-major layout:
//!   no transposes or copies around the matmuls, the q/k/v projections as one matmul, the scale folded into the
//!   query weights).
//!
//! Every fast path is for contiguous-able CPU f32 tensors only; on another device or dtype each type falls
//! back to candle's own op, so results are the same up to float rounding (the unit tests compare with candle's
//! ops within 1e-5).

use candle_core::{bail, DType, Module, Result, Storage, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

/// Whether `t` takes the fast CPU f32 paths.
fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("ops: not a CPU tensor")
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => bail!("ops: not a contiguous tensor"),
    }
}

/// `exp(x)` for f32 in a form the compiler vectorises (Cephes' `expf` polynomial; relative error ~1e-7).
/// Inputs are clamped to [−87, 88], so the result is never 0 or ∞.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is an integer in [−126, 127]: 2^n as the float with that biased exponent.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn silu_f32(y: f32) -> f32 {
    y / (1.0 + exp_f32(-y))
}

/// Sum of a slice with eight f32 lanes (vectorised) folded into an f64.
fn sum_lanes(s: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().map(|&a| f64::from(a)).sum::<f64>()
        + rest.iter().map(|&v| f64::from(f(v))).sum::<f64>()
}

/// `x · sigmoid(x)` (SiLU); the fused CPU f32 version, falling back to candle's.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !fast(x) {
        return candle_nn::ops::silu(x);
    }
    let x = x.contiguous()?;
    let out = with_f32(&x, |src| {
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(o, s)| {
                for (o, &v) in o.iter_mut().zip(s) {
                    *o = silu_f32(v);
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// Group normalisation over (batch, channels, ...) like `candle_nn::GroupNorm`, with an optional fused SiLU.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    /// The affine parameters on the CPU (empty when they are not CPU f32: candle's op runs then).
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f64,
}

/// Loads a group norm's `weight` and `bias` like `candle_nn::group_norm`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get(channels, "weight")?;
    let bias = vb.get(channels, "bias")?;
    GroupNorm::new(weight, bias, channels, groups, eps)
}

impl GroupNorm {
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        let (weight, bias) = if fast(&weight) && fast(&bias) {
            (weight.to_vec1()?, bias.to_vec1()?)
        } else {
            (vec![], vec![])
        };
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// `silu(group_norm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.is_empty() || !fast(x) || x.rank() < 3 {
            return candle_nn::ops::silu(&self.inner.forward(x)?);
        }
        self.fused(x, true)
    }

    fn fused(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        let c = dims[1];
        if c != self.weight.len() {
            bail!(
                "unexpected num-channels in GroupNorm ({c} <> {})",
                self.weight.len()
            )
        }
        let hw: usize = dims[2..].iter().product();
        let cpg = c / self.groups;
        let x = x.contiguous()?;
        let out = with_f32(&x, |src| {
            let mut out = vec![0f32; src.len()];
            if hw == 0 || cpg == 0 {
                return Ok(out);
            }
            out.par_chunks_mut(cpg * hw)
                .zip(src.par_chunks(cpg * hw))
                .enumerate()
                .for_each(|(i, (o, s))| {
                    let g = i % self.groups;
                    let n = s.len() as f64;
                    let mean = sum_lanes(s, |v| v) / n;
                    let mean32 = mean as f32;
                    let var = sum_lanes(s, |v| (v - mean32) * (v - mean32)) / n;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for (j, (o, s)) in o.chunks_mut(hw).zip(s.chunks(hw)).enumerate() {
                        let ch = g * cpg + j;
                        let a = f64::from(self.weight[ch]) * inv;
                        let b = (f64::from(self.bias[ch]) - mean * a) as f32;
                        let a = a as f32;
                        if silu {
                            for (o, &v) in o.iter_mut().zip(s) {
                                *o = silu_f32(v * a + b);
                            }
                        } else {
                            for (o, &v) in o.iter_mut().zip(s) {
                                *o = v * a + b;
                            }
                        }
                    }
                });
            Ok(out)
        })?;
        Tensor::from_vec(out, x.shape(), x.device())
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.is_empty() || !fast(x) || x.rank() < 3 {
            return self.inner.forward(x);
        }
        self.fused(x, false)
    }
}

/// The most f32 values one im2col tile holds (16 MiB: the tile and the gemm's packing of it stay in L3).
const IM2COL_TILE: usize = 4 << 20;

/// A 2-D convolution like `candle_nn::Conv2d`, with a faster CPU f32 forward for ungrouped, undilated
/// convolutions.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// candle's convolution: the fallback when the weights are not CPU f32 (absent otherwise, so that the
    /// weights are held once).
    inner: Option<candle_nn::Conv2d>,
    /// CPU f32 only: `[c_out, c_in·k·k + 1]`, the weights with the bias as the last column.
    packed: Option<Tensor>,
    /// CPU f32 3×3, stride 1, padding 1 only (then `packed` is absent): the Winograd F(2×2, 3×3) transform
    /// of the weights, `[16, c_out, c_in]`, and the bias.
    winograd: Option<(Tensor, Vec<f32>)>,
    cfg: Conv2dConfig,
    c_out: usize,
    c_in: usize,
    k: usize,
}

/// The largest `c_out · c_in` whose 3×3 kernels take the Winograd path (640 × 640).
const WINOGRAD_MAX_WEIGHTS: usize = 640 * 640;

/// Loads a convolution's `weight` (c_out, c_in, k, k) and `bias` like `candle_nn::conv2d`.
pub fn conv2d(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get((c_out, c_in / cfg.groups, k, k), "weight")?;
    let bias = vb.get(c_out, "bias")?;
    Conv2d::new(weight, Some(bias), cfg)
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Result<Self> {
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        let usable = fast(&weight)
            && bias.as_ref().is_none_or(fast)
            && cfg.groups == 1
            && cfg.dilation == 1
            && cfg.stride > 0
            && kh == kw;
        // Winograd's weights are 16/9 the size of the kernel's: worth it where the weights are
        // small and the images large (the VAE, the UNet's outer blocks); the 1280-channel layers,
        // which hold most of a UNet's weights, keep the im2col path so loading stays near 1x the
        // weights' size.
        let winograd_fits = c_out * c_in <= WINOGRAD_MAX_WEIGHTS;
        let (inner, packed, winograd) =
            if usable && winograd_fits && kh == 3 && cfg.stride == 1 && cfg.padding == 1 {
                let bias = match bias {
                    Some(b) => b.to_vec1()?,
                    None => vec![0.0; c_out],
                };
                (None, None, Some((winograd_weights(&weight)?, bias)))
            } else if usable {
                let bias = match bias {
                    Some(b) => b.reshape((c_out, 1))?,
                    None => Tensor::zeros((c_out, 1), DType::F32, weight.device())?,
                };
                let w = weight.reshape((c_out, c_in * kh * kw))?;
                (None, Some(Tensor::cat(&[&w, &bias], 1)?), None)
            } else {
                (Some(candle_nn::Conv2d::new(weight, bias, cfg)), None, None)
            };
        Ok(Self {
            inner,
            packed,
            winograd,
            cfg,
            c_out,
            c_in,
            k: kh,
        })
    }

    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    fn forward_fast(&self, x: &Tensor, packed: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, self.cfg.stride, self.cfg.padding);
        if c != self.c_in || h + 2 * p < k || w + 2 * p < k {
            bail!(
                "conv2d: input {:?} for a {}x{k} kernel over {} channels with padding {p}",
                x.dims(),
                k,
                self.c_in
            )
        }
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let n = oh * ow;
        let c_out = self.c_out;
        let kk = c * k * k + 1;
        let rows = (IM2COL_TILE / (kk * ow)).clamp(1, oh);
        let x = x.contiguous()?;
        with_f32(&x, |src| {
            let image = c * h * w;
            let geometry = Im2Col {
                c,
                h,
                w,
                k,
                s,
                p,
                ow,
            };
            if rows == oh {
                // Whole images: one (batched) matmul writes NCHW directly.
                let mut col = vec![0f32; b * kk * n];
                col.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                    geometry.row(&src[i / kk * image..][..image], i % kk, 0, row)
                });
                let col = Tensor::from_vec(col, (b, kk, n), x.device())?;
                return packed
                    .broadcast_left(b)?
                    .matmul(&col)?
                    .reshape((b, c_out, oh, ow));
            }
            let mut out = vec![0f32; b * c_out * n];
            for (bi, out_b) in out.chunks_mut(c_out * n).enumerate() {
                let img = &src[bi * image..][..image];
                let mut y0 = 0;
                while y0 < oh {
                    let y1 = (y0 + rows).min(oh);
                    let tn = (y1 - y0) * ow;
                    let mut col = vec![0f32; kk * tn];
                    col.par_chunks_mut(tn)
                        .enumerate()
                        .for_each(|(r, row)| geometry.row(img, r, y0, row));
                    let col = Tensor::from_vec(col, (kk, tn), x.device())?;
                    let res = packed.matmul(&col)?;
                    with_f32(&res, |r| {
                        out_b
                            .par_chunks_mut(n)
                            .zip(r.par_chunks(tn))
                            .for_each(|(o, r)| o[y0 * ow..y1 * ow].copy_from_slice(r));
                        Ok(())
                    })?;
                    y0 = y1;
                }
            }
            Tensor::from_vec(out, (b, c_out, oh, ow), x.device())
        })
    }
}

impl Conv2d {
    /// The 3×3 stride-1 padding-1 convolution by Winograd F(2×2, 3×3) (Lavin & Gray): each 2×2 output tile
    /// is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` over its 4×4 input tile `d`, so the channel sums are 16 matmuls
    /// `[c_out, c_in] @ [c_in, tiles]`, 2.25× fewer multiply-adds than im2col. The transforms only use
    /// 0, ±1 and ±½, so the rounding stays at the level of the direct sum. Bands of tile rows bound the memory.
    fn forward_winograd(&self, x: &Tensor, u: &Tensor, bias: &[f32]) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in {
            bail!("conv2d: input {:?} for {} channels", x.dims(), self.c_in)
        }
        let c_out = self.c_out;
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        // Bands of tile rows across the whole batch (so small images share one matmul and the weights are
        // read once).
        let band = (IM2COL_TILE / (16 * c * tw).max(1)).clamp(1, (b * th).max(1));
        let x = x.contiguous()?;
        let mut out = vec![0f32; b * c_out * h * w];
        if h == 0 || w == 0 || c_out == 0 || b == 0 {
            return Tensor::from_vec(out, (b, c_out, h, w), x.device());
        }
        // The tile rows of image `bi` in the global band `g0..g1`, and the index of their first tile.
        let local = |bi: usize, g0: usize, g1: usize| {
            let (start, end) = (g0.max(bi * th), g1.min((bi + 1) * th));
            (start < end).then(|| (start - bi * th..end - bi * th, (start - g0) * tw))
        };
        with_f32(&x, |src| {
            let mut g0 = 0;
            while g0 < b * th {
                let g1 = (g0 + band).min(b * th);
                let tb = (g1 - g0) * tw;
                // V: [c_in, 16, tiles], read as [16, c_in, tiles].
                let mut v = vec![0f32; c * 16 * tb];
                v.par_chunks_mut(16 * tb).enumerate().for_each(|(ci, vc)| {
                    for bi in g0 / th..g1.div_ceil(th) {
                        if let Some((rows, t0)) = local(bi, g0, g1) {
                            let plane = &src[(bi * c + ci) * h * w..][..h * w];
                            winograd_input(plane, h, w, rows, tw, t0, tb, vc);
                        }
                    }
                });
                let v = Tensor::from_vec(v, (c, 16, tb), x.device())?.transpose(0, 1)?;
                let m = u.matmul(&v)?; // [16, c_out, tiles]
                with_f32(&m, |m| {
                    out.par_chunks_mut(h * w)
                        .enumerate()
                        .for_each(|(idx, plane)| {
                            let (bi, co) = (idx / c_out, idx % c_out);
                            if let Some((rows, t0)) = local(bi, g0, g1) {
                                let m = &m[co * tb..];
                                winograd_output(m, c_out * tb, t0, bias[co], h, w, rows, tw, plane);
                            }
                        });
                    Ok(())
                })?;
                g0 = g1;
            }
            Ok(())
        })?;
        Tensor::from_vec(out, (b, c_out, h, w), x.device())
    }
}

/// `G g Gᵀ` for every (c_out, c_in) 3×3 kernel `g`, as `[16, c_out, c_in]`.
fn winograd_weights(weight: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, _, _) = weight.dims4()?;
    let g = weight.flatten_all()?.to_vec1::<f32>()?;
    let n = c_out * c_in;
    let mut u = vec![0f32; 16 * n];
    for (i, k) in g.chunks_exact(9).enumerate() {
        // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]], applied to the rows, then to the columns.
        let rows = |a: [f32; 3]| {
            [
                a[0],
                0.5 * (a[0] + a[1] + a[2]),
                0.5 * (a[0] - a[1] + a[2]),
                a[2],
            ]
        };
        let cols: [[f32; 4]; 3] = [
            rows([k[0], k[1], k[2]]),
            rows([k[3], k[4], k[5]]),
            rows([k[6], k[7], k[8]]),
        ];
        for j in 0..4 {
            let t = rows([cols[0][j], cols[1][j], cols[2][j]]);
            for (r, &value) in t.iter().enumerate() {
                u[(r * 4 + j) * n + i] = value;
            }
        }
    }
    Tensor::from_vec(u, (16, c_out, c_in), weight.device())
}

/// `Bᵀ d B` of every 4×4 input tile of one channel's plane (tile rows `rows`, `tw` tiles a row), into
/// `vc[ξ · tiles + t0 + t]`. Row by row, so that the loops vectorise: the rows of `Bᵀ d` over the whole
/// (zero-padded) width first, then the columns of each tile.
#[allow(clippy::too_many_arguments)]
fn winograd_input(
    plane: &[f32],
    h: usize,
    w: usize,
    rows: std::ops::Range<usize>,
    tw: usize,
    t0: usize,
    tiles: usize,
    vc: &mut [f32],
) {
    // Padded column x is input column x − 1; tiles read padded columns 2tx .. 2tx + 4.
    let pw = 2 * tw + 2;
    let mut d = [
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
        vec![0f32; pw],
    ];
    let mut e = d.clone();
    let ty0 = rows.start;
    for ty in rows {
        for (i, di) in d.iter_mut().enumerate() {
            // Input row 2ty − 1 + i.
            let y = 2 * ty + i;
            di.fill(0.0);
            if y >= 1 && y <= h {
                di[1..=w].copy_from_slice(&plane[(y - 1) * w..][..w]);
            }
        }
        // Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
        let [d0, d1, d2, d3] = &d;
        let [e0, e1, e2, e3] = &mut e;
        for x in 0..pw {
            e0[x] = d0[x] - d2[x];
            e1[x] = d1[x] + d2[x];
            e2[x] = d2[x] - d1[x];
            e3[x] = d1[x] - d3[x];
        }
        let base = t0 + (ty - ty0) * tw;
        for (i, ei) in e.iter().enumerate() {
            for j in 0..4 {
                let out = &mut vc[(i * 4 + j) * tiles + base..][..tw];
                let windows = ei.windows(4).step_by(2).zip(out.iter_mut());
                match j {
                    0 => windows.for_each(|(a, o)| *o = a[0] - a[2]),
                    1 => windows.for_each(|(a, o)| *o = a[1] + a[2]),
                    2 => windows.for_each(|(a, o)| *o = a[2] - a[1]),
                    _ => windows.for_each(|(a, o)| *o = a[1] - a[3]),
                }
            }
        }
    }
}

/// `Aᵀ m A + bias` of every tile of one output plane (tile rows `rows`, `tw` tiles a row) from `m`, where
/// `m[ξ · stride + t0 + t]` is the value ξ of the plane's tile `t`.
#[allow(clippy::too_many_arguments)]
fn winograd_output(
    m: &[f32],
    stride: usize,
    t0: usize,
    bias: f32,
    h: usize,
    w: usize,
    rows: std::ops::Range<usize>,
    tw: usize,
    plane: &mut [f32],
) {
    let ty0 = rows.start;
    // a[r][j]: row r of Aᵀ m for column j, over the tiles of a row.
    let mut a: [Vec<f32>; 8] = std::array::from_fn(|_| vec![0f32; tw]);
    for ty in rows {
        let base = t0 + (ty - ty0) * tw;
        let row = |xi: usize| &m[xi * stride + base..][..tw];
        // Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]] on the rows, then the columns.
        for j in 0..4 {
            let (m0, m1, m2, m3) = (row(j), row(4 + j), row(8 + j), row(12 + j));
            let (top, bottom) = a.split_at_mut(4);
            for (tx, (t, b)) in top[j].iter_mut().zip(bottom[j].iter_mut()).enumerate() {
                *t = m0[tx] + m1[tx] + m2[tx];
                *b = m1[tx] - m2[tx] - m3[tx];
            }
        }
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= h {
                continue;
            }
            let [a0, a1, a2, a3] = [&a[4 * r], &a[4 * r + 1], &a[4 * r + 2], &a[4 * r + 3]];
            let out = &mut plane[y * w..][..w];
            for (tx, pair) in out.chunks_mut(2).enumerate() {
                pair[0] = a0[tx] + a1[tx] + a2[tx] + bias;
                if let Some(second) = pair.get_mut(1) {
                    *second = a1[tx] - a2[tx] - a3[tx] + bias;
                }
            }
        }
    }
}

/// The geometry of an im2col: row `r = (ci·k + ky)·k + kx` of the column matrix holds, for each output pixel,
/// the input pixel that kernel tap multiplies (0 in the padding); row `c·k·k` is all ones (the bias).
struct Im2Col {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ow: usize,
}

impl Im2Col {
    /// Fills `row` (output rows `y0..`, `row.len() / ow` of them) with column-matrix row `r` of `img`.
    fn row(&self, img: &[f32], r: usize, y0: usize, row: &mut [f32]) {
        let Self {
            c,
            h,
            w,
            k,
            s,
            p,
            ow,
        } = *self;
        if r == c * k * k {
            row.fill(1.0);
            return;
        }
        let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
        let plane = &img[ci * h * w..][..h * w];
        for (t, dst) in row.chunks_mut(ow).enumerate() {
            let iy = (y0 + t) * s + ky;
            if iy < p || iy - p >= h {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[(iy - p) * w..][..w];
            if s == 1 {
                // ix = ox + kx − p must lie in [0, w).
                let lo = p.saturating_sub(kx).min(ow);
                let hi = (w + p).saturating_sub(kx).clamp(lo, ow);
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                dst[lo..hi].copy_from_slice(&src[lo + kx - p..hi + kx - p]);
            } else {
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = ox * s + kx;
                    *d = if ix < p || ix - p >= w {
                        0.0
                    } else {
                        src[ix - p]
                    };
                }
            }
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some((u, bias)), true) = (&self.winograd, fast(x)) {
            return self.forward_winograd(x, u, bias);
        }
        match (&self.packed, &self.inner) {
            (Some(packed), _) if fast(x) => self.forward_fast(x, packed),
            (_, Some(inner)) => inner.forward(x),
            _ => bail!(
                "conv2d: CPU f32 weights and a {:?} {:?} input",
                x.dtype(),
                x.device().location()
            ),
        }
    }
}

/// Nearest-neighbour 2× upsampling of (b, c, h, w), like `upsample_nearest2d(2h, 2w)`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !fast(x) || h == 0 || w == 0 {
        return x.upsample_nearest2d(2 * h, 2 * w);
    }
    let x = x.contiguous()?;
    let out = with_f32(&x, |src| {
        let mut out = vec![0f32; b * c * 4 * h * w];
        out.par_chunks_mut(2 * w).enumerate().for_each(|(i, orow)| {
            let (plane, oy) = (i / (2 * h), i % (2 * h));
            let srow = &src[plane * h * w + oy / 2 * w..][..w];
            for (o, &v) in orow.chunks_exact_mut(2).zip(srow) {
                o[0] = v;
                o[1] = v;
            }
        });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, c, 2 * h, 2 * w), x.device())
}

/// Softmax over the last dimension, like `candle_nn::ops::softmax_last_dim`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fast(x) || x.rank() == 0 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let n = x.dim(D::Minus1)?;
    let x = x.contiguous()?;
    let out = with_f32(&x, |src| {
        let mut out = vec![0f32; src.len()];
        if n == 0 {
            return Ok(out);
        }
        out.par_chunks_mut(n)
            .zip(src.par_chunks(n))
            .for_each(|(o, s)| {
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (o, &v) in o.iter_mut().zip(s) {
                    *o = exp_f32(v - max);
                }
                let inv = (1.0 / sum_lanes(o, |v| v)) as f32;
                for o in o.iter_mut() {
                    *o *= inv;
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// Loads a (channels, channels) projection stored as a linear or a 1×1 convolution (candle's
/// `get_qkv_linear`): the weight (out, in) and the bias (out, 1).
fn projection(channels: usize, vb: VarBuilder) -> Result<(Tensor, Tensor)> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(w) => w,
        Err(_) => vb
            .get((channels, channels, 1, 1), "weight")?
            .reshape((channels, channels))?,
    };
    let bias = vb.get(channels, "bias")?.reshape((channels, 1))?;
    Ok((weight, bias))
}

/// The VAE mid block's self-attention (diffusers' `Attention` with one head over all channels, candle's
/// `AttentionBlock`): `x + proj(softmax(qᵀk / √c) vᵀ)` on `group_norm(x)`, computed channel-major, (b, c, h·w),
/// so no transposes are materialised.
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    group_norm: GroupNorm,
    /// (3c, c): the query (scaled by 1/√c), key and value weights; (3c, 1) their biases.
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
    channels: usize,
    rescale_output_factor: f64,
}

impl SpatialAttention {
    /// Loads `group_norm` and `to_q`/`to_k`/`to_v`/`to_out.0` (or `query`/`key`/`value`/`proj_attn`).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        num_groups: usize,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let group_norm = group_norm(num_groups, channels, eps, vb.pp("group_norm"))?;
        let (q, k, v, o) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        let scale = 1.0 / (channels as f64).sqrt();
        let (wq, bq) = projection(channels, vb.pp(q))?;
        let (wk, bk) = projection(channels, vb.pp(k))?;
        let (wv, bv) = projection(channels, vb.pp(v))?;
        let (out_weight, out_bias) = projection(channels, vb.pp(o))?;
        Ok(Self {
            group_norm,
            qkv_weight: Tensor::cat(&[&(wq * scale)?, &wk, &wv], 0)?,
            qkv_bias: Tensor::cat(&[&(bq * scale)?, &bk, &bv], 0)?,
            out_weight,
            out_bias,
            channels,
            rescale_output_factor,
        })
    }
}

impl Module for SpatialAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels {
            bail!("attention: {c} channels, expected {}", self.channels)
        }
        let n = h * w;
        let cpu = x.device().is_cpu();
        let xn = self.group_norm.forward(x)?.reshape((b, c, n))?;
        let qkv = self
            .qkv_weight
            .broadcast_left(b)?
            .matmul(&xn)?
            .broadcast_add(&self.qkv_bias)?;
        let (q, k, v) = (
            qkv.narrow(1, 0, c)?,
            qkv.narrow(1, c, c)?,
            qkv.narrow(1, 2 * c, c)?,
        );
        let qt = q.transpose(1, 2)?;
        let qt = if cpu { qt } else { qt.contiguous()? };
        let k = if cpu { k } else { k.contiguous()? };
        let probs = softmax_last_dim(&qt.matmul(&k)?)?; // (b, n, n)
        let pt = probs.transpose(1, 2)?;
        let pt = if cpu { pt } else { pt.contiguous()? };
        let v = if cpu { v } else { v.contiguous()? };
        let attn = v.matmul(&pt)?; // (b, c, n)
        let y = self
            .out_weight
            .broadcast_left(b)?
            .matmul(&attn)?
            .broadcast_add(&self.out_bias)?
            .reshape((b, c, h, w))?;
        let y = (y + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(y)
        } else {
            y / self.rescale_output_factor
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let data = crate::noise::randn(seed, n);
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Max |a − b| / (max |b| + tiny).
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .unwrap_or_default();
        let b: Vec<f32> = b
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .unwrap_or_default();
        let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn exp_matches_std() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.043;
            let (a, b) = (exp_f32(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "{x}: {a} vs {b}");
        }
    }

    #[test]
    fn group_norm_matches_candle() -> Result<()> {
        for (shape, groups) in [
            (&[2usize, 64, 9, 7][..], 32),
            (&[1, 96, 5, 4], 32),
            (&[2, 32, 3], 8),
        ] {
            let c = shape[1];
            let x = randn(shape, 1).affine(3.0, 0.5)?;
            let w = randn(&[c], 2);
            let b = randn(&[c], 3);
            let ours = GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-6)?;
            let theirs = candle_nn::GroupNorm::new(w, b, c, groups, 1e-6)?;
            let expected = theirs.forward(&x)?;
            assert!(rel_diff(&ours.forward(&x)?, &expected) < 1e-5);
            let expected = candle_nn::ops::silu(&expected)?;
            assert!(rel_diff(&ours.forward_silu(&x)?, &expected) < 1e-5);
            // A non-contiguous input.
            let xt = x.transpose(0, 1)?.contiguous()?.transpose(0, 1)?;
            assert!(rel_diff(&ours.forward_silu(&xt)?, &expected) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn silu_matches_candle() -> Result<()> {
        let x = (randn(&[3, 1000], 4) * 20.0)?;
        assert!(rel_diff(&silu(&x)?, &candle_nn::ops::silu(&x)?) < 1e-6);
        Ok(())
    }

    #[test]
    fn conv2d_matches_candle() -> Result<()> {
        // (batch, c_in, c_out, h, w, k, stride, padding)
        let cases = [
            (1, 8, 16, 9, 7, 3, 1, 1),
            (2, 5, 6, 8, 8, 3, 1, 1),
            (2, 4, 6, 9, 8, 3, 2, 0),
            (1, 6, 4, 9, 9, 3, 2, 1),
            (2, 8, 12, 5, 6, 1, 1, 0),
            (1, 3, 4, 6, 5, 5, 1, 2),
            (1, 3, 4, 2, 2, 3, 1, 1),
        ];
        for (i, &(b, ci, co, h, w, k, s, p)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = randn(&[b, ci, h, w], seed);
            let weight = randn(&[co, ci, k, k], seed + 1);
            let bias = randn(&[co], seed + 2);
            let cfg = Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            let ours = Conv2d::new(weight.clone(), Some(bias.clone()), cfg)?;
            let theirs = candle_nn::Conv2d::new(weight, Some(bias), cfg);
            let (a, e) = (ours.forward(&x)?, theirs.forward(&x)?);
            assert!(rel_diff(&a, &e) < 1e-5, "case {i}: {}", rel_diff(&a, &e));
        }
        Ok(())
    }

    #[test]
    fn conv2d_tiled_matches_candle() -> Result<()> {
        // Big enough that the Winograd transform (stride 1) and the im2col (stride 2) are split into bands.
        for (ci, co, h, w, stride) in [(64, 8, 130, 140, 1), (64, 6, 260, 140, 2)] {
            let x = randn(&[2, ci, h, w], 50);
            let weight = randn(&[co, ci, 3, 3], 51);
            let bias = randn(&[co], 52);
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            assert!(16 * ci * w.div_ceil(2) * h.div_ceil(2) > IM2COL_TILE);
            let ours = Conv2d::new(weight.clone(), Some(bias.clone()), cfg)?;
            let theirs = candle_nn::Conv2d::new(weight, Some(bias), cfg);
            let diff = rel_diff(&ours.forward(&x)?, &theirs.forward(&x)?);
            assert!(diff < 1e-5, "stride {stride}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn upsample_matches_candle() -> Result<()> {
        let x = randn(&[2, 3, 5, 7], 60);
        let a = upsample_nearest2x(&x)?;
        let e = x.upsample_nearest2d(10, 14)?;
        assert_eq!(rel_diff(&a, &e), 0.0);
        Ok(())
    }

    #[test]
    fn softmax_matches_candle() -> Result<()> {
        let x = (randn(&[2, 7, 33], 70) * 10.0)?;
        let e = candle_nn::ops::softmax_last_dim(&x)?;
        assert!(rel_diff(&softmax_last_dim(&x)?, &e) < 1e-6);
        Ok(())
    }
}
