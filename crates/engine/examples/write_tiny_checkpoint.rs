//! Writes the tiny SD 1.x single-file checkpoint and its diffusers twin:
//! `cargo run -p atelier-engine --example write_tiny_checkpoint -- <dir> [seed]` creates `<dir>/sd1-twin`
//! (diffusers layout) and `<dir>/sd1-ldm.safetensors` (the same weights in the original LDM layout), for
//! `tools/reference/check_ldm_checkpoint.py`.

use std::path::PathBuf;

use atelier_engine::tiny::write_tiny_sd1_checkpoint;

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
    Ok(())
}
