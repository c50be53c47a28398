//! compel parity (`tests/fixtures/compel.json`, written by `tools/reference/make_compel_fixtures.py` with compel
//! configured as InvokeAI's `compel` node configures it, on the tiny models `write_tiny_sd` writes here; no Python
//! needed):
//!
//! - the parser gives compel's structure (fragments and weights, conjunctions, blends, swaps) for a corpus of
//!   hand-written and random prompts, and fails exactly where compel raises;
//! - the conditioning of weighted prompts (`+`/`-`, numeric weights, down-weighting, long prompts, `.and()`,
//!   `.blend()`, `.swap()`, clip skip, SD 2.x's `!` padding) is within 1e-4 of compel's
//!   (max|ours − compel| / max|compel|);
//! - prompts without syntax still encode bit for bit as plain text.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::relative_error;
use std::sync::OnceLock;

use atelier_engine::candle::{DType, Device};
use atelier_engine::pipeline::Sd;
use atelier_engine::prompt::{parse, Conjunction, Fragment, Item, Part};
use atelier_engine::tiny::{write_tiny_sd, Family};
use serde::Deserialize;
use serde_json::{json, Value};

const RELATIVE_TOLERANCE: f64 = 1e-4;
const SEED: u64 = 1234;

#[derive(Deserialize)]
struct Fixtures {
    seed: u64,
    parse: Vec<ParseCase>,
    encode: Vec<EncodeCase>,
}

#[derive(Deserialize)]
struct ParseCase {
    prompt: String,
    result: Value,
}

#[derive(Deserialize)]
struct EncodeCase {
    model: String,
    prompt: String,
    skipped_layers: usize,
    shape: Vec<usize>,
    values: Vec<f32>,
}

struct Models {
    _dir: tempfile::TempDir,
    sd1: Sd,
    sd2: Sd,
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, family| {
            let path = dir.path().join(name);
            write_tiny_sd(&path, family, SEED).unwrap();
            Sd::load(&path, &Device::Cpu, DType::F32).unwrap()
        };
        Models {
            sd1: load("sd1", Family::Sd1),
            sd2: load("sd2", Family::Sd2),
            _dir: dir,
        }
    })
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let path = format!("{}/tests/fixtures/compel.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let f: Fixtures = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(f.seed, SEED, "fixtures made from another seed");
        f
    })
}

fn fragments(list: &[Fragment]) -> Value {
    Value::Array(list.iter().map(|f| json!([f.text, f.weight])).collect())
}

fn parts(list: &[Part]) -> Value {
    Value::Array(
        list.iter()
            .map(|p| match p {
                Part::Text(f) => json!([f.text, f.weight]),
                Part::Swap { original, edited } => {
                    json!({"swap": [fragments(original), fragments(edited)]})
                }
            })
            .collect(),
    )
}

/// The fixture's JSON shape of a parsed prompt.
fn describe(c: &Conjunction) -> Value {
    let items: Vec<Value> = c
        .items
        .iter()
        .map(|item| match item {
            Item::Prompt(p) => json!({"prompt": parts(&p.parts)}),
            Item::Blend {
                prompts,
                weights,
                normalize,
            } => json!({
                "blend": prompts.iter().map(|p| parts(&p.parts)).collect::<Vec<_>>(),
                "weights": weights,
                "normalize": normalize,
            }),
        })
        .collect();
    json!({"items": items, "weights": c.weights})
}

/// JSON equality with numbers equal to 1e-12 relative (serde_json's default float parsing is not always correctly
/// rounded, so `1.6500000000000001` may read back as `1.65`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn parser_matches_compel() {
    let f = fixtures();
    assert!(f.parse.len() > 100);
    let mut failures = Vec::new();
    for case in &f.parse {
        let ours = match parse(&case.prompt) {
            Ok(c) => describe(&c),
            Err(_) => json!("error"),
        };
        if !same(&ours, &case.result) {
            failures.push(format!(
                "{:?}\n  ours:   {ours}\n  compel: {}",
                case.prompt, case.result
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts parse differently:\n{}",
        failures.len(),
        f.parse.len(),
        failures.join("\n")
    );
}

#[test]
fn conditioning_matches_compel() {
    let m = models();
    let mut worst = 0.0f64;
    for case in &fixtures().encode {
        let sd = match case.model.as_str() {
            "sd1" => &m.sd1,
            "sd2" => &m.sd2,
            other => panic!("unknown model {other}"),
        };
        let t = sd
            .encode_prompt(&case.prompt, case.skipped_layers)
            .unwrap_or_else(|e| panic!("{:?}: {e}", case.prompt));
        assert_eq!(t.dims(), case.shape.as_slice(), "{:?}", case.prompt);
        let ours = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = relative_error(&ours, &case.values);
        eprintln!(
            "{} {:?} skip {}: {err:.2e}",
            case.model, case.prompt, case.skipped_layers
        );
        assert!(
            err <= RELATIVE_TOLERANCE,
            "{} {:?}: relative error {err:.2e}",
            case.model,
            case.prompt
        );
        worst = worst.max(err);
    }
    eprintln!("worst relative error {worst:.2e}");
}

#[test]
fn plain_prompts_encode_as_plain_text() {
    let m = models();
    for sd in [&m.sd1, &m.sd2] {
        for prompt in [
            "a photo of a cat",
            "A  Painting of the RED house,\twith a tree!",
            "",
            &"a red cat sitting on the blue house. ".repeat(12),
        ] {
            let windows = sd.tokenizer().unwrap().windows(prompt);
            let (k, len) = (windows.len(), windows[0].len());
            let plain = sd
                .text_encoder()
                .unwrap()
                .forward(&windows, 0)
                .unwrap()
                .last_hidden_state
                .reshape((1, k * len, sd.conditioning_dim()))
                .unwrap();
            let ours = sd.encode_prompt(prompt, 0).unwrap();
            let a = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len(),
                "{prompt:?}"
            );
        }
    }
}

#[test]
fn malformed_prompts_never_panic() {
    let m = models();
    for prompt in [
        "(",
        ")",
        "\"",
        "\\",
        "((a)",
        "(a))1.2",
        "a+++++++++++",
        "(a)0",
        "(a)-1.5",
        "(\"\")0.5 b",
        "(\"a\", \"b\").blend(1) x",
        "().and()",
        "()",
        "withLora(x)",
        "\u{b}",
        "a.swap(b.swap(c))",
        "(a.swap(b), c).blend(1, 1)",
        "(a)1e400",
    ] {
        // Either an error or a conditioning; never a panic.
        if let Ok(t) = m.sd1.encode_prompt(prompt, 0) {
            assert_eq!(t.dims()[2], 32, "{prompt:?}");
        }
    }
}
