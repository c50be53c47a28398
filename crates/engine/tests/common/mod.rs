//! Helpers shared by the parity tests.

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
