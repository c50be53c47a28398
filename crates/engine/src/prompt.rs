//! compel's prompt syntax and weighting for SD 1.x/2.x (spec `generation.md` §10.2), as InvokeAI's `compel`
//! node uses it (`Compel(truncate_long_prompts=False, split_long_text_mode=SENTENCES)`, default
//! `DownweightMode.MASK`, attention weights 1.1 per `+` and 0.9 per `-`).
//!
//! [`parse`] turns a prompt into the structure compel's parser produces: a conjunction of prompts or blends, each
//! prompt a list of weighted text fragments (and `.swap()` pairs, of which InvokeAI keeps the original side). The
//! grammar follows compel's pyparsing grammar rule by rule — ordered choice with backtracking, the same whitespace
//! rules, the same escapes — so odd input parses the way compel parses it: unbalanced parentheses and stray
//! operators fall back to plain text, and the few inputs on which compel raises (a `.blend()` followed by more
//! text, mismatched weight counts, a non-numeric weight, an empty conjunction) give
//! [`EngineError::InvalidArgument`]. Nothing here panics.
//!
//! [`encode`] computes compel's conditioning:
//! - each fragment is tokenized on its own, the tokens concatenated, chunked into 75-token windows as plain text
//!   is, and encoded with an all-ones attention mask;
//! - a token of weight w ≠ 1 becomes `empty + (z − empty)·w`, where `empty` is the encoding of the empty window
//!   at the same position (tokens of weight 1 keep `z` exactly);
//! - each fragment of weight w < 1 adds one more encoding of the same tokens with that fragment hidden by the
//!   attention mask (except each window's first and last position); the results are averaged with weights
//!   `1` (the full prompt) and `tan((1 − max(w, 1e-5))·π/2)` (each masked variant), normalised;
//! - `("a", "b").blend(w1, w2)` is the (normalised unless `no_normalize`) weighted sum of the prompts'
//!   conditionings, shorter ones padded with `empty` windows;
//! - `("a", "b").and(w1, w2)` concatenates the conditionings along the sequence axis; a weight w ≠ 1 first maps
//!   `c` to `e + (c − e)·w`, with `e` the encoding of `""` padded with `empty` windows;
//! - `a.swap(b)` encodes the original prompt (padded to the edited prompt's length), as InvokeAI does;
//! - `withLora(...)`/`useLora(...)` terms are dropped (InvokeAI applies LoRAs from its own fields).
//!
//! With [`PromptEncoder::with_textual_inversions`], fragments are tokenized with the embeddings' added tokens
//! ([`crate::textual_inversion`]) and those tokens are weighted like any others.
//!
//! A prompt without syntax gives a single fragment of weight 1, whose encoding is exactly the plain text encoding.
//! All weighting arithmetic is in f32, as compel does on a CPU.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::clip::ClipTextTransformer;
use crate::textual_inversion::TiVocabulary;
use crate::tokenizer::ClipTokenizer;
use crate::EngineError;

/// The weight of one `+` (compel's `attention_plus_base`).
pub const PLUS_BASE: f64 = 1.1;
/// The weight of one `-` (compel's `attention_minus_base`).
pub const MINUS_BASE: f64 = 0.9;
/// Deeper nesting of parentheses is refused (compel's recursive parser gives up well before).
const MAX_NESTING: usize = 32;

/// A piece of text with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// The text, passed to the tokenizer as is.
    pub text: String,
    /// The weight (1 = unweighted).
    pub weight: f64,
}

/// One element of a flattened prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Weighted text.
    Text(Fragment),
    /// `original.swap(edited)` (cross-attention control): InvokeAI conditions on the original side.
    Swap {
        /// The fragments being replaced.
        original: Vec<Fragment>,
        /// The replacement.
        edited: Vec<Fragment>,
    },
}

/// A prompt flattened to a list of weighted fragments (compel's `FlattenedPrompt`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlatPrompt {
    /// The fragments in order.
    pub parts: Vec<Part>,
}

/// One member of a conjunction.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A single prompt.
    Prompt(FlatPrompt),
    /// `(...).blend(...)`: a weighted sum of the prompts' conditionings.
    Blend {
        /// The prompts.
        prompts: Vec<FlatPrompt>,
        /// One weight per prompt.
        weights: Vec<f64>,
        /// Whether the weights are divided by their sum (false with `no_normalize`).
        normalize: bool,
    },
}

/// A parsed prompt: its members are encoded separately and concatenated (compel's `Conjunction`).
#[derive(Debug, Clone, PartialEq)]
pub struct Conjunction {
    /// The members.
    pub items: Vec<Item>,
    /// One weight per member.
    pub weights: Vec<f64>,
}

impl Conjunction {
    /// Whether this is a single prompt of weight-1 plain text, whose encoding is the plain text encoding.
    pub fn plain_text(&self) -> Option<Vec<&str>> {
        match (self.items.as_slice(), self.weights.as_slice()) {
            ([Item::Prompt(p)], [w]) if *w == 1.0 => p
                .parts
                .iter()
                .map(|part| match part {
                    Part::Text(f) if f.weight == 1.0 => Some(f.text.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(format!("prompt syntax: {}", message.into()))
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing

/// Python's `str.isspace`.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// pyparsing's default whitespace (skipped before most elements, matched by `White()`).
fn pp_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Python's `string.whitespace`.
fn ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

const SYNTACTIC: [char; 8] = ['(', ')', '"', ',', '.', '+', '-', '='];

fn syntactic(c: char) -> bool {
    SYNTACTIC.contains(&c)
}

/// compel's `Fragment` constructor: `\(` `\)` `\"` become `(` `)` `"` (applied each time a fragment is built).
fn unescape(text: &str) -> String {
    if text.contains("\\\"") || text.contains("\\(") || text.contains("\\)") {
        text.replace("\\(", "(")
            .replace("\\)", ")")
            .replace("\\\"", "\"")
    } else {
        text.to_string()
    }
}

/// Python's `float()` on a keyword (letters, digits, `_`, `-`) that is not a number: only infinities and NaN.
fn keyword_float(keyword: &str) -> Result<f64, EngineError> {
    let (sign, rest) = match keyword.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, keyword),
    };
    match rest.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => Ok(sign * f64::INFINITY),
        "nan" => Ok(f64::NAN),
        _ => rest
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .filter(|_| !rest.starts_with('_') && !rest.ends_with('_') && !rest.contains("__"))
            .map(|v| sign * v)
            .ok_or_else(|| invalid(format!("could not convert '{keyword}' to a weight"))),
    }
}

/// A parse-tree node (before flattening).
#[derive(Debug, Clone)]
enum Node {
    /// Text of weight 1 (escapes already replaced once).
    Frag(String),
    /// Weighted children.
    Attention(f64, Vec<Node>),
    /// `target.swap(replacement)`.
    Swap(Vec<Node>, Vec<Node>),
    /// `withLora(...)`, dropped.
    Lora,
}

/// An operator option: a number, `key=value` or a flag.
#[derive(Debug, Clone)]
enum Opt {
    Number(f64),
    Keyword(String),
}

impl Opt {
    fn weight(&self) -> Result<f64, EngineError> {
        match self {
            Opt::Number(v) => Ok(*v),
            Opt::Keyword(k) => keyword_float(k),
        }
    }
}

/// A member of the top-level conjunction before flattening.
enum RootPart {
    Prompt(Vec<Node>),
    Blend {
        prompts: Vec<Vec<Node>>,
        weights: Vec<f64>,
        normalize: bool,
    },
}

/// `(items).op(options)` as parsed.
struct Operator {
    items: Vec<Vec<Node>>,
    options: Vec<Opt>,
}

/// A match: the position after it and its value; `None` = no match (the caller backtracks).
type Matched<T> = Result<Option<(usize, T)>, EngineError>;

/// Memoised results per (rule, position).
type Memo = HashMap<(Rule, usize), Matched<Vec<Node>>>;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Rule {
    Target,
    Paren,
    Attention,
    Swap,
    FragsWithCommas,
    FragsWithoutCommas,
}

/// A recursive-descent parser of compel's grammar over one string (quoted strings are re-parsed by a parser of
/// their own, as compel does). The grammar's ordered choices re-parse the same spans many times; results are
/// memoised per (rule, position), which keeps deep nesting polynomial without changing what is parsed.
struct Parser {
    s: Vec<char>,
    memo: RefCell<Memo>,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            s: text.chars().collect(),
            memo: RefCell::new(HashMap::new()),
        }
    }

    fn at(&self, p: usize) -> Option<char> {
        self.s.get(p).copied()
    }

    fn ws(&self, mut p: usize) -> usize {
        while self.at(p).is_some_and(pp_space) {
            p += 1;
        }
        p
    }

    fn text(&self, a: usize, b: usize) -> String {
        self.s[a..b].iter().collect()
    }

    /// A literal, after skipping whitespace.
    fn lit(&self, p: usize, literal: &str) -> Option<usize> {
        let mut i = self.ws(p);
        for c in literal.chars() {
            if self.at(i) != Some(c) {
                return None;
            }
            i += 1;
        }
        Some(i)
    }

    fn at_end(&self, p: usize) -> bool {
        self.ws(p) == self.s.len()
    }

    fn memoized(
        &self,
        rule: Rule,
        p: usize,
        f: impl FnOnce() -> Matched<Vec<Node>>,
    ) -> Matched<Vec<Node>> {
        if let Some(r) = self.memo.borrow().get(&(rule, p)) {
            return r.clone();
        }
        let r = f();
        self.memo.borrow_mut().insert((rule, p), r.clone());
        r
    }

    /// `non_syntax_word`: characters other than whitespace and `()",.+-=`, escaped syntax characters (`\(` ...)
    /// and `+`/`-` followed by a character that is neither whitespace nor syntax.
    fn word(&self, p: usize) -> Option<(usize, String)> {
        let start = self.ws(p);
        let mut i = start;
        while let Some(c) = self.at(i) {
            if c == '\\' && self.at(i + 1).is_some_and(syntactic) {
                i += 2;
            } else if c == '+' || c == '-' {
                match self.at(i + 1) {
                    Some(n) if !pp_space(n) && !syntactic(n) => i += 1,
                    _ => break,
                }
            } else if !ascii_space(c) && !syntactic(c) {
                i += 1;
            } else {
                break;
            }
        }
        (i > start).then(|| (i, self.text(start, i)))
    }

    /// `Word('+')` / `Word('-')`.
    fn run_of(&self, p: usize, c: char) -> Option<(usize, usize)> {
        let start = self.ws(p);
        let mut i = start;
        while self.at(i) == Some(c) {
            i += 1;
        }
        (i > start).then_some((i, i - start))
    }

    /// pyparsing's `real` (`[+-]?(\d+\.\d*|\.\d+)`) or an integer (`-?\d+`), as a float.
    fn number(&self, p: usize) -> Option<(usize, f64)> {
        let start = self.ws(p);
        let digits = |mut i: usize| {
            let from = i;
            while self.at(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            (i, i - from)
        };
        // real
        let mut i = start;
        if matches!(self.at(i), Some('+' | '-')) {
            i += 1;
        }
        let (after_int, n_int) = digits(i);
        let real_end = if n_int > 0 && self.at(after_int) == Some('.') {
            Some(digits(after_int + 1).0)
        } else if n_int == 0 && self.at(i) == Some('.') {
            let (e, n) = digits(i + 1);
            (n > 0).then_some(e)
        } else {
            None
        };
        if let Some(end) = real_end {
            return self.text(start, end).parse().ok().map(|v| (end, v));
        }
        // integer
        let mut i = start;
        if self.at(i) == Some('-') {
            i += 1;
        }
        let (end, n) = digits(i);
        if n == 0 {
            return None;
        }
        self.text(start, end).parse().ok().map(|v| (end, v))
    }

    /// `keyword`: `[A-Za-z0-9_-]+`.
    fn keyword(&self, p: usize) -> Option<(usize, String)> {
        let start = self.ws(p);
        let mut i = start;
        while self
            .at(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            i += 1;
        }
        (i > start).then(|| (i, self.text(start, i)))
    }

    /// A weight after an attention target: `+...`, `-...` or (when allowed) a number.
    fn weight_operator(&self, p: usize, numbers: bool) -> Option<(usize, f64)> {
        if let Some((e, n)) = self.run_of(p, '+') {
            return Some((e, PLUS_BASE.powf(n as f64)));
        }
        if let Some((e, n)) = self.run_of(p, '-') {
            return Some((e, MINUS_BASE.powf(n as f64)));
        }
        if numbers {
            return self.number(p);
        }
        None
    }

    /// A double-quoted string's content (escapes converted as pyparsing's `QuotedString` does).
    fn quoted_raw(&self, p: usize) -> Option<(usize, String)> {
        let start = self.ws(p);
        if self.at(start) != Some('"') {
            return None;
        }
        let mut i = start + 1;
        let mut last_escaped_quote = None;
        let close = loop {
            match self.at(i) {
                Some('\\') if self.at(i + 1) == Some('"') => {
                    last_escaped_quote = Some(i + 1);
                    i += 2;
                }
                Some('"') => break Some(i),
                Some(c) if c != '\n' && c != '\r' => i += 1,
                // No closing quote: the regex backtracks to the last `\"`, whose quote closes the string.
                _ => break last_escaped_quote,
            }
        }?;
        let raw: Vec<char> = self.s[start + 1..close].to_vec();
        Some((close + 1, unquote(&raw)))
    }

    /// `quoted_fragment`: the content re-parsed as fragments (commas allowed) up to its end.
    fn quoted_fragment(&self, p: usize) -> Matched<Vec<Node>> {
        self.quoted_with(p, |sub| sub.fragments(0, true))
    }

    /// `quoted_prompt` (in `.blend()`/`.and()` lists): the content re-parsed as a whole prompt.
    fn quoted_prompt(&self, p: usize) -> Matched<Vec<Node>> {
        self.quoted_with(p, |sub| sub.prompt(0).map(Some))
    }

    fn quoted_with(
        &self,
        p: usize,
        inner: impl Fn(&Parser) -> Matched<Vec<Node>>,
    ) -> Matched<Vec<Node>> {
        let Some((end, content)) = self.quoted_raw(p) else {
            return Ok(None);
        };
        if content.chars().all(py_space) {
            return Ok(Some((end, vec![Node::Frag(String::new())])));
        }
        let sub = Parser::new(&content.replace('"', "\\\""));
        Ok(match inner(&sub)? {
            Some((e, nodes)) if sub.at_end(e) => Some((end, nodes)),
            _ => None,
        })
    }

    /// `parenthesized_fragment`: `(` fragments (commas allowed) `)`.
    fn paren(&self, p: usize) -> Matched<Vec<Node>> {
        self.memoized(Rule::Paren, p, || {
            let Some(open) = self.lit(p, "(") else {
                return Ok(None);
            };
            let Some((e, nodes)) = self.fragments(open, true)? else {
                return Ok(None);
            };
            Ok(self.lit(e, ")").map(|close| (close, nodes)))
        })
    }

    /// `potential_operator_target`: quoted, parenthesized or a bare word.
    fn target(&self, p: usize) -> Matched<Vec<Node>> {
        self.memoized(Rule::Target, p, || {
            if let Some(m) = self.quoted_fragment(p)? {
                return Ok(Some(m));
            }
            if let Some(m) = self.paren(p)? {
                return Ok(Some(m));
            }
            Ok(self
                .word(p)
                .map(|(e, w)| (e, vec![Node::Frag(unescape(&w))])))
        })
    }

    /// `attention`: `target.attend(w)`, `(...)w` / `"..."w` (w = `+..`, `-..` or a number) or `word+..`/`word-..`,
    /// without whitespace before the weight.
    fn attention(&self, p: usize) -> Matched<Vec<Node>> {
        self.memoized(Rule::Attention, p, || {
            // explicit
            if let Some((e, target)) = self.target(p)? {
                if let Some(weight) = self
                    .lit(e, ".attend")
                    .and_then(|e| self.lit(e, "("))
                    .and_then(|e| self.weight_operator(e, true))
                    .and_then(|(e, w)| self.lit(e, ")").map(|e| (e, w)))
                {
                    let (e, w) = weight;
                    return Ok(Some((e, vec![Node::Attention(w, target)])));
                }
            }
            // implicit, quoted or parenthesized target
            let grouped = match self.quoted_fragment(p)? {
                Some(m) => Some(m),
                None => self.paren(p)?,
            };
            if let Some((e, target)) = grouped {
                if !self.at(e).is_some_and(pp_space) {
                    if let Some((e, w)) = self.weight_operator(e, true) {
                        return Ok(Some((e, vec![Node::Attention(w, target)])));
                    }
                }
            }
            // implicit, bare word
            if let Some((e, word)) = self.word(p) {
                if !self.at(e).is_some_and(pp_space) {
                    if let Some((e, w)) = self.weight_operator(e, false) {
                        let target = vec![Node::Frag(unescape(&word))];
                        return Ok(Some((e, vec![Node::Attention(w, target)])));
                    }
                }
            }
            Ok(None)
        })
    }

    /// `cross_attention_substitute`: `target.swap(replacement[, options])`.
    fn swap(&self, p: usize) -> Matched<Vec<Node>> {
        self.memoized(Rule::Swap, p, || {
            let Some((e, target)) = self.target(p)? else {
                return Ok(None);
            };
            let Some(e) = self.lit(e, ".swap").and_then(|e| self.lit(e, "(")) else {
                return Ok(None);
            };
            let Some((mut e, replacement)) = self.fragments(e, false)? else {
                return Ok(None);
            };
            if let Some(after_comma) = self.lit(e, ",") {
                e = self.options(after_comma).0;
            }
            Ok(self
                .lit(e, ")")
                .map(|e| (e, vec![Node::Swap(target, replacement)])))
        })
    }

    /// `withLora(name[, weight])` / `useLora(...)`.
    fn lora(&self, p: usize) -> Option<usize> {
        let e = self.lit(p, "useLora").or_else(|| self.lit(p, "withLora"))?;
        let e = self.lit(e, "(")?;
        let (mut e, _) = self.keyword(e)?;
        if let Some((after, _)) = self.lit(e, ",").and_then(|c| self.number(c)) {
            e = after;
        }
        self.lit(e, ")")
    }

    /// One option: `key=value`, a number or a flag.
    fn option(&self, p: usize) -> Option<(usize, Opt)> {
        if let Some((e, key)) = self.keyword(p) {
            if let Some(eq) = self.lit(e, "=") {
                if let Some((e, _)) = self.number(eq) {
                    return Some((e, Opt::Keyword(key)));
                }
                if let Some((e, _)) = self.keyword(eq) {
                    return Some((e, Opt::Keyword(key)));
                }
            }
        }
        if let Some((e, v)) = self.number(p) {
            return Some((e, Opt::Number(v)));
        }
        self.keyword(p).map(|(e, k)| (e, Opt::Keyword(k)))
    }

    /// A possibly empty comma-separated list of options.
    fn options(&self, p: usize) -> (usize, Vec<Opt>) {
        let mut out = Vec::new();
        let Some((mut e, first)) = self.option(p) else {
            return (p, out);
        };
        out.push(first);
        while let Some((next, o)) = self.lit(e, ",").and_then(|c| self.option(c)) {
            out.push(o);
            e = next;
        }
        (e, out)
    }

    /// Fragments: a run of loras, attentions, swaps, parenthesized and quoted fragments, words and (when allowed)
    /// commas and periods.
    fn fragments(&self, p: usize, commas: bool) -> Matched<Vec<Node>> {
        let rule = if commas {
            Rule::FragsWithCommas
        } else {
            Rule::FragsWithoutCommas
        };
        self.memoized(rule, p, || {
            let mut nodes = Vec::new();
            let mut p = p;
            loop {
                if let Some(e) = self.lora(p) {
                    nodes.push(Node::Lora);
                    p = e;
                    continue;
                }
                let mut matched = None;
                for f in [
                    Self::attention,
                    Self::swap,
                    Self::paren,
                    Self::quoted_fragment,
                ] {
                    if let Some(m) = f(self, p)? {
                        matched = Some(m);
                        break;
                    }
                }
                if let Some((e, n)) = matched {
                    nodes.extend(n);
                    p = e;
                    continue;
                }
                if let Some((e, w)) = self.word(p) {
                    nodes.push(Node::Frag(unescape(&w)));
                    p = e;
                    continue;
                }
                if commas {
                    let q = self.ws(p);
                    if let Some(c @ (',' | '.')) = self.at(q) {
                        nodes.push(Node::Frag(c.to_string()));
                        p = q + 1;
                        continue;
                    }
                }
                break;
            }
            Ok(Some((p, nodes)))
        })
    }

    /// `prompt`: the top level, where anything else is a whitespace-separated free word.
    fn prompt(&self, p: usize) -> Result<(usize, Vec<Node>), EngineError> {
        let mut nodes = Vec::new();
        let mut p = p;
        loop {
            if let Some((e, n)) = self.swap(p)? {
                nodes.extend(n);
                p = e;
                continue;
            }
            if let Some(e) = self.lora(p) {
                nodes.push(Node::Lora);
                p = e;
                continue;
            }
            let mut matched = None;
            for f in [Self::attention, Self::quoted_fragment, Self::paren] {
                if let Some(m) = f(self, p)? {
                    matched = Some(m);
                    break;
                }
            }
            if let Some((e, n)) = matched {
                nodes.extend(n);
                p = e;
                continue;
            }
            let mut i = p;
            while self.at(i).is_some_and(|c| !ascii_space(c)) {
                i += 1;
            }
            if i > p {
                nodes.push(Node::Frag(unescape(&self.text(p, i))));
                p = i;
                continue;
            }
            let w = self.ws(p);
            if w > p {
                p = w;
                continue;
            }
            break;
        }
        Ok((p, nodes))
    }

    /// `(item, item, ...).op(options)` for `.blend` or `.and`/`.add`.
    fn operator(&self, p: usize, ops: &[&str]) -> Result<Option<(usize, Operator)>, EngineError> {
        let Some(mut e) = self.lit(p, "(") else {
            return Ok(None);
        };
        let mut items = Vec::new();
        loop {
            let start = if items.is_empty() {
                Some(e)
            } else {
                self.lit(e, ",")
            };
            let Some(start) = start else { break };
            let item = match self.target(start)? {
                Some(m) => Some(m),
                None => self.quoted_prompt(start)?,
            };
            match item {
                Some((after, nodes)) => {
                    items.push(nodes);
                    e = after;
                }
                None if items.is_empty() => return Ok(None),
                None => break,
            }
        }
        let Some(e) = self.lit(e, ")") else {
            return Ok(None);
        };
        let Some(e) = ops.iter().find_map(|op| self.lit(e, op)) else {
            return Ok(None);
        };
        let Some(e) = self.lit(e, "(") else {
            return Ok(None);
        };
        let (e, options) = self.options(e);
        Ok(self.lit(e, ")").map(|e| (e, Operator { items, options })))
    }

    fn root(&self) -> Result<(Vec<RootPart>, Vec<f64>), EngineError> {
        // An explicit conjunction; whatever follows it is ignored, as in compel.
        if let Some((_, op)) = self.operator(0, &[".and", ".add"])? {
            let weights = op
                .options
                .iter()
                .map(Opt::weight)
                .collect::<Result<Vec<_>, _>>()?;
            let weights = if weights.is_empty() {
                vec![1.0; op.items.len()]
            } else {
                weights
            };
            if weights.len() != op.items.len() {
                return Err(invalid(format!(
                    ".and() has {} prompts but {} weights",
                    op.items.len(),
                    weights.len()
                )));
            }
            let parts = op.items.into_iter().map(RootPart::Prompt).collect();
            return Ok((parts, weights));
        }
        let mut p = 0;
        while let Some(e) = self.lora(p) {
            p = e;
        }
        let part = match self.operator(p, &[".blend"])? {
            Some((e, op)) => {
                p = e;
                let mut options = op.options;
                let mut normalize = true;
                if matches!(options.last(), Some(Opt::Keyword(k)) if k == "no_normalize") {
                    normalize = false;
                    options.pop();
                }
                let weights = options
                    .iter()
                    .map(Opt::weight)
                    .collect::<Result<Vec<_>, _>>()?;
                let weights = if weights.is_empty() {
                    vec![1.0; op.items.len()]
                } else {
                    weights
                };
                if weights.len() != op.items.len() {
                    return Err(invalid(format!(
                        ".blend() has {} prompts but {} weights",
                        op.items.len(),
                        weights.len()
                    )));
                }
                RootPart::Blend {
                    prompts: op.items,
                    weights,
                    normalize,
                }
            }
            None => {
                let (e, nodes) = self.prompt(p)?;
                p = e;
                RootPart::Prompt(nodes)
            }
        };
        while let Some(e) = self.lora(p) {
            p = e;
        }
        if !self.at_end(p) {
            let q = self.ws(p);
            return Err(invalid(format!(
                "expected the end of the prompt at character {q}, found '{}'",
                self.text(q, (q + 10).min(self.s.len()))
            )));
        }
        Ok((vec![part], vec![1.0]))
    }
}

/// pyparsing's unquoting: `\t` `\n` `\f` `\r`, octal, `\0`, `\xHH` and `\uHHHH` escapes become characters, then
/// `\"` becomes `"`.
fn unquote(raw: &[char]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let hex = |from: usize, n: usize| -> Option<char> {
        let digits: String = raw.get(from..from + n)?.iter().collect();
        if digits.chars().all(|c| c.is_ascii_hexdigit()) {
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
        } else {
            None
        }
    };
    while i < raw.len() {
        let c = raw[i];
        if c == '\\' {
            let next = raw.get(i + 1).copied();
            let ws = match next {
                Some('t') => Some('\t'),
                Some('n') => Some('\n'),
                Some('f') => Some('\u{c}'),
                Some('r') => Some('\r'),
                _ => None,
            };
            if let Some(w) = ws {
                out.push(w);
                i += 2;
                continue;
            }
            let octal = raw
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| ('0'..='7').contains(c)));
            if let Some(d) = octal {
                let v = d.iter().fold(0u32, |a, c| a * 8 + (*c as u32 - '0' as u32));
                if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                    i += 4;
                    continue;
                }
            }
            if next == Some('0') {
                out.push('\0');
                i += 2;
                continue;
            }
            if next == Some('x') {
                if let Some(ch) = hex(i + 2, 2) {
                    out.push(ch);
                    i += 4;
                    continue;
                }
            }
            if next == Some('u') {
                if let Some(ch) = hex(i + 2, 4) {
                    out.push(ch);
                    i += 6;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out.replace("\\\"", "\"")
}

/// Flattens nodes into parts, accumulating attention weights.
fn flatten(nodes: &[Node], scale: f64, out: &mut Vec<Part>) -> Result<(), EngineError> {
    for node in nodes {
        match node {
            Node::Frag(text) => out.push(Part::Text(Fragment {
                text: unescape(text),
                weight: scale,
            })),
            Node::Attention(w, children) => flatten(children, scale * w, out)?,
            Node::Swap(original, edited) => {
                let side = |nodes: &[Node]| -> Result<Vec<Fragment>, EngineError> {
                    let mut parts = Vec::new();
                    flatten(nodes, scale, &mut parts)?;
                    let mut fragments = parts
                        .into_iter()
                        .map(|p| match p {
                            Part::Text(f) => Ok(f),
                            Part::Swap { .. } => Err(invalid("a .swap() inside a .swap()")),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if fragments.is_empty() {
                        fragments.push(Fragment {
                            text: String::new(),
                            weight: 1.0,
                        });
                    }
                    Ok(fragments)
                };
                out.push(Part::Swap {
                    original: side(original)?,
                    edited: side(edited)?,
                });
            }
            Node::Lora => {}
        }
    }
    Ok(())
}

/// Joins neighbouring fragments of equal weight with a space.
fn fuse_fragments(fragments: Vec<Fragment>) -> Vec<Fragment> {
    let parts = fuse(fragments.into_iter().map(Part::Text).collect());
    parts
        .into_iter()
        .filter_map(|p| match p {
            Part::Text(f) => Some(f),
            Part::Swap { .. } => None,
        })
        .collect()
}

fn fuse(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    for part in parts {
        match part {
            Part::Swap { original, edited } => out.push(Part::Swap {
                original: fuse_fragments(original),
                edited: fuse_fragments(edited),
            }),
            Part::Text(f) => match out.last_mut() {
                Some(Part::Text(last)) if last.weight == f.weight => {
                    last.text = unescape(&format!("{} {}", last.text, f.text));
                }
                _ => out.push(Part::Text(f)),
            },
        }
    }
    out
}

fn flat_prompt(nodes: &[Node]) -> Result<Option<FlatPrompt>, EngineError> {
    let mut parts = Vec::new();
    flatten(nodes, 1.0, &mut parts)?;
    let parts = fuse(parts);
    Ok((!parts.is_empty()).then_some(FlatPrompt { parts }))
}

/// Parses a prompt with compel's syntax.
pub fn parse(prompt: &str) -> Result<Conjunction, EngineError> {
    // compel puts a space after every comma that is followed by something else than whitespace.
    let mut text = String::with_capacity(prompt.len() + 8);
    let mut chars = prompt.chars().peekable();
    while let Some(c) = chars.next() {
        text.push(c);
        if c == ',' {
            if let Some(&n) = chars.peek() {
                if !py_space(n) {
                    text.push(' ');
                    text.push(n);
                    chars.next();
                }
            }
        }
    }
    if text.chars().all(py_space) {
        return Ok(Conjunction {
            items: vec![Item::Prompt(FlatPrompt {
                parts: vec![Part::Text(Fragment {
                    text: String::new(),
                    weight: 1.0,
                })],
            })],
            weights: vec![1.0],
        });
    }
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(invalid(format!(
                        "more than {MAX_NESTING} nested parentheses"
                    )));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let (parts, weights) = Parser::new(&text).root()?;
    let mut items = Vec::new();
    let mut kept = Vec::new();
    for (part, weight) in parts.into_iter().zip(weights) {
        match part {
            RootPart::Prompt(nodes) => {
                if let Some(p) = flat_prompt(&nodes)? {
                    items.push(Item::Prompt(p));
                    kept.push(weight);
                }
            }
            RootPart::Blend {
                prompts,
                weights: blend_weights,
                normalize,
            } => {
                let mut flat = Vec::new();
                for nodes in &prompts {
                    if let Some(p) = flat_prompt(nodes)? {
                        if p.parts.iter().any(|x| matches!(x, Part::Swap { .. })) {
                            return Err(invalid("a .swap() cannot be part of a .blend()"));
                        }
                        flat.push(p);
                    }
                }
                if flat.len() != blend_weights.len() {
                    return Err(invalid(format!(
                        ".blend() has {} non-empty prompts but {} weights",
                        flat.len(),
                        blend_weights.len()
                    )));
                }
                items.push(Item::Blend {
                    prompts: flat,
                    weights: blend_weights,
                    normalize,
                });
                kept.push(weight);
            }
        }
    }
    Ok(Conjunction {
        items,
        weights: kept,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding

/// Encodes parsed prompts with one tokenizer and text encoder (compel's `EmbeddingsProvider`: for SD 1.x/2.x the
/// last kept layer with the final layer norm; for SDXL, [`PromptEncoder::penultimate`], the hidden states entering
/// the last kept layer without it).
pub struct PromptEncoder<'a> {
    tokenizer: &'a ClipTokenizer,
    encoder: &'a ClipTextTransformer,
    textual_inversions: Option<&'a TiVocabulary>,
    skipped_layers: usize,
    penultimate: bool,
    empty: RefCell<Option<Vec<f32>>>,
}

/// A conditioning under construction: (rows of `dim` values), f32.
struct Rows {
    values: Vec<f32>,
    len: usize,
}

impl<'a> PromptEncoder<'a> {
    /// An encoder dropping the last `skipped_layers` layers of the text encoder.
    pub fn new(
        tokenizer: &'a ClipTokenizer,
        encoder: &'a ClipTextTransformer,
        skipped_layers: usize,
    ) -> Self {
        Self {
            tokenizer,
            encoder,
            textual_inversions: None,
            skipped_layers,
            penultimate: false,
            empty: RefCell::new(None),
        }
    }

    /// Returns compel's `PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED` (SDXL) instead of the normed last layer.
    pub fn penultimate(mut self) -> Self {
        self.penultimate = true;
        self
    }

    /// Applies textual-inversion embeddings: their triggers tokenize to their vectors (compel with InvokeAI's
    /// `TextualInversionManager`). Weights apply to their tokens like to any others.
    pub fn with_textual_inversions(mut self, vocabulary: &'a TiVocabulary) -> Self {
        self.textual_inversions = Some(vocabulary);
        self
    }

    /// The token ids of one fragment (compel's `get_token_ids` without BOS/EOS).
    fn tokenize(&self, text: &str) -> Vec<u32> {
        match self.textual_inversions {
            Some(ti) => ti.tokenize(self.tokenizer, text),
            None => self.tokenizer.encode(text),
        }
    }

    fn window_len(&self) -> usize {
        self.tokenizer.max_length()
    }

    fn dim(&self) -> usize {
        self.encoder.config().hidden_size
    }

    /// The windows through the encoder: (1, 77·k, dim) in f32.
    fn run(
        &self,
        windows: &[Vec<u32>],
        masks: Option<&[Vec<bool>]>,
    ) -> Result<Tensor, EngineError> {
        let extra = self.textual_inversions.and_then(TiVocabulary::rows);
        let out = self
            .encoder
            .forward_extended(windows, masks, self.skipped_layers, extra)?;
        let states = if self.penultimate {
            out.penultimate_hidden_state
        } else {
            out.last_hidden_state
        };
        let (k, len, dim) = states.dims3()?;
        Ok(states.reshape((1, k * len, dim))?.to_dtype(DType::F32)?)
    }

    fn run_rows(
        &self,
        windows: &[Vec<u32>],
        masks: Option<&[Vec<bool>]>,
    ) -> Result<Rows, EngineError> {
        let t = self.run(windows, masks)?;
        Ok(Rows {
            values: t.flatten_all()?.to_vec1::<f32>()?,
            len: windows.len() * self.window_len(),
        })
    }

    /// The encoding of the empty window `[BOS] [EOS] pad...` (compel's `empty_z`).
    fn empty(&self) -> Result<Vec<f32>, EngineError> {
        if let Some(e) = self.empty.borrow().as_ref() {
            return Ok(e.clone());
        }
        let e = self.run_rows(&[self.tokenizer.window(&[])], None)?.values;
        *self.empty.borrow_mut() = Some(e.clone());
        Ok(e)
    }

    /// Pads with empty windows to `len` rows.
    fn pad(&self, mut rows: Rows, len: usize) -> Result<Rows, EngineError> {
        if rows.len < len {
            let empty = self.empty()?;
            while rows.len < len {
                rows.values.extend_from_slice(&empty);
                rows.len += self.window_len();
            }
        }
        Ok(rows)
    }

    /// Encodes a parsed prompt: (1, 77·k, dim) in f32.
    pub fn encode(&self, conjunction: &Conjunction) -> Result<Tensor, EngineError> {
        if let Some(texts) = conjunction.plain_text() {
            // compel tokenizes each fragment separately; with weight 1 everywhere nothing else happens.
            let ids: Vec<u32> = texts.iter().flat_map(|t| self.tokenize(t)).collect();
            return self.run(&self.tokenizer.windows_of_ids(&ids), None);
        }
        if conjunction.items.is_empty() {
            return Err(invalid("the prompt has no content"));
        }
        let mut out: Vec<f32> = Vec::new();
        let mut total = 0;
        for (item, &weight) in conjunction.items.iter().zip(&conjunction.weights) {
            let mut c = match item {
                Item::Prompt(p) => self.encode_flat(p)?,
                Item::Blend {
                    prompts,
                    weights,
                    normalize,
                } => self.blend(prompts, weights, *normalize)?,
            };
            if weight != 1.0 {
                // compel's conditioning of "" (one empty window), padded like `c`.
                let e = Rows {
                    values: self.empty()?,
                    len: self.window_len(),
                };
                let len = c.len.max(e.len);
                let e = self.pad(e, len)?;
                c = self.pad(c, len)?;
                let w = weight as f32;
                for (v, ev) in c.values.iter_mut().zip(&e.values) {
                    *v = ev + (*v - ev) * w;
                }
            }
            total += c.len;
            out.extend(c.values);
        }
        Ok(Tensor::from_vec(
            out,
            (1, total, self.dim()),
            self.encoder.device(),
        )?)
    }

    fn blend(
        &self,
        prompts: &[FlatPrompt],
        weights: &[f64],
        normalize: bool,
    ) -> Result<Rows, EngineError> {
        let conds = prompts
            .iter()
            .map(|p| self.encode_flat(p))
            .collect::<Result<Vec<_>, _>>()?;
        let len = conds.iter().map(|c| c.len).max().unwrap_or(0);
        let conds = conds
            .into_iter()
            .map(|c| self.pad(c, len))
            .collect::<Result<Vec<_>, _>>()?;
        let mut w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        if normalize {
            let sum: f32 = w.iter().sum();
            for x in &mut w {
                *x /= sum;
            }
        }
        Ok(Rows {
            values: weighted_sum(&conds, &w),
            len,
        })
    }

    /// One flattened prompt; with `.swap()`, the original side padded to the edited side's length.
    fn encode_flat(&self, prompt: &FlatPrompt) -> Result<Rows, EngineError> {
        let has_swap = prompt.parts.iter().any(|p| matches!(p, Part::Swap { .. }));
        let side = |edited: bool| -> Vec<Fragment> {
            prompt
                .parts
                .iter()
                .flat_map(|p| match p {
                    Part::Text(f) => vec![f.clone()],
                    Part::Swap {
                        original,
                        edited: e,
                    } => {
                        if edited {
                            e.clone()
                        } else {
                            original.clone()
                        }
                    }
                })
                .collect()
        };
        let original = side(false);
        let rows = self.encode_fragments(&original)?;
        if !has_swap {
            return Ok(rows);
        }
        let edited_ids: Vec<u32> = side(true)
            .iter()
            .flat_map(|f| self.tokenize(&f.text))
            .collect();
        let edited_len = self.tokenizer.chunk_ranges(&edited_ids).len() * self.window_len();
        self.pad(rows, edited_len)
    }

    /// compel's `get_embeddings_for_weighted_prompt_fragments` for one prompt.
    fn encode_fragments(&self, fragments: &[Fragment]) -> Result<Rows, EngineError> {
        let n = self.window_len();
        let per_fragment: Vec<Vec<u32>> =
            fragments.iter().map(|f| self.tokenize(&f.text)).collect();
        let mut ids = Vec::new();
        let mut token_weights = Vec::new();
        for (f, t) in fragments.iter().zip(&per_fragment) {
            ids.extend_from_slice(t);
            token_weights.extend(std::iter::repeat_n(f.weight as f32, t.len()));
        }
        let mut windows = Vec::new();
        let mut weights = Vec::new();
        for r in self.tokenizer.chunk_ranges(&ids) {
            windows.push(self.tokenizer.window(&ids[r.clone()]));
            let mut w = vec![1.0f32; n];
            w[1..1 + r.len()].copy_from_slice(&token_weights[r]);
            weights.push(w);
        }
        let weights: Vec<f32> = weights.concat();
        let base = self.weighted(&windows, &weights, None)?;
        let downweighted: Vec<usize> = (0..fragments.len())
            .filter(|&i| fragments[i].weight < 1.0)
            .collect();
        if downweighted.is_empty() {
            return Ok(base);
        }
        let flat_ids: Vec<u32> = windows.concat();
        let ranges = self.fragment_ranges(&flat_ids, &per_fragment, fragments)?;
        let mut variants = vec![base];
        let mut lerp = vec![1.0f64];
        for i in downweighted {
            let Some((start, end)) = ranges[i] else {
                return Err(invalid(format!(
                    "the down-weighted fragment '{}' has no tokens",
                    fragments[i].text
                )));
            };
            let mut mask = vec![true; flat_ids.len()];
            mask[start..=end].fill(false);
            for (j, m) in mask.iter_mut().enumerate() {
                if j % n == 0 || j % n == n - 1 {
                    *m = true;
                }
            }
            let masks: Vec<Vec<bool>> = mask.chunks(n).map(<[bool]>::to_vec).collect();
            variants.push(self.weighted(&windows, &weights, Some(&masks))?);
            let w = fragments[i].weight.max(1e-5);
            lerp.push(((1.0 - w) * std::f64::consts::PI / 2.0).tan());
        }
        let lerp: Vec<f32> = lerp.iter().map(|&w| w as f32).collect();
        let sum: f32 = lerp.iter().sum();
        let lerp: Vec<f32> = lerp.iter().map(|w| w / sum).collect();
        let len = variants[0].len;
        Ok(Rows {
            values: weighted_sum(&variants, &lerp),
            len,
        })
    }

    /// compel's `build_weighted_embedding_tensor`: per window, tokens of weight ≠ 1 are moved away from the
    /// empty encoding: `empty + (z − empty)·w`.
    fn weighted(
        &self,
        windows: &[Vec<u32>],
        weights: &[f32],
        masks: Option<&[Vec<bool>]>,
    ) -> Result<Rows, EngineError> {
        let mut rows = self.run_rows(windows, masks)?;
        if weights.iter().all(|&w| w == 1.0) {
            return Ok(rows);
        }
        let dim = self.dim();
        let n = self.window_len();
        let empty = self.empty()?;
        for (window, ws) in weights.chunks(n).enumerate() {
            if ws.iter().all(|&w| w == 1.0) {
                continue;
            }
            for (pos, &w) in ws.iter().enumerate() {
                if w == 1.0 {
                    continue;
                }
                let row = (window * n + pos) * dim;
                let e = &empty[pos * dim..(pos + 1) * dim];
                for (v, ev) in rows.values[row..row + dim].iter_mut().zip(e) {
                    *v = ev + (*v - ev) * w;
                }
            }
        }
        Ok(rows)
    }

    /// compel's `_get_token_ranges_for_fragments`: where each fragment's tokens sit in the windows (inclusive
    /// ranges, skipping the BOS/EOS/pad tokens between windows).
    fn fragment_ranges(
        &self,
        ids: &[u32],
        per_fragment: &[Vec<u32>],
        fragments: &[Fragment],
    ) -> Result<Vec<Option<(usize, usize)>>, EngineError> {
        let (bos, eos, pad) = (
            self.tokenizer.bos_id(),
            self.tokenizer.eos_id(),
            self.tokenizer.pad_id(),
        );
        let last = ids.len().saturating_sub(1);
        let mut start = 0;
        let mut out = Vec::new();
        for (f, tokens) in fragments.iter().zip(per_fragment) {
            let Some(&first) = tokens.first() else {
                out.push(None);
                continue;
            };
            let lost = || {
                invalid(format!(
                    "could not find the tokens of fragment '{}'",
                    f.text
                ))
            };
            loop {
                if start >= last {
                    return Err(lost());
                }
                if ids[start] == first {
                    break;
                }
                start += 1;
            }
            let mut end = start;
            let mut matched = 0;
            loop {
                if end >= last {
                    return Err(lost());
                }
                if ids[end] == tokens[matched] {
                    matched += 1;
                    if matched == tokens.len() {
                        break;
                    }
                    end += 1;
                } else if ids[end] == eos || ids[end] == pad || ids[end] == bos {
                    end += 1;
                } else {
                    return Err(lost());
                }
            }
            out.push(Some((start, end)));
            start = end + 1;
        }
        Ok(out)
    }
}

/// Σ wᵢ·xᵢ elementwise, in order.
fn weighted_sum(rows: &[Rows], weights: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.first().map_or(0, |r| r.values.len())];
    for (r, &w) in rows.iter().zip(weights) {
        for (o, v) in out.iter_mut().zip(&r.values) {
            *o += v * w;
        }
    }
    out
}

/// Parses `prompt` and encodes it (§10.2): (1, 77·k, dim) in f32.
pub fn encode(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextTransformer,
    prompt: &str,
    skipped_layers: usize,
) -> Result<Tensor, EngineError> {
    let conjunction = parse(prompt)?;
    PromptEncoder::new(tokenizer, encoder, skipped_layers).encode(&conjunction)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(prompt: &str) -> Vec<(String, f64)> {
        let c = parse(prompt).unwrap();
        assert_eq!(c.items.len(), 1, "{prompt}: {c:?}");
        match &c.items[0] {
            Item::Prompt(p) => p
                .parts
                .iter()
                .map(|x| match x {
                    Part::Text(f) => (f.text.clone(), f.weight),
                    Part::Swap { .. } => ("<swap>".into(), 0.0),
                })
                .collect(),
            Item::Blend { .. } => panic!("blend"),
        }
    }

    fn f(text: &str, weight: f64) -> (String, f64) {
        (text.to_string(), weight)
    }

    #[test]
    fn weights() {
        assert_eq!(
            frags("a cat+ on a mat"),
            vec![f("a", 1.0), f("cat", 1.1), f("on a mat", 1.0)]
        );
        assert_eq!(
            frags("(a red hat)1.3 dog"),
            vec![f("a red hat", 1.3), f("dog", 1.0)]
        );
        assert_eq!(
            frags("a cat--"),
            vec![f("a", 1.0), f("cat", 0.9f64.powf(2.0))]
        );
        assert_eq!(
            frags("a ((cat)+ hat)1.5 x"),
            vec![f("a", 1.0), f("cat", 1.5 * 1.1), f("hat", 1.5), f("x", 1.0)]
        );
        assert_eq!(frags("(a, b)1.1"), vec![f("a , b", 1.1)]);
        assert_eq!(frags("cat+-"), vec![f("cat", 1.1), f("-", 1.0)]);
        assert_eq!(frags("(a)-0.5 b"), vec![f("a", 0.9), f("0.5 b", 1.0)]);
        assert_eq!(frags("(cat)1.5e2"), vec![f("cat", 1.5), f("e2", 1.0)]);
        assert_eq!(frags("(x)1.1 (y)1.1"), vec![f("x y", 1.1)]);
    }

    #[test]
    fn plain_text_and_fallbacks() {
        for (prompt, text) in [
            ("a,b.c  d", "a, b.c d"),
            ("(unclosed", "(unclosed"),
            ("close)", "close)"),
            ("a + b", "a + b"),
            ("(a + b)", "(a + b)"),
            ("x-ray cat", "x-ray cat"),
            ("a\\(cat\\) x", "a(cat) x"),
            ("a \"b", "a \"b"),
            ("foo(bar)", "foo(bar)"),
            ("a.and()", "a.and()"),
            ("a,,b", "a, ,b"),
            ("(cat)", "cat"),
            ("withLora(foo, 0.5) cat", "cat"),
        ] {
            assert_eq!(frags(prompt), vec![f(text, 1.0)], "{prompt}");
        }
    }

    #[test]
    fn conjunctions_and_blends() {
        let c = parse("(\"a\", \"b\").and(0.5, 1.5) ignored").unwrap();
        assert_eq!(c.weights, vec![0.5, 1.5]);
        assert_eq!(c.items.len(), 2);
        let c = parse("(\"a cat\", \"a dog\").blend(0.7, 0.3)").unwrap();
        match &c.items[0] {
            Item::Blend {
                prompts,
                weights,
                normalize,
            } => {
                assert_eq!(prompts.len(), 2);
                assert_eq!(weights, &vec![0.7, 0.3]);
                assert!(normalize);
            }
            Item::Prompt(_) => panic!("not a blend"),
        }
        let c = parse("(a, b).blend(1, 2, no_normalize)").unwrap();
        assert!(matches!(
            &c.items[0],
            Item::Blend {
                normalize: false,
                ..
            }
        ));
    }

    #[test]
    fn errors_not_panics() {
        for bad in [
            "(\"a\", \"b\").blend(1,1) x",
            "(\"a\",\"b\").blend(1)",
            "(\"a\", \"b\").and(1)",
            "(a, b).blend(x, y)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("()").unwrap().items.is_empty());
        // Deep or unbalanced nesting stays fast and never panics.
        let deep = "(".repeat(30) + "x" + &")1.1".repeat(30);
        assert!(parse(&deep).is_ok());
        assert!(parse(&"(".repeat(1000)).is_err());
        let unbalanced = "((((((((((((((((((((a\"b\\\"";
        assert!(parse(unbalanced).is_ok());
        for s in [
            "\"", "\\", "+", "-", ".", ",", "(", ")", "\"\\\"", "\u{b}", "a\u{c}b", ").and(",
            "(.blend(",
        ] {
            let _ = parse(s);
        }
    }
}
