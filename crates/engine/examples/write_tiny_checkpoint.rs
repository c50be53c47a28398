//! Writes the tiny SD 1.x, SD 2.x and SDXL single-file checkpoints and their diffusers twins:
//! `cargo run -p atelier-engine --example write_tiny_checkpoint -- <dir> [seed]` creates `<dir>/sd1-twin`
//! (diffusers layout) and `<dir>/sd1-ldm.safetensors` (the same weights in the original LDM layout), and
//! `<dir>/sd2-twin` and `<dir>/sd2-ldm.safetensors` likewise, `<dir>/sdxl-twin` and `<dir>/sdxl-ldm.safetensors`
//! (Stability's SGM layout), and `<dir>/sdxl-refiner-twin` and `<dir>/sdxl-refiner-ldm.safetensors` (the SDXL
//! refiner's SGM layout), for `tools/reference/check_ldm_checkpoint.py`.

use std::path::PathBuf;

use atelier_engine::tiny::{write_tiny_sd1_checkpoint, write_tiny_sd2_checkpoint};
use atelier_engine::tiny_sdxl::{write_tiny_sdxl_checkpoint, write_tiny_sdxl_refiner_checkpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: write_tiny_checkpoint <dir> [seed]")?,
    );
    let seed = match args.next() {
        Some(s) => s.parse()?,
        None => 1234,
    };
    write_tiny_sd1_checkpoint(
        &dir.join("sd1-twin"),
        &dir.join("sd1-ldm.safetensors"),
        seed,
    )?;
    write_tiny_sd2_checkpoint(
        &dir.join("sd2-twin"),
        &dir.join("sd2-ldm.safetensors"),
        seed,
    )?;
    write_tiny_sdxl_checkpoint(
        &dir.join("sdxl-twin"),
        &dir.join("sdxl-ldm.safetensors"),
        seed,
    )?;
    write_tiny_sdxl_refiner_checkpoint(
        &dir.join("sdxl-refiner-twin"),
        &dir.join("sdxl-refiner-ldm.safetensors"),
        seed,
    )?;
    Ok(())
}
