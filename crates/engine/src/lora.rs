//! LoRA for SD 1.x/2.x: parsing a LoRA safetensors file into low-rank factors per target layer, and merging
//! them into the UNet's and text encoder's weights when those are loaded (spec `generation.md` §8 `lora_loader`).
//!
//! As InvokeAI does, each matched weight becomes `W + weight · (alpha / rank) · up @ down` (computed in f32;
//! without an `.alpha` tensor the scale is 1). Conv LoRAs flatten `down` (`[rank, in, kh, kw]`) and `up`
//! (`[out, rank, 1, 1]`) to matrices and reshape the product to the conv weight's shape.
//!
//! Key names understood:
//! - kohya, diffusers-named: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and
//!   `lora_te_text_model_encoder_layers_0_self_attn_q_proj...` for the text encoder. The flattened module name
//!   is resolved against the model's own parameter names (InvokeAI's rule).
//! - diffusers/PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (or `.lora.down.weight` /
//!   `.lora.up.weight`, `.lora_down.weight` / `.lora_up.weight`), `text_encoder.<module>...`.
//!
//! Layers that match no module of the model (for example LDM-named kohya keys, `lora_unet_input_blocks_...`,
//! or SDXL's `lora_te1_`/`lora_te2_` keys) are skipped with a warning, as InvokeAI skips them. Other LyCORIS
//! layer types (LoHa, LoKr, `lora_mid`, DoRA) are refused with a clear error rather than applied wrongly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::weights::SafetensorsFiles;
use crate::EngineError;

/// The part of a model a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// The UNet.
    Unet,
    /// The (first) CLIP text encoder.
    TextEncoder,
}

/// How a layer's module is named in the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ModuleKey {
    /// Dots replaced by underscores (kohya), relative to the target (no `text_model_` prefix).
    Flattened(String),
    /// The module's dotted path, relative to the target (no `text_model.` prefix).
    Dotted(String),
}

/// The factors of one LoRA layer (f32, on the CPU).
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// `[out, rank]` or `[out, rank, 1, 1]`.
    pub up: Tensor,
    /// `[rank, in]` or `[rank, in, kh, kw]`.
    pub down: Tensor,
    /// The `.alpha` value, when the file has one.
    pub alpha: Option<f32>,
}

impl LoraFactors {
    /// `alpha / rank`, or 1 without an alpha.
    pub fn scale(&self) -> f32 {
        let rank = self.down.dims().first().copied().unwrap_or(1).max(1);
        self.alpha.map_or(1.0, |a| a / rank as f32)
    }

    /// `scale · up @ down` as a 2-D `[out, in·kh·kw]` f32 tensor.
    pub fn delta(&self) -> Result<Tensor, EngineError> {
        let up = self.up.flatten_from(1)?;
        let down = self.down.flatten_from(1)?;
        Ok((up.matmul(&down)? * f64::from(self.scale()))?)
    }
}

/// A parsed LoRA file.
#[derive(Debug, Clone, Default)]
pub struct Lora {
    layers: BTreeMap<(LoraTarget, ModuleKey), LoraFactors>,
    ignored: Vec<String>,
}

#[derive(Default)]
struct Partial {
    up: Option<Tensor>,
    down: Option<Tensor>,
    alpha: Option<f32>,
}

/// Splits a tensor name into (target, module key, part) where part is `up`, `down` or `alpha`. `Ok(None)` for
/// names that are not LoRA layers of a target we know; an error for known layers of an unsupported type.
fn classify(name: &str) -> Result<Option<(LoraTarget, ModuleKey, &'static str)>, EngineError> {
    const KOHYA: [(&str, LoraTarget); 2] = [
        ("lora_unet_", LoraTarget::Unet),
        ("lora_te_", LoraTarget::TextEncoder),
    ];
    for (prefix, target) in KOHYA {
        if let Some(rest) = name.strip_prefix(prefix) {
            let Some((stem, leaf)) = rest.split_once('.') else {
                return Ok(None);
            };
            let part = match leaf {
                "lora_down.weight" => "down",
                "lora_up.weight" => "up",
                "alpha" => "alpha",
                _ => {
                    return Err(EngineError::InvalidModel(format!(
                        "LoRA tensor '{name}': this layer type ('{leaf}') is not supported yet \
                         (only plain LoRA up/down factors are)"
                    )))
                }
            };
            let stem = match target {
                LoraTarget::TextEncoder => stem.strip_prefix("text_model_").unwrap_or(stem),
                LoraTarget::Unet => stem,
            };
            return Ok(Some((target, ModuleKey::Flattened(stem.to_string()), part)));
        }
    }
    const PEFT: [(&str, LoraTarget); 2] = [
        ("unet.", LoraTarget::Unet),
        ("text_encoder.", LoraTarget::TextEncoder),
    ];
    const SUFFIXES: [(&str, &str); 7] = [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".alpha", "alpha"),
    ];
    for (prefix, target) in PEFT {
        if let Some(rest) = name.strip_prefix(prefix) {
            for (suffix, part) in SUFFIXES {
                if let Some(module) = rest.strip_suffix(suffix) {
                    let module = match target {
                        LoraTarget::TextEncoder => {
                            module.strip_prefix("text_model.").unwrap_or(module)
                        }
                        LoraTarget::Unet => module,
                    };
                    return Ok(Some((target, ModuleKey::Dotted(module.to_string()), part)));
                }
            }
            if rest.contains("lora_magnitude_vector")
                || rest.contains(".hada_")
                || rest.contains(".lokr_")
            {
                return Err(EngineError::InvalidModel(format!(
                    "LoRA tensor '{name}': this layer type is not supported yet (only plain LoRA up/down \
                     factors are)"
                )));
            }
            return Ok(None);
        }
    }
    Ok(None)
}

impl Lora {
    /// Reads a LoRA safetensors file. A corrupt file, an incomplete layer (an `up` without its `down`) or
    /// factors of mismatched rank are [`EngineError::InvalidModel`].
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let in_file = |m: String| EngineError::InvalidModel(format!("{}: {m}", path.display()));
        let files = SafetensorsFiles::open(&[path])?;
        let mut names: Vec<String> = files.names().map(str::to_string).collect();
        names.sort();
        let mut partial: BTreeMap<(LoraTarget, ModuleKey), Partial> = BTreeMap::new();
        let mut ignored = Vec::new();
        for name in names {
            let Some((target, key, part)) = classify(&name).map_err(|e| match e {
                EngineError::InvalidModel(m) => in_file(m),
                other => other,
            })?
            else {
                ignored.push(name);
                continue;
            };
            let tensor = files.load(&name, DType::F32, &Device::Cpu)?;
            let entry = partial.entry((target, key)).or_default();
            match part {
                "up" => entry.up = Some(tensor),
                "down" => entry.down = Some(tensor),
                _ => {
                    if tensor.elem_count() != 1 {
                        return Err(in_file(format!("'{name}' is not a single value")));
                    }
                    entry.alpha = Some(tensor.flatten_all()?.to_vec1::<f32>()?[0]);
                }
            }
        }
        let mut layers = BTreeMap::new();
        for (key, p) in partial {
            let what = match &key.1 {
                ModuleKey::Flattened(s) | ModuleKey::Dotted(s) => s.clone(),
            };
            let (Some(up), Some(down)) = (p.up, p.down) else {
                return Err(in_file(format!(
                    "LoRA layer '{what}' lacks its up or down factor"
                )));
            };
            let ok_rank = matches!(up.dims().len(), 2 | 4)
                && matches!(down.dims().len(), 2 | 4)
                && up.dims()[1] == down.dims()[0]
                && up.dims()[2..].iter().all(|&d| d == 1);
            if !ok_rank {
                return Err(in_file(format!(
                    "LoRA layer '{what}': factors of shapes {:?} and {:?} do not multiply",
                    up.dims(),
                    down.dims()
                )));
            }
            layers.insert(
                key,
                LoraFactors {
                    up,
                    down,
                    alpha: p.alpha,
                },
            );
        }
        if layers.is_empty() {
            return Err(in_file(
                "no LoRA layers for an SD 1.x/2.x UNet or text encoder".into(),
            ));
        }
        Ok(Self { layers, ignored })
    }

    /// The number of layers (UNet and text encoder).
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the file had no layers (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The number of layers that patch `target`.
    pub fn layers_for(&self, target: LoraTarget) -> usize {
        self.layers.keys().filter(|(t, _)| *t == target).count()
    }

    /// The tensor names that were not LoRA layers and were skipped.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }
}

/// LoRAs with their weights, for the UNet and the text encoder separately (InvokeAI patches each submodel from
/// its own field's list).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraSelection<'a> {
    /// LoRAs merged into the UNet.
    pub unet: &'a [(&'a Lora, f32)],
    /// LoRAs merged into the text encoder.
    pub text_encoder: &'a [(&'a Lora, f32)],
}

impl LoraSelection<'_> {
    /// No LoRAs.
    pub const NONE: LoraSelection<'static> = LoraSelection {
        unet: &[],
        text_encoder: &[],
    };
}

/// Adds the LoRAs' deltas for `target` to `files` (whose names are the component's diffusers names; a text
/// encoder's may or may not carry the `text_model.` prefix). Weights of exactly 0 are skipped, so weight 0
/// gives the unpatched model bit for bit. Returns how many layers were applied.
pub fn apply_loras(
    files: &mut SafetensorsFiles,
    target: LoraTarget,
    loras: &[(&Lora, f32)],
) -> Result<usize, EngineError> {
    if loras.iter().all(|(_, w)| *w == 0.0) {
        return Ok(0);
    }
    // Index the component's weight tensors by their module, dotted and flattened.
    let mut dotted: HashMap<String, String> = HashMap::new();
    let mut flattened: HashMap<String, String> = HashMap::new();
    for name in files.names() {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let module = match target {
            LoraTarget::TextEncoder => module.strip_prefix("text_model.").unwrap_or(module),
            LoraTarget::Unet => module,
        };
        dotted.insert(module.to_string(), name.to_string());
        flattened.insert(module.replace('.', "_"), name.to_string());
    }
    let mut applied = 0;
    let mut deltas: HashMap<String, Tensor> = HashMap::new();
    for (lora, weight) in loras {
        if *weight == 0.0 {
            continue;
        }
        for ((t, key), factors) in &lora.layers {
            if *t != target {
                continue;
            }
            let found = match key {
                ModuleKey::Dotted(k) => dotted.get(k),
                ModuleKey::Flattened(k) => flattened.get(k),
            };
            let Some(name) = found else {
                tracing::warn!(layer = ?key, "LoRA layer matches no module of the model; skipped");
                continue;
            };
            let shape = files.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
            let delta = (factors.delta()? * f64::from(*weight))?;
            if delta.elem_count() != shape.iter().product::<usize>() {
                return Err(EngineError::InvalidModel(format!(
                    "LoRA layer for '{name}' has shape {:?} (rank {}), the model's weight is {shape:?}",
                    delta.dims(),
                    factors.down.dims()[0]
                )));
            }
            let delta = delta.reshape(shape)?;
            let sum = match deltas.remove(name) {
                Some(previous) => (previous + delta)?,
                None => delta,
            };
            deltas.insert(name.clone(), sum);
            applied += 1;
        }
    }
    for (name, delta) in deltas {
        files.add_delta(&name, delta)?;
    }
    Ok(applied)
}
