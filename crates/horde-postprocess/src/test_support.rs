//! What the unit tests of the post-processors share.

use candle_core::Tensor;

/// The largest absolute difference between `a` and `b`.
pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(0).unwrap().to_scalar().unwrap()
}
