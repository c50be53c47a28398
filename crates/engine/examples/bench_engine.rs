//! Engine micro-benchmark: `cargo run --release -p atelier-engine --example bench_engine -- <tiny|sd15> <dir> [size] [iters]`.
//!
//! Writes the model into `<dir>` if it is not there (the tiny SD1 model, or SD1.5-shaped random UNet and VAE
//! weights), loads the UNet and VAE, and prints one JSON line: peak RSS after loading (VmHWM), the weights'
//! size, the mean time of one UNet step (a CFG batch of 2 at `size`×`size` pixels, 77 context tokens) and of one
//! VAE decode. `bench/engine.sh` runs it next to the same measurement in PyTorch diffusers.

use std::path::Path;
use std::time::Instant;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::pipeline::{load_unet, load_vae};
use atelier_engine::tiny::{write_random_unet, write_random_vae, write_tiny_sd, Family};
use serde_json::json;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

fn sd15_unet() -> serde_json::Value {
    // stable-diffusion-v1-5/unet/config.json
    json!({
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    })
}

fn sd15_vae() -> serde_json::Value {
    // stable-diffusion-v1-5/vae/config.json
    json!({
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
        "sample_size": 512, "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_engine <tiny|sd15> <dir> [size] [iters]";
    let kind = args.first().ok_or(usage)?.as_str();
    let dir = Path::new(args.get(1).ok_or(usage)?);
    let size: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let iters: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let context_dim = match kind {
        "tiny" => {
            if !dir.join("unet").join("config.json").is_file() {
                write_tiny_sd(dir, Family::Sd1, 1234)?;
            }
            32
        }
        "sd15" => {
            if !dir.join("unet").join("config.json").is_file() {
                write_random_unet(&dir.join("unet"), &sd15_unet(), 1)?;
                write_random_vae(&dir.join("vae"), &sd15_vae(), 2)?;
            }
            768
        }
        _ => return Err(usage.into()),
    };
    let weights = dir_bytes(&dir.join("unet")) + dir_bytes(&dir.join("vae"));
    let before = vm_hwm_kib();
    let start = Instant::now();
    let (unet, _) = load_unet(&dir.join("unet"), DType::F32, &Device::Cpu)?;
    let (vae, spec) = load_vae(&dir.join("vae"), DType::F32, &Device::Cpu)?;
    let load_s = start.elapsed().as_secs_f64();
    let peak = vm_hwm_kib();

    let lat = size / 8;
    let n = 2 * 4 * lat * lat;
    let x = Tensor::from_vec(
        atelier_engine::noise::randn(1, n),
        (2, 4, lat, lat),
        &Device::Cpu,
    )?;
    let ctx = Tensor::from_vec(
        atelier_engine::noise::randn(2, 2 * 77 * context_dim),
        (2, 77, context_dim),
        &Device::Cpu,
    )?;
    let _ = unet.forward(&x, 500.0, &ctx)?; // warm-up
    let start = Instant::now();
    for _ in 0..iters {
        let _ = unet.forward(&x, 500.0, &ctx)?;
    }
    let unet_ms = start.elapsed().as_secs_f64() * 1000.0 / iters as f64;

    let z = (x.narrow(0, 0, 1)? / spec.scaling_factor)?;
    let _ = vae.decode(&z)?;
    let start = Instant::now();
    for _ in 0..iters {
        let _ = vae.decode(&z)?;
    }
    let vae_ms = start.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    println!(
        "{}",
        json!({
            "impl": "candle", "model": kind, "size": size, "iters": iters,
            "weights_mib": weights as f64 / 1048576.0,
            "rss_before_load_mib": before as f64 / 1024.0,
            "peak_rss_after_load_mib": peak as f64 / 1024.0,
            "load_s": load_s,
            "unet_step_ms": unet_ms, "vae_decode_ms": vae_ms,
        })
    );
    Ok(())
}
