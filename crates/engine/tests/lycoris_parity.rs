//! Parity of LyCORIS layer merging with InvokeAI's layer math (`tests/fixtures/lycoris.json`, written by
//! `tools/reference/make_lycoris_fixtures.py`): a kohya-named file mixing every layer type (LoRA, unequal-rank
//! LoRA, Tucker `lora_mid`, LoHa, LoKr, full, IA3, DoRA, norm) is rebuilt here from the recorded seeds and
//! merged into the tiny SD 1.x model's UNet and text encoder; the change of each patched parameter must match
//! the reference within 1e-5 (max|ours − torch| / max|torch|), for the file applied once (weight 0.8) and twice
//! (0.8, then −0.5: IA3 and DoRA read the weight the first pass patched).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use atelier_engine::candle::{DType, Device};
use atelier_engine::lora::{apply_loras, Lora, LoraTarget};
use atelier_engine::noise::randn;
use atelier_engine::tiny::{write_tiny_sd, Family};
use atelier_engine::weights::{component_files, write_f32_safetensors, SafetensorsFiles};
use common::{read_fixture, relative_error};
use serde::Deserialize;

const SEED: u64 = 1234;
const TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    seed: u64,
    tensors: Vec<Recipe>,
    passes: Vec<Pass>,
}

#[derive(Deserialize)]
struct Recipe {
    name: String,
    shape: Vec<usize>,
    seed: Option<u64>,
    scale: Option<f32>,
    offset: Option<f32>,
    value: Option<f32>,
}

#[derive(Deserialize)]
struct Pass {
    weights: Vec<f32>,
    expected: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    component: String,
    name: String,
    shape: Vec<usize>,
    stride: usize,
    delta: Vec<f32>,
}

/// The file's tensors, drawn as the script draws them.
fn lycoris_tensors(recipes: &[Recipe]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    recipes
        .iter()
        .map(|r| {
            let values = match (r.value, r.seed) {
                (Some(v), _) => vec![v],
                (None, Some(seed)) => {
                    let n: usize = r.shape.iter().product();
                    let mut v = randn(seed, n.max(16));
                    v.truncate(n);
                    let (scale, offset) = (r.scale.unwrap(), r.offset.unwrap_or(0.0));
                    v.iter().map(|x| x * scale + offset).collect()
                }
                (None, None) => panic!("{}: no value and no seed", r.name),
            };
            (r.name.clone(), r.shape.clone(), values)
        })
        .collect()
}

#[test]
fn lycoris_merging_matches_invokeai() {
    let f: Fixture = read_fixture("lycoris.json");
    assert_eq!(f.seed, SEED, "fixture made from another seed");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sd1");
    write_tiny_sd(&model, Family::Sd1, SEED).unwrap();
    let file = dir.path().join("lycoris.safetensors");
    write_f32_safetensors(&file, &lycoris_tensors(&f.tensors)).unwrap();
    let lora = Lora::load(&file).unwrap();
    let kinds = lora.kinds();
    for kind in [
        "LoRA",
        "LoRA (Tucker)",
        "LoHa",
        "LoKr",
        "full",
        "IA3",
        "DoRA",
        "norm",
    ] {
        assert!(kinds.contains_key(kind), "{kind} missing from {kinds:?}");
    }
    let open = |component: &str| {
        let (dir, stems) = match component {
            "unet" => (
                model.join("unet"),
                &["diffusion_pytorch_model", "model"][..],
            ),
            _ => (model.join("text_encoder"), &["model"][..]),
        };
        SafetensorsFiles::open(&component_files(&dir, stems).unwrap()).unwrap()
    };
    let mut worst = 0.0f64;
    for pass in &f.passes {
        let list: Vec<(&Lora, f32)> = pass.weights.iter().map(|w| (&lora, *w)).collect();
        for (component, target) in [
            ("unet", LoraTarget::Unet),
            ("text_encoder", LoraTarget::TextEncoder),
        ] {
            let base = open(component);
            let mut patched = open(component);
            let applied = apply_loras(&mut patched, target, &list).unwrap();
            let expected: Vec<&Expected> = pass
                .expected
                .iter()
                .filter(|e| e.component == component)
                .collect();
            assert!(applied > 0 && !expected.is_empty(), "{component}");
            for e in expected {
                let before = base.load(&e.name, DType::F32, &Device::Cpu).unwrap();
                let after = patched.load(&e.name, DType::F32, &Device::Cpu).unwrap();
                assert_eq!(after.dims(), e.shape.as_slice(), "{}", e.name);
                // In f64, so that the only rounding is W + ΔW's in f32.
                let delta: Vec<f32> = (after.to_dtype(DType::F64).unwrap()
                    - before.to_dtype(DType::F64).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
                let ours: Vec<f32> = delta.iter().step_by(e.stride).copied().collect();
                let err = relative_error(&ours, &e.delta);
                eprintln!("{:?} {}: {err:.2e}", pass.weights, e.name);
                assert!(err <= TOLERANCE, "{:?} {}: {err}", pass.weights, e.name);
                worst = worst.max(err);
            }
        }
    }
    eprintln!("max relative error {worst:.2e}");
}
