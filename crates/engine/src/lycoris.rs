//! The layer types of a LoRA file and the weight change each one makes: plain LoRA (LoCon) with its optional
//! Tucker `lora_mid`, and the LyCORIS types LoHa, LoKr, full (`diff`), IA3, DoRA and norm (`w_norm`), as
//! InvokeAI applies them to SD 1.x/2.x/XL models (its `backend/patches/layers/`).
//!
//! A layer is told apart by its tensor names, first match wins, as in InvokeAI's
//! `any_lora_layer_from_state_dict`: `dora_scale` → DoRA; `lora_up.weight` → LoRA; `hada_w1_a` → LoHa;
//! `lokr_w1` or `lokr_w1_a` → LoKr; `diff` → full; `on_input` → IA3; `w_norm` → norm. Names that the chosen
//! type does not use are skipped with a warning (InvokeAI does the same).
//!
//! The change to a module's weight is `patch weight · scale · ΔW`, where `scale = alpha / rank` for the types
//! that have a rank (LoRA and DoRA: `down`'s rows; LoHa: `hada_w1_b`'s rows; LoKr: `lokr_w1_b`'s rows, else
//! `lokr_w2_b`'s, else none) and an `alpha`, and 1 otherwise. `ΔW` (computed in f32, then reshaped to the
//! module's weight shape, which must hold as many values):
//! - LoRA: `up @ down` (each flattened to a matrix); with `lora_mid` (`[r, r, kh, kw]`, up `[out, r, 1, 1]`,
//!   down `[r, in, 1, 1]`): `Σ up[o,m] · mid[m,n,h,w] · down[n,i]`. A `down` with k times `up`'s rank (kohya's
//!   fused q/k/v) gives `Σ_chunks up @ down_chunk`.
//! - LoHa: `(w1_a @ w1_b) ⊙ (w2_a @ w2_b)`; with `hada_t1`/`hada_t2` (Tucker, `w·_a` `[r, out]`, `w·_b`
//!   `[r, in]`): `(Σ w1_a[i,o] · t1[i,j,h,w] · w1_b[j,n]) ⊙ (the same for 2)`.
//! - LoKr: `kron(w1, w2)`, `w1 = lokr_w1` or `w1_a @ w1_b`, `w2 = lokr_w2`, `w2_a @ w2_b`, or with `lokr_t2`
//!   `Σ w2_a[i,o] · t2[i,j,h,w] · w2_b[j,n]`; a 4-D `w2` makes `w1` `[a, b, 1, 1]`.
//! - full: `diff` (and `diff_b` for the bias). Norm: `w_norm` (and `b_norm`).
//! - IA3: `W ⊙ weight`, `weight` along the input features when `on_input` is set, else along the outputs
//!   (linear weights only here).
//! - DoRA: with `V = W + scale · up @ down`, `V ⊙ dora_scale / ‖V‖ − W`, the norm taken per input column (over
//!   the outputs and the kernel); the patch weight multiplies it, the scale does not again.
//!
//! IA3 and DoRA read the module's current weight `W`: the model's weight plus the changes of the LoRAs applied
//! before this one (InvokeAI patches them one after another into the weights).
//!
//! LyCORIS's sparse bias (`bias_indices`/`bias_values`/`bias_size`) is refused with a clear error.

use candle_core::{DType, Tensor, D};

use crate::EngineError;

/// One layer of a LoRA file (f32 tensors, on the CPU).
#[derive(Debug, Clone)]
pub enum LoraLayer {
    /// LoRA (LoCon): `up @ down`, or the Tucker form with `mid`.
    Lora {
        /// `[out, rank]` or `[out, rank, 1, 1]`.
        up: Tensor,
        /// `[rank, rank, kh, kw]` (`lora_mid.weight`).
        mid: Option<Tensor>,
        /// `[rank, in]` or `[rank, in, kh, kw]`.
        down: Tensor,
        /// The `.alpha` value.
        alpha: Option<f32>,
    },
    /// LoHa: the Hadamard product of two low-rank products.
    Loha {
        /// `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`.
        w: [Tensor; 4],
        /// `hada_t1` and `hada_t2` (Tucker cores), both or neither.
        t: Option<[Tensor; 2]>,
        /// The `.alpha` value.
        alpha: Option<f32>,
    },
    /// LoKr: a Kronecker product.
    Lokr {
        /// `lokr_w1`, or `lokr_w1_a` and `lokr_w1_b`.
        w1: Factor,
        /// `lokr_w2`, or `lokr_w2_a` and `lokr_w2_b` (with the Tucker core `lokr_t2`, maybe).
        w2: Factor,
        /// `lokr_t2`.
        t2: Option<Tensor>,
        /// The `.alpha` value.
        alpha: Option<f32>,
    },
    /// Full: the change itself (`diff`, and `diff_b` for the bias).
    Full {
        /// `diff`.
        diff: Tensor,
        /// `diff_b`.
        diff_b: Option<Tensor>,
    },
    /// IA3: scales the weight's rows (or columns, `on_input`).
    Ia3 {
        /// `weight`: one factor per output (or input) feature.
        weight: Tensor,
        /// `on_input`.
        on_input: bool,
    },
    /// DoRA: a LoRA with a learned magnitude per input column.
    Dora {
        /// `[out, rank]` or `[out, rank, 1, 1]`.
        up: Tensor,
        /// `[rank, in]` or `[rank, in, kh, kw]`.
        down: Tensor,
        /// `dora_scale`: one magnitude per input column.
        dora_scale: Tensor,
        /// The `.alpha` value.
        alpha: Option<f32>,
    },
    /// Norm: a change to a normalization layer's weight (`w_norm`) and bias (`b_norm`).
    Norm {
        /// `w_norm`.
        w_norm: Tensor,
        /// `b_norm`.
        b_norm: Option<Tensor>,
    },
}

/// A LoKr factor: a full matrix, or a low-rank pair `a @ b`.
#[derive(Debug, Clone)]
pub enum Factor {
    /// `lokr_w1` / `lokr_w2`.
    Full(Tensor),
    /// `lokr_w·_a` and `lokr_w·_b`.
    LowRank(Tensor, Tensor),
}

fn bad(layer: &str, what: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidModel(format!("LoRA layer '{layer}': {what}"))
}

/// The tensor names each type reads (besides `alpha` where it has one).
const KNOWN: [(&str, &[&str]); 7] = [
    (
        "DoRA",
        &["lora_up.weight", "lora_down.weight", "dora_scale", "alpha"],
    ),
    (
        "LoRA",
        &[
            "lora_up.weight",
            "lora_down.weight",
            "lora_mid.weight",
            "alpha",
        ],
    ),
    (
        "LoHa",
        &[
            "hada_w1_a",
            "hada_w1_b",
            "hada_w2_a",
            "hada_w2_b",
            "hada_t1",
            "hada_t2",
            "alpha",
        ],
    ),
    (
        "LoKr",
        &[
            "lokr_w1",
            "lokr_w1_a",
            "lokr_w1_b",
            "lokr_w2",
            "lokr_w2_a",
            "lokr_w2_b",
            "lokr_t2",
            "alpha",
        ],
    ),
    ("full", &["diff", "diff_b"]),
    ("IA3", &["weight", "on_input"]),
    ("norm", &["w_norm", "b_norm"]),
];

fn dims2(layer: &str, name: &str, t: &Tensor) -> Result<(usize, usize), EngineError> {
    match t.dims() {
        [a, b] => Ok((*a, *b)),
        other => Err(bad(
            layer,
            format!("'{name}' has shape {other:?}, expected a matrix"),
        )),
    }
}

/// `[a, b, 1, 1, …]` or `[a, b]` as `(a, b)`.
fn dims2_of_4(layer: &str, name: &str, t: &Tensor) -> Result<(usize, usize), EngineError> {
    match t.dims() {
        [a, b, rest @ ..] if rest.iter().all(|&d| d == 1) && rest.len() <= 2 => Ok((*a, *b)),
        other => Err(bad(
            layer,
            format!("'{name}' has shape {other:?}, expected [n, m] or [n, m, 1, 1]"),
        )),
    }
}

fn dims4(layer: &str, name: &str, t: &Tensor) -> Result<[usize; 4], EngineError> {
    match t.dims() {
        [a, b, c, d] => Ok([*a, *b, *c, *d]),
        other => Err(bad(
            layer,
            format!("'{name}' has shape {other:?}, expected 4 dimensions"),
        )),
    }
}

/// `Σ_{i,j} a[i,p] · t[i,j,h,w] · b[j,r]` as `[p, r, h, w]` (the Tucker rebuild of LoHa, LoKr and `lora_mid`).
fn tucker(t: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
    let (i, j, h, w) = t.dims4()?;
    let p = a.dim(1)?;
    let r = b.dim(1)?;
    // [p, i] @ [i, j·h·w] → [p, j, h, w] → [p, h, w, j]
    let x = a.t()?.matmul(&t.reshape((i, j * h * w))?)?;
    let x = x
        .reshape((p, j, h, w))?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    // [p·h·w, j] @ [j, r] → [p, h, w, r] → [p, r, h, w]
    let x = x.reshape((p * h * w, j))?.matmul(b)?;
    Ok(x.reshape((p, h, w, r))?
        .permute((0, 3, 1, 2))?
        .contiguous()?)
}

/// The Kronecker product of a 2-D `a` and a 2-D or 4-D `b`.
fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
    let (m, n) = a.dims2()?;
    let (p, q, rest) = match b.dims() {
        [p, q] => (*p, *q, vec![]),
        [p, q, h, w] => (*p, *q, vec![*h, *w]),
        other => {
            return Err(EngineError::InvalidModel(format!(
                "LoKr factor of shape {other:?}"
            )))
        }
    };
    let k: usize = rest.iter().product();
    let a = a.reshape((m, 1, n, 1, 1))?;
    let b = b.reshape((1, p, 1, q, k))?;
    let x = a.broadcast_mul(&b)?;
    let mut shape = vec![m * p, n * q];
    shape.extend(rest);
    Ok(x.reshape(shape)?)
}

fn matmul2(a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
    Ok(a.flatten_from(1)?.matmul(&b.flatten_from(1)?)?)
}

impl Factor {
    fn matrix(&self) -> Result<Tensor, EngineError> {
        match self {
            Factor::Full(w) => Ok(w.clone()),
            Factor::LowRank(a, b) => Ok(a.matmul(b)?),
        }
    }
}

impl LoraLayer {
    /// Builds a layer from its tensors (`leaf name → tensor`, e.g. `hada_w1_a`), checking that the parts are
    /// there and that their shapes fit together. `layer` names it in errors.
    pub fn from_parts(
        layer: &str,
        mut parts: std::collections::BTreeMap<String, Tensor>,
    ) -> Result<Self, EngineError> {
        if parts.contains_key("bias_indices")
            || parts.contains_key("bias_values")
            || parts.contains_key("bias_size")
        {
            return Err(bad(
                layer,
                "LyCORIS sparse biases (bias_indices/bias_values/bias_size) are not supported",
            ));
        }
        let has = |k: &str| parts.contains_key(k);
        let kind = if has("dora_scale") {
            "DoRA"
        } else if has("lora_up.weight") {
            "LoRA"
        } else if has("hada_w1_a") {
            "LoHa"
        } else if has("lokr_w1") || has("lokr_w1_a") {
            "LoKr"
        } else if has("diff") {
            "full"
        } else if has("on_input") {
            "IA3"
        } else if has("w_norm") {
            "norm"
        } else {
            let names: Vec<&String> = parts.keys().collect();
            return Err(bad(
                layer,
                format!(
                    "unsupported or incomplete layer (tensors {names:?}; a LoRA needs lora_up.weight and \
                     lora_down.weight, a LoHa hada_w1_a/_b and hada_w2_a/_b, a LoKr lokr_w1 or lokr_w1_a/_b)"
                ),
            ));
        };
        let used = KNOWN
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, used)| *used);
        let unused: Vec<&String> = parts
            .keys()
            .filter(|k| !used.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                layer,
                kind,
                ?unused,
                "LoRA layer has tensors its type does not use; skipped"
            );
        }
        let alpha = match parts.remove("alpha") {
            Some(a) if a.elem_count() == 1 => Some(a.flatten_all()?.to_vec1::<f32>()?[0]),
            Some(_) => return Err(bad(layer, "'alpha' is not a single value")),
            None => None,
        };
        let mut take = |k: &str| parts.remove(k);
        let need = |t: Option<Tensor>, k: &str| {
            t.ok_or_else(|| bad(layer, format!("{kind} layer lacks '{k}'")))
        };
        let built = match kind {
            "LoRA" | "DoRA" => {
                let up = need(take("lora_up.weight"), "lora_up.weight")?;
                let down = need(take("lora_down.weight"), "lora_down.weight")?;
                if kind == "DoRA" {
                    let dora_scale = need(take("dora_scale"), "dora_scale")?;
                    LoraLayer::Dora {
                        up,
                        down,
                        dora_scale,
                        alpha,
                    }
                } else {
                    LoraLayer::Lora {
                        up,
                        mid: take("lora_mid.weight"),
                        down,
                        alpha,
                    }
                }
            }
            "LoHa" => {
                let w = [
                    need(take("hada_w1_a"), "hada_w1_a")?,
                    need(take("hada_w1_b"), "hada_w1_b")?,
                    need(take("hada_w2_a"), "hada_w2_a")?,
                    need(take("hada_w2_b"), "hada_w2_b")?,
                ];
                let t = match (take("hada_t1"), take("hada_t2")) {
                    (Some(t1), Some(t2)) => Some([t1, t2]),
                    (None, None) => None,
                    _ => return Err(bad(layer, "LoHa layer has only one of hada_t1 and hada_t2")),
                };
                LoraLayer::Loha { w, t, alpha }
            }
            "LoKr" => {
                let mut factor = |n: u8| -> Result<Factor, EngineError> {
                    let full = take(&format!("lokr_w{n}"));
                    let a = take(&format!("lokr_w{n}_a"));
                    let b = take(&format!("lokr_w{n}_b"));
                    match (full, a, b) {
                        (Some(w), None, None) => Ok(Factor::Full(w)),
                        (None, Some(a), Some(b)) => Ok(Factor::LowRank(a, b)),
                        _ => Err(bad(
                            layer,
                            format!("LoKr layer needs either lokr_w{n} or both lokr_w{n}_a and lokr_w{n}_b"),
                        )),
                    }
                };
                let w1 = factor(1)?;
                let w2 = factor(2)?;
                LoraLayer::Lokr {
                    w1,
                    w2,
                    t2: take("lokr_t2"),
                    alpha,
                }
            }
            "full" => LoraLayer::Full {
                diff: need(take("diff"), "diff")?,
                diff_b: take("diff_b"),
            },
            "IA3" => {
                let weight = need(take("weight"), "weight")?;
                let on_input = need(take("on_input"), "on_input")?;
                if on_input.elem_count() != 1 {
                    return Err(bad(layer, "'on_input' is not a single value"));
                }
                let on_input = on_input
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?[0]
                    != 0.0;
                LoraLayer::Ia3 { weight, on_input }
            }
            _ => LoraLayer::Norm {
                w_norm: need(take("w_norm"), "w_norm")?,
                b_norm: take("b_norm"),
            },
        };
        built.check(layer)?;
        Ok(built)
    }

    /// Checks that the parts' shapes fit together.
    fn check(&self, layer: &str) -> Result<(), EngineError> {
        match self {
            LoraLayer::Lora { up, mid, down, .. } => {
                let (_, r_up) = dims2_of_4(layer, "lora_up.weight", up)?;
                if down.dims().len() != 2 && down.dims().len() != 4 {
                    return Err(bad(
                        layer,
                        format!("'lora_down.weight' has shape {:?}", down.dims()),
                    ));
                }
                let r_down = down.dim(0)?;
                match mid {
                    Some(mid) => {
                        dims2_of_4(layer, "lora_down.weight", down)?;
                        let [m, n, _, _] = dims4(layer, "lora_mid.weight", mid)?;
                        if m != r_up || n != r_down {
                            return Err(bad(
                                layer,
                                format!(
                                    "lora_mid.weight {:?} does not fit lora_up.weight {:?} and \
                                     lora_down.weight {:?}",
                                    mid.dims(),
                                    up.dims(),
                                    down.dims()
                                ),
                            ));
                        }
                    }
                    None => {
                        let fused = up.dims().len() == 2
                            && down.dims().len() == 2
                            && r_down > r_up
                            && r_up > 0
                            && r_down % r_up == 0;
                        if r_up != r_down && !fused {
                            return Err(bad(
                                layer,
                                format!(
                                    "factors of shapes {:?} and {:?} do not multiply",
                                    up.dims(),
                                    down.dims()
                                ),
                            ));
                        }
                    }
                }
            }
            LoraLayer::Dora {
                up,
                down,
                dora_scale,
                ..
            } => {
                let (_, r_up) = dims2_of_4(layer, "lora_up.weight", up)?;
                if !matches!(down.dims().len(), 2 | 4) || down.dim(0)? != r_up {
                    return Err(bad(
                        layer,
                        format!(
                            "factors of shapes {:?} and {:?} do not multiply",
                            up.dims(),
                            down.dims()
                        ),
                    ));
                }
                let inputs = down.dim(1)?;
                if dora_scale.elem_count() != inputs {
                    return Err(bad(
                        layer,
                        format!(
                            "dora_scale has shape {:?}, expected one value per input ({inputs})",
                            dora_scale.dims()
                        ),
                    ));
                }
            }
            LoraLayer::Loha { w, t, .. } => {
                let names = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"];
                let d: Vec<(usize, usize)> = w
                    .iter()
                    .zip(names)
                    .map(|(t, n)| dims2(layer, n, t))
                    .collect::<Result<_, _>>()?;
                let shapes = match t {
                    None => {
                        if d[0].1 != d[1].0 || d[2].1 != d[3].0 {
                            return Err(bad(
                                layer,
                                "LoHa factors do not multiply (hada_w·_a @ hada_w·_b)",
                            ));
                        }
                        [vec![d[0].0, d[1].1], vec![d[2].0, d[3].1]]
                    }
                    Some([t1, t2]) => {
                        let a = dims4(layer, "hada_t1", t1)?;
                        let b = dims4(layer, "hada_t2", t2)?;
                        if a[0] != d[0].0 || a[1] != d[1].0 || b[0] != d[2].0 || b[1] != d[3].0 {
                            return Err(bad(layer, "LoHa Tucker cores do not fit their factors"));
                        }
                        [
                            vec![d[0].1, d[1].1, a[2], a[3]],
                            vec![d[2].1, d[3].1, b[2], b[3]],
                        ]
                    }
                };
                if shapes[0] != shapes[1] {
                    return Err(bad(
                        layer,
                        format!(
                            "LoHa halves have different shapes ({:?} and {:?})",
                            shapes[0], shapes[1]
                        ),
                    ));
                }
            }
            LoraLayer::Lokr { w1, w2, t2, .. } => {
                match w1 {
                    Factor::Full(w) => {
                        dims2(layer, "lokr_w1", w)?;
                    }
                    Factor::LowRank(a, b) => {
                        let (_, r) = dims2(layer, "lokr_w1_a", a)?;
                        if dims2(layer, "lokr_w1_b", b)?.0 != r {
                            return Err(bad(layer, "lokr_w1_a and lokr_w1_b do not multiply"));
                        }
                    }
                }
                match (w2, t2) {
                    (Factor::Full(w), None) => {
                        if !matches!(w.dims().len(), 2 | 4) {
                            return Err(bad(layer, format!("'lokr_w2' has shape {:?}", w.dims())));
                        }
                    }
                    (Factor::Full(_), Some(_)) => {
                        return Err(bad(layer, "lokr_t2 needs lokr_w2_a and lokr_w2_b"));
                    }
                    (Factor::LowRank(a, b), None) => {
                        let (_, r) = dims2(layer, "lokr_w2_a", a)?;
                        if dims2(layer, "lokr_w2_b", b)?.0 != r {
                            return Err(bad(layer, "lokr_w2_a and lokr_w2_b do not multiply"));
                        }
                    }
                    (Factor::LowRank(a, b), Some(t)) => {
                        let [i, j, _, _] = dims4(layer, "lokr_t2", t)?;
                        if dims2(layer, "lokr_w2_a", a)?.0 != i
                            || dims2(layer, "lokr_w2_b", b)?.0 != j
                        {
                            return Err(bad(layer, "lokr_t2 does not fit lokr_w2_a and lokr_w2_b"));
                        }
                    }
                }
            }
            LoraLayer::Ia3 { weight, .. } => {
                if weight.dims().iter().filter(|&&d| d != 1).count() > 1 {
                    return Err(bad(
                        layer,
                        format!(
                            "IA3 'weight' has shape {:?}, expected a vector",
                            weight.dims()
                        ),
                    ));
                }
            }
            LoraLayer::Full { .. } | LoraLayer::Norm { .. } => {}
        }
        Ok(())
    }

    /// The type's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            LoraLayer::Lora { mid: None, .. } => "LoRA",
            LoraLayer::Lora { mid: Some(_), .. } => "LoRA (Tucker)",
            LoraLayer::Loha { .. } => "LoHa",
            LoraLayer::Lokr { .. } => "LoKr",
            LoraLayer::Full { .. } => "full",
            LoraLayer::Ia3 { .. } => "IA3",
            LoraLayer::Dora { .. } => "DoRA",
            LoraLayer::Norm { .. } => "norm",
        }
    }

    /// The rank that divides `alpha`, for the types that have one.
    pub fn rank(&self) -> Option<usize> {
        match self {
            LoraLayer::Lora { down, .. } | LoraLayer::Dora { down, .. } => {
                down.dims().first().copied()
            }
            LoraLayer::Loha { w, .. } => w[1].dims().first().copied(),
            LoraLayer::Lokr { w1, w2, .. } => match (w1, w2) {
                (Factor::LowRank(_, b), _) | (Factor::Full(_), Factor::LowRank(_, b)) => {
                    b.dims().first().copied()
                }
                _ => None,
            },
            LoraLayer::Full { .. } | LoraLayer::Ia3 { .. } | LoraLayer::Norm { .. } => None,
        }
    }

    /// `alpha / rank`, or 1 without an alpha or a rank.
    pub fn scale(&self) -> f32 {
        let alpha = match self {
            LoraLayer::Lora { alpha, .. }
            | LoraLayer::Loha { alpha, .. }
            | LoraLayer::Lokr { alpha, .. }
            | LoraLayer::Dora { alpha, .. } => *alpha,
            _ => None,
        };
        match (alpha, self.rank()) {
            (Some(a), Some(r)) if r > 0 => a / r as f32,
            _ => 1.0,
        }
    }

    /// Whether [`Self::weight_delta`] reads the module's current weight (IA3, DoRA).
    pub fn needs_weight(&self) -> bool {
        matches!(self, LoraLayer::Ia3 { .. } | LoraLayer::Dora { .. })
    }

    /// `scale · ΔW` (for a patch weight of 1), shaped as `shape`, the module weight's. `current` is the module's
    /// weight as patched so far (f32, `shape`); only IA3 and DoRA read it ([`Self::needs_weight`]).
    pub fn weight_delta(
        &self,
        shape: &[usize],
        current: Option<&Tensor>,
    ) -> Result<Tensor, EngineError> {
        let current = || {
            current.ok_or_else(|| {
                EngineError::InvalidModel(format!(
                    "{} layer needs the module's weight",
                    self.kind()
                ))
            })
        };
        let delta = match self {
            LoraLayer::Lora { up, mid, down, .. } => {
                let d = match mid {
                    Some(mid) => {
                        let up = up.flatten_from(1)?.t()?.contiguous()?;
                        let down = down.flatten_from(1)?;
                        tucker(mid, &up, &down)?
                    }
                    None => {
                        let (r_up, r_down) = (up.dim(1)?, down.dim(0)?);
                        if r_up == r_down {
                            matmul2(up, down)?
                        } else {
                            let mut sum: Option<Tensor> = None;
                            for chunk in down.chunk(r_down / r_up, 0)? {
                                let p = up.matmul(&chunk)?;
                                sum = Some(match sum {
                                    Some(s) => (s + p)?,
                                    None => p,
                                });
                            }
                            sum.ok_or_else(|| EngineError::InvalidModel("empty LoRA layer".into()))?
                        }
                    }
                };
                (d * f64::from(self.scale()))?
            }
            LoraLayer::Loha { w, t, .. } => {
                let d = match t {
                    None => (w[0].matmul(&w[1])? * w[2].matmul(&w[3])?)?,
                    Some([t1, t2]) => (tucker(t1, &w[0], &w[1])? * tucker(t2, &w[2], &w[3])?)?,
                };
                (d * f64::from(self.scale()))?
            }
            LoraLayer::Lokr { w1, w2, t2, .. } => {
                let w2 = match (w2, t2) {
                    (Factor::LowRank(a, b), Some(t)) => tucker(t, a, b)?,
                    (w2, _) => w2.matrix()?,
                };
                (kron(&w1.matrix()?, &w2)? * f64::from(self.scale()))?
            }
            LoraLayer::Full { diff, .. } => diff.clone(),
            LoraLayer::Norm { w_norm, .. } => w_norm.clone(),
            LoraLayer::Ia3 { weight, on_input } => {
                let w = current()?;
                let Ok((out, inputs)) = w.dims2() else {
                    return Err(EngineError::InvalidModel(format!(
                        "IA3 layer on a weight of shape {:?} (only linear weights are supported)",
                        w.dims()
                    )));
                };
                let n = weight.elem_count();
                let factor = if *on_input {
                    (n == inputs).then(|| weight.reshape((1, inputs)))
                } else {
                    (n == out).then(|| weight.reshape((out, 1)))
                };
                let Some(factor) = factor else {
                    return Err(EngineError::InvalidModel(format!(
                        "IA3 weight of {n} values does not fit a weight of shape {:?}",
                        w.dims()
                    )));
                };
                w.broadcast_mul(&factor?)?
            }
            LoraLayer::Dora {
                up,
                down,
                dora_scale,
                ..
            } => {
                let w = current()?;
                let v = matmul2(up, down)?;
                if v.elem_count() != w.elem_count() {
                    return Err(EngineError::InvalidModel(format!(
                        "DoRA layer of shape {:?} on a weight of shape {:?}",
                        v.dims(),
                        w.dims()
                    )));
                }
                let v = (w + (v.reshape(w.dims())? * f64::from(self.scale()))?)?;
                // The norm of each input column: over the outputs and the kernel.
                let inputs = w.dim(1)?;
                let mut ones = vec![1usize; w.rank()];
                ones[1] = inputs;
                let cols = v.transpose(0, 1)?.flatten_from(1)?;
                let norm = cols
                    .sqr()?
                    .sum_keepdim(D::Minus1)?
                    .sqrt()?
                    .reshape(ones.clone())?;
                let magnitude = dora_scale.reshape(ones)?;
                let out = v.broadcast_mul(&magnitude.broadcast_div(&norm)?)?;
                (out - w)?
            }
        };
        if delta.elem_count() != shape.iter().product::<usize>() {
            return Err(EngineError::InvalidModel(format!(
                "{} layer of shape {:?}{} does not fit the model's weight of shape {shape:?}",
                self.kind(),
                delta.dims(),
                self.rank()
                    .map(|r| format!(" (rank {r})"))
                    .unwrap_or_default()
            )));
        }
        Ok(delta.reshape(shape)?)
    }

    /// The change to the module's bias (for a patch weight of 1): full layers' `diff_b`, norm layers' `b_norm`.
    pub fn bias_delta(&self) -> Option<&Tensor> {
        match self {
            LoraLayer::Full { diff_b, .. } => diff_b.as_ref(),
            LoraLayer::Norm { b_norm, .. } => b_norm.as_ref(),
            _ => None,
        }
    }
}
