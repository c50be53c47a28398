//! Writes the tiny test models: `cargo run -p atelier-engine --example write_tiny -- <dir> [seed]`.
//!
//! Creates `<dir>/sd1`, `<dir>/sd2` and `<dir>/sd2v` (diffusers layout), the models the parity fixtures of
//! `tools/reference/make_pipeline_fixtures.py` are computed on, and `<dir>/sd1-vae-ldm.safetensors`: sd1's VAE
//! as a single-file checkpoint in the original LDM layout (`tools/reference/check_ldm_vae.py`), and
//! `<dir>/sd1-lora.safetensors` / `<dir>/sd2-lora.safetensors`: rank-4 kohya-named LoRAs over sd1's and sd2's
//! attention projections and a conv (`tools/reference/make_lora_fixtures.py`), `<dir>/sdxl`: the tiny SDXL
//! model (`tools/reference/make_sdxl_fixtures.py`), and `<dir>/sdxl-lora.safetensors`: a rank-4 kohya LoRA for
//! it with `lora_te1_`/`lora_te2_` and LDM-named UNet keys, and `<dir>/sdxl-lora-diffusers-names.safetensors`: the
//! same factors with flattened diffusers UNet names (`tools/reference/make_sdxl_lora_fixtures.py`), and
//! `<dir>/sdxl-refiner`: the tiny SDXL refiner (`tools/reference/make_sdxl_refiner_fixtures.py`).

use std::path::PathBuf;

use atelier_engine::tiny::{write_ldm_vae, write_tiny_lora, write_tiny_sd, Family, LoraNaming};
use atelier_engine::tiny_sdxl::{
    write_tiny_sdxl, write_tiny_sdxl_lora, write_tiny_sdxl_refiner, SdxlLoraNaming,
};

/// The seed the committed fixtures were made with.
const DEFAULT_SEED: u64 = 1234;

/// The rank of the tiny LoRAs.
const LORA_RANK: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: write_tiny <dir> [seed]")?);
    let seed = match args.next() {
        Some(s) => s.parse()?,
        None => DEFAULT_SEED,
    };
    for (name, family) in [
        ("sd1", Family::Sd1),
        ("sd2", Family::Sd2),
        ("sd2v", Family::Sd2V),
    ] {
        write_tiny_sd(&dir.join(name), family, seed)?;
    }
    write_ldm_vae(
        &dir.join("sd1").join("vae"),
        &dir.join("sd1-vae-ldm.safetensors"),
        false,
    )?;
    for name in ["sd1", "sd2"] {
        write_tiny_lora(
            &dir.join(name),
            &dir.join(format!("{name}-lora.safetensors")),
            LoraNaming::Kohya,
            LORA_RANK,
            seed + 1,
        )?;
    }
    write_tiny_sdxl(&dir.join("sdxl"), seed)?;
    for (file, naming) in [
        ("sdxl-lora.safetensors", SdxlLoraNaming::KohyaLdm),
        (
            "sdxl-lora-diffusers-names.safetensors",
            SdxlLoraNaming::KohyaDiffusers,
        ),
    ] {
        write_tiny_sdxl_lora(
            &dir.join("sdxl"),
            &dir.join(file),
            naming,
            LORA_RANK,
            seed + 1,
        )?;
    }
    write_tiny_sdxl_refiner(&dir.join("sdxl-refiner"), seed)?;
    Ok(())
}
