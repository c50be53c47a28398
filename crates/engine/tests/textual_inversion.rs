//! Textual-inversion parity (`tests/fixtures/textual_inversion.json`, written by
//! `tools/reference/make_ti_fixtures.py`: random embeddings applied as InvokeAI's `apply_ti` applies them, then
//! compel as InvokeAI's `compel` / `sdxl_compel_prompt` nodes run it, on the tiny models `write_tiny_sd` and
//! `write_tiny_sdxl` write here; no Python needed):
//!
//! - each embedding is written to a `.safetensors` file in its layout (diffusers `{"<token>": vector}`,
//!   `emb_params`, `string_to_param.*`, SDXL `clip_l` + `clip_g`) and read back with `TextualInversion::load`;
//! - prompts naming them (single- and multi-vector, weighted, blended, repeated, an upper-case name with a space,
//!   a long prompt cut by InvokeAI's 75-token rule, clip skip, SD 2.x, SDXL with `clip_l` in encoder 1 and
//!   `clip_g` in encoder 2 and the pooled embedding) encode within 1e-4 of the reference;
//! - prompts without triggers encode bit for bit as without embeddings.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use atelier_engine::candle::{DType, Device};
use atelier_engine::pipeline::Sd;
use atelier_engine::textual_inversion::TextualInversion;
use atelier_engine::tiny::{write_tiny_sd, Family};
use atelier_engine::tiny_sdxl::write_tiny_sdxl;
use atelier_engine::weights::write_f32_safetensors;
use common::{assert_close, read_fixture, relative_error, values};
use serde::Deserialize;

const SEED: u64 = 1234;

#[derive(Deserialize)]
struct Fixture {
    seed: u64,
    embeddings: Vec<Embedding>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Embedding {
    name: String,
    layout: String,
    tensors: HashMap<String, Values>,
}

#[derive(Deserialize)]
struct Values {
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    model: String,
    prompt: String,
    style: String,
    skipped_layers: usize,
    shape: Vec<usize>,
    values: Vec<f32>,
    pooled: Option<Vec<f32>>,
}

struct Models {
    _dir: tempfile::TempDir,
    sd1: Sd,
    sd2: Sd,
    sdxl: Sd,
    embeddings: Vec<(String, TextualInversion)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let f: Fixture = read_fixture("textual_inversion.json");
        assert_eq!(f.seed, SEED, "fixture made from another seed");
        f
    })
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
        let sdxl_dir = dir.path().join("sdxl");
        write_tiny_sdxl(&sdxl_dir, SEED).unwrap();
        let embeddings = fixture()
            .embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // Each file in its layout, read back as the server reads installed embeddings.
                let path = dir.path().join(format!("ti-{i}.safetensors"));
                let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = e
                    .tensors
                    .iter()
                    .map(|(k, v)| (k.clone(), v.shape.clone(), v.values.clone()))
                    .collect();
                let keys: Vec<&str> = e.tensors.keys().map(String::as_str).collect();
                match e.layout.as_str() {
                    "diffusers" => assert_eq!(e.tensors.values().next().unwrap().shape.len(), 1),
                    "emb_params" => assert_eq!(keys, ["emb_params"]),
                    "string_to_param" => assert_eq!(keys, ["string_to_param.*"]),
                    "sdxl" => assert_eq!(keys.len(), 2),
                    other => panic!("layout {other}"),
                }
                write_f32_safetensors(&path, &tensors).unwrap();
                (e.name.clone(), TextualInversion::load(&path).unwrap())
            })
            .collect();
        Models {
            sd1: load("sd1", Family::Sd1),
            sd2: load("sd2", Family::Sd2),
            sdxl: Sd::load(&sdxl_dir, &Device::Cpu, DType::F32).unwrap(),
            embeddings,
            _dir: dir,
        }
    })
}

fn available(m: &Models) -> Vec<(&str, &TextualInversion)> {
    m.embeddings.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

#[test]
fn prompts_with_embeddings_match_invokeai() {
    let m = models();
    let tis = available(m);
    let mut worst = 0f64;
    for case in &fixture().cases {
        let what = format!("{} {:?} / {:?}", case.model, case.prompt, case.style);
        let (embeds, pooled) = match case.model.as_str() {
            "sd1" | "sd2" => {
                let sd = if case.model == "sd1" { &m.sd1 } else { &m.sd2 };
                let c = sd
                    .encode_prompt_with_ti(&case.prompt, case.skipped_layers, &tis)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                // The embeddings matter: without them the prompt encodes otherwise (unless it names none).
                let plain = sd.encode_prompt(&case.prompt, case.skipped_layers).unwrap();
                let names_one = tis
                    .iter()
                    .any(|(n, _)| case.prompt.contains(&format!("<{n}>")));
                assert_eq!(
                    plain.dims() == c.dims()
                        && relative_error(&values(&plain), &case.values) < 1e-3,
                    !names_one,
                    "{what}: plain encoding"
                );
                (c, None)
            }
            "sdxl" => {
                let c = m
                    .sdxl
                    .encode_prompt_sdxl_with_ti(&case.prompt, &case.style, 0, 0, &tis)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                (c.embeds, Some(c.pooled))
            }
            other => panic!("model {other}"),
        };
        assert_eq!(embeds.dims(), case.shape.as_slice(), "{what}");
        worst = worst.max(assert_close(&values(&embeds), &case.values, &what));
        if let (Some(ours), Some(theirs)) = (pooled, &case.pooled) {
            worst = worst.max(assert_close(
                &values(&ours),
                theirs,
                &format!("{what} pooled"),
            ));
        }
    }
    eprintln!("worst relative error {worst:e}");
}

#[test]
fn prompts_without_triggers_are_unchanged() {
    let m = models();
    let tis = available(m);
    for prompt in [
        "a cat on a mat",
        "(a red hat)1.3 dog, <not an embedding>",
        "ti-one ti.three",
    ] {
        for sd in [&m.sd1, &m.sd2] {
            let plain = values(&sd.encode_prompt(prompt, 0).unwrap());
            let with = values(&sd.encode_prompt_with_ti(prompt, 0, &tis).unwrap());
            assert_eq!(plain, with, "{prompt}");
        }
        let plain = m.sdxl.encode_prompt_sdxl(prompt, "", 0, 0).unwrap();
        let with = m
            .sdxl
            .encode_prompt_sdxl_with_ti(prompt, "", 0, 0, &tis)
            .unwrap();
        assert_eq!(values(&plain.embeds), values(&with.embeds), "{prompt}");
        assert_eq!(values(&plain.pooled), values(&with.pooled), "{prompt}");
    }
}

#[test]
fn an_embedding_of_another_width_is_an_error() {
    let m = models();
    let tis = available(m);
    // The SD 1.x embedding's 32-wide vector fits the tiny SDXL's first encoder, not its 64-wide second one.
    let err = m
        .sdxl
        .encode_prompt_sdxl_with_ti("a <ti-one>", "", 0, 0, &tis)
        .expect_err("width");
    assert!(err.to_string().contains("token dimension"), "{err}");
}
