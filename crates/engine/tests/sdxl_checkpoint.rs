//! SDXL and SDXL refiner single-file checkpoints (Stability's SGM layout) load and run exactly as their
//! diffusers twin; broken refiner files are clear errors.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::AtomicBool;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::pipeline::{
    latents_to_vec, CfgScale, CheckpointConfig, DenoiseRequest, NoProgress, Sd,
};
use atelier_engine::tiny_sdxl::{write_tiny_sdxl_checkpoint, write_tiny_sdxl_refiner_checkpoint};
use atelier_engine::weights::SafetensorsFiles;
use atelier_engine::{EngineError, SdxlAdded, SdxlConditioning};

const POSITIVE_IDS: [f64; 6] = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0];
const NEGATIVE_IDS: [f64; 6] = [64.0, 48.0, 0.0, 8.0, 64.0, 64.0];

fn request(sd: &Sd) -> DenoiseRequest {
    let pos = sd
        .encode_prompt_sdxl("a photo of a (red:1.2) cat", "", 0, 0)
        .unwrap();
    let neg = sd.encode_prompt_sdxl("blurry", "", 0, 0).unwrap();
    DenoiseRequest {
        positive: pos.embeds,
        negative: neg.embeds,
        noise: Some(Sd::noise(5, 64, 64).unwrap()),
        latents: None,
        steps: 3,
        cfg_scale: CfgScale::Scalar(6.0),
        cfg_rescale_multiplier: 0.0,
        scheduler: "euler".into(),
        denoising_start: 0.0,
        denoising_end: 1.0,
        seed: 1,
        sdxl: Some(SdxlAdded {
            positive_pooled: pos.pooled,
            negative_pooled: neg.pooled,
            positive_time_ids: POSITIVE_IDS.to_vec(),
            negative_time_ids: NEGATIVE_IDS.to_vec(),
        }),
    }
}

/// The checkpoint `sd` and its diffusers twin agree exactly: one UNet call at t = 999 and 1 on the
/// conditioning `c` with time ids `ids`, then the denoise `request` builds and its decoded image.
fn assert_unet_and_run_equal(
    sd: &Sd,
    twin: &Sd,
    c: &SdxlConditioning,
    ids: &Tensor,
    request: fn(&Sd) -> DenoiseRequest,
) {
    let x = Sd::noise(3, 64, 64).unwrap();
    for t in [999.0, 1.0] {
        let a = sd
            .unet_forward_added(&x, t, &c.embeds, Some((&c.pooled, ids)))
            .unwrap();
        let b = twin
            .unet_forward_added(&x, t, &c.embeds, Some((&c.pooled, ids)))
            .unwrap();
        assert_eq!(values(&a), values(&b), "t = {t}");
    }
    let cancel = AtomicBool::new(false);
    let latents = sd.denoise(&request(sd), &mut NoProgress, &cancel).unwrap();
    let latents_twin = twin
        .denoise(&request(twin), &mut NoProgress, &cancel)
        .unwrap();
    assert_eq!(values(&latents), values(&latents_twin));
    assert_eq!(
        sd.decode(&latents).unwrap().as_raw(),
        twin.decode(&latents_twin).unwrap().as_raw()
    );
}

fn values(t: &Tensor) -> Vec<f32> {
    latents_to_vec(t).unwrap()
}

#[test]
fn an_sdxl_checkpoint_runs_like_its_diffusers_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let file = dir.path().join("tiny-sdxl.safetensors");
    write_tiny_sdxl_checkpoint(&twin_dir, &file, 41).unwrap();
    let files = SafetensorsFiles::open(&[&file]).unwrap();
    // Stability's layout: the addition embedding as label_emb, the first encoder in transformers' names, the
    // second in OpenCLIP's with fused q/k/v and an OpenCLIP-layout (width, projection) text_projection.
    let unet = |n: &str| files.shape(&format!("model.diffusion_model.{n}"));
    assert_eq!(
        unet("label_emb.0.0.weight"),
        Some(&[256usize, 128 + 6 * 256][..])
    );
    assert_eq!(unet("label_emb.0.2.weight"), Some(&[256usize, 256][..]));
    assert_eq!(
        unet("input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight"),
        Some(&[128usize, 192][..])
    );
    assert!(unet("middle_block.1.transformer_blocks.1.attn1.to_q.weight").is_some());
    assert!(files.contains(
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
    ));
    assert_eq!(
        files.shape("conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"),
        Some(&[384usize, 128][..])
    );
    assert!(files.contains("conditioner.embedders.1.model.text_projection"));
    assert!(files.contains("first_stage_model.decoder.conv_out.weight"));
    assert!(!files.names().any(|n| n.starts_with("cond_stage_model.")));
    drop(files);

    let twin = Sd::load(&twin_dir, &Device::Cpu, DType::F32).unwrap();
    let sd =
        Sd::load_checkpoint(&file, &CheckpointConfig::sdxl(), &Device::Cpu, DType::F32).unwrap();
    assert!(sd.is_sdxl());
    assert_eq!(sd.pooled_dim(), Some(128));
    assert_eq!(sd.pooled_dim(), twin.pooled_dim());
    assert_eq!(sd.conditioning_dim(), twin.conditioning_dim());
    assert_eq!(sd.scheduler_config(), twin.scheduler_config());
    assert_eq!(sd.vae_scaling_factor(), 0.13025);
    assert_eq!(sd.vae_scaling_factor(), twin.vae_scaling_factor());
    // The bundled tokenizers are the twin's: `<|endoftext|>` padding, then `!`.
    let (tok_2, _) = sd.text_encoder_2().unwrap();
    let (twin_tok_2, _) = twin.text_encoder_2().unwrap();
    for prompt in ["a photo of an astronaut riding a horse", "Painting, cat!"] {
        assert_eq!(
            sd.tokenizer().unwrap().windows(prompt),
            twin.tokenizer().unwrap().windows(prompt)
        );
        assert_eq!(tok_2.windows(prompt), twin_tok_2.windows(prompt));
    }
    assert_eq!(
        sd.tokenizer().unwrap().pad_id(),
        twin.tokenizer().unwrap().pad_id()
    );
    assert_eq!(tok_2.pad_id(), twin_tok_2.pad_id());
    assert_ne!(tok_2.pad_id(), sd.tokenizer().unwrap().pad_id());

    // Prompt encodings (embeds and pooled), with and without a style prompt and clip skip.
    for (prompt, style, skip) in [
        ("a photo of a cat", "", 0),
        ("a (photo:1.3) of a cat", "oil painting", 1),
        ("", "", 0),
    ] {
        let a = sd.encode_prompt_sdxl(prompt, style, skip, skip).unwrap();
        let b = twin.encode_prompt_sdxl(prompt, style, skip, skip).unwrap();
        assert_eq!(values(&a.embeds), values(&b.embeds), "{prompt:?}");
        assert_eq!(values(&a.pooled), values(&b.pooled), "{prompt:?}");
        assert_eq!(a.pooled.dims(), &[1, 128]);
    }
    // The UNet, with its addition embedding.
    let c = sd.encode_prompt_sdxl("a photo of a cat", "", 0, 0).unwrap();
    let ids = Tensor::from_vec(
        POSITIVE_IDS.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        (1, 6),
        &Device::Cpu,
    )
    .unwrap();
    // A whole generation, decoded.
    assert_unet_and_run_equal(&sd, &twin, &c, &ids, request);

    // Another family's configuration is a clear error.
    let err = Sd::load_checkpoint(&file, &CheckpointConfig::sd1(), &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("an SDXL checkpoint, loaded as an SD 1.x model"),
        "{err}"
    );
    // A checkpoint without the second encoder's projection is a clear error.
    let bytes = std::fs::read(&file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.remove("conditioner.embedders.1.model.text_projection");
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut written = (text.len() as u64).to_le_bytes().to_vec();
    written.extend_from_slice(text.as_bytes());
    written.extend_from_slice(&bytes[8 + len..]);
    let broken = dir.path().join("broken.safetensors");
    std::fs::write(&broken, written).unwrap();
    let err = Sd::load_checkpoint(&broken, &CheckpointConfig::sdxl(), &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(err.to_string().contains("text_projection"), "{err}");
}

/// A refiner request: `denoising_start` 0.8 from SDXL-shaped latents, 5 time ids (the last the aesthetic score).
fn refiner_request(sd: &Sd) -> DenoiseRequest {
    let pos = sd
        .encode_prompt_sdxl_refiner("a photo of a (red:1.2) cat", 0)
        .unwrap();
    let neg = sd.encode_prompt_sdxl_refiner("", 0).unwrap();
    DenoiseRequest {
        positive: pos.embeds,
        negative: neg.embeds,
        noise: Some(Sd::noise(3, 64, 64).unwrap()),
        latents: Some(Sd::noise(5, 64, 64).unwrap().affine(0.5, 0.1).unwrap()),
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
            positive_time_ids: vec![64.0, 64.0, 0.0, 0.0, 6.0],
            negative_time_ids: vec![64.0, 64.0, 0.0, 0.0, 2.5],
        }),
    }
}

/// Rewrites the safetensors file `from` to `to` with `edit` applied to its tensors (name → tensor).
fn rewrite(
    from: &std::path::Path,
    to: &std::path::Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) {
    let mut tensors = atelier_engine::candle::safetensors::load(from, &Device::Cpu).unwrap();
    edit(&mut tensors);
    atelier_engine::candle::safetensors::save(&tensors, to).unwrap();
}

#[test]
fn an_sdxl_refiner_checkpoint_runs_like_its_diffusers_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let file = dir.path().join("tiny-sdxl-refiner.safetensors");
    write_tiny_sdxl_refiner_checkpoint(&twin_dir, &file, 43).unwrap();
    assert!(!twin_dir.join("text_encoder").exists());
    let files = SafetensorsFiles::open(&[&file]).unwrap();
    // Stability's refiner layout: one text encoder, OpenCLIP-named under `conditioner.embedders.0.model.`
    // (fused q/k/v, a (width, projection) text_projection); label_emb sized for 5 time ids.
    let unet = |n: &str| files.shape(&format!("model.diffusion_model.{n}"));
    assert_eq!(
        unet("label_emb.0.0.weight"),
        Some(&[256usize, 128 + 5 * 256][..])
    );
    assert_eq!(
        unet("input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight"),
        Some(&[128usize, 128][..])
    );
    assert_eq!(
        files.shape("conditioner.embedders.0.model.transformer.resblocks.1.attn.in_proj_weight"),
        Some(&[384usize, 128][..])
    );
    assert_eq!(
        files.shape("conditioner.embedders.0.model.text_projection"),
        Some(&[128usize, 128][..])
    );
    assert!(files.contains("first_stage_model.decoder.conv_out.weight"));
    assert!(!files
        .names()
        .any(|n| n.starts_with("conditioner.embedders.0.transformer.")
            || n.starts_with("conditioner.embedders.1.")
            || n.starts_with("cond_stage_model.")));
    assert_eq!(
        atelier_engine::ldm::checkpoint_family(&files).unwrap(),
        atelier_engine::ldm::CheckpointFamily::SdxlRefiner
    );
    drop(files);

    let twin = Sd::load(&twin_dir, &Device::Cpu, DType::F32).unwrap();
    let sd = Sd::load_checkpoint(
        &file,
        &CheckpointConfig::sdxl_refiner(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert!(sd.is_sdxl_refiner() && twin.is_sdxl_refiner());
    assert!(sd.tokenizer().is_none() && sd.text_encoder().is_none());
    assert_eq!(sd.time_id_count(), Some(5));
    assert_eq!(sd.pooled_dim(), Some(128));
    assert_eq!(sd.conditioning_dim(), 128);
    assert_eq!(sd.conditioning_dim(), twin.conditioning_dim());
    assert_eq!(sd.scheduler_config(), twin.scheduler_config());
    assert_eq!(sd.vae_scaling_factor(), 0.13025);
    let (tok_2, _) = sd.text_encoder_2().unwrap();
    let (twin_tok_2, _) = twin.text_encoder_2().unwrap();
    for prompt in ["a photo of an astronaut riding a horse", "Painting, cat!"] {
        assert_eq!(tok_2.windows(prompt), twin_tok_2.windows(prompt));
    }
    assert_eq!(tok_2.pad_id(), twin_tok_2.pad_id());

    // Prompt encodings, with and without clip skip.
    for (style, skip) in [
        ("a photo of a cat", 0),
        ("a (photo:1.3) of a cat", 1),
        ("", 0),
    ] {
        let a = sd.encode_prompt_sdxl_refiner(style, skip).unwrap();
        let b = twin.encode_prompt_sdxl_refiner(style, skip).unwrap();
        assert_eq!(values(&a.embeds), values(&b.embeds), "{style:?}");
        assert_eq!(values(&a.pooled), values(&b.pooled), "{style:?}");
        assert_eq!(a.pooled.dims(), &[1, 128]);
    }
    // The UNet with its 5 time ids.
    let c = sd
        .encode_prompt_sdxl_refiner("a photo of a cat", 0)
        .unwrap();
    let ids = Tensor::from_vec(vec![64f32, 64.0, 0.0, 0.0, 6.0], (1, 5), &Device::Cpu).unwrap();
    // A refiner run from denoising_start 0.8, decoded.
    assert_unet_and_run_equal(&sd, &twin, &c, &ids, refiner_request);

    // The base's configuration is a clear error, and the refiner's on a base checkpoint.
    let err = Sd::load_checkpoint(&file, &CheckpointConfig::sdxl(), &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("an SDXL refiner checkpoint, loaded as an SDXL model"),
        "{err}"
    );
    let base = dir.path().join("base.safetensors");
    write_tiny_sdxl_checkpoint(&dir.path().join("base-twin"), &base, 43).unwrap();
    let err = Sd::load_checkpoint(
        &base,
        &CheckpointConfig::sdxl_refiner(),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("an SDXL checkpoint, loaded as an SDXL refiner model"),
        "{err}"
    );
}

#[test]
fn a_broken_sdxl_refiner_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-sdxl-refiner.safetensors");
    write_tiny_sdxl_refiner_checkpoint(&dir.path().join("twin"), &file, 5).unwrap();
    let load = |path: &std::path::Path| {
        Sd::load_checkpoint(
            path,
            &CheckpointConfig::sdxl_refiner(),
            &Device::Cpu,
            DType::F32,
        )
        .err()
        .expect("an error")
    };
    let broken = |name: &str| dir.path().join(format!("{name}.safetensors"));
    let text = "conditioner.embedders.0.model.";

    // Truncated: the last tensor's bytes end past the end of the file.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(broken("truncated"), &bytes[..bytes.len() - 100]).unwrap();
    let err = load(&broken("truncated"));
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // A fused q/k/v projection of the wrong height.
    let name = format!("{text}transformer.resblocks.1.attn.in_proj_weight");
    rewrite(&file, &broken("qkv"), |t| {
        t.insert(
            name.clone(),
            Tensor::zeros((383, 128), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(&broken("qkv"));
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(
        err.to_string()
            .contains("in_proj_weight has shape [383, 128]"),
        "{err}"
    );

    // A UNet weight of the wrong shape.
    let name = "model.diffusion_model.input_blocks.3.1.proj_in.weight";
    rewrite(&file, &broken("unet"), |t| {
        t.insert(
            name.into(),
            Tensor::zeros((128, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(&broken("unet"));
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(
        err.to_string()
            .contains("has shape [128, 64], the model expects [128, 128]"),
        "{err}"
    );

    // A projection that does not fit the addition embedding (pooled + 5 time ids).
    rewrite(&file, &broken("projection"), |t| {
        t.insert(
            format!("{text}text_projection"),
            Tensor::zeros((128, 96), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(&broken("projection"));
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(
        err.to_string()
            .contains("projection_class_embeddings_input_dim"),
        "{err}"
    );

    // Without its text encoder, it is no whole checkpoint.
    rewrite(&file, &broken("no-text"), |t| {
        t.retain(|n, _| !n.starts_with(text))
    });
    let err = load(&broken("no-text"));
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(
        err.to_string()
            .contains("not a whole Stable Diffusion checkpoint"),
        "{err}"
    );
}
