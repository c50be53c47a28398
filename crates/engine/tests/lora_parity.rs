//! Parity of LoRA merging with InvokeAI's patching (`tests/fixtures/lora.json`, written by
//! `tools/reference/make_lora_fixtures.py`: diffusers/transformers models patched with InvokeAI's rule
//! W += weight · alpha/rank · up@down from the same kohya-named tiny LoRA `write_tiny_lora` writes here).
//!
//! Tolerances as in `pipeline_parity.rs` (max|ours − torch| / max|torch|): CLIP output and the UNet output
//! against diffusers ≤ 1e-4; the UNet output against the tanh-GEGLU reference ≤ 2e-3.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use atelier_engine::candle::{DType, Device};
use atelier_engine::lora::{Lora, LoraSelection};
use atelier_engine::noise::randn;
use atelier_engine::pipeline::{latents_from_vec, latents_to_vec, Sd};
use atelier_engine::tiny::{write_tiny_lora, write_tiny_sd, Family, LoraNaming};
use common::relative_error;
use serde::Deserialize;

const SEED: u64 = 1234;
const RELATIVE_TOLERANCE: f64 = 1e-4;
const TANH_GEGLU_TOLERANCE: f64 = 2e-3;

#[derive(Deserialize)]
struct Fixtures {
    seed: u64,
    weight: f32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    model: String,
    text_encoder_layers: usize,
    unet_layers: usize,
    prompt: String,
    clip_shape: Vec<usize>,
    clip: Vec<f32>,
    x_seed: u64,
    context_seed: u64,
    timestep: f64,
    unet: Vec<f32>,
    unet_tanh_geglu: Vec<f32>,
}

#[test]
fn lora_merging_matches_invokeai() {
    let path = format!("{}/tests/fixtures/lora.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let f: Fixtures = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(f.seed, SEED, "fixtures made from another seed");
    assert_eq!(f.cases.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    for case in &f.cases {
        let family = match case.model.as_str() {
            "sd1" => Family::Sd1,
            "sd2" => Family::Sd2,
            other => panic!("unknown model {other}"),
        };
        let model = dir.path().join(&case.model);
        write_tiny_sd(&model, family, SEED).unwrap();
        let file = dir.path().join(format!("{}-lora.safetensors", case.model));
        // As the `write_tiny` example writes them.
        write_tiny_lora(&model, &file, LoraNaming::Kohya, 4, SEED + 1).unwrap();
        let lora = Lora::load(&file).unwrap();
        assert_eq!(
            lora.layers_for(atelier_engine::lora::LoraTarget::TextEncoder),
            case.text_encoder_layers
        );
        assert_eq!(
            lora.layers_for(atelier_engine::lora::LoraTarget::Unet),
            case.unet_layers
        );
        let list = [(&lora, f.weight)];
        let sd = Sd::load_with_loras(
            &model,
            &Device::Cpu,
            DType::F32,
            LoraSelection {
                unet: &list,
                text_encoder: &list,
                text_encoder_2: &[],
            },
        )
        .unwrap();
        let c = sd.encode_prompt(&case.prompt, 0).unwrap();
        assert_eq!(c.dims(), case.clip_shape.as_slice());
        let err = relative_error(&latents_to_vec(&c).unwrap(), &case.clip);
        eprintln!("{} clip with LoRA: {err:.2e}", case.model);
        assert!(err <= RELATIVE_TOLERANCE, "{} clip: {err}", case.model);

        let x = latents_from_vec(&[2, 4, 8, 8], randn(case.x_seed, 2 * 4 * 8 * 8)).unwrap();
        let ctx = latents_from_vec(&[2, 77, 32], randn(case.context_seed, 2 * 77 * 32)).unwrap();
        let y = latents_to_vec(&sd.unet_forward(&x, case.timestep, &ctx).unwrap()).unwrap();
        let strict = relative_error(&y, &case.unet);
        let tanh = relative_error(&y, &case.unet_tanh_geglu);
        eprintln!(
            "{} unet with LoRA: {strict:.2e} vs diffusers, {tanh:.2e} vs tanh-GEGLU diffusers",
            case.model
        );
        assert!(
            strict <= RELATIVE_TOLERANCE,
            "{} unet: {strict}",
            case.model
        );
        assert!(
            tanh <= TANH_GEGLU_TOLERANCE,
            "{} unet (tanh GEGLU): {tanh}",
            case.model
        );
    }
}
