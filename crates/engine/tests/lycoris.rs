//! LyCORIS layer types on a hand-made model: each type's change lands on the right weight (and bias) with the
//! right shape and values, and malformed layers (missing halves, shapes that do not fit) are clear errors.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use atelier_engine::candle::{DType, Device};
use atelier_engine::lora::{apply_loras, Lora, LoraTarget};
use atelier_engine::weights::{write_f32_safetensors, SafetensorsFiles};
use atelier_engine::EngineError;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn t(name: &str, shape: &[usize], values: &[f32]) -> (String, Vec<usize>, Vec<f32>) {
    assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
    (name.to_string(), shape.to_vec(), values.to_vec())
}

fn seq(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * scale)
        .collect()
}

/// A "UNet" with a linear `lin` (6×4, biased), a 3×3 conv `conv` (4×2×3×3), a 1×1 conv `pw` (4×2×1×1) and a
/// norm `norm` (4, biased).
fn model(dir: &Path) -> PathBuf {
    let path = dir.join("model.safetensors");
    write_f32_safetensors(
        &path,
        &[
            t("lin.weight", &[6, 4], &seq(24, 0.1)),
            t("lin.bias", &[6], &seq(6, 0.1)),
            t("conv.weight", &[4, 2, 3, 3], &seq(72, 0.05)),
            t("pw.weight", &[4, 2, 1, 1], &seq(8, 0.2)),
            t("norm.weight", &[4], &[1.0, 0.5, 2.0, 1.5]),
            t("norm.bias", &[4], &[0.0, 0.1, 0.2, 0.3]),
        ],
    )
    .unwrap();
    path
}

/// The change `tensors` (a LoRA file) at `weight` makes to each of the model's tensors, in order:
/// `lin.weight`, `lin.bias`, `conv.weight`, `pw.weight`, `norm.weight`, `norm.bias`.
fn deltas(tensors: &Tensors, weight: f32) -> Result<Vec<Vec<f32>>, EngineError> {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let file = dir.path().join("lycoris.safetensors");
    write_f32_safetensors(&file, tensors).unwrap();
    let lora = Lora::load(&file)?;
    let base = SafetensorsFiles::open(&[&model]).unwrap();
    let mut patched = SafetensorsFiles::open(&[&model]).unwrap();
    apply_loras(&mut patched, LoraTarget::Unet, &[(&lora, weight)])?;
    Ok([
        "lin.weight",
        "lin.bias",
        "conv.weight",
        "pw.weight",
        "norm.weight",
        "norm.bias",
    ]
    .iter()
    .map(|n| {
        let a = patched.load(n, DType::F32, &Device::Cpu).unwrap();
        let b = base.load(n, DType::F32, &Device::Cpu).unwrap();
        (a - b).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    })
    .collect())
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

#[test]
fn loha_is_a_hadamard_product_scaled_by_alpha_over_rank() {
    // (w1_a @ w1_b) ⊙ (w2_a @ w2_b), rank 1, alpha 2: scale 2; at weight 0.5 the change is the product itself.
    let w1_a = [1.0, 2.0, 0.0, 1.0, -1.0, 3.0];
    let w1_b = [1.0, 0.5, -1.0, 2.0];
    let w2_a = [2.0, 1.0, 1.0, 0.0, 1.0, -2.0];
    let w2_b = [0.5, 1.0, 1.0, -0.5];
    let d = deltas(
        &vec![
            t("lora_unet_lin.hada_w1_a", &[6, 1], &w1_a),
            t("lora_unet_lin.hada_w1_b", &[1, 4], &w1_b),
            t("lora_unet_lin.hada_w2_a", &[6, 1], &w2_a),
            t("lora_unet_lin.hada_w2_b", &[1, 4], &w2_b),
            t("lora_unet_lin.alpha", &[], &[2.0]),
        ],
        0.5,
    )
    .unwrap();
    let want: Vec<f32> = (0..24)
        .map(|k| w1_a[k / 4] * w1_b[k % 4] * w2_a[k / 4] * w2_b[k % 4])
        .collect();
    close(&d[0], &want);
    close(&d[1], &zeros(6));
    close(&d[2], &zeros(72));
}

#[test]
fn loha_on_a_conv_flattens_or_rebuilds_the_tucker_core() {
    // Flattened: [4, r] @ [r, 2·3·3] reshaped to the conv's shape.
    let d = deltas(
        &vec![
            t("lora_unet_conv.hada_w1_a", &[4, 2], &seq(8, 0.3)),
            t("lora_unet_conv.hada_w1_b", &[2, 18], &seq(36, 0.2)),
            t("lora_unet_conv.hada_w2_a", &[4, 2], &seq(8, 0.1)),
            t("lora_unet_conv.hada_w2_b", &[2, 18], &seq(36, 0.4)),
        ],
        1.0,
    )
    .unwrap();
    assert!(d[2].iter().any(|v| *v != 0.0));
    // Tucker with a 1×1 core equal to the identity is the flattened product of the same factors (w·_a
    // transposed), with a 3×3 core that is the identity at its centre only the centre taps change.
    let core: Vec<f32> = (0..2 * 2 * 9)
        .map(|k| {
            let (i, j, tap) = (k / 18, k / 9 % 2, k % 9);
            if i == j && tap == 4 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let d = deltas(
        &vec![
            t("lora_unet_conv.hada_w1_a", &[2, 4], &seq(8, 0.3)),
            t("lora_unet_conv.hada_w1_b", &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
            t("lora_unet_conv.hada_t1", &[2, 2, 3, 3], &core),
            t("lora_unet_conv.hada_w2_a", &[2, 4], &seq(8, 0.1)),
            t("lora_unet_conv.hada_w2_b", &[2, 2], &[1.0, 0.0, 0.0, 1.0]),
            t("lora_unet_conv.hada_t2", &[2, 2, 3, 3], &core),
            t("lora_unet_conv.alpha", &[], &[2.0]),
        ],
        1.0,
    )
    .unwrap();
    let (a1, a2) = (seq(8, 0.3), seq(8, 0.1));
    let b1 = [1.0, 2.0, 3.0, 4.0];
    let b2 = [1.0, 0.0, 0.0, 1.0];
    for o in 0..4 {
        for n in 0..2 {
            for tap in 0..9 {
                let got = d[2][o * 18 + n * 9 + tap];
                let want = if tap == 4 {
                    let r1: f32 = (0..2).map(|i| a1[i * 4 + o] * b1[i * 2 + n]).sum();
                    let r2: f32 = (0..2).map(|i| a2[i * 4 + o] * b2[i * 2 + n]).sum();
                    r1 * r2
                } else {
                    0.0
                };
                assert!((got - want).abs() < 1e-5, "{o} {n} {tap}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn lokr_is_a_kronecker_product_in_each_form() {
    // kron([1×2], [6×2]) on the linear: w1 full, w2 low rank (rank 1 from w2_b, alpha 0.5 → scale 0.5).
    let w1 = [1.0, -2.0];
    let w2_a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let w2_b = [1.0, 0.5];
    let d = deltas(
        &vec![
            t("lora_unet_lin.lokr_w1", &[1, 2], &w1),
            t("lora_unet_lin.lokr_w2_a", &[6, 1], &w2_a),
            t("lora_unet_lin.lokr_w2_b", &[1, 2], &w2_b),
            t("lora_unet_lin.alpha", &[], &[0.5]),
        ],
        1.0,
    )
    .unwrap();
    let want: Vec<f32> = (0..24)
        .map(|k| {
            let (row, col) = (k / 4, k % 4);
            0.5 * w1[col / 2] * w2_a[row] * w2_b[col % 2]
        })
        .collect();
    close(&d[0], &want);
    // A full 4-D w2 on the 3×3 conv: w1 [2, 1] ⊗ w2 [2, 2, 3, 3]; no rank, so the alpha is not used.
    let w2 = seq(36, 0.1);
    let d = deltas(
        &vec![
            t("lora_unet_conv.lokr_w1", &[2, 1], &[1.0, 3.0]),
            t("lora_unet_conv.lokr_w2", &[2, 2, 3, 3], &w2),
            t("lora_unet_conv.alpha", &[], &[8.0]),
        ],
        1.0,
    )
    .unwrap();
    let want: Vec<f32> = (0..72)
        .map(|k| {
            let (o, rest) = (k / 18, k % 18);
            [1.0, 3.0][o / 2] * w2[(o % 2) * 18 + rest]
        })
        .collect();
    close(&d[2], &want);
    // Low-rank w1 and Tucker w2 on the conv: the shapes work out ([2,1]⊗[2,2,3,3]).
    let d = deltas(
        &vec![
            t("lora_unet_conv.lokr_w1_a", &[2, 1], &[1.0, 2.0]),
            t("lora_unet_conv.lokr_w1_b", &[1, 1], &[0.5]),
            t("lora_unet_conv.lokr_w2_a", &[1, 2], &[1.0, -1.0]),
            t("lora_unet_conv.lokr_w2_b", &[1, 2], &[2.0, 1.0]),
            t("lora_unet_conv.lokr_t2", &[1, 1, 3, 3], &seq(9, 1.0)),
        ],
        1.0,
    )
    .unwrap();
    assert_eq!(d[2].len(), 72);
    assert!(d[2].iter().any(|v| *v != 0.0));
}

#[test]
fn tucker_lora_full_ia3_dora_and_norm_layers() {
    // LoRA with a Tucker mid on the 3×3 conv.
    let d = deltas(
        &vec![
            t(
                "lora_unet_conv.lora_up.weight",
                &[4, 1, 1, 1],
                &[1.0, 2.0, 3.0, 4.0],
            ),
            t(
                "lora_unet_conv.lora_mid.weight",
                &[1, 1, 3, 3],
                &seq(9, 1.0),
            ),
            t(
                "lora_unet_conv.lora_down.weight",
                &[1, 2, 1, 1],
                &[1.0, -1.0],
            ),
        ],
        1.0,
    )
    .unwrap();
    let mid = seq(9, 1.0);
    let want: Vec<f32> = (0..72)
        .map(|k| [1.0, 2.0, 3.0, 4.0][k / 18] * [1.0, -1.0][k / 9 % 2] * mid[k % 9])
        .collect();
    close(&d[2], &want);
    // Full: diff and diff_b (no scale).
    let d = deltas(
        &vec![
            t("lora_unet_lin.diff", &[6, 4], &seq(24, 1.0)),
            t("lora_unet_lin.diff_b", &[6], &seq(6, 1.0)),
        ],
        0.5,
    )
    .unwrap();
    close(&d[0], &seq(24, 0.5));
    close(&d[1], &seq(6, 0.5));
    // IA3 on the outputs: each row of W scaled.
    let w = seq(24, 0.1);
    let rows = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let d = deltas(
        &vec![
            t("lora_unet_lin.weight", &[6], &rows),
            t("lora_unet_lin.on_input", &[], &[0.0]),
        ],
        1.0,
    )
    .unwrap();
    close(
        &d[0],
        &(0..24).map(|k| w[k] * rows[k / 4]).collect::<Vec<_>>(),
    );
    // On the inputs: each column.
    let cols = [1.0, -1.0, 0.5, 2.0];
    let d = deltas(
        &vec![
            t("lora_unet_lin.weight", &[4], &cols),
            t("lora_unet_lin.on_input", &[], &[1.0]),
        ],
        0.5,
    )
    .unwrap();
    close(
        &d[0],
        &(0..24)
            .map(|k| 0.5 * w[k] * cols[k % 4])
            .collect::<Vec<_>>(),
    );
    // DoRA with a zero update: W's columns rescaled to the magnitudes.
    let magnitude = [1.0, 2.0];
    let d = deltas(
        &vec![
            t("lora_unet_pw.lora_up.weight", &[4, 1, 1, 1], &[0.0; 4]),
            t("lora_unet_pw.lora_down.weight", &[1, 2, 1, 1], &[1.0, 1.0]),
            t("lora_unet_pw.dora_scale", &[1, 2, 1, 1], &magnitude),
        ],
        1.0,
    )
    .unwrap();
    let pw = seq(8, 0.2);
    let norms: Vec<f32> = (0..2)
        .map(|c| (0..4).map(|o| pw[o * 2 + c].powi(2)).sum::<f32>().sqrt())
        .collect();
    let want: Vec<f32> = (0..8)
        .map(|k| pw[k] * magnitude[k % 2] / norms[k % 2] - pw[k])
        .collect();
    close(&d[3], &want);
    // Norm: w_norm and b_norm.
    let d = deltas(
        &vec![
            t("lora_unet_norm.w_norm", &[4], &[0.1, 0.2, 0.3, 0.4]),
            t("lora_unet_norm.b_norm", &[4], &[1.0, 1.0, 1.0, 1.0]),
        ],
        1.0,
    )
    .unwrap();
    close(&d[4], &[0.1, 0.2, 0.3, 0.4]);
    close(&d[5], &[1.0; 4]);
}

#[test]
fn a_file_mixing_types_and_weight_zero() {
    let file = vec![
        t("lora_unet_lin.lora_up.weight", &[6, 1], &seq(6, 1.0)),
        t("lora_unet_lin.lora_down.weight", &[1, 4], &seq(4, 1.0)),
        t("lora_unet_conv.hada_w1_a", &[4, 1], &seq(4, 1.0)),
        t("lora_unet_conv.hada_w1_b", &[1, 18], &seq(18, 1.0)),
        t("lora_unet_conv.hada_w2_a", &[4, 1], &seq(4, 1.0)),
        t("lora_unet_conv.hada_w2_b", &[1, 18], &seq(18, 1.0)),
        t("lora_unet_pw.lokr_w1", &[2, 1], &[1.0, 2.0]),
        t("lora_unet_pw.lokr_w2", &[2, 2], &seq(4, 1.0)),
    ];
    let d = deltas(&file, 1.0).unwrap();
    for i in [0, 2, 3] {
        assert!(d[i].iter().any(|v| *v != 0.0), "{i}");
    }
    let d = deltas(&file, 0.0).unwrap();
    assert!(d.iter().flatten().all(|v| *v == 0.0));
}

#[test]
fn on_input_may_be_a_bool_tensor() {
    // LyCORIS saves `on_input` as a bool; safetensors' BOOL is one byte per value.
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let file = dir.path().join("ia3.safetensors");
    let weight: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = r#"{"lora_unet_lin.on_input":{"dtype":"BOOL","shape":[],"data_offsets":[0,1]},"lora_unet_lin.weight":{"dtype":"F32","shape":[4],"data_offsets":[1,17]}}"#;
    let mut header = header.as_bytes().to_vec();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.push(1);
    bytes.extend(weight);
    std::fs::write(&file, bytes).unwrap();
    let lora = Lora::load(&file).unwrap();
    assert_eq!(lora.kinds().get("IA3"), Some(&1));
    let mut patched = SafetensorsFiles::open(&[&model]).unwrap();
    assert_eq!(
        apply_loras(&mut patched, LoraTarget::Unet, &[(&lora, 1.0)]).unwrap(),
        1
    );
    let w = patched
        .load("lin.weight", DType::F32, &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base = seq(24, 0.1);
    close(
        &w,
        &(0..24)
            .map(|k| base[k] * (1.0 + [1.0, 2.0, 3.0, 4.0][k % 4]))
            .collect::<Vec<_>>(),
    );
}

fn load_error(tensors: &Tensors) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.safetensors");
    write_f32_safetensors(&file, tensors).unwrap();
    match Lora::load(&file) {
        Err(EngineError::InvalidModel(m)) => m,
        other => panic!("expected an invalid-model error, got {other:?}"),
    }
}

fn apply_error(tensors: &Tensors) -> String {
    match deltas(tensors, 1.0) {
        Err(EngineError::InvalidModel(m)) => m,
        Err(other) => panic!("expected an invalid-model error, got {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn malformed_layers_are_clear_errors() {
    let half_loha = load_error(&vec![
        t("lora_unet_lin.hada_w1_a", &[6, 1], &zeros(6)),
        t("lora_unet_lin.hada_w1_b", &[1, 4], &zeros(4)),
    ]);
    assert!(
        half_loha.contains("lin") && half_loha.contains("lacks 'hada_w2_a'"),
        "{half_loha}"
    );
    let loha_rank = load_error(&vec![
        t("lora_unet_lin.hada_w1_a", &[6, 2], &zeros(12)),
        t("lora_unet_lin.hada_w1_b", &[1, 4], &zeros(4)),
        t("lora_unet_lin.hada_w2_a", &[6, 1], &zeros(6)),
        t("lora_unet_lin.hada_w2_b", &[1, 4], &zeros(4)),
    ]);
    assert!(loha_rank.contains("do not multiply"), "{loha_rank}");
    let loha_halves = load_error(&vec![
        t("lora_unet_lin.hada_w1_a", &[6, 1], &zeros(6)),
        t("lora_unet_lin.hada_w1_b", &[1, 4], &zeros(4)),
        t("lora_unet_lin.hada_w2_a", &[4, 1], &zeros(4)),
        t("lora_unet_lin.hada_w2_b", &[1, 4], &zeros(4)),
    ]);
    assert!(loha_halves.contains("different shapes"), "{loha_halves}");
    let one_core = load_error(&vec![
        t("lora_unet_conv.hada_w1_a", &[1, 4], &zeros(4)),
        t("lora_unet_conv.hada_w1_b", &[1, 2], &zeros(2)),
        t("lora_unet_conv.hada_w2_a", &[1, 4], &zeros(4)),
        t("lora_unet_conv.hada_w2_b", &[1, 2], &zeros(2)),
        t("lora_unet_conv.hada_t1", &[1, 1, 3, 3], &zeros(9)),
    ]);
    assert!(one_core.contains("hada_t1 and hada_t2"), "{one_core}");
    let lokr_both = load_error(&vec![
        t("lora_unet_lin.lokr_w1", &[1, 2], &zeros(2)),
        t("lora_unet_lin.lokr_w1_a", &[1, 1], &zeros(1)),
        t("lora_unet_lin.lokr_w2", &[6, 2], &zeros(12)),
    ]);
    assert!(lokr_both.contains("either lokr_w1"), "{lokr_both}");
    let lokr_no_w2 = load_error(&vec![t("lora_unet_lin.lokr_w1", &[1, 2], &zeros(2))]);
    assert!(lokr_no_w2.contains("lokr_w2"), "{lokr_no_w2}");
    let lokr_core = load_error(&vec![
        t("lora_unet_conv.lokr_w1", &[2, 1], &zeros(2)),
        t("lora_unet_conv.lokr_w2", &[2, 2], &zeros(4)),
        t("lora_unet_conv.lokr_t2", &[1, 1, 3, 3], &zeros(9)),
    ]);
    assert!(lokr_core.contains("lokr_t2 needs"), "{lokr_core}");
    let mid = load_error(&vec![
        t("lora_unet_conv.lora_up.weight", &[4, 2, 1, 1], &zeros(8)),
        t("lora_unet_conv.lora_mid.weight", &[1, 1, 3, 3], &zeros(9)),
        t("lora_unet_conv.lora_down.weight", &[1, 2, 1, 1], &zeros(2)),
    ]);
    assert!(mid.contains("lora_mid.weight"), "{mid}");
    let dora = load_error(&vec![
        t("lora_unet_lin.lora_up.weight", &[6, 1], &zeros(6)),
        t("lora_unet_lin.lora_down.weight", &[1, 4], &zeros(4)),
        t("lora_unet_lin.dora_scale", &[1, 3], &zeros(3)),
    ]);
    assert!(dora.contains("dora_scale"), "{dora}");
    let sparse = load_error(&vec![
        t("lora_unet_lin.lora_up.weight", &[6, 1], &zeros(6)),
        t("lora_unet_lin.lora_down.weight", &[1, 4], &zeros(4)),
        t("lora_unet_lin.bias_indices", &[1, 1], &zeros(1)),
        t("lora_unet_lin.bias_values", &[1], &zeros(1)),
        t("lora_unet_lin.bias_size", &[1], &[6.0]),
    ]);
    assert!(sparse.contains("sparse"), "{sparse}");
    let unknown = load_error(&vec![t("lora_unet_lin.foo", &[1], &zeros(1))]);
    assert!(unknown.contains("unsupported"), "{unknown}");
    let alpha = load_error(&vec![
        t("lora_unet_lin.lora_up.weight", &[6, 1], &zeros(6)),
        t("lora_unet_lin.lora_down.weight", &[1, 4], &zeros(4)),
        t("lora_unet_lin.alpha", &[2], &zeros(2)),
    ]);
    assert!(alpha.contains("alpha"), "{alpha}");

    // Layers that parse but do not fit the module they name.
    let kron = apply_error(&vec![
        t("lora_unet_lin.lokr_w1", &[2, 2], &zeros(4)),
        t("lora_unet_lin.lokr_w2", &[2, 2], &zeros(4)),
    ]);
    assert!(
        kron.contains("lin.weight") && kron.contains("does not fit"),
        "{kron}"
    );
    let ia3 = apply_error(&vec![
        t("lora_unet_lin.weight", &[5], &zeros(5)),
        t("lora_unet_lin.on_input", &[], &[0.0]),
    ]);
    assert!(ia3.contains("IA3"), "{ia3}");
    let ia3_conv = apply_error(&vec![
        t("lora_unet_conv.weight", &[4], &zeros(4)),
        t("lora_unet_conv.on_input", &[], &[0.0]),
    ]);
    assert!(ia3_conv.contains("linear"), "{ia3_conv}");
    let bias = apply_error(&vec![
        t("lora_unet_pw.diff", &[4, 2, 1, 1], &zeros(8)),
        t("lora_unet_pw.diff_b", &[4], &zeros(4)),
    ]);
    assert!(bias.contains("bias"), "{bias}");
}

#[test]
fn the_tiny_lycoris_file_patches_every_target() {
    use atelier_engine::tiny::{tiny_lora_targets, write_tiny_lycoris, write_tiny_sd, Family};
    use atelier_engine::weights::component_files;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sd1");
    write_tiny_sd(&model, Family::Sd1, 7).unwrap();
    let file = dir.path().join("lycoris.safetensors");
    write_tiny_lycoris(&model, &file, 3).unwrap();
    let lora = Lora::load(&file).unwrap();
    let kinds = lora.kinds();
    assert!(
        kinds.contains_key("LoHa") && kinds.contains_key("LoKr"),
        "{kinds:?}"
    );
    let targets = tiny_lora_targets(&model).unwrap();
    assert_eq!(lora.len(), targets.len());
    let mut applied = 0;
    for (target, sub, stems) in [
        (
            LoraTarget::Unet,
            "unet",
            &["diffusion_pytorch_model", "model"][..],
        ),
        (LoraTarget::TextEncoder, "text_encoder", &["model"][..]),
    ] {
        let mut files =
            SafetensorsFiles::open(&component_files(&model.join(sub), stems).unwrap()).unwrap();
        applied += apply_loras(&mut files, target, &[(&lora, 1.0)]).unwrap();
    }
    assert_eq!(applied, targets.len());
}
