//! The CLIP BPE tokenizer, built from a model's `vocab.json` + `merges.txt` (spec `generation.md` §10.2, §12a).
//!
//! It reproduces transformers' `CLIPTokenizer`: NFC normalisation, runs of whitespace collapsed to one space,
//! lower case; the CLIP pre-tokenisation regex (`'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`, the
//! special tokens kept whole); GPT-2's byte-to-unicode mapping; BPE by merge rank with `</w>` on each word's last
//! symbol. Windows are `[BOS] ≤75 tokens [EOS]` padded to 77 with the pad token of the model's tokenizer files
//! (`<|endoftext|>` for SD 1.x, `!` for the OpenCLIP tokenizers of SD 2.x).
//!
//! Long prompts are split the way InvokeAI's compel (`truncate_long_prompts=False`,
//! `SplitLongTextMode.SENTENCES`) splits them: each chunk takes at most 75 tokens, cut after the last `.` within
//! them, else after the last `,` `.` `;` `:`, else after the last word end, else at 75.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::EngineError;

/// The window length of CLIP text encoders.
pub const MAX_LENGTH: usize = 77;

const BOS_DEFAULT: &str = "<|startoftext|>";
const EOS_DEFAULT: &str = "<|endoftext|>";

/// A CLIP BPE tokenizer.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
    specials: Vec<(String, u32)>,
}

/// GPT-2's reversible byte → unicode table (printable bytes map to themselves, the rest to U+0100 onwards).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        // Every value here is below 0x200, a valid scalar value.
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// The 256 byte symbols in CLIP's vocabulary order (the order of `bytes_to_unicode().values()`).
pub fn byte_symbols() -> Vec<char> {
    let table = bytes_to_unicode();
    let mut order: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    for b in 0..256u32 {
        if !order.contains(&b) {
            order.push(b);
        }
    }
    order.into_iter().map(|b| table[b as usize]).collect()
}

/// One BPE merge: the two symbols it joins.
pub type Merge = (String, String);

/// OpenAI CLIP's BPE data (`bpe_simple_vocab_16e6.txt.gz`, MIT licence; see `data/NOTICE.md`): a header line,
/// then merges in rank order.
const OPENAI_CLIP_BPE_GZ: &[u8] = include_bytes!("../data/bpe_simple_vocab_16e6.txt.gz");

/// How many of the file's merges CLIP's vocabulary uses (49,408 tokens = 256 bytes + 256 bytes with `</w>` +
/// these merges + the two specials).
const OPENAI_CLIP_MERGES: usize = 49152 - 256 - 2;

/// The standard OpenAI CLIP vocabulary (tokens in id order) and merges (in rank order), built from the bundled
/// BPE data as CLIP's own `SimpleTokenizer` builds them: the byte symbols, the same with `</w>`, the
/// concatenation of each of the first 48,894 merges, then `<|startoftext|>` and `<|endoftext|>`. Single-file
/// SD 1.x checkpoints ship no tokenizer; this is theirs.
pub fn openai_clip_bpe() -> Result<(Vec<String>, Vec<Merge>), EngineError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(OPENAI_CLIP_BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| EngineError::InvalidModel(format!("bundled CLIP BPE data: {e}")))?;
    let mut merges = Vec::with_capacity(OPENAI_CLIP_MERGES);
    for line in text.lines().skip(1).take(OPENAI_CLIP_MERGES) {
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            EngineError::InvalidModel(format!("bundled CLIP BPE data: bad line '{line}'"))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    if merges.len() != OPENAI_CLIP_MERGES {
        return Err(EngineError::InvalidModel(
            "bundled CLIP BPE data: too few merges".into(),
        ));
    }
    let symbols = byte_symbols();
    let mut vocab: Vec<String> = symbols.iter().map(char::to_string).collect();
    vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push(BOS_DEFAULT.into());
    vocab.push(EOS_DEFAULT.into());
    Ok((vocab, merges))
}

fn token_from_config(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EngineError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))
}

/// The special tokens a tokenizer folder configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence (`<|startoftext|>`).
    pub bos: String,
    /// End of sequence (`<|endoftext|>`).
    pub eos: String,
    /// Padding (`<|endoftext|>` for SD 1.x, `!` for OpenCLIP).
    pub pad: String,
    /// The window length (`model_max_length`, 77).
    pub max_length: usize,
}

impl SpecialTokens {
    /// SD 1.x / SDXL encoder 1 (openai CLIP).
    pub fn openai_clip() -> Self {
        Self {
            bos: BOS_DEFAULT.into(),
            eos: EOS_DEFAULT.into(),
            pad: EOS_DEFAULT.into(),
            max_length: MAX_LENGTH,
        }
    }

    /// SD 2.x / SDXL encoder 2 (OpenCLIP): pads with `!`.
    pub fn open_clip() -> Self {
        Self {
            pad: "!".into(),
            ..Self::openai_clip()
        }
    }

    /// Reads `tokenizer_config.json`, then `special_tokens_map.json` for what the first lacks.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let map = read_json(&dir.join("special_tokens_map.json"))?;
        let pick = |key: &str| {
            token_from_config(config.as_ref().and_then(|c| c.get(key)))
                .or_else(|| token_from_config(map.as_ref().and_then(|c| c.get(key))))
        };
        let defaults = Self::openai_clip();
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| (3..=4096).contains(&n))
            .unwrap_or(MAX_LENGTH);
        Ok(Self {
            bos: pick("bos_token").unwrap_or(defaults.bos),
            eos: pick("eos_token").unwrap_or(defaults.eos),
            pad: pick("pad_token").unwrap_or(defaults.pad),
            max_length,
        })
    }
}

impl ClipTokenizer {
    /// Loads `vocab.json`, `merges.txt` and the special-token configuration from a tokenizer folder.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab = std::fs::read_to_string(&vocab_path)
            .map_err(|e| EngineError::Io(format!("{}: {e}", vocab_path.display())))?;
        let merges = std::fs::read_to_string(&merges_path)
            .map_err(|e| EngineError::Io(format!("{}: {e}", merges_path.display())))?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", vocab_path.display())))?;
        Self::new(vocab, &merges, SpecialTokens::from_dir(dir)?)
    }

    /// The standard OpenAI CLIP tokenizer of SD 1.x ([`openai_clip_bpe`], padding with `<|endoftext|>`), for
    /// models that ship no tokenizer files.
    pub fn openai_clip() -> Result<Self, EngineError> {
        Self::bundled(SpecialTokens::openai_clip())
    }

    /// The SD 2.x (OpenCLIP) tokenizer: the same vocabulary as [`ClipTokenizer::openai_clip`], padding with `!`
    /// ([`SpecialTokens::open_clip`]), for single-file SD 2.x checkpoints.
    pub fn open_clip() -> Result<Self, EngineError> {
        Self::bundled(SpecialTokens::open_clip())
    }

    fn bundled(specials: SpecialTokens) -> Result<Self, EngineError> {
        let (tokens, merges) = openai_clip_bpe()?;
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let mut text = String::from("#version: 0.2\n");
        for (a, b) in &merges {
            text.push_str(a);
            text.push(' ');
            text.push_str(b);
            text.push('\n');
        }
        Self::new(vocab, &text, specials)
    }

    /// Builds a tokenizer from a vocabulary, the text of a merges file and the special tokens.
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: &str,
        specials: SpecialTokens,
    ) -> Result<Self, EngineError> {
        let mut ranks = HashMap::new();
        for line in merges.lines() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => {
                    let rank = ranks.len();
                    ranks.entry((a.to_string(), b.to_string())).or_insert(rank);
                }
                _ => {
                    return Err(EngineError::InvalidModel(format!(
                        "merges.txt: bad line '{line}'"
                    )))
                }
            }
        }
        let id = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                EngineError::InvalidModel(format!("tokenizer: '{token}' is not in vocab.json"))
            })
        };
        let (bos, eos, pad) = (id(&specials.bos)?, id(&specials.eos)?, id(&specials.pad)?);
        let pattern = Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
            .map_err(|e| EngineError::InvalidModel(format!("tokenizer regex: {e}")))?;
        let decoder = vocab.iter().map(|(k, &v)| (v, k.clone())).collect();
        let mut special_list = vec![(specials.bos.clone(), bos), (specials.eos.clone(), eos)];
        if !special_list.iter().any(|(s, _)| *s == specials.pad) {
            special_list.push((specials.pad.clone(), pad));
        }
        if specials.max_length < 3 {
            return Err(EngineError::InvalidModel(
                "tokenizer: model_max_length below 3".into(),
            ));
        }
        Ok(Self {
            encoder: vocab,
            decoder,
            ranks,
            byte_encoder: bytes_to_unicode(),
            pattern,
            bos,
            eos,
            pad,
            max_length: specials.max_length,
            specials: special_list,
        })
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The window length (77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The vocabulary size (largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.decoder.keys().max().map_or(0, |&m| m as usize + 1)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.decoder.get(&id).map(String::as_str)
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let Some((last, rest)) = chars.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
        symbols.push(format!("{last}</w>"));
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&r| (r, pair[0].clone(), pair[1].clone()))
                })
                .min_by_key(|(r, _, _)| *r);
            let Some((_, first, second)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
            if symbols.len() == 1 {
                break;
            }
        }
        symbols
    }

    /// The token ids of `text`, without BOS/EOS and without any length limit.
    ///
    /// As in transformers, the special tokens (BOS, EOS, and the pad token: `!` for OpenCLIP) are matched in the
    /// raw text first and map straight to their ids, so with SD 2.x's tokenizer a `!` in a prompt is the pad id,
    /// not the word-final `!</w>`. The text between them is normalised and BPE-encoded.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_with_added(text, &[])
    }

    /// [`Self::encode`] with added tokens (transformers' `add_tokens`, as InvokeAI adds textual-inversion
    /// triggers): `(content, id)` pairs, each content already normalised with [`Self::normalize`]. Like the
    /// special tokens they are never split, but they are matched in the normalised text (NFC, collapsed
    /// whitespace, lower case) between the special tokens, leftmost first and longest first, and the text between
    /// them is BPE-encoded on its own.
    pub fn encode_with_added(&self, text: &str, added: &[(String, u32)]) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token; the longest one when several start at the same place.
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| {
                    rest.find(s.as_str())
                        .map(|at| (at, std::cmp::Reverse(s.len()), *id))
                })
                .min();
            match next {
                Some((at, std::cmp::Reverse(len), id)) => {
                    self.encode_plain(&rest[..at], added, &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, added, &mut ids);
                    rest = "";
                }
            }
        }
        ids
    }

    /// The tokenizer's normalisation: NFC, runs of whitespace collapsed to one space, lower case.
    pub fn normalize(text: &str) -> String {
        let normalized: String = text.nfc().collect();
        let mut collapsed = String::with_capacity(normalized.len());
        let mut in_space = false;
        for c in normalized.chars() {
            if c.is_whitespace() {
                if !in_space {
                    collapsed.push(' ');
                }
                in_space = true;
            } else {
                collapsed.push(c);
                in_space = false;
            }
        }
        collapsed.to_lowercase()
    }

    fn encode_plain(&self, text: &str, added: &[(String, u32)], ids: &mut Vec<u32>) {
        let lowered = Self::normalize(text);
        let mut rest = lowered.as_str();
        while !rest.is_empty() {
            let next = added
                .iter()
                .filter(|(s, _)| !s.is_empty())
                .filter_map(|(s, id)| {
                    rest.find(s.as_str())
                        .map(|at| (at, std::cmp::Reverse(s.len()), *id))
                })
                .min();
            match next {
                Some((at, std::cmp::Reverse(len), id)) => {
                    self.encode_normalized(&rest[..at], ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_normalized(rest, ids);
                    rest = "";
                }
            }
        }
    }

    fn encode_normalized(&self, lowered: &str, ids: &mut Vec<u32>) {
        for piece in self.pattern.find_iter(lowered) {
            let word: String = piece
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            for symbol in self.bpe(&word) {
                // Byte-level vocabularies contain every single symbol, so the fallback (the unknown token,
                // `<|endoftext|>` in CLIP) only triggers on incomplete vocabularies.
                ids.push(self.encoder.get(&symbol).copied().unwrap_or(self.eos));
            }
        }
    }

    fn split_point(&self, ids: &[u32], max: usize) -> usize {
        if ids.len() <= max {
            return max;
        }
        let window = &ids[..max];
        let token = |i: usize| self.id_to_token(window[i]).unwrap_or("");
        let find = |pred: &dyn Fn(&str) -> bool| (0..max).rev().find(|&i| pred(token(i)));
        find(&|t| t == ".</w>")
            .or_else(|| find(&|t| matches!(t, ".</w>" | ",</w>" | ";</w>" | ":</w>")))
            .or_else(|| find(&|t| t.ends_with("</w>")))
            .map_or(max, |i| i + 1)
    }

    /// How a token list is cut into chunks of at most 75 tokens (§10.2): the index ranges of the chunks, in
    /// order, covering `ids`; an empty list gives one empty chunk.
    pub fn chunk_ranges(&self, ids: &[u32]) -> Vec<std::ops::Range<usize>> {
        let chunk_len = self.max_length - 2;
        let mut ranges = Vec::new();
        let mut start = 0;
        loop {
            let rest = &ids[start..];
            let split = self.split_point(rest, chunk_len).min(rest.len());
            ranges.push(start..start + split);
            start += split;
            if start >= ids.len() {
                break;
            }
        }
        ranges
    }

    /// One window: `[BOS] chunk [EOS]` padded to the window length with the pad token.
    pub fn window(&self, chunk: &[u32]) -> Vec<u32> {
        let mut window = Vec::with_capacity(self.max_length);
        window.push(self.bos);
        window.extend_from_slice(chunk);
        window.push(self.eos);
        window.resize(self.max_length, self.pad);
        window
    }

    /// The windows of a token list (without BOS/EOS), chunked as [`Self::chunk_ranges`] does.
    pub fn windows_of_ids(&self, ids: &[u32]) -> Vec<Vec<u32>> {
        self.chunk_ranges(ids)
            .into_iter()
            .map(|r| self.window(&ids[r]))
            .collect()
    }

    /// The 77-token windows of `text` (§10.2): one for a short prompt, more for a long one, each
    /// `[BOS] chunk [EOS] pad...`, concatenated.
    pub fn windows(&self, text: &str) -> Vec<Vec<u32>> {
        self.windows_of_ids(&self.encode(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTokenizer {
        let mut vocab = HashMap::new();
        let symbols = byte_symbols();
        for (i, c) in symbols.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
            vocab.insert(format!("{c}</w>"), (i + 256) as u32);
        }
        let merges = "#version: 0.2\nc a\nca t</w>\nt h\nth e</w>\n";
        let mut next = 512;
        for m in ["ca", "cat</w>", "th", "the</w>"] {
            vocab.insert(m.into(), next);
            next += 1;
        }
        vocab.insert(BOS_DEFAULT.into(), next);
        vocab.insert(EOS_DEFAULT.into(), next + 1);
        ClipTokenizer::new(vocab, merges, SpecialTokens::openai_clip()).unwrap()
    }

    #[test]
    fn bpe_merges_and_word_ends() {
        let t = tiny();
        let ids = t.encode("  The   CAT! ");
        let tokens: Vec<&str> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
        assert_eq!(tokens, vec!["the</w>", "cat</w>", "!</w>"]);
        let tokens: Vec<String> = t
            .encode("cats 12")
            .iter()
            .map(|&i| t.id_to_token(i).unwrap().to_string())
            .collect();
        assert_eq!(tokens, vec!["ca", "t", "s</w>", "1</w>", "2</w>"]);
    }

    #[test]
    fn windows_pad_and_chunk() {
        let t = tiny();
        let w = t.windows("");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0][0], t.bos_id());
        assert_eq!(w[0][1], t.eos_id());
        assert_eq!(w[0].len(), 77);
        // 80 words of one token each, a sentence end after the 10th: the first chunk ends there.
        let mut text = String::new();
        for i in 0..80 {
            text.push_str("the ");
            if i == 9 {
                text.push_str(". ");
            }
        }
        let w = t.windows(&text);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0][12], t.eos_id());
        assert!(w.iter().all(|x| x.len() == 77));
    }
}

#[cfg(test)]
mod openai_clip_tests {
    use super::*;

    /// The bundled BPE data gives transformers' `CLIPTokenizer` ids (fixture made by
    /// `tools/reference/make_clip_tokenizer_fixture.py` from the same file).
    #[test]
    fn bundled_tokenizer_matches_transformers() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/clip_tokenizer.json"))
                .expect("fixture");
        let tok = ClipTokenizer::openai_clip().expect("bundled tokenizer");
        assert_eq!(
            tok.vocab_size() as u64,
            fixture["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.pad_id()),
            (49406, 49407, 49407)
        );
        for case in fixture["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let expected: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut ids = vec![tok.bos_id()];
            ids.extend(tok.encode(prompt));
            ids.push(tok.eos_id());
            assert_eq!(ids, expected, "{prompt:?}");
        }
    }
}
