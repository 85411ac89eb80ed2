//! Helpers of the model's unit tests.

use candle_core::{DType, Device, Tensor};

/// A standard-normal f64 tensor on the CPU, reproducible from `seed`.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = crate::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest absolute elementwise difference, in f64 whatever the dtypes.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
