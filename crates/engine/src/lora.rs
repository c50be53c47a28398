//! LoRA for SD 1.x/2.x and SDXL: parsing a LoRA safetensors file into low-rank factors per target layer, and
//! merging them into the UNet's and text encoders' weights when those are loaded (spec `generation.md` §8
//! `lora_loader`, `sdxl_lora_loader`).
//!
//! As InvokeAI does, each matched weight becomes `W + weight · (alpha / rank) · up @ down` (computed in f32;
//! without an `.alpha` tensor the scale is 1). Conv LoRAs flatten `down` (`[rank, in, kh, kw]`) and `up`
//! (`[out, rank, 1, 1]`) to matrices and reshape the product to the conv weight's shape. The LyCORIS layer
//! types of kohya-named files (LoHa, LoKr, Tucker `lora_mid`, full `diff`, IA3, DoRA, norm) are applied the
//! same way with their own `ΔW` ([`crate::lycoris`]); one file may mix them.
//!
//! Key names understood:
//! - kohya, diffusers-named: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and
//!   `lora_te_text_model_encoder_layers_0_self_attn_q_proj...` for the text encoder; SDXL's
//!   `lora_te1_...` (the first text encoder, as `lora_te_`) and `lora_te2_...` (`text_encoder_2`). The
//!   flattened module name is resolved against the model's own parameter names (InvokeAI's rule).
//! - kohya, LDM-named UNet keys (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
//!   `lora_unet_middle_block_1_...`, `lora_unet_output_blocks_...`, `lora_unet_input_blocks_1_0_in_layers_2`):
//!   on an SDXL UNet (one with the `text_time` addition embedding) they are first renamed to diffusers names
//!   with SDXL's fixed block map, as InvokeAI's `convert_sdxl_keys_to_diffusers_format` does for SDXL LoRAs.
//!   On SD 1.x/2.x they match nothing and are skipped (InvokeAI converts no keys for those bases).
//! - diffusers/PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (or `.lora.down.weight` /
//!   `.lora.up.weight`, `.lora_down.weight` / `.lora_up.weight`), `text_encoder.<module>...`,
//!   `text_encoder_2.<module>...`.
//!
//! Layers that match no module of the model are skipped with a warning, as InvokeAI skips them. LyCORIS layer
//! types in diffusers/PEFT naming (PEFT's DoRA `lora_magnitude_vector`, `hada_`, `lokr_`) are refused with a
//! clear error rather than applied wrongly (InvokeAI reads SD LyCORIS files in kohya naming only).
//!
//! Unlike InvokeAI, which patches SD 1.x/2.x text encoders from `lora_te_` keys only and SDXL's first one from
//! `lora_te1_` keys only, both prefixes patch [`LoraTarget::TextEncoder`] whatever the model (a LoRA's base is
//! checked against the model's before it gets here).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::lycoris::LoraLayer;
use crate::weights::SafetensorsFiles;
use crate::EngineError;

/// The part of a model a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    /// The UNet.
    Unet,
    /// The (first) CLIP text encoder.
    TextEncoder,
    /// SDXL's second text encoder (`text_encoder_2`).
    TextEncoder2,
}

/// How a layer's module is named in the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ModuleKey {
    /// Dots replaced by underscores (kohya), relative to the target (no `text_model_` prefix).
    Flattened(String),
    /// The module's dotted path, relative to the target (no `text_model.` prefix).
    Dotted(String),
}

/// A parsed LoRA file.
#[derive(Debug, Clone, Default)]
pub struct Lora {
    layers: BTreeMap<(LoraTarget, ModuleKey), LoraLayer>,
    ignored: Vec<String>,
}

/// Splits a tensor name into (target, module key, leaf), the leaf being the name's part after the module (kohya's
/// `lora_down.weight`, `hada_w1_a`, `alpha`, …; PEFT's names are given kohya's leaves). `Ok(None)` for names
/// that are not LoRA layers of a target we know; an error for PEFT layers of an unsupported type.
fn classify(name: &str) -> Result<Option<(LoraTarget, ModuleKey, String)>, EngineError> {
    const KOHYA: [(&str, LoraTarget); 4] = [
        ("lora_unet_", LoraTarget::Unet),
        ("lora_te_", LoraTarget::TextEncoder),
        ("lora_te1_", LoraTarget::TextEncoder),
        ("lora_te2_", LoraTarget::TextEncoder2),
    ];
    for (prefix, target) in KOHYA {
        if let Some(rest) = name.strip_prefix(prefix) {
            let Some((stem, leaf)) = rest.split_once('.') else {
                return Ok(None);
            };
            let stem = match target {
                LoraTarget::TextEncoder | LoraTarget::TextEncoder2 => {
                    stem.strip_prefix("text_model_").unwrap_or(stem)
                }
                LoraTarget::Unet => stem,
            };
            return Ok(Some((
                target,
                ModuleKey::Flattened(stem.to_string()),
                leaf.to_string(),
            )));
        }
    }
    const PEFT: [(&str, LoraTarget); 3] = [
        ("unet.", LoraTarget::Unet),
        ("text_encoder.", LoraTarget::TextEncoder),
        ("text_encoder_2.", LoraTarget::TextEncoder2),
    ];
    const SUFFIXES: [(&str, &str); 7] = [
        (".lora_A.weight", "lora_down.weight"),
        (".lora_B.weight", "lora_up.weight"),
        (".lora.down.weight", "lora_down.weight"),
        (".lora.up.weight", "lora_up.weight"),
        (".lora_down.weight", "lora_down.weight"),
        (".lora_up.weight", "lora_up.weight"),
        (".alpha", "alpha"),
    ];
    for (prefix, target) in PEFT {
        if let Some(rest) = name.strip_prefix(prefix) {
            for (suffix, part) in SUFFIXES {
                if let Some(module) = rest.strip_suffix(suffix) {
                    let module = match target {
                        LoraTarget::TextEncoder | LoraTarget::TextEncoder2 => {
                            module.strip_prefix("text_model.").unwrap_or(module)
                        }
                        LoraTarget::Unet => module,
                    };
                    return Ok(Some((
                        target,
                        ModuleKey::Dotted(module.to_string()),
                        part.to_string(),
                    )));
                }
            }
            if rest.contains("lora_magnitude_vector")
                || rest.contains(".hada_")
                || rest.contains(".lokr_")
            {
                return Err(EngineError::InvalidModel(format!(
                    "LoRA tensor '{name}': LyCORIS and DoRA layers in diffusers/PEFT naming are not \
                     supported (InvokeAI reads them from kohya-named files only)"
                )));
            }
            return Ok(None);
        }
    }
    Ok(None)
}

impl Lora {
    /// Reads a LoRA safetensors file. A corrupt file, an incomplete layer (an `up` without its `down`, half a
    /// LoHa), factors whose shapes do not fit together or a layer of an unknown type are
    /// [`EngineError::InvalidModel`].
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let in_file = |e: EngineError| match e {
            EngineError::InvalidModel(m) => {
                EngineError::InvalidModel(format!("{}: {m}", path.display()))
            }
            other => other,
        };
        let files = SafetensorsFiles::open(&[path])?;
        let mut names: Vec<String> = files.names().map(str::to_string).collect();
        names.sort();
        let mut partial: BTreeMap<(LoraTarget, ModuleKey), BTreeMap<String, Tensor>> =
            BTreeMap::new();
        let mut ignored = Vec::new();
        for name in names {
            let Some((target, key, leaf)) = classify(&name).map_err(in_file)? else {
                ignored.push(name);
                continue;
            };
            let tensor = files.load(&name, DType::F32, &Device::Cpu)?;
            partial
                .entry((target, key))
                .or_default()
                .insert(leaf, tensor);
        }
        let mut layers = BTreeMap::new();
        for (key, parts) in partial {
            let what = match &key.1 {
                ModuleKey::Flattened(s) | ModuleKey::Dotted(s) => s.clone(),
            };
            let layer = LoraLayer::from_parts(&what, parts).map_err(in_file)?;
            layers.insert(key, layer);
        }
        if layers.is_empty() {
            return Err(in_file(EngineError::InvalidModel(
                "no LoRA layers for an SD 1.x/2.x/XL UNet or text encoder".into(),
            )));
        }
        Ok(Self { layers, ignored })
    }

    /// The number of layers (UNet and text encoders).
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

    /// How many layers of each type (LoRA, LoHa, …) the file has.
    pub fn kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for layer in self.layers.values() {
            *kinds.entry(layer.kind()).or_insert(0) += 1;
        }
        kinds
    }

    /// The tensor names that were not LoRA layers and were skipped.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }
}

/// LoRAs with their weights, for the UNet and each text encoder separately (InvokeAI patches each submodel from
/// its own field's list: SDXL's CLIP 1 from the `clip` field, CLIP 2 from `clip2`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraSelection<'a> {
    /// LoRAs merged into the UNet.
    pub unet: &'a [(&'a Lora, f32)],
    /// LoRAs merged into the (first) text encoder.
    pub text_encoder: &'a [(&'a Lora, f32)],
    /// LoRAs merged into SDXL's second text encoder (ignored for SD 1.x/2.x models).
    pub text_encoder_2: &'a [(&'a Lora, f32)],
}

impl LoraSelection<'_> {
    /// No LoRAs.
    pub const NONE: LoraSelection<'static> = LoraSelection {
        unet: &[],
        text_encoder: &[],
        text_encoder_2: &[],
    };
}

/// Adds the LoRAs' deltas for `target` to `files` (whose names are the component's diffusers names; a text
/// encoder's may or may not carry the `text_model.` prefix). Weights of exactly 0 are skipped, so weight 0
/// gives the unpatched model bit for bit. When `files` are an SDXL UNet's (they have
/// `add_embedding.linear_1.weight`, the `text_time` addition embedding), LDM-named kohya keys are renamed with
/// [`sdxl_ldm_to_diffusers`] first. Returns how many layers were applied.
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
            LoraTarget::TextEncoder | LoraTarget::TextEncoder2 => {
                module.strip_prefix("text_model.").unwrap_or(module)
            }
            LoraTarget::Unet => module,
        };
        dotted.insert(module.to_string(), name.to_string());
        flattened.insert(module.replace('.', "_"), name.to_string());
    }
    let sdxl_unet = target == LoraTarget::Unet && files.contains("add_embedding.linear_1.weight");
    let mut applied = 0;
    let mut deltas: HashMap<String, Tensor> = HashMap::new();
    for (lora, weight) in loras {
        if *weight == 0.0 {
            continue;
        }
        for ((t, key), layer) in &lora.layers {
            if *t != target {
                continue;
            }
            let found = match key {
                ModuleKey::Dotted(k) => dotted.get(k),
                ModuleKey::Flattened(k) if sdxl_unet => {
                    flattened.get(sdxl_ldm_to_diffusers(k).as_deref().unwrap_or(k))
                }
                ModuleKey::Flattened(k) => flattened.get(k),
            };
            let Some(name) = found else {
                tracing::warn!(layer = ?key, "LoRA layer matches no module of the model; skipped");
                continue;
            };
            let shape = files.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
            // IA3 and DoRA read the weight as patched so far (InvokeAI patches LoRAs one after another).
            let current = if layer.needs_weight() {
                let w = files.load(name, DType::F32, &Device::Cpu)?;
                Some(match deltas.get(name) {
                    Some(d) => (w + d)?,
                    None => w,
                })
            } else {
                None
            };
            let delta = layer
                .weight_delta(&shape, current.as_ref())
                .map_err(|e| match e {
                    EngineError::InvalidModel(m) => {
                        EngineError::InvalidModel(format!("LoRA layer for '{name}': {m}"))
                    }
                    other => other,
                })?;
            let mut add = |name: &str, delta: Tensor| -> Result<(), EngineError> {
                let delta = (delta * f64::from(*weight))?;
                let sum = match deltas.remove(name) {
                    Some(previous) => (previous + delta)?,
                    None => delta,
                };
                deltas.insert(name.to_string(), sum);
                Ok(())
            };
            add(name, delta)?;
            if let Some(bias) = layer.bias_delta() {
                let bias_name = format!("{}bias", name.trim_end_matches("weight"));
                let bias_shape = files.shape(&bias_name).map(<[usize]>::to_vec);
                let Some(s) = bias_shape
                    .as_ref()
                    .filter(|s| s.iter().product::<usize>() == bias.elem_count())
                else {
                    return Err(EngineError::InvalidModel(format!(
                        "{} layer for '{name}' changes a bias of shape {:?}; the model's is {:?}",
                        layer.kind(),
                        bias.dims(),
                        bias_shape
                    )));
                };
                add(&bias_name, bias.reshape(s.as_slice())?)?;
            }
            applied += 1;
        }
    }
    for (name, delta) in deltas {
        files.add_delta(&name, delta)?;
    }
    Ok(applied)
}

/// SDXL's LDM (Stability AI) UNet module prefixes and their diffusers names, dots as underscores: kohya's
/// table, which InvokeAI's `convert_sdxl_keys_to_diffusers_format` uses (3 levels of 2 resnets down and 3 up,
/// no attention in the first level down and the last up; a fixed map, whatever the UNet's actual depth).
fn sdxl_unet_map() -> &'static [(String, String)] {
    static MAP: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let mut blocks: Vec<(String, String)> = Vec::new();
        for i in 0..3 {
            for j in 0..2 {
                let n = 3 * i + j + 1;
                blocks.push((
                    format!("input_blocks.{n}.0."),
                    format!("down_blocks.{i}.resnets.{j}."),
                ));
                blocks.push((
                    format!("input_blocks.{n}.1."),
                    format!("down_blocks.{i}.attentions.{j}."),
                ));
            }
            for j in 0..3 {
                let n = 3 * i + j;
                blocks.push((
                    format!("output_blocks.{n}.0."),
                    format!("up_blocks.{i}.resnets.{j}."),
                ));
                blocks.push((
                    format!("output_blocks.{n}.1."),
                    format!("up_blocks.{i}.attentions.{j}."),
                ));
            }
            blocks.push((
                format!("input_blocks.{}.0.op.", 3 * (i + 1)),
                format!("down_blocks.{i}.downsamplers.0.conv."),
            ));
            blocks.push((
                format!("output_blocks.{}.2.", 3 * i + 2),
                format!("up_blocks.{i}.upsamplers.0."),
            ));
        }
        blocks.push(("middle_block.1.".into(), "mid_block.attentions.0.".into()));
        for j in 0..2 {
            blocks.push((
                format!("middle_block.{}.", 2 * j),
                format!("mid_block.resnets.{j}."),
            ));
        }
        const RESNET: [(&str, &str); 6] = [
            ("in_layers.0.", "norm1."),
            ("in_layers.2.", "conv1."),
            ("out_layers.0.", "norm2."),
            ("out_layers.3.", "conv2."),
            ("emb_layers.1.", "time_emb_proj."),
            ("skip_connection.", "conv_shortcut."),
        ];
        let mut map = Vec::new();
        for (ldm, diffusers) in blocks {
            if diffusers.contains("resnets") {
                for (l, d) in RESNET {
                    map.push((format!("{ldm}{l}"), format!("{diffusers}{d}")));
                }
            } else {
                map.push((ldm, diffusers));
            }
        }
        for j in 0..2 {
            map.push((
                format!("time_embed.{}.", 2 * j),
                format!("time_embedding.linear_{}.", j + 1),
            ));
            map.push((
                format!("label_emb.0.{}.", 2 * j),
                format!("add_embedding.linear_{}.", j + 1),
            ));
        }
        map.push(("input_blocks.0.0.".into(), "conv_in.".into()));
        map.push(("out.0.".into(), "conv_norm_out.".into()));
        map.push(("out.2.".into(), "conv_out.".into()));
        let flat = |s: &str| s.trim_end_matches('.').replace('.', "_");
        let mut map: Vec<(String, String)> = map.iter().map(|(l, d)| (flat(l), flat(d))).collect();
        // Longest prefixes first, so that `input_blocks_1_0_in_layers_2` wins over shorter entries.
        map.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        map
    })
}

/// The diffusers name (dots as underscores) of an SDXL UNet module given by its flattened LDM name (as in a
/// kohya key after `lora_unet_`, e.g. `input_blocks_4_1_transformer_blocks_0_attn1_to_q` →
/// `down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`), or `None` when it is not LDM-named.
pub fn sdxl_ldm_to_diffusers(flattened: &str) -> Option<String> {
    sdxl_unet_map().iter().find_map(|(ldm, diffusers)| {
        let rest = flattened.strip_prefix(ldm.as_str())?;
        (rest.is_empty() || rest.starts_with('_')).then(|| format!("{diffusers}{rest}"))
    })
}

/// The inverse of [`sdxl_ldm_to_diffusers`]: the flattened LDM name of an SDXL UNet module given by its dotted
/// diffusers name (`down_blocks.1.attentions.0.proj_in` → `input_blocks_4_1_proj_in`), or `None` when SDXL's
/// map has no entry for it. For writing kohya-style test LoRAs.
pub fn sdxl_diffusers_to_ldm(dotted: &str) -> Option<String> {
    let flattened = dotted.replace('.', "_");
    let mut best: Option<(&String, &String)> = None;
    for (ldm, diffusers) in sdxl_unet_map() {
        let matches = flattened
            .strip_prefix(diffusers.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'));
        if matches && best.is_none_or(|(_, d)| diffusers.len() > d.len()) {
            best = Some((ldm, diffusers));
        }
    }
    best.map(|(ldm, diffusers)| format!("{ldm}{}", &flattened[diffusers.len()..]))
}
