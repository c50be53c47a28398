//! `core_metadata` (generation.md §11).

use super::node;
use crate::field::Ty;
use crate::spec::{Input, NodeSpec};
use serde_json::{json, Map, Value};

const GENERATION_MODES: &[&str] = &[
    "txt2img",
    "img2img",
    "inpaint",
    "outpaint",
    "sdxl_txt2img",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_outpaint",
    "flux_txt2img",
    "flux_img2img",
    "flux_inpaint",
    "flux_outpaint",
    "sd3_txt2img",
    "sd3_img2img",
    "sd3_inpaint",
    "sd3_outpaint",
    "cogview4_txt2img",
    "cogview4_img2img",
    "cogview4_inpaint",
    "cogview4_outpaint",
];

fn opt(name: &'static str, ty: Ty, desc: &'static str) -> Input {
    Input::new(name, ty).optional().desc(desc)
}

pub fn specs() -> Vec<NodeSpec> {
    let model = Ty::Named("ModelIdentifierField");
    let inputs = vec![
        opt(
            "generation_mode",
            Ty::Enum(GENERATION_MODES),
            "The generation mode that output this image",
        ),
        opt("positive_prompt", Ty::Str, "The positive prompt parameter"),
        opt("negative_prompt", Ty::Str, "The negative prompt parameter"),
        opt("width", Ty::Int, "The width parameter"),
        opt("height", Ty::Int, "The height parameter"),
        opt("seed", Ty::Int, "The seed used for noise generation"),
        opt(
            "rand_device",
            Ty::Str,
            "The device used for random number generation",
        ),
        opt(
            "cfg_scale",
            Ty::Float,
            "The classifier-free guidance scale parameter",
        ),
        opt(
            "cfg_rescale_multiplier",
            Ty::Float,
            "Rescale multiplier for CFG guidance",
        ),
        opt("steps", Ty::Int, "The number of steps used for inference"),
        opt("scheduler", Ty::Str, "The scheduler used for inference"),
        opt(
            "seamless_x",
            Ty::Bool,
            "Whether seamless tiling was used on the X axis",
        ),
        opt(
            "seamless_y",
            Ty::Bool,
            "Whether seamless tiling was used on the Y axis",
        ),
        opt("clip_skip", Ty::Int, "The number of skipped CLIP layers"),
        opt("model", model.clone(), "The main model used for inference"),
        opt(
            "controlnets",
            Ty::list(Ty::Any),
            "The ControlNets used for inference",
        ),
        opt(
            "ipAdapters",
            Ty::list(Ty::Any),
            "The IP Adapters used for inference",
        ),
        opt(
            "t2iAdapters",
            Ty::list(Ty::Any),
            "The IP Adapters used for inference",
        ),
        opt("loras", Ty::list(Ty::Any), "The LoRAs used for inference"),
        opt(
            "strength",
            Ty::Float,
            "The strength used for latents-to-latents",
        ),
        opt("init_image", Ty::Str, "The name of the initial image"),
        opt(
            "vae",
            model.clone(),
            "The VAE used for decoding, if the main model's default was not used",
        ),
        opt(
            "qwen3_encoder",
            model.clone(),
            "The Qwen3 text encoder model used",
        ),
        opt(
            "hrf_enabled",
            Ty::Bool,
            "Whether or not high resolution fix was enabled.",
        ),
        opt(
            "hrf_method",
            Ty::Str,
            "The high resolution fix upscale method.",
        ),
        opt(
            "hrf_strength",
            Ty::Float,
            "The high resolution fix img2img strength used in the upscale pass.",
        ),
        opt(
            "positive_style_prompt",
            Ty::Str,
            "The positive style prompt parameter",
        ),
        opt(
            "negative_style_prompt",
            Ty::Str,
            "The negative style prompt parameter",
        ),
        opt("refiner_model", model, "The SDXL Refiner model used"),
        opt(
            "refiner_cfg_scale",
            Ty::Float,
            "The classifier-free guidance scale parameter used for the refiner",
        ),
        opt(
            "refiner_steps",
            Ty::Int,
            "The number of steps used for the refiner",
        ),
        opt(
            "refiner_scheduler",
            Ty::Str,
            "The scheduler used for the refiner",
        ),
        opt(
            "refiner_positive_aesthetic_score",
            Ty::Float,
            "The aesthetic score used for the refiner",
        ),
        opt(
            "refiner_negative_aesthetic_score",
            Ty::Float,
            "The aesthetic score used for the refiner",
        ),
        opt(
            "refiner_start",
            Ty::Float,
            "The start value used for refiner denoising",
        ),
    ];
    let mut spec = node(
        "core_metadata",
        "Core Metadata",
        "2.2.0",
        "metadata",
        inputs,
        "metadata_output",
        vec![("metadata", Ty::Named("MetadataField"))],
        |i, ctx| {
            let mut metadata: Map<String, Value> = i
                .values
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            metadata.insert("app_version".into(), json!(ctx.app_version()));
            let mut out = Map::new();
            out.insert("metadata".into(), Value::Object(metadata));
            Ok(out)
        },
    );
    spec.keeps_extra_keys = true;
    vec![spec]
}
