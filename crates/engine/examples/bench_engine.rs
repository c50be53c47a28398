//! Engine micro-benchmark: `cargo run --release -p atelier-engine --example bench_engine -- <tiny|sd15> <dir> [size] [iters]`.
//!
//! Writes the model into `<dir>` if it is not there (the tiny SD1 model, or SD1.5-shaped random UNet and VAE
//! weights), loads the UNet and VAE, and prints one JSON line: peak RSS after loading (VmHWM), the weights'
//! size, the mean time of one UNet step (a CFG batch of 2 at `size`×`size` pixels, 77 context tokens) and of one
//! VAE decode. `bench/engine.sh` runs it next to the same measurement in PyTorch diffusers.
//!
//! Two more modes compare our fast ops (`atelier_engine::ops`) with candle's, interleaved in one process
//! (best of `iters`), and print one JSON line each:
//! - `bench_engine vae <dir> [size] [iters]`: our VAE decode (`atelier_engine::vae`) against candle-transformers'
//!   on the weights in `<dir>/vae` (e.g. those `sd15` wrote), with their max difference.
//!   `vae-ours` times ours alone (for profilers).
//! - `bench_engine layers - [size] [iters]`: the UNet's layer shapes at `size` (CFG batch 2): group norm + SiLU,
//!   3×3 convolutions, 1×1 convolutions, nearest upsampling, attention softmax.

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

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Best-of-`iters` milliseconds of `a` and `b`, run alternately.
fn race(
    iters: usize,
    mut a: impl FnMut() -> BoxResult<Tensor>,
    mut b: impl FnMut() -> BoxResult<Tensor>,
) -> BoxResult<(f64, f64)> {
    let (mut best_a, mut best_b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        a()?;
        best_a = best_a.min(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        b()?;
        best_b = best_b.min(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((best_a, best_b))
}

/// CPU time (user + system) of this process so far, in ms (from /proc/self/stat, 100 Hz ticks).
fn cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            Some((ticks(11)? + ticks(12)?) * 10.0)
        })
        .unwrap_or(0.0)
}

fn randn(shape: &[usize], seed: u64) -> BoxResult<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(
        atelier_engine::noise::randn(seed, n),
        shape,
        &Device::Cpu,
    )?)
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> BoxResult<f64> {
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-30);
    Ok(f64::from(diff / scale))
}

/// `bench_engine vae`: our VAE decode against candle-transformers'.
fn bench_vae(dir: &Path, size: usize, iters: usize, ours_only: bool) -> BoxResult<()> {
    use atelier_engine::weights::{component_files, SafetensorsFiles};
    let spec = atelier_engine::config::vae_spec(&dir.join("config.json"))?;
    let files = || -> BoxResult<_> {
        Ok(SafetensorsFiles::open(&component_files(
            dir,
            &["diffusion_pytorch_model", "model"],
        )?)?
        .into_var_builder(DType::F32, &Device::Cpu))
    };
    let theirs = candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
        files()?,
        spec.in_channels,
        spec.out_channels,
        spec.config.clone(),
    )?;
    let ours = atelier_engine::vae::AutoEncoderKL::new(
        files()?,
        spec.in_channels,
        spec.out_channels,
        spec.config.clone(),
    )?;
    let lat = size / 8;
    let z = (randn(&[1, spec.config.latent_channels, lat, lat], 1)? / spec.scaling_factor)?;
    if ours_only {
        // For profilers: our decode alone.
        let cpu = cpu_ms();
        let (ms, _) = race(iters, || Ok(ours.decode(&z)?), || Ok(z.clone()))?;
        let cpu = (cpu_ms() - cpu) / iters.max(1) as f64;
        println!(
            "{}",
            json!({"mode": "vae-ours", "size": size, "iters": iters, "ours_ms": ms, "cpu_ms": cpu})
        );
        return Ok(());
    }
    let (a, b) = (ours.decode(&z)?, theirs.decode(&z)?);
    let diff = max_rel_diff(&a, &b)?;
    let (ours_ms, candle_ms) = race(iters, || Ok(ours.decode(&z)?), || Ok(theirs.decode(&z)?))?;
    println!(
        "{}",
        json!({"mode": "vae", "size": size, "iters": iters, "ours_ms": ours_ms, "candle_ms": candle_ms,
               "speedup": candle_ms / ours_ms, "max_rel_diff": diff})
    );
    Ok(())
}

/// `bench_engine layers`: our ops against candle's on the SD1.5 UNet's shapes at `size` (batch 2).
fn bench_layers(size: usize, iters: usize) -> BoxResult<()> {
    use atelier_engine::candle::Module;
    use atelier_engine::ops;
    use candle_nn::Conv2dConfig;
    let lat = size / 8;
    let mut rows = vec![];
    let mut row = |name: String, ours: f64, candle: f64, diff: f64| {
        rows.push(json!({"op": name, "ours_ms": ours, "candle_ms": candle,
                         "speedup": candle / ours, "max_rel_diff": diff}));
    };
    for (c, h) in [(320, lat), (640, lat / 2), (1280, lat / 4), (1280, lat / 8)] {
        let x = randn(&[2, c, h, h], 1)?;
        let (w, b) = (randn(&[c], 2)?, randn(&[c], 3)?);
        let ours = ops::GroupNorm::new(w.clone(), b.clone(), c, 32, 1e-5)?;
        let theirs = candle_nn::GroupNorm::new(w, b, c, 32, 1e-5)?;
        let diff = max_rel_diff(
            &ours.forward_silu(&x)?,
            &candle_nn::ops::silu(&theirs.forward(&x)?)?,
        )?;
        let (o, t) = race(
            iters,
            || Ok(ours.forward_silu(&x)?),
            || Ok(candle_nn::ops::silu(&theirs.forward(&x)?)?),
        )?;
        row(format!("group_norm+silu 2x{c}x{h}x{h}"), o, t, diff);

        let weight = (randn(&[c, c, 3, 3], 4)? * 0.02)?;
        let bias = randn(&[c], 5)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let ours = ops::Conv2d::new(weight.clone(), Some(bias.clone()), cfg)?;
        let theirs = candle_nn::Conv2d::new(weight, Some(bias), cfg);
        let diff = max_rel_diff(&ours.forward(&x)?, &theirs.forward(&x)?)?;
        let (o, t) = race(iters, || Ok(ours.forward(&x)?), || Ok(theirs.forward(&x)?))?;
        row(format!("conv3x3 2x{c}x{h}x{h}"), o, t, diff);

        let weight = (randn(&[c, c, 1, 1], 6)? * 0.05)?;
        let bias = randn(&[c], 7)?;
        let ours = ops::Conv2d::new(weight.clone(), Some(bias.clone()), Default::default())?;
        let theirs = candle_nn::Conv2d::new(weight, Some(bias), Default::default());
        let diff = max_rel_diff(&ours.forward(&x)?, &theirs.forward(&x)?)?;
        let (o, t) = race(iters, || Ok(ours.forward(&x)?), || Ok(theirs.forward(&x)?))?;
        row(format!("conv1x1 2x{c}x{h}x{h}"), o, t, diff);

        let diff = max_rel_diff(
            &ops::upsample_nearest2x(&x)?,
            &x.upsample_nearest2d(2 * h, 2 * h)?,
        )?;
        let (o, t) = race(
            iters,
            || Ok(ops::upsample_nearest2x(&x)?),
            || Ok(x.upsample_nearest2d(2 * h, 2 * h)?),
        )?;
        row(format!("upsample2x 2x{c}x{h}x{h}"), o, t, diff);

        // Attention scores of the self-attention (8 heads, seq h·h) and the cross-attention (77 tokens).
        for keys in [h * h, 77] {
            let s = (randn(&[2 * 8, h * h, keys], 8)? * 3.0)?;
            let diff = max_rel_diff(
                &ops::softmax_last_dim(&s)?,
                &candle_nn::ops::softmax_last_dim(&s)?,
            )?;
            let (o, t) = race(
                iters,
                || Ok(ops::softmax_last_dim(&s)?),
                || Ok(candle_nn::ops::softmax_last_dim(&s)?),
            )?;
            row(format!("softmax 16x{}x{keys}", h * h), o, t, diff);
        }
    }
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_engine <tiny|sd15|vae|layers> <dir> [size] [iters]";
    let kind = args.first().ok_or(usage)?.as_str();
    let dir = Path::new(args.get(1).ok_or(usage)?);
    let size: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let iters: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    match kind {
        "vae" | "vae-ours" => return bench_vae(dir, size, iters, kind == "vae-ours"),
        "layers" => return bench_layers(size, iters),
        _ => {}
    }
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
