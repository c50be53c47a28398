//! Parity of SDXL with PyTorch/diffusers/transformers/compel on the tiny SDXL model (`tests/fixtures/sdxl.json`,
//! written by `tools/reference/make_sdxl_fixtures.py` from the model `write_tiny_sdxl` writes here; no Python
//! needed).
//!
//! Tolerances (max|ours − torch| / max|torch| per tensor): token ids identical; everything else ≤ 1e-4
//! (RELATIVE_TOLERANCE); decoded pixels each within 1 of PyTorch's, at most 1% of them off by one.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::{assert_close, read_fixture, relative_error, tensor, values, RELATIVE_TOLERANCE};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::pipeline::{CfgScale, DenoiseRequest, NoProgress, Sd};
use atelier_engine::tiny_sdxl::write_tiny_sdxl;
use atelier_engine::{EngineError, SdxlAdded};
use serde::Deserialize;

const SEED: u64 = 1234;

#[derive(Deserialize)]
struct Fixtures {
    seed: u64,
    tokens: Vec<TokenCase>,
    encoder_2: Vec<EncoderCase>,
    prompts: Vec<PromptCase>,
    unet: UnetCase,
    runs: Vec<RunCase>,
}

#[derive(Deserialize)]
struct TokenCase {
    prompt: String,
    ids: Vec<u32>,
    windows: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct EncoderCase {
    prompt: String,
    skipped_layers: usize,
    windows: Vec<Vec<u32>>,
    penultimate_shape: Vec<usize>,
    penultimate: Vec<f32>,
    pooled_shape: Vec<usize>,
    pooled: Vec<f32>,
}

#[derive(Deserialize)]
struct PromptCase {
    prompt: String,
    style: String,
    skipped_layers_1: usize,
    skipped_layers_2: usize,
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
    time_ids: Vec<[f64; 6]>,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct RunCase {
    scheduler: String,
    steps: usize,
    cfg_scale: f64,
    seed: u32,
    prompt: String,
    negative: String,
    positive_time_ids: [f64; 6],
    negative_time_ids: [f64; 6],
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
            write_tiny_sdxl(dir.path(), SEED).unwrap();
            let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
            Model { _dir: dir, sd }
        })
        .sd
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let f: Fixtures = read_fixture("sdxl.json");
        assert_eq!(f.seed, SEED, "fixtures made from another seed");
        f
    })
}

#[test]
fn tokenizer_2_matches_transformers_and_compel() {
    let (tok, _) = model().text_encoder_2().unwrap();
    assert_eq!(
        tok.pad_id(),
        tok.encode("!")[0],
        "tokenizer_2 pads with '!'"
    );
    for case in &fixtures().tokens {
        let mut ids = vec![tok.bos_id()];
        ids.extend(tok.encode(&case.prompt));
        ids.push(tok.eos_id());
        assert_eq!(ids, case.ids, "{:?}: ids", case.prompt);
        assert_eq!(tok.windows(&case.prompt), case.windows, "{:?}", case.prompt);
    }
}

#[test]
fn encoder_2_matches_transformers() {
    let (_, encoder) = model().text_encoder_2().unwrap();
    for case in &fixtures().encoder_2 {
        let what = format!("{:?} skip {}", case.prompt, case.skipped_layers);
        let out = encoder.forward(&case.windows, case.skipped_layers).unwrap();
        assert_eq!(
            out.penultimate_hidden_state.dims(),
            case.penultimate_shape.as_slice()
        );
        let e1 = assert_close(
            &values(&out.penultimate_hidden_state),
            &case.penultimate,
            &format!("{what} penultimate"),
        );
        let pooled = out.pooled.expect("text_encoder_2 has a projection");
        assert_eq!(pooled.dims(), case.pooled_shape.as_slice());
        let e2 = assert_close(&values(&pooled), &case.pooled, &format!("{what} pooled"));
        eprintln!("encoder_2 {what}: penultimate {e1:.2e}, pooled {e2:.2e}");
    }
}

#[test]
fn encode_prompt_sdxl_matches_invokeai_compel() {
    let sd = model();
    assert!(sd.is_sdxl());
    assert_eq!(sd.conditioning_dim(), 96);
    for case in &fixtures().prompts {
        let what = format!(
            "{:?} / style {:?} skip {}/{}",
            case.prompt, case.style, case.skipped_layers_1, case.skipped_layers_2
        );
        let c = sd
            .encode_prompt_sdxl(
                &case.prompt,
                &case.style,
                case.skipped_layers_1,
                case.skipped_layers_2,
            )
            .unwrap();
        assert_eq!(c.embeds.dims(), case.shape.as_slice(), "{what}");
        assert_eq!(c.pooled.dims(), case.pooled_shape.as_slice(), "{what}");
        let e1 = assert_close(&values(&c.embeds), &case.embeds, &format!("{what} embeds"));
        let e2 = assert_close(&values(&c.pooled), &case.pooled, &format!("{what} pooled"));
        eprintln!("prompt {what}: embeds {e1:.2e}, pooled {e2:.2e}");
    }
}

fn unet_case_output(skip_time_ids: bool) -> Vec<f32> {
    let u = &fixtures().unet;
    let x = tensor(u.x_seed, &[2, 4, 8, 8]);
    let ctx = tensor(u.context_seed, &[2, 77, 96]);
    let text_embeds = tensor(u.text_embeds_seed, &[2, 64]);
    let mut ids: Vec<f32> = u.time_ids.iter().flatten().map(|&v| v as f32).collect();
    if skip_time_ids {
        ids.iter_mut().for_each(|v| *v = 0.0);
    }
    let time_ids = Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap();
    let y = model()
        .unet_forward_added(&x, u.timestep, &ctx, Some((&text_embeds, &time_ids)))
        .unwrap();
    values(&y)
}

#[test]
fn unet_with_added_conditions_matches_diffusers() {
    let u = &fixtures().unet;
    let err = assert_close(&unet_case_output(false), &u.values, "sdxl unet");
    eprintln!("sdxl unet: {err:.2e}");
    // The fixture tells the time ids apart: zeroing them moves the output far beyond the tolerance.
    let without = relative_error(&unet_case_output(true), &u.values);
    eprintln!("sdxl unet with zero time ids: {without:.2e}");
    assert!(without > 100.0 * RELATIVE_TOLERANCE, "{without}");
    // An SDXL UNet needs the added conditions.
    let x = tensor(u.x_seed, &[2, 4, 8, 8]);
    let ctx = tensor(u.context_seed, &[2, 77, 96]);
    assert!(model().unet_forward(&x, u.timestep, &ctx).is_err());
}

fn request(case: &RunCase, drop_time_ids: bool) -> DenoiseRequest {
    let sd = model();
    let pos = sd.encode_prompt_sdxl(&case.prompt, "", 0, 0).unwrap();
    let neg = sd.encode_prompt_sdxl(&case.negative, "", 0, 0).unwrap();
    let ids = |v: &[f64; 6]| if drop_time_ids { [0.0; 6] } else { *v };
    DenoiseRequest {
        positive: pos.embeds,
        negative: neg.embeds,
        noise: Some(Sd::noise(case.seed, 64, 64).unwrap()),
        latents: None,
        steps: case.steps,
        cfg_scale: CfgScale::Scalar(case.cfg_scale),
        cfg_rescale_multiplier: 0.0,
        scheduler: case.scheduler.clone(),
        denoising_start: 0.0,
        denoising_end: 1.0,
        seed: case.seed,
        sdxl: Some(SdxlAdded {
            positive_pooled: pos.pooled,
            negative_pooled: neg.pooled,
            positive_time_ids: ids(&case.positive_time_ids).to_vec(),
            negative_time_ids: ids(&case.negative_time_ids).to_vec(),
        }),
    }
}

#[test]
fn full_runs_match_invokeai_semantics() {
    let sd = model();
    for case in &fixtures().runs {
        let what = format!(
            "sdxl {} {} steps seed {} {:?} / {:?}",
            case.scheduler, case.steps, case.seed, case.prompt, case.negative
        );
        let cancel = AtomicBool::new(false);
        let out = sd
            .denoise(&request(case, false), &mut NoProgress, &cancel)
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
        // Without the time ids the run ends far outside the tolerance: the fixture checks them.
        let dropped = sd
            .denoise(&request(case, true), &mut NoProgress, &cancel)
            .unwrap();
        let without = relative_error(&values(&dropped), &case.latents);
        eprintln!("{what}: {err:.2e} (without time ids: {without:.2e})");
        assert!(without > 100.0 * RELATIVE_TOLERANCE, "{what}: {without}");
    }
}

#[test]
fn denoise_checks_the_sdxl_conditioning() {
    let sd = model();
    let case = &fixtures().runs[0];
    let mut r = request(case, false);
    r.sdxl = None;
    let err = sd
        .denoise(&r, &mut NoProgress, &AtomicBool::new(false))
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err:?}");
    let mut r = request(case, false);
    if let Some(a) = r.sdxl.as_mut() {
        a.positive_pooled = Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap();
    }
    let err = sd
        .denoise(&r, &mut NoProgress, &AtomicBool::new(false))
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err:?}");
    assert!(sd.encode_prompt("a cat", 0).is_err());
}

#[test]
fn tiny_sdxl_image_is_fast() {
    let sd = model();
    let case = &fixtures().runs[0];
    let start = std::time::Instant::now();
    let out = sd
        .denoise(
            &request(case, false),
            &mut NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap();
    sd.decode(&out).unwrap();
    eprintln!(
        "tiny SDXL: prompts + 4 euler steps + decode in {:?} (debug build)",
        start.elapsed()
    );
}

#[test]
fn real_sdxl_unet_config_is_accepted() {
    // stabilityai/stable-diffusion-xl-base-1.0/unet/config.json (the fields that matter, nulls included).
    let config = r#"{
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280], "center_input_sample": false, "class_embed_type": null,
        "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
        "cross_attention_dim": 2048, "cross_attention_norm": null,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
        "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
        "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
        "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false, "resnet_time_scale_shift": "default", "sample_size": 128,
        "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
        "time_embedding_type": "positional", "timestep_post_act": null,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": null, "use_linear_projection": true
    }"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config).unwrap();
    let spec = atelier_engine::config::unet_spec(&path).unwrap();
    assert_eq!(spec.config.cross_attention_dim, 2048);
    let layers: Vec<_> = spec
        .config
        .blocks
        .iter()
        .map(|b| b.use_cross_attn)
        .collect();
    assert_eq!(layers, [None, Some(2), Some(10)]);
    let heads: Vec<_> = spec
        .config
        .blocks
        .iter()
        .map(|b| b.attention_head_dim)
        .collect();
    assert_eq!(heads, [5, 10, 20]);
    let extras = atelier_engine::config::unet_extras(&path).unwrap();
    assert_eq!(extras.mid_transformer_layers, 10);
    assert_eq!(
        extras.text_time,
        Some(atelier_engine::unet::TextTime {
            time_embed_dim: 256,
            input_dim: 2816
        })
    );
    // Other addition embeddings and class embeddings stay refused.
    for (from, to) in [
        (r#""text_time""#, r#""text_image""#),
        (
            r#""class_embed_type": null"#,
            r#""class_embed_type": "timestep""#,
        ),
    ] {
        std::fs::write(&path, config.replace(from, to)).unwrap();
        assert!(matches!(
            atelier_engine::config::unet_spec(&path),
            Err(EngineError::InvalidModel(_))
        ));
    }
}
