//! Behaviour of the candle pipeline on a tiny model: progress, cancellation, errors, and loading variants.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};

use atelier_engine::candle::{DType, Device};
use atelier_engine::pipeline::{
    latents_to_vec, CfgScale, CheckpointConfig, DenoiseRequest, NoProgress, Sd, StepProgress, Vae,
};
use atelier_engine::schedulers::PredictionType;
use atelier_engine::tiny::{
    write_ldm_vae, write_tiny_sd, write_tiny_sd1_checkpoint, write_tiny_sd2_checkpoint, Family,
};
use atelier_engine::weights::{write_f32_safetensors, SafetensorsFiles};
use atelier_engine::EngineError;

fn tiny(family: Family) -> (tempfile::TempDir, Sd) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_sd(dir.path(), family, 7).unwrap();
    let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    (dir, sd)
}

fn request(sd: &Sd, scheduler: &str) -> DenoiseRequest {
    DenoiseRequest {
        positive: sd.encode_prompt("a photo of a cat", 0).unwrap(),
        negative: sd.encode_prompt("", 0).unwrap(),
        noise: Some(Sd::noise(1, 64, 64).unwrap()),
        latents: None,
        steps: 4,
        cfg_scale: CfgScale::Scalar(7.5),
        cfg_rescale_multiplier: 0.0,
        scheduler: scheduler.into(),
        denoising_start: 0.0,
        denoising_end: 1.0,
        seed: 1,
        sdxl: None,
    }
}

#[test]
fn progress_every_step_and_cancel_stops() {
    let (_dir, sd) = tiny(Family::Sd1);
    let req = request(&sd, "euler");
    let mut steps = Vec::new();
    let mut sink = |p: &StepProgress<'_>| steps.push((p.step, p.total_steps));
    let out = sd
        .denoise(&req, &mut sink, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(steps, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(out.dims(), &[1, 4, 8, 8]);
    // Deterministic.
    let again = sd
        .denoise(
            &req,
            &mut atelier_engine::pipeline::NoProgress,
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(
        latents_to_vec(&out).unwrap(),
        latents_to_vec(&again).unwrap()
    );

    // Cancel after the second step: the third never runs.
    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let mut sink = |p: &StepProgress<'_>| {
        seen = p.step;
        if p.step == 2 {
            cancel.store(true, Ordering::SeqCst);
        }
    };
    assert!(matches!(
        sd.denoise(&req, &mut sink, &cancel),
        Err(EngineError::Canceled)
    ));
    assert_eq!(seen, 2);
}

#[test]
fn dpmpp_sde_noise_follows_the_seed() {
    // The Brownian tree is seeded with the request's seed itself: same seed, same latents; another seed (same
    // initial noise) changes them.
    let (_dir, sd) = tiny(Family::Sd1);
    let no = AtomicBool::new(false);
    let run = |scheduler: &str, seed: u32| {
        let req = DenoiseRequest {
            seed,
            ..request(&sd, scheduler)
        };
        let out = sd
            .denoise(&req, &mut atelier_engine::pipeline::NoProgress, &no)
            .unwrap();
        latents_to_vec(&out).unwrap()
    };
    for name in ["dpmpp_sde", "dpmpp_sde_k"] {
        let a = run(name, 1);
        assert_eq!(a, run(name, 1), "{name}");
        assert_ne!(a, run(name, 2), "{name}");
        assert!(a.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn invalid_requests_are_errors() {
    let (_dir, sd) = tiny(Family::Sd2V);
    let no = AtomicBool::new(false);
    let mut sink = atelier_engine::pipeline::NoProgress;
    let base = request(&sd, "dpmpp_2m");
    let bad = |r: DenoiseRequest| sd.denoise(&r, &mut atelier_engine::pipeline::NoProgress, &no);
    assert!(matches!(
        bad(DenoiseRequest {
            steps: 0,
            ..base.clone()
        }),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        bad(DenoiseRequest {
            scheduler: "no_such_scheduler".into(),
            ..base.clone()
        }),
        Err(EngineError::UnknownScheduler(_))
    ));
    assert!(matches!(
        bad(DenoiseRequest {
            noise: None,
            ..base.clone()
        }),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        bad(DenoiseRequest {
            cfg_scale: CfgScale::PerStep(vec![1.0]),
            ..base.clone()
        }),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        bad(DenoiseRequest {
            denoising_start: 0.8,
            denoising_end: 0.2,
            ..base.clone()
        }),
        Err(EngineError::InvalidArgument(_))
    ));
    let wrong_width = sd.encode_prompt("x", 0).unwrap().narrow(2, 0, 16).unwrap();
    assert!(matches!(
        bad(DenoiseRequest {
            positive: wrong_width,
            ..base.clone()
        }),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        Sd::noise(1, 60, 64),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        sd.encode_prompt("x", 2),
        Err(EngineError::InvalidArgument(_))
    ));
    // Everything skipped: the latents come back unchanged.
    let latents = Sd::noise(9, 64, 64).unwrap();
    let out = sd
        .denoise(
            &DenoiseRequest {
                latents: Some(latents.clone()),
                denoising_start: 1.0,
                ..base.clone()
            },
            &mut sink,
            &no,
        )
        .unwrap();
    assert_eq!(
        latents_to_vec(&out).unwrap(),
        latents_to_vec(&latents).unwrap()
    );
    // Image to image round trip keeps the size; odd sizes are cut to multiples of 8.
    let image = image::RgbImage::from_pixel(70, 41, image::Rgb([200, 30, 90]));
    let z = sd.encode(&image).unwrap();
    assert_eq!(z.dims(), &[1, 4, 5, 8]);
    assert_eq!(sd.decode(&z).unwrap().dimensions(), (64, 40));
    assert!(matches!(
        sd.encode(&image::RgbImage::new(4, 4)),
        Err(EngineError::InvalidArgument(_))
    ));
}

#[test]
fn text_encoder_keys_without_the_text_model_prefix_load_the_same() {
    let (dir, sd) = tiny(Family::Sd1);
    let before = latents_to_vec(&sd.encode_prompt("a red dog", 1).unwrap()).unwrap();
    let path = dir.path().join("text_encoder").join("model.safetensors");
    let files = SafetensorsFiles::open(&[&path]).unwrap();
    let mut names: Vec<String> = files.names().map(str::to_string).collect();
    names.sort();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = names
        .iter()
        .map(|n| {
            let t = files.load(n, DType::F32, &Device::Cpu).unwrap();
            let stripped = n.strip_prefix("text_model.").unwrap().to_string();
            (stripped, t.dims().to_vec(), latents_to_vec(&t).unwrap())
        })
        .collect();
    drop(files);
    write_f32_safetensors(&path, &tensors).unwrap();
    let sd = Sd::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let after = latents_to_vec(&sd.encode_prompt("a red dog", 1).unwrap()).unwrap();
    assert_eq!(before, after);
}

#[test]
fn broken_models_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_sd(dir.path(), Family::Sd1, 3).unwrap();
    let unet = dir
        .path()
        .join("unet")
        .join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        Sd::load(dir.path(), &Device::Cpu, DType::F32),
        Err(EngineError::InvalidModel(_))
    ));
    // UNet configs this engine cannot run: an addition embedding other than SDXL's, and SDXL's without its
    // sizes.
    std::fs::write(&unet, &bytes).unwrap();
    let config = dir.path().join("unet").join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen('{', "{\"addition_embed_type\": \"text\",", 1),
    )
    .unwrap();
    assert!(matches!(
        Sd::load(dir.path(), &Device::Cpu, DType::F32),
        Err(EngineError::InvalidModel(m)) if m.contains("addition_embed_type")
    ));
    std::fs::write(
        &config,
        text.replacen('{', "{\"addition_embed_type\": \"text_time\",", 1),
    )
    .unwrap();
    assert!(matches!(
        Sd::load(dir.path(), &Device::Cpu, DType::F32),
        Err(EngineError::InvalidModel(m)) if m.contains("addition_time_embed_dim")
    ));
    assert!(matches!(
        Sd::load(&dir.path().join("nope"), &Device::Cpu, DType::F32),
        Err(EngineError::InvalidModel(_))
    ));
}

#[test]
fn a_separate_vae_folder_decodes_and_encodes_like_the_pipeline_that_holds_it() {
    // A tiny VAE: the `vae/` folder of a tiny model written with another seed.
    let other = tempfile::tempdir().unwrap();
    write_tiny_sd(other.path(), Family::Sd1, 11).unwrap();
    let vae = Vae::load(&other.path().join("vae"), &Device::Cpu, DType::F32).unwrap();
    let owner = Sd::load(other.path(), &Device::Cpu, DType::F32).unwrap();
    let (_dir, sd) = tiny(Family::Sd1);
    assert_eq!(vae.latent_channels(), 4);
    assert!((vae.scaling_factor() - 0.18215).abs() < 1e-12);
    let z = Sd::noise(5, 64, 48).unwrap();
    let separate = vae.decode(&z).unwrap();
    assert_eq!(separate.dimensions(), (64, 48));
    assert_eq!(separate.as_raw(), owner.decode(&z).unwrap().as_raw());
    assert_eq!(separate.as_raw(), owner.vae().decode(&z).unwrap().as_raw());
    // Another model's VAE really is another VAE.
    assert_ne!(separate.as_raw(), sd.decode(&z).unwrap().as_raw());
    let encoded = vae.encode(&separate).unwrap();
    assert_eq!(encoded.dims(), &[1, 4, 6, 8]);
    assert_eq!(
        latents_to_vec(&encoded).unwrap(),
        latents_to_vec(&owner.encode(&separate).unwrap()).unwrap()
    );
    // Not a folder, or another VAE class: errors.
    assert!(matches!(
        Vae::load(&other.path().join("missing"), &Device::Cpu, DType::F32),
        Err(EngineError::InvalidModel(_))
    ));
    let config = other.path().join("vae").join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"AutoencoderKL\"", "\"AutoencoderTiny\""),
    )
    .unwrap();
    let err = Vae::load(&other.path().join("vae"), &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(err.to_string().contains("AutoencoderTiny"), "{err}");
}

#[test]
fn an_ldm_vae_checkpoint_decodes_like_its_diffusers_twin() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_sd(dir.path(), Family::Sd1, 23).unwrap();
    let twin = Vae::load(&dir.path().join("vae"), &Device::Cpu, DType::F32).unwrap();
    let z = Sd::noise(9, 64, 48).unwrap();
    let want = twin.decode(&z).unwrap();
    for full in [false, true] {
        let file = dir.path().join(format!("vae-{full}.safetensors"));
        write_ldm_vae(&dir.path().join("vae"), &file, full).unwrap();
        let files = SafetensorsFiles::open(&[&file]).unwrap();
        let prefix = if full { "first_stage_model." } else { "" };
        assert_eq!(
            files.shape(&format!("{prefix}encoder.mid.attn_1.q.weight")),
            Some(&[32usize, 32, 1, 1][..])
        );
        assert!(files.contains(&format!("{prefix}decoder.up.3.upsample.conv.weight")));
        assert!(!files.contains(&format!("{prefix}decoder.up.0.upsample.conv.weight")));
        let vae = Vae::load_checkpoint(&file, 0.18215, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(vae.spec().config.block_out_channels, [32, 32, 32, 32]);
        assert_eq!(vae.spec().config.layers_per_block, 1);
        assert_eq!(vae.decode(&z).unwrap().as_raw(), want.as_raw());
        assert_eq!(
            latents_to_vec(&vae.encode(&want).unwrap()).unwrap(),
            latents_to_vec(&twin.encode(&want).unwrap()).unwrap()
        );
    }
    // Not an LDM VAE: a clear error.
    let err = Vae::load_checkpoint(
        &dir.path()
            .join("vae")
            .join("diffusion_pytorch_model.safetensors"),
        0.18215,
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("not an LDM VAE checkpoint"),
        "{err}"
    );
}

#[test]
fn an_sd1_ldm_checkpoint_runs_like_its_diffusers_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let file = dir.path().join("tiny-sd1.safetensors");
    write_tiny_sd1_checkpoint(&twin_dir, &file, 31).unwrap();
    let files = SafetensorsFiles::open(&[&file]).unwrap();
    // Where the model manager's probe looks: an SD 1.x UNet (cross-attention width 768, 4 input channels).
    assert_eq!(
        files
            .shape("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"),
        Some(&[32usize, 768][..])
    );
    assert_eq!(
        files.shape("model.diffusion_model.input_blocks.1.1.proj_in.weight"),
        Some(&[32usize, 32, 1, 1][..])
    );
    assert!(files.contains("model.diffusion_model.input_blocks.3.0.op.weight"));
    assert!(files.contains("model.diffusion_model.output_blocks.2.1.conv.weight"));
    assert!(!files.contains("model.diffusion_model.output_blocks.5.2.conv.weight"));
    assert!(files.contains("model.diffusion_model.middle_block.1.proj_out.weight"));
    assert!(files.contains("model.diffusion_model.time_embed.2.bias"));
    assert!(files.contains("first_stage_model.decoder.up.3.upsample.conv.weight"));
    assert!(
        files.contains("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
    );
    drop(files);

    let twin = Sd::load(&twin_dir, &Device::Cpu, DType::F32).unwrap();
    let sd =
        Sd::load_checkpoint(&file, &CheckpointConfig::sd1(), &Device::Cpu, DType::F32).unwrap();
    // The bundled tokenizer is the twin's (written from the same data).
    for prompt in [
        "a photo of an astronaut riding a horse",
        "Painting, (red:1.2) cat!",
    ] {
        assert_eq!(
            sd.tokenizer().unwrap().windows(prompt),
            twin.tokenizer().unwrap().windows(prompt)
        );
    }
    assert_eq!(sd.tokenizer().unwrap().vocab_size(), 49408);
    let (a, b) = (
        sd.text_encoder().unwrap().config(),
        twin.text_encoder().unwrap().config(),
    );
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers
        ),
        (
            b.vocab_size,
            b.hidden_size,
            b.intermediate_size,
            b.num_hidden_layers
        )
    );
    assert_eq!(
        (
            a.num_attention_heads,
            a.max_position_embeddings,
            a.hidden_act
        ),
        (
            b.num_attention_heads,
            b.max_position_embeddings,
            b.hidden_act
        )
    );
    assert_eq!(sd.conditioning_dim(), twin.conditioning_dim());
    // CLIP.
    let c = sd.encode_prompt("a photo of a cat", 0).unwrap();
    let c_twin = twin.encode_prompt("a photo of a cat", 0).unwrap();
    assert_eq!(
        latents_to_vec(&c).unwrap(),
        latents_to_vec(&c_twin).unwrap()
    );
    assert_eq!(
        latents_to_vec(&sd.encode_prompt("a photo of a cat", 1).unwrap()).unwrap(),
        latents_to_vec(&twin.encode_prompt("a photo of a cat", 1).unwrap()).unwrap()
    );
    // UNet.
    let x = Sd::noise(3, 64, 64).unwrap();
    for t in [999.0, 501.0, 1.0] {
        assert_eq!(
            latents_to_vec(&sd.unet_forward(&x, t, &c).unwrap()).unwrap(),
            latents_to_vec(&twin.unet_forward(&x, t, &c).unwrap()).unwrap(),
            "t = {t}"
        );
    }
    // A whole generation, decoded.
    let cancel = AtomicBool::new(false);
    let latents = sd
        .denoise(&request(&sd, "euler"), &mut NoProgress, &cancel)
        .unwrap();
    let latents_twin = twin
        .denoise(&request(&twin, "euler"), &mut NoProgress, &cancel)
        .unwrap();
    assert_eq!(
        latents_to_vec(&latents).unwrap(),
        latents_to_vec(&latents_twin).unwrap()
    );
    assert_eq!(
        sd.decode(&latents).unwrap().as_raw(),
        twin.decode(&latents_twin).unwrap().as_raw()
    );
    assert_eq!(
        sd.scheduler_config().prediction_type,
        twin.scheduler_config().prediction_type
    );

    // A diffusers weights file is not a checkpoint: a clear error, not a panic.
    let err = Sd::load_checkpoint(
        &twin_dir
            .join("unet")
            .join("diffusion_pytorch_model.safetensors"),
        &CheckpointConfig::sd1(),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("checkpoint"), "{err}");
}

#[test]
fn an_sd2_ldm_checkpoint_runs_like_its_diffusers_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let file = dir.path().join("tiny-sd2.safetensors");
    write_tiny_sd2_checkpoint(&twin_dir, &file, 37).unwrap();
    let files = SafetensorsFiles::open(&[&file]).unwrap();
    // Where the model manager's probe looks: an SD 2.x UNet (cross-attention width 1024), linear projections,
    // and the OpenCLIP text encoder with fused q/k/v.
    assert_eq!(
        files
            .shape("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"),
        Some(&[64usize, 1024][..])
    );
    assert_eq!(
        files.shape("model.diffusion_model.input_blocks.1.1.proj_in.weight"),
        Some(&[64usize, 64][..])
    );
    assert_eq!(
        files.shape("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"),
        Some(&[3072usize, 1024][..])
    );
    assert_eq!(
        files.shape("cond_stage_model.model.positional_embedding"),
        Some(&[77usize, 1024][..])
    );
    assert!(files.contains("cond_stage_model.model.text_projection"));
    assert!(!files
        .names()
        .any(|n| n.starts_with("cond_stage_model.transformer.")));
    drop(files);

    let twin = Sd::load(&twin_dir, &Device::Cpu, DType::F32).unwrap();
    let sd =
        Sd::load_checkpoint(&file, &CheckpointConfig::sd2_v(), &Device::Cpu, DType::F32).unwrap();
    // The bundled tokenizer pads with `!`, as the twin's.
    for prompt in [
        "a photo of an astronaut riding a horse",
        "Painting, (red:1.2) cat!",
    ] {
        assert_eq!(
            sd.tokenizer().unwrap().windows(prompt),
            twin.tokenizer().unwrap().windows(prompt)
        );
    }
    assert_eq!(
        sd.tokenizer().unwrap().pad_id(),
        twin.tokenizer().unwrap().pad_id()
    );
    assert_ne!(
        sd.tokenizer().unwrap().pad_id(),
        sd.tokenizer().unwrap().eos_id()
    );
    let (a, b) = (
        sd.text_encoder().unwrap().config(),
        twin.text_encoder().unwrap().config(),
    );
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers
        ),
        (
            b.vocab_size,
            b.hidden_size,
            b.intermediate_size,
            b.num_hidden_layers
        )
    );
    assert_eq!(
        (
            a.num_attention_heads,
            a.max_position_embeddings,
            a.hidden_act
        ),
        (
            b.num_attention_heads,
            b.max_position_embeddings,
            b.hidden_act
        )
    );
    assert_eq!(sd.conditioning_dim(), 1024);
    assert_eq!(sd.prediction_type(), PredictionType::VPrediction);
    assert_eq!(sd.prediction_type(), twin.prediction_type());
    // CLIP, with and without clip skip.
    for skip in [0, 1] {
        assert_eq!(
            latents_to_vec(&sd.encode_prompt("a photo of a cat", skip).unwrap()).unwrap(),
            latents_to_vec(&twin.encode_prompt("a photo of a cat", skip).unwrap()).unwrap(),
            "skip {skip}"
        );
    }
    // UNet.
    let c = sd.encode_prompt("a photo of a cat", 0).unwrap();
    let x = Sd::noise(3, 64, 64).unwrap();
    for t in [999.0, 1.0] {
        assert_eq!(
            latents_to_vec(&sd.unet_forward(&x, t, &c).unwrap()).unwrap(),
            latents_to_vec(&twin.unet_forward(&x, t, &c).unwrap()).unwrap(),
            "t = {t}"
        );
    }
    // A whole generation, decoded.
    let cancel = AtomicBool::new(false);
    let latents = sd
        .denoise(&request(&sd, "euler"), &mut NoProgress, &cancel)
        .unwrap();
    let latents_twin = twin
        .denoise(&request(&twin, "euler"), &mut NoProgress, &cancel)
        .unwrap();
    assert_eq!(
        latents_to_vec(&latents).unwrap(),
        latents_to_vec(&latents_twin).unwrap()
    );
    assert_eq!(
        sd.decode(&latents).unwrap().as_raw(),
        twin.decode(&latents_twin).unwrap().as_raw()
    );
    // The record's prediction type wins over the family's default.
    let eps = Sd::load_checkpoint(
        &file,
        &CheckpointConfig::sd2_v().with_prediction_type(PredictionType::Epsilon),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(eps.prediction_type(), PredictionType::Epsilon);
    drop(eps);

    // The wrong family's configuration is a clear error, both ways.
    let err = Sd::load_checkpoint(&file, &CheckpointConfig::sd1(), &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("an SD 2.x checkpoint, loaded as an SD 1.x model"),
        "{err}"
    );

    // A truncated checkpoint is a clear error, not a panic.
    let bytes = std::fs::read(&file).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Sd::load_checkpoint(
        &truncated,
        &CheckpointConfig::sd2(),
        &Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap();
    assert!(matches!(err, EngineError::InvalidModel(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    broken_sd2_checkpoints_are_clear_errors(&file, dir.path());
}

type Header = serde_json::Map<String, serde_json::Value>;

/// Copies a safetensors file with its header edited (the data is kept as it is: a smaller shape reads
/// the start of the tensor's bytes).
fn with_header(file: &std::path::Path, out: &std::path::Path, edit: impl Fn(&mut Header)) {
    let bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Header = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut written = (text.len() as u64).to_le_bytes().to_vec();
    written.extend_from_slice(text.as_bytes());
    written.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(out, written).unwrap();
}

/// Sets a tensor's shape in a header (its byte range shrinks or grows from its start).
fn reshape(header: &mut Header, name: &str, shape: &[usize]) {
    let entry = header.get_mut(name).unwrap();
    let start = entry["data_offsets"][0].as_u64().unwrap();
    let len = shape.iter().product::<usize>() as u64 * 4;
    entry["shape"] = serde_json::json!(shape);
    entry["data_offsets"] = serde_json::json!([start, start + len]);
}

fn broken_sd2_checkpoints_are_clear_errors(file: &std::path::Path, dir: &std::path::Path) {
    let load = |edit: &dyn Fn(&mut Header)| {
        let out = dir.join("broken.safetensors");
        with_header(file, &out, edit);
        Sd::load_checkpoint(&out, &CheckpointConfig::sd2(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
            .to_string()
    };
    let text = |name: &str| format!("cond_stage_model.model.{name}");
    // A fused q/k/v projection of the wrong height.
    let err = load(&|h| {
        reshape(
            h,
            &text("transformer.resblocks.0.attn.in_proj_weight"),
            &[2048, 1024],
        );
    });
    assert!(
        err.contains("in_proj_weight has shape [2048, 1024]"),
        "{err}"
    );
    // A missing layer norm.
    let err = load(&|h| {
        h.remove(&text("transformer.resblocks.1.ln_2.weight"));
    });
    assert!(err.contains("layer_norm2"), "{err}");
    // An OpenCLIP text encoder over an SD 1.x-width UNet.
    let err = load(&|h| {
        let names: Vec<String> = h
            .keys()
            .filter(|n| n.contains("attn2.to_k.") || n.contains("attn2.to_v."))
            .cloned()
            .collect();
        for name in names {
            let rows = h[&name]["shape"][0].as_u64().unwrap() as usize;
            reshape(h, &name, &[rows, 768]);
        }
    });
    assert!(
        err.contains("cross-attention width 768 (expected 1024)"),
        "{err}"
    );
    // SDXL's text encoders: an SDXL checkpoint, not the SD 2.x the configuration says.
    let err = load(&|h| {
        let names: Vec<String> = h
            .keys()
            .filter(|n| n.starts_with("cond_stage_model."))
            .cloned()
            .collect();
        for name in names {
            let entry = h.remove(&name).unwrap();
            h.insert(
                name.replace("cond_stage_model.", "conditioner.embedders.1."),
                entry,
            );
        }
    });
    assert!(
        err.contains("an SDXL checkpoint, loaded as an SD 2.x model"),
        "{err}"
    );
}

/// The dtype is plumbed through (what the `cuda` build uses with f16): the same tiny SD 1.x and
/// SDXL models loaded in f16 on the CPU generate what f32 does, up to f16's precision.
#[test]
fn f16_models_generate_like_f32() {
    let generate = |dir: &std::path::Path, dtype: DType| {
        let sd = Sd::load(dir, &Device::Cpu, dtype).unwrap();
        let mut req = DenoiseRequest {
            steps: 2,
            ..request_for(&sd)
        };
        if sd.is_sdxl() {
            let (pos, neg) = (
                sd.encode_prompt_sdxl("a photo of a cat", "", 0, 0).unwrap(),
                sd.encode_prompt_sdxl("", "", 0, 0).unwrap(),
            );
            req.positive = pos.embeds;
            req.negative = neg.embeds;
            req.sdxl = Some(atelier_engine::SdxlAdded {
                positive_pooled: pos.pooled,
                negative_pooled: neg.pooled,
                positive_time_ids: vec![64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
                negative_time_ids: vec![64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
            });
        }
        let latents = sd
            .denoise(&req, &mut NoProgress, &AtomicBool::new(false))
            .unwrap();
        (
            latents_to_vec(&latents).unwrap(),
            sd.decode(&latents).unwrap(),
        )
    };
    let sd1 = tempfile::tempdir().unwrap();
    write_tiny_sd(sd1.path(), Family::Sd1, 7).unwrap();
    let sdxl = tempfile::tempdir().unwrap();
    atelier_engine::tiny_sdxl::write_tiny_sdxl(sdxl.path(), 7).unwrap();
    for dir in [sd1.path(), sdxl.path()] {
        let (l32, img32) = generate(dir, DType::F32);
        let (l16, img16) = generate(dir, DType::F16);
        let scale = l32.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let diff = l32
            .iter()
            .zip(&l16)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff / scale < 2e-2,
            "{}: latents differ by {diff} of {scale}",
            dir.display()
        );
        let worst = img32
            .as_raw()
            .iter()
            .zip(img16.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 8,
            "{}: pixels differ by up to {worst}",
            dir.display()
        );
    }
}

/// [`request`] with prompts only an SD 1.x/2.x model can encode left out for SDXL.
fn request_for(sd: &Sd) -> DenoiseRequest {
    if sd.is_sdxl() {
        let zeros = atelier_engine::candle::Tensor::zeros(
            (1, 77, sd.conditioning_dim()),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        DenoiseRequest {
            positive: zeros.clone(),
            negative: zeros,
            noise: Some(Sd::noise(1, 64, 64).unwrap()),
            latents: None,
            steps: 4,
            cfg_scale: CfgScale::Scalar(7.5),
            cfg_rescale_multiplier: 0.0,
            scheduler: "euler".into(),
            denoising_start: 0.0,
            denoising_end: 1.0,
            seed: 1,
            sdxl: None,
        }
    } else {
        request(sd, "euler")
    }
}
