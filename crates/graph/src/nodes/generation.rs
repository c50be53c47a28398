//! Stable Diffusion nodes (generation.md §8.3–8.6): prompts, noise, denoising, VAE decode and
//! encode. Heavy values (tensors, conditioning) stay on the server and travel as names; the
//! work itself is the [`Context`]'s, which hands it to the engine.

use super::{board_and_metadata, fields, image_output_fields, node};
use crate::field::Ty;
use crate::spec::{Input, Inputs, NodeSpec};
use crate::{Context, NodeError};
use serde_json::{json, Map, Value};

/// Every scheduler name the contract defines (§10.6); which ones run is the engine's to say.
pub const SCHEDULERS: &[&str] = &[
    "ddim",
    "ddpm",
    "deis",
    "deis_k",
    "lms",
    "lms_k",
    "pndm",
    "heun",
    "heun_k",
    "euler",
    "euler_k",
    "euler_a",
    "kdpm_2",
    "kdpm_2_k",
    "kdpm_2_a",
    "kdpm_2_a_k",
    "dpmpp_2s",
    "dpmpp_2s_k",
    "dpmpp_2m",
    "dpmpp_2m_k",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_k",
    "dpmpp_3m",
    "dpmpp_3m_k",
    "dpmpp_sde",
    "dpmpp_sde_k",
    "er_sde",
    "unipc",
    "unipc_k",
    "lcm",
    "tcd",
];

const NOISE_TYPES: &[&str] = &[
    "SD", "FLUX", "FLUX.2", "SD3", "CogView4", "Z-Image", "Anima",
];
const SEED_MAX: i64 = 4_294_967_295;

/// The node's inputs as one JSON object: what the server's engine adapter reads.
fn request(i: &Inputs) -> Value {
    Value::Object(i.values.clone())
}

fn latents_output(name: String, seed: Option<u32>, width: u32, height: u32) -> Map<String, Value> {
    fields(vec![
        ("latents", json!({"latents_name": name, "seed": seed})),
        ("width", json!(width)),
        ("height", json!(height)),
    ])
}

fn conditioning_output(name: String, mask: &Value) -> Map<String, Value> {
    fields(vec![(
        "conditioning",
        json!({"conditioning_name": name, "mask": mask}),
    )])
}

/// `seed % (SEED_MAX + 1)`, non-negative, as the reference's before-validator does.
fn wrap_seed(v: &Value) -> Value {
    match v.as_i64() {
        Some(s) => json!(s.rem_euclid(SEED_MAX + 1)),
        None => v.clone(),
    }
}

fn clip_conn(name: &'static str) -> Input {
    Input::new(name, Ty::Named("CLIPField"))
        .conn()
        .desc("CLIP (tokenizer, text encoder, LoRAs) and skipped layer count")
}

fn mask() -> Input {
    Input::new("mask", Ty::Named("TensorField"))
        .optional()
        .desc("A mask defining the region that this conditioning prompt applies to.")
}

fn denoise(i: &Inputs, ctx: &mut dyn Context) -> Result<Map<String, Value>, NodeError> {
    if i.get("noise").is_null() && i.get("latents").is_null() {
        return Err(NodeError::value("'latents' or 'noise' must be provided!"));
    }
    let steps = i.int("steps")?;
    if let Value::Array(list) = i.get("cfg_scale") {
        if i64::try_from(list.len()).ok() != Some(steps) {
            return Err(NodeError::value(
                "cfg_scale (list) must have the same length as the number of steps",
            ));
        }
    }
    let (name, width, height) = ctx.denoise(&request(i))?;
    Ok(latents_output(name, None, width, height))
}

pub fn specs() -> Vec<NodeSpec> {
    let cond = Ty::Named("ConditioningField");
    let latents = Ty::Named("LatentsField");
    let vae = || Input::new("vae", Ty::Named("VAEField")).conn().desc("VAE");
    let mut noise_seed = Input::new("seed", Ty::Int)
        .default(json!(0))
        .ge(json!(0))
        .le(json!(SEED_MAX))
        .desc("Seed for random number generation");
    noise_seed.before = Some(wrap_seed);
    let mut l2i_inputs = board_and_metadata();
    l2i_inputs.extend([
        Input::new("latents", latents.clone()).conn().desc("Latents tensor"),
        vae(),
        Input::new("tiled", Ty::Bool)
            .default(json!(false))
            .desc("Processing using overlapping tiles (reduce memory consumption)"),
        Input::new("tile_size", Ty::Int)
            .default(json!(0))
            .multiple_of(8)
            .desc("The tile size for VAE tiling in pixels (image space). If set to 0, the default tile size for the model will be used."),
        Input::new("fp32", Ty::Bool)
            .default(json!(false))
            .desc("Whether or not to use full float32 precision"),
    ]);
    let mut specs = vec![
        node(
            "compel",
            "Prompt - SD1.5",
            "1.2.1",
            "conditioning",
            vec![
                Input::new("prompt", Ty::Str)
                    .default(json!(""))
                    .desc("Prompt to be parsed by Compel to create a conditioning tensor"),
                clip_conn("clip"),
                mask(),
            ],
            "conditioning_output",
            vec![("conditioning", cond.clone())],
            |i, ctx| {
                let name = ctx.encode_prompt(&request(i))?;
                Ok(conditioning_output(name, i.get("mask")))
            },
        ),
        node(
            "sdxl_compel_prompt",
            "Prompt - SDXL",
            "1.2.1",
            "conditioning",
            vec![
                Input::new("prompt", Ty::Str)
                    .default(json!(""))
                    .desc("Prompt to be parsed by Compel to create a conditioning tensor"),
                Input::new("style", Ty::Str)
                    .default(json!(""))
                    .desc("Prompt to be parsed by Compel to create a conditioning tensor"),
                Input::new("original_width", Ty::Int).default(json!(1024)),
                Input::new("original_height", Ty::Int).default(json!(1024)),
                Input::new("crop_top", Ty::Int).default(json!(0)),
                Input::new("crop_left", Ty::Int).default(json!(0)),
                Input::new("target_width", Ty::Int).default(json!(1024)),
                Input::new("target_height", Ty::Int).default(json!(1024)),
                clip_conn("clip"),
                clip_conn("clip2"),
                mask(),
            ],
            "conditioning_output",
            vec![("conditioning", cond.clone())],
            |i, ctx| {
                let name = ctx.encode_prompt(&request(i))?;
                Ok(conditioning_output(name, i.get("mask")))
            },
        ),
        node(
            "sdxl_refiner_compel_prompt",
            "Prompt - SDXL Refiner",
            "1.1.2",
            "conditioning",
            vec![
                Input::new("style", Ty::Str)
                    .default(json!(""))
                    .desc("Prompt to be parsed by Compel to create a conditioning tensor"),
                Input::new("original_width", Ty::Int).default(json!(1024)),
                Input::new("original_height", Ty::Int).default(json!(1024)),
                Input::new("crop_top", Ty::Int).default(json!(0)),
                Input::new("crop_left", Ty::Int).default(json!(0)),
                Input::new("aesthetic_score", Ty::Float)
                    .default(json!(6.0))
                    .desc("The aesthetic score to apply to the conditioning tensor"),
                clip_conn("clip2"),
            ],
            "conditioning_output",
            vec![("conditioning", cond.clone())],
            |i, ctx| {
                let name = ctx.encode_prompt(&request(i))?;
                Ok(conditioning_output(name, i.get("mask")))
            },
        ),
        node(
            "noise",
            "Create Latent Noise",
            "1.1.0",
            "latents",
            vec![
                Input::new("noise_type", Ty::Enum(NOISE_TYPES))
                    .default(json!("SD"))
                    .desc("Architecture-specific noise type."),
                noise_seed,
                Input::new("width", Ty::Int)
                    .default(json!(512))
                    .multiple_of(8)
                    .gt(json!(0))
                    .desc("Width of output (px)"),
                Input::new("height", Ty::Int)
                    .default(json!(512))
                    .multiple_of(8)
                    .gt(json!(0))
                    .desc("Height of output (px)"),
                Input::new("use_cpu", Ty::Bool)
                    .default(json!(true))
                    .desc("Use CPU for noise generation (for reproducible results across platforms)"),
            ],
            "noise_output",
            vec![("noise", latents.clone()), ("width", Ty::Int), ("height", Ty::Int)],
            |i, ctx| {
                if i.str("noise_type")? != "SD" {
                    return Err(NodeError::value(format!(
                        "Noise type {} is not supported by this server",
                        i.str("noise_type")?
                    )));
                }
                let seed = u32::try_from(i.int("seed")?).unwrap_or(0);
                let width = u32::try_from(i.int("width")?).unwrap_or(0);
                let height = u32::try_from(i.int("height")?).unwrap_or(0);
                let name = ctx.make_noise(seed, width, height)?;
                Ok(fields(vec![
                    ("noise", json!({"latents_name": name, "seed": seed})),
                    ("width", json!(width)),
                    ("height", json!(height)),
                ]))
            },
        ),
        node(
            "denoise_latents",
            "Denoise - SD1.5, SDXL",
            "1.6.0",
            "latents",
            vec![
                Input::new("positive_conditioning", Ty::one_or_list(cond.clone()))
                    .conn()
                    .desc("Positive conditioning tensor"),
                Input::new("negative_conditioning", Ty::one_or_list(cond.clone()))
                    .conn()
                    .desc("Negative conditioning tensor"),
                Input::new("noise", latents.clone()).optional().conn().desc("Noise tensor"),
                Input::new("steps", Ty::Int)
                    .default(json!(10))
                    .gt(json!(0))
                    .desc("Number of steps to run"),
                Input::new("cfg_scale", Ty::one_or_list(Ty::Float))
                    .default(json!(7.5))
                    .desc("Classifier-Free Guidance scale"),
                Input::new("denoising_start", Ty::Float)
                    .default(json!(0.0))
                    .ge(json!(0))
                    .le(json!(1))
                    .desc("When to start denoising, expressed a percentage of total steps"),
                Input::new("denoising_end", Ty::Float)
                    .default(json!(1.0))
                    .ge(json!(0))
                    .le(json!(1))
                    .desc("When to stop denoising, expressed a percentage of total steps"),
                Input::new("scheduler", Ty::Enum(SCHEDULERS))
                    .default(json!("euler"))
                    .desc("Scheduler to use during inference"),
                Input::new("unet", Ty::Named("UNetField"))
                    .conn()
                    .desc("UNet (scheduler, LoRAs)"),
                Input::new("control", Ty::Any).optional().conn(),
                Input::new("ip_adapter", Ty::Any).optional().conn(),
                Input::new("t2i_adapter", Ty::Any).optional().conn(),
                Input::new("cfg_rescale_multiplier", Ty::Float)
                    .default(json!(0))
                    .ge(json!(0))
                    .lt(json!(1))
                    .desc("Rescale multiplier for CFG guidance, used for models trained with zero-terminal SNR"),
                Input::new("latents", latents.clone()).optional().conn().desc("Latents tensor"),
                Input::new("denoise_mask", Ty::Named("DenoiseMaskField"))
                    .optional()
                    .conn()
                    .desc("A mask of the region to apply the denoising process to. Values of 0.0 represent the regions to be fully denoised, and 1.0 represent the regions to be preserved."),
                Input::new("hidiffusion", Ty::Bool).default(json!(false)),
                Input::new("hidiffusion_raunet", Ty::Bool).default(json!(true)),
                Input::new("hidiffusion_window_attn", Ty::Bool).default(json!(true)),
                Input::new("hidiffusion_t1_ratio", Ty::Float)
                    .default(json!(0.4))
                    .ge(json!(0))
                    .le(json!(1)),
                Input::new("hidiffusion_t2_ratio", Ty::Float)
                    .default(json!(0.0))
                    .ge(json!(0))
                    .le(json!(1)),
            ],
            "latents_output",
            vec![("latents", latents.clone()), ("width", Ty::Int), ("height", Ty::Int)],
            denoise,
        ),
        node(
            "l2i",
            "Latents to Image - SD1.5, SDXL",
            "1.3.2",
            "latents",
            l2i_inputs,
            "image_output",
            image_output_fields(),
            |i, ctx| {
                let image = ctx.decode_latents(&request(i))?;
                i.save_image(&image, ctx)
            },
        ),
        node(
            "i2l",
            "Image to Latents - SD1.5, SDXL",
            "1.2.0",
            "latents",
            vec![
                Input::new("image", Ty::Named("ImageField")).desc("The image to encode"),
                vae(),
                Input::new("tiled", Ty::Bool)
                    .default(json!(false))
                    .desc("Processing using overlapping tiles (reduce memory consumption)"),
                Input::new("tile_size", Ty::Int)
                    .default(json!(0))
                    .multiple_of(8)
                    .desc("The tile size for VAE tiling in pixels (image space). If set to 0, the default tile size for the model will be used."),
                Input::new("fp32", Ty::Bool)
                    .default(json!(false))
                    .desc("Whether or not to use full float32 precision"),
                Input::new("color_compensation", Ty::Enum(&["None", "SDXL"]))
                    .default(json!("None"))
                    .desc("Apply VAE scaling compensation when encoding images (reduces color drift)."),
            ],
            "latents_output",
            vec![("latents", latents), ("width", Ty::Int), ("height", Ty::Int)],
            |i, ctx| {
                let image = i.image("image", ctx)?;
                let (name, width, height) = ctx.encode_image(&image, &request(i))?;
                Ok(latents_output(name, None, width, height))
            },
        ),
    ];
    for spec in &mut specs {
        spec.tags = match spec.type_name {
            "compel" => &["prompt", "compel"],
            "sdxl_compel_prompt" | "sdxl_refiner_compel_prompt" => &["sdxl", "compel", "prompt"],
            "noise" => &["latents", "noise"],
            "denoise_latents" => &[
                "latents", "denoise", "txt2img", "t2i", "t2l", "img2img", "i2i", "l2l",
            ],
            "l2i" => &["latents", "image", "vae", "l2i"],
            _ => &["latents", "image", "vae", "i2l"],
        };
    }
    specs
}
