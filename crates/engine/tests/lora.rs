//! LoRA merging on the tiny model: weight 0 is the unpatched model bit for bit, a weight w adds
//! w·(alpha/rank)·up@down to the targeted weights, and kohya and PEFT names of the same factors agree.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use atelier_engine::candle::{DType, Device, Tensor};
use atelier_engine::lora::{apply_loras, Lora, LoraSelection, LoraTarget};
use atelier_engine::pipeline::{latents_to_vec, Sd};
use atelier_engine::tiny::{tiny_lora_targets, write_tiny_lora, write_tiny_sd, Family, LoraNaming};
use atelier_engine::weights::{component_files, write_f32_safetensors, SafetensorsFiles};
use atelier_engine::EngineError;

fn outputs(sd: &Sd) -> (Vec<f32>, Vec<f32>) {
    let context = sd.encode_prompt("a photo of a cat", 0).unwrap();
    let x = Sd::noise(3, 64, 64).unwrap();
    let out = sd.unet_forward(&x, 500.0, &context).unwrap();
    (
        context.flatten_all().unwrap().to_vec1().unwrap(),
        latents_to_vec(&out).unwrap(),
    )
}

fn load(dir: &Path, unet: &[(&Lora, f32)], text: &[(&Lora, f32)]) -> Sd {
    Sd::load_with_loras(
        dir,
        &Device::Cpu,
        DType::F32,
        LoraSelection {
            unet,
            text_encoder: text,
            text_encoder_2: &[],
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn setup(family: Family) -> (tempfile::TempDir, Lora, Lora) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_tiny_sd(&model, family, 7).unwrap();
    let kohya = dir.path().join("kohya.safetensors");
    let peft = dir.path().join("peft.safetensors");
    write_tiny_lora(&model, &kohya, LoraNaming::Kohya, 4, 11).unwrap();
    write_tiny_lora(&model, &peft, LoraNaming::Peft, 4, 11).unwrap();
    (dir, Lora::load(&kohya).unwrap(), Lora::load(&peft).unwrap())
}

#[test]
fn weight_zero_is_identical_and_kohya_equals_peft() {
    for family in [Family::Sd1, Family::Sd2] {
        let (dir, kohya, peft) = setup(family);
        let model = dir.path().join("model");
        let targets = tiny_lora_targets(&model).unwrap();
        assert_eq!(kohya.len(), targets.len());
        assert_eq!(peft.len(), targets.len());
        assert!(kohya.layers_for(LoraTarget::TextEncoder) > 0);
        let base = outputs(&load(&model, &[], &[]));
        let zero = outputs(&load(&model, &[(&kohya, 0.0)], &[(&kohya, 0.0)]));
        assert_eq!(base, zero, "weight 0 must be bit-identical");

        let k = outputs(&load(&model, &[(&kohya, 0.8)], &[(&kohya, 0.8)]));
        let p = outputs(&load(&model, &[(&peft, 0.8)], &[(&peft, 0.8)]));
        assert_eq!(k, p, "kohya and PEFT names of the same factors");
        assert!(
            max_abs_diff(&base.0, &k.0) > 1e-3,
            "text encoder output unchanged"
        );
        assert!(max_abs_diff(&base.1, &k.1) > 1e-3, "UNet output unchanged");

        // UNet only: the text encoder's output is untouched.
        let unet_only = outputs(&load(&model, &[(&kohya, 0.8)], &[]));
        assert_eq!(unet_only.0, base.0);
        assert!(max_abs_diff(&base.1, &unet_only.1) > 1e-3);
    }
}

fn read(files: &SafetensorsFiles, name: &str) -> Tensor {
    files.load(name, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn merged_weights_are_w_plus_scaled_up_down() {
    let (dir, kohya, _) = setup(Family::Sd1);
    let model = dir.path().join("model");
    let lora_file = SafetensorsFiles::open(&[dir.path().join("peft.safetensors")]).unwrap();
    let weight = 0.7f32;
    for (target, sub, stems, names) in [
        (
            LoraTarget::Unet,
            "unet",
            &["diffusion_pytorch_model"][..],
            &[
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                "down_blocks.0.resnets.0.conv1",
            ][..],
        ),
        (
            LoraTarget::TextEncoder,
            "text_encoder",
            &["model"][..],
            &["encoder.layers.1.self_attn.q_proj"][..],
        ),
    ] {
        let paths = component_files(&model.join(sub), stems).unwrap();
        let plain = SafetensorsFiles::open(&paths).unwrap();
        let mut patched = SafetensorsFiles::open(&paths).unwrap();
        let applied = apply_loras(&mut patched, target, &[(&kohya, weight)]).unwrap();
        assert_eq!(applied, kohya.layers_for(target));
        for module in names {
            let (file_name, lora_stem) = match target {
                LoraTarget::Unet => (format!("{module}.weight"), format!("unet.{module}")),
                LoraTarget::TextEncoder | LoraTarget::TextEncoder2 => (
                    format!("text_model.{module}.weight"),
                    format!("text_encoder.text_model.{module}"),
                ),
            };
            let w = read(&plain, &file_name);
            let up = read(&lora_file, &format!("{lora_stem}.lora_B.weight"));
            let down = read(&lora_file, &format!("{lora_stem}.lora_A.weight"));
            let rank = down.dims()[0];
            let alpha = read(&lora_file, &format!("{lora_stem}.alpha"))
                .to_scalar::<f32>()
                .unwrap();
            let delta = up
                .flatten_from(1)
                .unwrap()
                .matmul(&down.flatten_from(1).unwrap())
                .unwrap()
                .reshape(w.dims())
                .unwrap();
            let expected =
                (w.clone() + (delta * f64::from(weight * alpha / rank as f32)).unwrap()).unwrap();
            let got = read(&patched, &file_name);
            let diff = (got - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "{file_name}: {diff}");
            let changed = (read(&patched, &file_name) - &w)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(changed > 1e-4, "{file_name} unchanged");
        }
        // An untargeted tensor is untouched.
        let other = if target == LoraTarget::Unet {
            "conv_in.weight"
        } else {
            "text_model.final_layer_norm.weight"
        };
        assert_eq!(
            read(&plain, other)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            read(&patched, other)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}

#[test]
fn corrupt_and_incomplete_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a lora at all").unwrap();
    assert!(matches!(
        Lora::load(&junk),
        Err(EngineError::InvalidModel(_))
    ));
    let half = dir.path().join("half.safetensors");
    write_f32_safetensors(
        &half,
        &[(
            "lora_unet_conv_in.lora_down.weight".into(),
            vec![2, 4],
            vec![0.0; 8],
        )],
    )
    .unwrap();
    assert!(
        matches!(Lora::load(&half), Err(EngineError::InvalidModel(m)) if m.contains("incomplete"))
    );
    let loha = dir.path().join("loha.safetensors");
    write_f32_safetensors(
        &loha,
        &[(
            "lora_unet_conv_in.hada_w1_a".into(),
            vec![2, 2],
            vec![0.0; 4],
        )],
    )
    .unwrap();
    assert!(
        matches!(Lora::load(&loha), Err(EngineError::InvalidModel(m)) if m.contains("lacks 'hada_w1_b'"))
    );
    let nothing = dir.path().join("nothing.safetensors");
    write_f32_safetensors(&nothing, &[("foo.weight".into(), vec![2], vec![0.0; 2])]).unwrap();
    assert!(matches!(
        Lora::load(&nothing),
        Err(EngineError::InvalidModel(_))
    ));
}
