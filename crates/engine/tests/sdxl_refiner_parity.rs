//! Parity of the SDXL refiner with PyTorch/diffusers/transformers/compel on the tiny refiner
//! (`tests/fixtures/sdxl_refiner.json`, written by `tools/reference/make_sdxl_refiner_fixtures.py` from the model
//! `write_tiny_sdxl_refiner` writes here; no Python needed).
//!
//! Tolerances as in `sdxl_parity.rs`: ≤ 1e-4 relative (max|ours − torch| / max|torch|); decoded pixels each
//! within 1 of PyTorch's, at most 1% of them off by one.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::{assert_close, read_fixture, tensor, values};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::pipeline::{CfgScale, DenoiseRequest, NoProgress, Sd};
use atelier_engine::tiny_sdxl::write_tiny_sdxl_refiner;
use atelier_engine::SdxlAdded;
use serde::Deserialize;

const SEED: u64 = 1234;

#[derive(Deserialize)]
struct Fixtures {
    seed: u64,
    prompts: Vec<PromptCase>,
    unet: UnetCase,
    runs: Vec<RunCase>,
}

#[derive(Deserialize)]
struct PromptCase {
    style: String,
    skipped_layers: usize,
    shape: Vec<usize>,
    embeds: Vec<f32>,
    pooled_shape: Vec<usize>,
    pooled: Vec<f32>,
}

#[derive(Deserialize)]
struct UnetCase {
    x_seed: u64,
    context_seed: u64,
    text_embeds_seed: u64,
    timestep: f64,
    time_ids: Vec<[f64; 5]>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct RunCase {
    scheduler: String,
    steps: usize,
    cfg_scale: f64,
    seed: u32,
    latents_seed: u64,
    denoising_start: f64,
    style: String,
    negative: String,
    positive_time_ids: Vec<f64>,
    negative_time_ids: Vec<f64>,
    latents: Vec<f32>,
    pixels: Vec<u8>,
}

struct Model {
    _dir: tempfile::TempDir,
    sd: Sd,
}

fn model() -> &'static Sd {
    static MODEL: OnceLock<Model> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            write_tiny_sdxl_refiner(dir.path(), SEED).unwrap();
            let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
            Model { _dir: dir, sd }
        })
        .sd
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let f: Fixtures = read_fixture("sdxl_refiner.json");
        assert_eq!(f.seed, SEED, "fixtures made from another seed");
        f
    })
}

#[test]
fn encode_prompt_sdxl_refiner_matches_invokeai_compel() {
    let sd = model();
    assert!(sd.is_sdxl_refiner());
    for case in &fixtures().prompts {
        let what = format!("{:?} skip {}", case.style, case.skipped_layers);
        let c = sd
            .encode_prompt_sdxl_refiner(&case.style, case.skipped_layers)
            .unwrap();
        assert_eq!(c.embeds.dims(), case.shape.as_slice(), "{what}");
        assert_eq!(c.pooled.dims(), case.pooled_shape.as_slice(), "{what}");
        let e1 = assert_close(&values(&c.embeds), &case.embeds, &format!("{what} embeds"));
        let e2 = assert_close(&values(&c.pooled), &case.pooled, &format!("{what} pooled"));
        eprintln!("refiner prompt {what}: embeds {e1:.2e}, pooled {e2:.2e}");
    }
}

#[test]
fn unet_with_5_time_ids_matches_diffusers() {
    let u = &fixtures().unet;
    let x = tensor(u.x_seed, &[2, 4, 8, 8]);
    let ctx = tensor(u.context_seed, &[2, 77, 64]);
    let text_embeds = tensor(u.text_embeds_seed, &[2, 64]);
    let ids: Vec<f32> = u.time_ids.iter().flatten().map(|&v| v as f32).collect();
    let time_ids = Tensor::from_vec(ids, (2, 5), &Device::Cpu).unwrap();
    let y = model()
        .unet_forward_added(&x, u.timestep, &ctx, Some((&text_embeds, &time_ids)))
        .unwrap();
    let err = assert_close(&values(&y), &u.values, "refiner unet");
    eprintln!("refiner unet: {err:.2e}");
}

#[test]
fn runs_from_denoising_start_match_invokeai_semantics() {
    let sd = model();
    for case in &fixtures().runs {
        let what = format!(
            "refiner {} {} steps from {} seed {} {:?} / {:?}",
            case.scheduler, case.steps, case.denoising_start, case.seed, case.style, case.negative
        );
        let pos = sd.encode_prompt_sdxl_refiner(&case.style, 0).unwrap();
        let neg = sd.encode_prompt_sdxl_refiner(&case.negative, 0).unwrap();
        let req = DenoiseRequest {
            positive: pos.embeds,
            negative: neg.embeds,
            noise: Some(Sd::noise(case.seed, 64, 64).unwrap()),
            latents: Some(tensor(case.latents_seed, &[1, 4, 8, 8])),
            steps: case.steps,
            cfg_scale: CfgScale::Scalar(case.cfg_scale),
            cfg_rescale_multiplier: 0.0,
            scheduler: case.scheduler.clone(),
            denoising_start: case.denoising_start,
            denoising_end: 1.0,
            seed: case.seed,
            sdxl: Some(SdxlAdded {
                positive_pooled: pos.pooled,
                negative_pooled: neg.pooled,
                positive_time_ids: case.positive_time_ids.clone(),
                negative_time_ids: case.negative_time_ids.clone(),
            }),
        };
        let out = sd
            .denoise(&req, &mut NoProgress, &AtomicBool::new(false))
            .unwrap();
        let err = assert_close(&values(&out), &case.latents, &what);
        let rgb = sd.decode(&out).unwrap();
        assert_eq!(rgb.dimensions(), (64, 64));
        let mut off = 0;
        for (i, (a, b)) in rgb.as_raw().iter().zip(&case.pixels).enumerate() {
            let d = (i16::from(*a) - i16::from(*b)).abs();
            assert!(d <= 1, "{what}: pixel {i}: ours {a}, torch {b}");
            off += usize::from(d > 0);
        }
        assert!(
            off * 100 <= case.pixels.len(),
            "{what}: {off} pixels differ"
        );
        eprintln!("{what}: {err:.2e}");
    }
}
