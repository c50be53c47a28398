//! LoRAs on the tiny SDXL model: parity with diffusers' `load_lora_weights` (`tests/fixtures/sdxl_lora.json`,
//! written by `tools/reference/make_sdxl_lora_fixtures.py` from the model and LoRAs `write_tiny_sdxl` /
//! `write_tiny_sdxl_lora` write here; the script also checks that InvokeAI's patching of the LDM-named kohya file
//! equals diffusers'), the three namings agreeing bit for bit, weight 0 giving the plain model bit for bit, each
//! text encoder patched only from its own selection, and SDXL's LDM → diffusers UNet key map.
//!
//! Tolerance as in `sdxl_parity.rs`: max|ours − torch| / max|torch| ≤ 1e-4 per tensor.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::relative_error;
use std::path::Path;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::lora::{
    sdxl_diffusers_to_ldm, sdxl_ldm_to_diffusers, Lora, LoraSelection, LoraTarget,
};
use atelier_engine::noise::randn;
use atelier_engine::pipeline::{latents_to_vec, Sd};
use atelier_engine::tiny_sdxl::{write_tiny_sdxl, write_tiny_sdxl_lora, SdxlLoraNaming};
use serde::Deserialize;

const RELATIVE_TOLERANCE: f64 = 1e-4;
const SEED: u64 = 1234;

#[derive(Deserialize)]
struct Fixtures {
    seed: u64,
    weight: f32,
    layers: Layers,
    prompts: Vec<PromptCase>,
    unet: UnetCase,
}

#[derive(Deserialize)]
struct Layers {
    unet: usize,
    text_encoder: usize,
    text_encoder_2: usize,
}

#[derive(Deserialize)]
struct PromptCase {
    prompt: String,
    style: String,
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

fn fixtures() -> Fixtures {
    let path = format!(
        "{}/tests/fixtures/sdxl_lora.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let f: Fixtures = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(f.seed, SEED, "fixtures made from another seed");
    f
}

fn values(t: &Tensor) -> Vec<f32> {
    latents_to_vec(t).unwrap()
}

/// The tiny SDXL model and the LoRA in `naming`, as the `write_tiny` example writes them.
fn setup(naming: SdxlLoraNaming) -> (tempfile::TempDir, Lora) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sdxl");
    write_tiny_sdxl(&model, SEED).unwrap();
    let file = dir.path().join("lora.safetensors");
    write_tiny_sdxl_lora(&model, &file, naming, 4, SEED + 1).unwrap();
    (dir, Lora::load(&file).unwrap())
}

fn load(dir: &Path, selection: LoraSelection<'_>) -> Sd {
    Sd::load_with_loras(&dir.join("sdxl"), &Device::Cpu, DType::F32, selection).unwrap()
}

/// The same LoRAs on the UNet and both text encoders (as `sdxl_lora_loader` puts them on all three fields).
fn load_all(dir: &Path, list: &[(&Lora, f32)]) -> Sd {
    load(
        dir,
        LoraSelection {
            unet: list,
            text_encoder: list,
            text_encoder_2: list,
        },
    )
}

/// The fixture's prompts (embeds and pooled) and UNet forward, in that order.
fn outputs(sd: &Sd, f: &Fixtures) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for case in &f.prompts {
        let c = sd
            .encode_prompt_sdxl(&case.prompt, &case.style, 0, 0)
            .unwrap();
        assert_eq!(c.embeds.dims(), case.shape.as_slice());
        assert_eq!(c.pooled.dims(), case.pooled_shape.as_slice());
        out.push(values(&c.embeds));
        out.push(values(&c.pooled));
    }
    let u = &f.unet;
    let tensor = |seed: u64, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec(randn(seed, n), shape, &Device::Cpu).unwrap()
    };
    let x = tensor(u.x_seed, &[2, 4, 8, 8]);
    let ctx = tensor(u.context_seed, &[2, 77, 96]);
    let text_embeds = tensor(u.text_embeds_seed, &[2, 64]);
    let ids: Vec<f32> = u.time_ids.iter().flatten().map(|&v| v as f32).collect();
    let time_ids = Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap();
    let y = sd
        .unet_forward_added(&x, u.timestep, &ctx, Some((&text_embeds, &time_ids)))
        .unwrap();
    out.push(values(&y));
    out
}

#[test]
fn sdxl_lora_merging_matches_diffusers() {
    let f = fixtures();
    let (dir, lora) = setup(SdxlLoraNaming::KohyaLdm);
    assert_eq!(lora.layers_for(LoraTarget::Unet), f.layers.unet);
    assert_eq!(
        lora.layers_for(LoraTarget::TextEncoder),
        f.layers.text_encoder
    );
    assert_eq!(
        lora.layers_for(LoraTarget::TextEncoder2),
        f.layers.text_encoder_2
    );
    let sd = load_all(dir.path(), &[(&lora, f.weight)]);
    let ours = outputs(&sd, &f);
    let mut theirs: Vec<&[f32]> = Vec::new();
    for case in &f.prompts {
        theirs.push(&case.embeds);
        theirs.push(&case.pooled);
    }
    theirs.push(&f.unet.values);
    let names = ["embeds 1", "pooled 1", "embeds 2", "pooled 2", "unet"];
    for ((o, t), name) in ours.iter().zip(&theirs).zip(names) {
        let err = relative_error(o, t);
        eprintln!("sdxl LoRA {name}: {err:.2e}");
        assert!(err <= RELATIVE_TOLERANCE, "{name}: {err}");
    }
}

#[test]
fn namings_agree_weight_zero_is_plain_and_each_encoder_takes_its_own_list() {
    let f = fixtures();
    let (dir, ldm) = setup(SdxlLoraNaming::KohyaLdm);
    let file = |name: &str, naming| {
        let path = dir.path().join(name);
        write_tiny_sdxl_lora(&dir.path().join("sdxl"), &path, naming, 4, SEED + 1).unwrap();
        Lora::load(&path).unwrap()
    };
    let diffusers_names = file("kohya.safetensors", SdxlLoraNaming::KohyaDiffusers);
    let peft = file("peft.safetensors", SdxlLoraNaming::Peft);
    let patched = outputs(&load_all(dir.path(), &[(&ldm, 0.8)]), &f);
    for other in [&diffusers_names, &peft] {
        assert_eq!(
            outputs(&load_all(dir.path(), &[(other, 0.8)]), &f),
            patched,
            "another naming of the same factors"
        );
    }
    let plain = outputs(&load(dir.path(), LoraSelection::NONE), &f);
    assert_eq!(
        outputs(&load_all(dir.path(), &[(&ldm, 0.0)]), &f),
        plain,
        "weight 0"
    );
    for (p, q) in patched.iter().zip(&plain) {
        assert!(relative_error(p, q) > 1e-3, "the LoRA changes every output");
    }

    // Only text encoder 2 patched: the first encoder's half of the embeddings (the first 32 of 96 channels)
    // is the plain one, the second half and the pooled embedding are not; the UNet is untouched.
    let list = [(&ldm, 0.8)];
    let only_2 = outputs(
        &load(
            dir.path(),
            LoraSelection {
                text_encoder_2: &list,
                ..LoraSelection::NONE
            },
        ),
        &f,
    );
    let halves = |v: &[f32]| -> (Vec<f32>, Vec<f32>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for row in v.chunks(96) {
            a.extend_from_slice(&row[..32]);
            b.extend_from_slice(&row[32..]);
        }
        (a, b)
    };
    let (o1, o2) = halves(&only_2[0]);
    let (p1, p2) = halves(&plain[0]);
    assert_eq!(o1, p1, "text encoder 1 unpatched");
    assert!(relative_error(&o2, &p2) > 1e-3, "text encoder 2 patched");
    assert!(
        relative_error(&only_2[1], &plain[1]) > 1e-3,
        "pooled patched"
    );
    assert_eq!(only_2[4], plain[4], "UNet unpatched");
    // Only text encoder 1: the second half and the pooled embedding are plain.
    let only_1 = outputs(
        &load(
            dir.path(),
            LoraSelection {
                text_encoder: &list,
                ..LoraSelection::NONE
            },
        ),
        &f,
    );
    let (o1, o2) = halves(&only_1[0]);
    assert!(relative_error(&o1, &p1) > 1e-3, "text encoder 1 patched");
    assert_eq!(o2, p2, "text encoder 2 unpatched");
    assert_eq!(only_1[1], plain[1], "pooled unpatched");
}

#[test]
fn sdxl_ldm_unet_names_map_to_diffusers() {
    for (ldm, diffusers) in [
        (
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        ),
        (
            "input_blocks_1_0_in_layers_2",
            "down_blocks_0_resnets_0_conv1",
        ),
        ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
        (
            "input_blocks_8_1_proj_in",
            "down_blocks_2_attentions_1_proj_in",
        ),
        ("middle_block_1_proj_out", "mid_block_attentions_0_proj_out"),
        (
            "middle_block_2_emb_layers_1",
            "mid_block_resnets_1_time_emb_proj",
        ),
        (
            "output_blocks_0_1_transformer_blocks_9_ff_net_2",
            "up_blocks_0_attentions_0_transformer_blocks_9_ff_net_2",
        ),
        (
            "output_blocks_5_0_skip_connection",
            "up_blocks_1_resnets_2_conv_shortcut",
        ),
        ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
        ("time_embed_0", "time_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("out_2", "conv_out"),
        ("input_blocks_0_0", "conv_in"),
    ] {
        assert_eq!(
            sdxl_ldm_to_diffusers(ldm).as_deref(),
            Some(diffusers),
            "{ldm}"
        );
    }
    for name in [
        "down_blocks_1_attentions_0_proj_in",
        "mid_block_attentions_0_proj_in",
    ] {
        assert_eq!(sdxl_ldm_to_diffusers(name), None, "{name}");
    }
    assert_eq!(
        sdxl_diffusers_to_ldm("up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k")
            .as_deref(),
        Some("output_blocks_1_1_transformer_blocks_0_attn2_to_k")
    );
    assert_eq!(
        sdxl_diffusers_to_ldm("mid_block.resnets.1.time_emb_proj").as_deref(),
        Some("middle_block_2_emb_layers_1")
    );
}
