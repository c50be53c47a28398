//! The CLIP text transformer (transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`) on candle-nn.
//!
//! Written here rather than taken from candle-transformers because candle's config fields are private and it
//! does not load `text_projection`. It offers what SD 1.x/2.x and SDXL need (§10.2): the last layer's output with
//! the final layer norm, the hidden states before the last layer without it, and the pooled + projected
//! end-of-text embedding, all with `skipped_layers` (clip skip: the last N layers are dropped, as InvokeAI pops
//! them from the encoder).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear};
use serde::Deserialize;

use crate::weights::{component_files, SafetensorsFiles};
use crate::EngineError;

/// The activation of the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// x·σ(1.702x) (openai CLIP, SD 1.x).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact (erf) GELU (OpenCLIP, SD 2.x).
    #[serde(rename = "gelu")]
    Gelu,
}

fn default_eps() -> f64 {
    1e-5
}

/// The fields of a transformers `CLIPTextConfig` (`text_encoder/config.json`) this model uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Positions (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection`'s output, when the checkpoint has one.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// The end-of-text id: 2 in older configs means "take the position of the largest id" (transformers' legacy
    /// rule for the pooled output); any other value is searched for.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl ClipTextConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
        if config.num_attention_heads == 0
            || config.hidden_size % config.num_attention_heads != 0
            || config.num_hidden_layers == 0
        {
            return Err(EngineError::InvalidModel(format!(
                "{}: hidden_size must be a multiple of num_attention_heads",
                path.display()
            )));
        }
        Ok(config)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let shape = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = shape((self.q.forward(x)? * scale)?)?;
        let k = shape(self.k.forward(x)?)?;
        let v = shape(self.v.forward(x)?)?;
        let weights = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&weights)?;
        let out = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, c))?;
        self.out.forward(&out)
    }
}

struct Layer {
    norm1: LayerNorm,
    attention: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Layer {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.attention.forward(&self.norm1.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let h = match self.activation {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h)?
    }
}

/// What one encoder pass returns.
pub struct ClipOutput {
    /// The last kept layer's output with the final layer norm: (B, L, hidden) (SD 1.x/2.x conditioning).
    pub last_hidden_state: Tensor,
    /// The hidden states entering the last kept layer, without the final norm: (B, L, hidden) (SDXL).
    pub penultimate_hidden_state: Tensor,
    /// The normed end-of-text embedding through `text_projection`: (B, projection_dim), when the model has one.
    pub pooled: Option<Tensor>,
}

/// A CLIP text encoder.
pub struct ClipTextTransformer {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    device: Device,
}

impl ClipTextTransformer {
    /// Loads a diffusers `text_encoder/` (or `text_encoder_2/`) folder: `config.json` plus
    /// `model.safetensors`, with or without the `text_model.` key prefix.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, EngineError> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let files = SafetensorsFiles::open(&component_files(dir, &["model"])?)?;
        Self::from_files(config, files, dtype, device)
    }

    /// Builds the encoder from already opened weights.
    pub fn from_files(
        config: ClipTextConfig,
        files: SafetensorsFiles,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let prefixed = files.contains("text_model.embeddings.token_embedding.weight");
        let has_projection = files.contains("text_projection.weight");
        let vb = files.into_var_builder(dtype, device);
        let tm = if prefixed {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let h = config.hidden_size;
        let token_embedding = embedding(
            config.vocab_size,
            h,
            tm.pp("embeddings").pp("token_embedding"),
        )?;
        let position_embedding = tm
            .pp("embeddings")
            .pp("position_embedding")
            .get((config.max_position_embeddings, h), "weight")?;
        let ln = |name: &str, vb: &candle_nn::VarBuilder| {
            layer_norm(h, config.layer_norm_eps, vb.pp(name))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let lv = tm.pp("encoder").pp("layers").pp(i.to_string());
                let av = lv.pp("self_attn");
                Ok(Layer {
                    norm1: ln("layer_norm1", &lv)?,
                    attention: Attention {
                        q: linear(h, h, av.pp("q_proj"))?,
                        k: linear(h, h, av.pp("k_proj"))?,
                        v: linear(h, h, av.pp("v_proj"))?,
                        out: linear(h, h, av.pp("out_proj"))?,
                        heads: config.num_attention_heads,
                        head_dim: h / config.num_attention_heads,
                    },
                    norm2: ln("layer_norm2", &lv)?,
                    fc1: linear(h, config.intermediate_size, lv.pp("mlp").pp("fc1"))?,
                    fc2: linear(config.intermediate_size, h, lv.pp("mlp").pp("fc2"))?,
                    activation: config.hidden_act,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = ln("final_layer_norm", &tm)?;
        let text_projection = match (has_projection, config.projection_dim) {
            (true, Some(p)) => Some(linear_no_bias(h, p, vb.pp("text_projection"))?),
            _ => None,
        };
        Ok(Self {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Whether the checkpoint has `text_projection` (`CLIPTextModelWithProjection`), so that
    /// [`ClipOutput::pooled`] is produced.
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.token_embedding.embeddings().dtype()
    }

    /// Encodes windows of token ids (each of the model's window length) as one batch.
    pub fn forward(
        &self,
        windows: &[Vec<u32>],
        skipped_layers: usize,
    ) -> Result<ClipOutput, EngineError> {
        self.forward_masked(windows, None, skipped_layers)
    }

    /// [`Self::forward`] with an attention mask per window (transformers' `attention_mask`): a position whose
    /// entry is `false` is hidden from every query (on top of the causal mask). compel uses it to encode a prompt
    /// with a down-weighted fragment masked out; every window must keep its first position visible.
    pub fn forward_masked(
        &self,
        windows: &[Vec<u32>],
        key_masks: Option<&[Vec<bool>]>,
        skipped_layers: usize,
    ) -> Result<ClipOutput, EngineError> {
        self.forward_extended(windows, key_masks, skipped_layers, None)
    }

    /// [`Self::forward_masked`] with extra token-embedding rows (textual inversion,
    /// [`crate::textual_inversion::TiVocabulary::rows`]): `(first, rows)` gives ids `first..first + rows` the
    /// rows' vectors, as if the embedding table had been grown to hold them (InvokeAI's
    /// `resize_token_embeddings`). Ids between the vocabulary and `first` are refused.
    pub fn forward_extended(
        &self,
        windows: &[Vec<u32>],
        key_masks: Option<&[Vec<bool>]>,
        skipped_layers: usize,
        extra: Option<(u32, &Tensor)>,
    ) -> Result<ClipOutput, EngineError> {
        let n_layers = self.layers.len();
        if skipped_layers >= n_layers {
            return Err(EngineError::InvalidArgument(format!(
                "clip skip {skipped_layers} leaves no layer of the {n_layers}-layer text encoder"
            )));
        }
        let len = windows.first().map_or(0, Vec::len);
        if len == 0
            || len > self.config.max_position_embeddings
            || windows.iter().any(|w| w.len() != len)
        {
            return Err(EngineError::InvalidArgument(format!(
                "token windows must all have the same length, at most {}",
                self.config.max_position_embeddings
            )));
        }
        let vocab = self.config.vocab_size;
        let (first, extra_rows) = match extra {
            Some((first, rows)) => (first as usize, rows.dim(0)?),
            None => (vocab, 0),
        };
        let valid = |id: u32| {
            let id = id as usize;
            id < vocab || (first..first + extra_rows).contains(&id)
        };
        if let Some(&bad) = windows.iter().flatten().find(|&&id| !valid(id)) {
            return Err(EngineError::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let flat: Vec<u32> = windows.iter().flatten().copied().collect();
        let x = match extra {
            Some((first, rows)) if flat.iter().any(|&id| id >= first) => {
                // Regular ids through the table (added ones as id 0), added ids through `rows`, then each
                // position takes the one it names.
                let shape = (windows.len(), len);
                let is_extra: Vec<u8> = flat.iter().map(|&id| u8::from(id >= first)).collect();
                let base: Vec<u32> = flat
                    .iter()
                    .map(|&id| if id >= first { 0 } else { id })
                    .collect();
                let added: Vec<u32> = flat.iter().map(|&id| id.saturating_sub(first)).collect();
                let base =
                    self.token_embedding
                        .forward(&Tensor::from_vec(base, shape, &self.device)?)?;
                let added = rows
                    .to_dtype(base.dtype())?
                    .index_select(&Tensor::from_vec(added, flat.len(), &self.device)?, 0)?
                    .reshape(base.shape())?;
                let mask = Tensor::from_vec(is_extra, (shape.0, shape.1, 1), &self.device)?
                    .broadcast_as(base.shape())?
                    .contiguous()?;
                mask.where_cond(&added, &base)?
            }
            _ => self.token_embedding.forward(&Tensor::from_vec(
                flat,
                (windows.len(), len),
                &self.device,
            )?)?,
        };
        let positions = self.position_embedding.i(..len)?;
        let mut x = x.broadcast_add(&positions)?;
        let mask = match key_masks {
            None => causal_mask(len, x.dtype(), &self.device)?,
            Some(masks) => {
                if masks.len() != windows.len() || masks.iter().any(|m| m.len() != len || !m[0]) {
                    return Err(EngineError::InvalidArgument(
                        "attention masks must match the windows and keep their first position"
                            .into(),
                    ));
                }
                key_masked_causal_mask(masks, len, x.dtype(), &self.device)?
            }
        };
        let kept = n_layers - skipped_layers;
        let mut penultimate = x.clone();
        for (i, layer) in self.layers[..kept].iter().enumerate() {
            if i + 1 == kept {
                penultimate = x.clone();
            }
            x = layer.forward(&x, &mask)?;
        }
        let last = self.final_layer_norm.forward(&x)?;
        let pooled = match &self.text_projection {
            None => None,
            Some(projection) => {
                let rows = windows
                    .iter()
                    .enumerate()
                    .map(|(b, w)| {
                        let position = self.pooled_position(w);
                        last.i((b, position))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::stack(&rows, 0)?)?)
            }
        };
        Ok(ClipOutput {
            last_hidden_state: last,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }

    fn pooled_position(&self, window: &[u32]) -> usize {
        let argmax = || {
            window
                .iter()
                .enumerate()
                .max_by_key(|(i, &id)| (id, std::cmp::Reverse(*i)))
                .map_or(0, |(i, _)| i)
        };
        match self.config.eos_token_id {
            Some(eos) if eos != 2 => window
                .iter()
                .position(|&id| id == eos)
                .unwrap_or_else(argmax),
            _ => argmax(),
        }
    }
}

fn causal_mask(len: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, len, len), device)?.to_dtype(dtype)
}

/// (B, 1, L, L): the causal mask plus −∞ on the columns a window's key mask hides.
fn key_masked_causal_mask(
    masks: &[Vec<bool>],
    len: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = masks
        .iter()
        .flat_map(|m| {
            (0..len).flat_map(move |i| {
                (0..len).map(move |j| {
                    if j > i || !m[j] {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
        })
        .collect();
    Tensor::from_vec(values, (masks.len(), 1, len, len), device)?.to_dtype(dtype)
}
