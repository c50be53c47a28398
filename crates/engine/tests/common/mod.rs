//! Helpers shared by the parity tests (each test file uses some of them).

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

/// max|a − b| / max|b| over a tensor.
pub fn relative_error(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "length");
    let scale = theirs
        .iter()
        .map(|v| f64::from(v.abs()))
        .fold(1e-12, f64::max);
    let diff = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max);
    diff / scale
}

/// The parity tolerance: max|ours − reference| / max|reference|.
pub const RELATIVE_TOLERANCE: f64 = 1e-4;

/// Asserts `ours` is within [`RELATIVE_TOLERANCE`] of the reference; returns the error.
pub fn assert_close(ours: &[f32], theirs: &[f32], what: &str) -> f64 {
    let err = relative_error(ours, theirs);
    assert!(
        err <= RELATIVE_TOLERANCE,
        "{what}: relative error {err}\n ours  {:?}\n torch {:?}",
        &ours[..4.min(ours.len())],
        &theirs[..4.min(theirs.len())]
    );
    err
}

/// Reads `tests/fixtures/<name>`.
pub fn read_fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A tensor of `shape` filled from PyTorch's generator seeded with `seed`.
pub fn tensor(seed: u64, shape: &[usize]) -> atelier_engine::candle::Tensor {
    let n = shape.iter().product();
    atelier_engine::pipeline::latents_from_vec(shape, atelier_engine::noise::randn(seed, n))
        .unwrap()
}

/// A tensor's values as f32.
pub fn values(t: &atelier_engine::candle::Tensor) -> Vec<f32> {
    atelier_engine::pipeline::latents_to_vec(t).unwrap()
}
