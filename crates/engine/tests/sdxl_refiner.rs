//! The SDXL refiner on the tiny refiner ([`write_tiny_sdxl_refiner`]): loading, its prompts (text encoder 2
//! alone), 5 time ids, an img2img-style run from `denoising_start`, and the errors when base and refiner parts
//! are mixed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::AtomicBool;

use atelier_engine::candle::{DType, Device};
use atelier_engine::pipeline::{latents_to_vec, CfgScale, DenoiseRequest, NoProgress, Sd};
use atelier_engine::tiny_sdxl::{write_tiny_sdxl, write_tiny_sdxl_refiner};
use atelier_engine::SdxlAdded;

fn refiner() -> (tempfile::TempDir, Sd) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_sdxl_refiner(dir.path(), 11).unwrap();
    let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    (dir, sd)
}

/// A refiner request: `denoising_start` 0.8 from SDXL-shaped latents and noise.
fn refiner_request(sd: &Sd, time_ids: Vec<f64>) -> DenoiseRequest {
    let pos = sd
        .encode_prompt_sdxl_refiner("a photo of a cat", 0)
        .unwrap();
    let neg = sd.encode_prompt_sdxl_refiner("", 0).unwrap();
    let latents = Sd::noise(5, 64, 64).unwrap().affine(0.5, 0.1).unwrap();
    DenoiseRequest {
        positive: pos.embeds,
        negative: neg.embeds,
        noise: Some(Sd::noise(3, 64, 64).unwrap()),
        latents: Some(latents),
        steps: 10,
        cfg_scale: CfgScale::Scalar(5.0),
        cfg_rescale_multiplier: 0.0,
        scheduler: "euler".into(),
        denoising_start: 0.8,
        denoising_end: 1.0,
        seed: 3,
        sdxl: Some(SdxlAdded {
            positive_pooled: pos.pooled,
            negative_pooled: neg.pooled,
            positive_time_ids: time_ids.clone(),
            negative_time_ids: time_ids,
        }),
    }
}

#[test]
fn the_tiny_refiner_loads_with_text_encoder_2_alone_and_5_time_ids() {
    let (dir, sd) = refiner();
    assert!(!dir.path().join("text_encoder").exists());
    assert!(sd.is_sdxl());
    assert!(sd.is_sdxl_refiner());
    assert!(sd.tokenizer().is_none() && sd.text_encoder().is_none());
    assert_eq!(sd.time_id_count(), Some(5));
    assert_eq!(sd.conditioning_dim(), 64);
    assert_eq!(sd.pooled_dim(), Some(64));

    let base = tempfile::tempdir().unwrap();
    write_tiny_sdxl(base.path(), 11).unwrap();
    let base = Sd::load(base.path(), &Device::Cpu, DType::F32).unwrap();
    assert!(base.is_sdxl() && !base.is_sdxl_refiner());
    assert_eq!(base.time_id_count(), Some(6));
}

#[test]
fn refiner_prompts_use_text_encoder_2_and_encode_empty_text() {
    let (_dir, sd) = refiner();
    let c = sd
        .encode_prompt_sdxl_refiner("a photo of a cat", 0)
        .unwrap();
    assert_eq!(c.embeds.dims(), [1, 77, 64]);
    assert_eq!(c.pooled.dims(), [1, 64]);
    // InvokeAI encodes an empty refiner style (zero_on_empty=False): not zeros.
    let empty = sd.encode_prompt_sdxl_refiner("", 0).unwrap();
    let sum: f32 = latents_to_vec(&empty.embeds.abs().unwrap())
        .unwrap()
        .iter()
        .sum();
    assert!(sum > 0.0);
    let pooled: f32 = latents_to_vec(&empty.pooled.abs().unwrap())
        .unwrap()
        .iter()
        .sum();
    assert!(pooled > 0.0);
    // Clip skip changes the states.
    let skipped = sd
        .encode_prompt_sdxl_refiner("a photo of a cat", 1)
        .unwrap();
    assert_ne!(
        latents_to_vec(&skipped.embeds).unwrap(),
        latents_to_vec(&c.embeds).unwrap()
    );

    let err = sd.encode_prompt_sdxl("a cat", "", 0, 0).unwrap_err();
    assert!(
        err.to_string().contains("encode_prompt_sdxl_refiner"),
        "{err}"
    );
    assert!(sd.encode_prompt("a cat", 0).is_err());
}

#[test]
fn the_refiner_denoises_from_denoising_start_with_5_time_ids() {
    let (_dir, sd) = refiner();
    let ids = vec![64.0, 64.0, 0.0, 0.0, 6.0];
    let req = refiner_request(&sd, ids.clone());
    let a = sd
        .denoise(&req, &mut NoProgress, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(a.dims(), [1, 4, 8, 8]);
    let a = latents_to_vec(&a).unwrap();
    assert!(a.iter().all(|v| v.is_finite()));
    // Deterministic, and the aesthetic score matters.
    let again = sd
        .denoise(&req, &mut NoProgress, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(latents_to_vec(&again).unwrap(), a);
    let other = refiner_request(&sd, vec![64.0, 64.0, 0.0, 0.0, 2.5]);
    let b = sd
        .denoise(&other, &mut NoProgress, &AtomicBool::new(false))
        .unwrap();
    assert_ne!(latents_to_vec(&b).unwrap(), a);
    let image = sd.decode(
        &sd.denoise(&req, &mut NoProgress, &AtomicBool::new(false))
            .unwrap(),
    );
    assert_eq!(image.unwrap().dimensions(), (64, 64));

    // The base's 6 time ids are refused.
    let six = refiner_request(&sd, vec![64.0, 64.0, 0.0, 0.0, 64.0, 64.0]);
    let err = sd
        .denoise(&six, &mut NoProgress, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        err.to_string().contains("6 time ids, the model takes 5"),
        "{err}"
    );
}

#[test]
fn refiner_time_ids_into_the_base_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_sdxl(dir.path(), 11).unwrap();
    let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let pos = sd.encode_prompt_sdxl("a cat", "", 0, 0).unwrap();
    let req = DenoiseRequest {
        positive: pos.embeds.clone(),
        negative: pos.embeds,
        noise: Some(Sd::noise(3, 64, 64).unwrap()),
        latents: None,
        steps: 2,
        cfg_scale: CfgScale::Scalar(5.0),
        cfg_rescale_multiplier: 0.0,
        scheduler: "euler".into(),
        denoising_start: 0.0,
        denoising_end: 1.0,
        seed: 3,
        sdxl: Some(SdxlAdded {
            positive_pooled: pos.pooled.clone(),
            negative_pooled: pos.pooled,
            positive_time_ids: vec![64.0, 64.0, 0.0, 0.0, 6.0],
            negative_time_ids: vec![64.0, 64.0, 0.0, 0.0, 6.0],
        }),
    };
    let err = sd
        .denoise(&req, &mut NoProgress, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        err.to_string().contains("5 time ids, the model takes 6"),
        "{err}"
    );
}
