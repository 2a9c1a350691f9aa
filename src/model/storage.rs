//! How the frozen non-expert matrices (the embedding, `lm_head`, the attention projections) are
//! held: as the checkpoint's own BF16 values where the device supports bf16 tensors (half the
//! bytes of f32: 3.6 GB instead of 7.2 GB for gpt-oss-20b), else as f32. Every use computes in
//! f32 ([`as_f32`]); widening bf16 to f32 is exact, so the results are the same bits either way.
//! The embedding widens only the rows it gathers; a projection or the head widens its matrix
//! for the op that uses it (the op's graph keeps that copy while it needs it).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorCreationOptions, TensorData};
use half::bf16;

/// The dtype frozen matrices are stored in on `device`: BF16 where the backend supports it for
/// storage and arithmetic, else F32.
pub fn dense_dtype<B: Backend>(device: &B::Device) -> DType {
    match B::supports_dtype(device, DType::BF16) {
        true => DType::BF16,
        false => DType::F32,
    }
}

/// A matrix of bf16 values (the checkpoint's) on `device`, stored in [`dense_dtype`].
pub fn stored<B: Backend, const D: usize>(
    values: Vec<bf16>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    match dense_dtype::<B>(device) {
        DType::BF16 => Tensor::from_data(
            TensorData::new(values, shape),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::BF16),
        ),
        _ => {
            let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
            Tensor::from_data(TensorData::new(wide, shape), device)
        }
    }
}

/// `t` in f32 (a copy when stored narrower; `t` itself when already f32).
pub fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match t.dtype() {
        DType::F32 => t,
        _ => t.cast(FloatDType::F32),
    }
}
