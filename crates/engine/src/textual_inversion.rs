//! Textual-inversion embeddings (spec `generation.md` §10.2: "textual-inversion embeddings are referenced by
//! name"), read and applied as InvokeAI reads and applies them.
//!
//! [`TextualInversion::load`] reads a `.safetensors` file in the layouts InvokeAI's `TextualInversionModelRaw`
//! understands, and a little more: `emb_params` (A1111 v3), `clip_g` + `clip_l` (SDXL), any other dict whose
//! first tensor (keys sorted) is the embedding (diffusers' single-token `{"<token>": tensor}`), and, beyond
//! InvokeAI, `string_to_param.*` keys (an A1111 embedding whose `string_to_param` dict was flattened into
//! safetensors keys; the first one is used) and 1-D tensors in any layout (one vector; InvokeAI only reshapes
//! 1-D single-token files). Pickle files (`.pt`, `.bin`) are never read: the model manager refuses them.
//!
//! [`TiVocabulary`] applies the embeddings whose triggers a prompt names to one tokenizer and text encoder for
//! one encoding, as InvokeAI's `ModelPatcher.apply_ti` and `TextualInversionManager` do:
//! - a prompt names an embedding by writing `<name>` ([`triggers`]: InvokeAI's
//!   `extract_ti_triggers_from_prompt`, the pattern `<[a-zA-Z0-9., _-]+>`);
//! - an embedding of n vectors adds the tokens `<name>`, `<name-!pad-1>`, …, `<name-!pad-(n-1)>` after the
//!   vocabulary (ids from the vocabulary size up, in the order the triggers first appear), each mapped to one
//!   vector; the added tokens are matched in the normalised text before BPE (transformers' added tokens);
//! - after tokenizing a piece of text, each `<name>` token is followed by its pad tokens, and when any embedding
//!   in use has more than one vector the piece's tokens are then cut to 75 (InvokeAI's
//!   `expand_textual_inversion_token_ids_if_necessary`, which compel calls once per prompt fragment);
//! - SDXL embeddings carry one set of vectors per encoder: the `clip_l` vectors where they fit the encoder's
//!   width, else the `clip_g` ones; vectors whose width is not the encoder's are an error, as in InvokeAI.
//!
//! A prompt that names no embedding is tokenized and encoded exactly as without this module.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::clip::ClipTextTransformer;
use crate::tokenizer::ClipTokenizer;
use crate::EngineError;

/// One textual-inversion embedding: its vectors, (n, width) in f32 on the CPU.
#[derive(Debug, Clone)]
pub struct TextualInversion {
    /// InvokeAI's `embedding`: the vectors of single-encoder embeddings, SDXL's `clip_g`.
    embedding: Tensor,
    /// InvokeAI's `embedding_2`: SDXL's `clip_l`.
    embedding_2: Option<Tensor>,
}

/// The layout of an embedding file, as [`TextualInversion::layout`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A1111 v3: `emb_params`.
    EmbParams,
    /// SDXL: `clip_g` and `clip_l`.
    Sdxl,
    /// A1111 `string_to_param` flattened into keys: the first `string_to_param.*` key.
    StringToParam(String),
    /// Any other small dict: its first tensor (diffusers' `{"<token>": tensor}`).
    FirstTensor(String),
}

impl TextualInversion {
    /// Which tensor(s) of a file with these tensor names hold the embedding (`None`: no tensors).
    pub fn layout<'a>(mut names: impl Iterator<Item = &'a str> + Clone) -> Option<Layout> {
        if names.clone().any(|n| n == "emb_params") {
            return Some(Layout::EmbParams);
        }
        if names.clone().any(|n| n == "clip_g") && names.clone().any(|n| n == "clip_l") {
            return Some(Layout::Sdxl);
        }
        let first = |names: &mut dyn Iterator<Item = &'a str>| names.min().map(str::to_owned);
        if let Some(key) = first(&mut names.clone().filter(|n| n.starts_with("string_to_param."))) {
            return Some(Layout::StringToParam(key));
        }
        first(&mut names).map(Layout::FirstTensor)
    }

    /// Reads a `.safetensors` embedding file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))?;
        Self::from_tensors(tensors.into_iter().collect())
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))
    }

    /// Builds an embedding from a file's tensors (see the module documentation for the layouts).
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>) -> Result<Self, EngineError> {
        let vectors = |key: &str| -> Result<Tensor, EngineError> {
            let t = tensors
                .get(key)
                .ok_or_else(|| EngineError::InvalidModel(format!("no tensor '{key}'")))?;
            let t = match t.rank() {
                1 => t.unsqueeze(0)?,
                2 => t.clone(),
                _ => {
                    return Err(EngineError::InvalidModel(format!(
                        "the embedding '{key}' has shape {:?}, expected (vectors, width)",
                        t.dims()
                    )))
                }
            };
            if t.dim(0)? == 0 || t.dim(1)? == 0 {
                return Err(EngineError::InvalidModel(format!(
                    "the embedding '{key}' is empty"
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let layout = Self::layout(tensors.keys().map(String::as_str))
            .ok_or_else(|| EngineError::InvalidModel("the file holds no tensors".into()))?;
        Ok(match layout {
            Layout::EmbParams => Self {
                embedding: vectors("emb_params")?,
                embedding_2: None,
            },
            Layout::Sdxl => Self {
                embedding: vectors("clip_g")?,
                embedding_2: Some(vectors("clip_l")?),
            },
            Layout::StringToParam(key) | Layout::FirstTensor(key) => Self {
                embedding: vectors(&key)?,
                embedding_2: None,
            },
        })
    }

    /// An embedding from its vectors: one set, or SDXL's `clip_l` and `clip_g`.
    pub fn new(embedding: Tensor, embedding_2: Option<Tensor>) -> Result<Self, EngineError> {
        let mut map = BTreeMap::new();
        match embedding_2 {
            None => {
                map.insert("emb_params".to_owned(), embedding);
            }
            Some(clip_l) => {
                map.insert("clip_g".to_owned(), embedding);
                map.insert("clip_l".to_owned(), clip_l);
            }
        }
        Self::from_tensors(map)
    }

    /// The vectors for a text encoder of width `width` (InvokeAI's `_get_ti_embedding`): SDXL's `clip_l`
    /// vectors when their width is `width`, else the (`clip_g`) `embedding`. (n, width') in f32.
    pub fn vectors_for(&self, width: usize) -> &Tensor {
        match &self.embedding_2 {
            Some(e2) if e2.dims().get(1) == Some(&width) => e2,
            _ => &self.embedding,
        }
    }

    /// The widths of the vectors: `[embedding]` or SDXL's `[clip_g, clip_l]`.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(&self.embedding)
            .chain(&self.embedding_2)
            .map(|t| t.dims().get(1).copied().unwrap_or(0))
            .collect()
    }
}

/// The names a prompt's textual-inversion triggers give, in order, repeats included (InvokeAI's
/// `extract_ti_triggers_from_prompt`: every `<…>` of letters, digits, `.`, `,`, space, `_` and `-`).
pub fn triggers(prompt: &str) -> Vec<&str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ',' | ' ' | '_' | '-');
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let len = after.find(|c: char| !allowed(c)).unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('>') {
            out.push(&after[..len]);
            rest = &after[len + 1..];
        } else {
            rest = after;
        }
    }
    out
}

/// Embeddings applied to one tokenizer and text encoder for one text (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct TiVocabulary {
    /// (normalised trigger, id) of every added token.
    added: Vec<(String, u32)>,
    /// The pad tokens that follow each multi-vector embedding's first token.
    pad_tokens: HashMap<u32, Vec<u32>>,
    /// The id of the first added token.
    first_id: u32,
    /// One row per added token: (count, width), in the encoder's dtype and on its device.
    rows: Option<Tensor>,
    /// The longest token list one piece of text may give when `pad_tokens` is not empty (75).
    max_tokens: usize,
}

impl TiVocabulary {
    /// No embeddings: tokenizing and encoding are unchanged.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The embeddings of `available` (by trigger name) whose triggers `text` names, in the order the triggers
    /// appear (InvokeAI's `generate_ti_list` over the text, then `apply_ti`). Triggers not in `available` stay
    /// plain text. Vectors whose width is not the encoder's are an error.
    pub fn for_text(
        tokenizer: &ClipTokenizer,
        encoder: &ClipTextTransformer,
        text: &str,
        available: &[(&str, &TextualInversion)],
    ) -> Result<Self, EngineError> {
        // A repeated trigger maps to the same tokens, so each embedding is added once, in the order
        // of first use.
        let mut list: Vec<(&str, &TextualInversion)> = Vec::new();
        for name in triggers(text) {
            if list.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Some(found) = available.iter().find(|(n, _)| *n == name) {
                list.push(*found);
            }
        }
        Self::new(tokenizer, encoder, &list)
    }

    /// Adds the tokens of each `(name, embedding)` in order (InvokeAI's `apply_ti` over a `ti_list`).
    pub fn new(
        tokenizer: &ClipTokenizer,
        encoder: &ClipTextTransformer,
        list: &[(&str, &TextualInversion)],
    ) -> Result<Self, EngineError> {
        if list.is_empty() {
            return Ok(Self::empty());
        }
        let width = encoder.config().hidden_size;
        let first_id = tokenizer.vocab_size().max(encoder.config().vocab_size);
        let first_id = u32::try_from(first_id)
            .map_err(|_| EngineError::InvalidModel("vocabulary too large".into()))?;
        let mut triggers: Vec<String> = Vec::new();
        let mut rows: Vec<Option<Tensor>> = Vec::new();
        let mut pad_tokens = HashMap::new();
        for (name, ti) in list {
            let vectors = ti.vectors_for(width);
            let (n, w) = vectors.dims2()?;
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let trigger = if i == 0 {
                    format!("<{name}>")
                } else {
                    format!("<{name}-!pad-{i}>")
                };
                if w != width {
                    return Err(EngineError::InvalidArgument(format!(
                        "Cannot load embedding for {trigger}. It was trained on a model with token \
                         dimension {w}, but the current model has token dimension {width}."
                    )));
                }
                let index = match triggers.iter().position(|t| *t == trigger) {
                    Some(index) => index,
                    None => {
                        triggers.push(trigger);
                        rows.push(None);
                        triggers.len() - 1
                    }
                };
                rows[index] = Some(vectors.i(i)?);
                ids.push(first_id + index as u32);
            }
            if ids.len() > 1 {
                pad_tokens.insert(ids[0], ids[1..].to_vec());
            }
        }
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        let rows = Tensor::stack(&rows, 0)?
            .to_dtype(encoder.dtype())?
            .to_device(encoder.device())?;
        Ok(Self {
            added: triggers
                .iter()
                .enumerate()
                .map(|(i, t)| (ClipTokenizer::normalize(t), first_id + i as u32))
                .collect(),
            pad_tokens,
            first_id,
            rows: Some(rows),
            max_tokens: tokenizer.max_length().saturating_sub(2),
        })
    }

    /// Whether no embedding is applied.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
    }

    /// The token ids of a piece of text (without BOS/EOS): the added tokens matched, each `<name>` followed by
    /// its pad tokens, cut to 75 tokens when a multi-vector embedding is in use (compel's `get_token_ids` with
    /// InvokeAI's `TextualInversionManager`).
    pub fn tokenize(&self, tokenizer: &ClipTokenizer, text: &str) -> Vec<u32> {
        if self.is_empty() {
            return tokenizer.encode(text);
        }
        let ids = tokenizer.encode_with_added(text, &self.added);
        if self.pad_tokens.is_empty() {
            return ids;
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(id);
            if let Some(pads) = self.pad_tokens.get(&id) {
                out.extend_from_slice(pads);
            }
        }
        out.truncate(self.max_tokens);
        out
    }

    /// The extra embedding rows for the text encoder: (id of the first added token, rows).
    pub fn rows(&self) -> Option<(u32, &Tensor)> {
        self.rows.as_ref().map(|r| (self.first_id, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_found_as_invokeai_finds_them() {
        assert_eq!(
            triggers("a <cat-toy> on <my emb.v2>, <bad!> <<x>> <> <a_b>"),
            vec!["cat-toy", "my emb.v2", "x", "a_b"]
        );
        assert!(triggers("a cat <").is_empty());
    }

    #[test]
    fn layouts() {
        let layout = |names: &[&str]| TextualInversion::layout(names.iter().copied());
        assert_eq!(layout(&["emb_params", "x"]), Some(Layout::EmbParams));
        assert_eq!(layout(&["clip_l", "clip_g"]), Some(Layout::Sdxl));
        assert_eq!(
            layout(&["string_to_token.*", "string_to_param.*"]),
            Some(Layout::StringToParam("string_to_param.*".into()))
        );
        assert_eq!(
            layout(&["<b>", "<a>"]),
            Some(Layout::FirstTensor("<a>".into()))
        );
        assert_eq!(layout(&[]), None);
    }

    #[test]
    fn vectors_per_encoder_width() {
        let t = |n: usize, w: usize| Tensor::zeros((n, w), DType::F32, &Device::Cpu).unwrap();
        let sdxl = TextualInversion::new(t(2, 1280), Some(t(3, 768))).unwrap();
        assert_eq!(sdxl.vectors_for(768).dims(), &[3, 768]);
        assert_eq!(sdxl.vectors_for(1280).dims(), &[2, 1280]);
        assert_eq!(sdxl.widths(), vec![1280, 768]);
        let one = TextualInversion::from_tensors(BTreeMap::from([(
            "<tok>".to_owned(),
            Tensor::zeros(768, DType::F16, &Device::Cpu).unwrap(),
        )]))
        .unwrap();
        assert_eq!(one.vectors_for(768).dims(), &[1, 768]);
        assert_eq!(one.vectors_for(768).dtype(), DType::F32);
    }
}
