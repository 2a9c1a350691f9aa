//! How the frozen non-expert matrices (the embedding, `lm_head`, the attention projections) are
//! held: as the checkpoint's own BF16 values where the backend widens bf16 cheaply
//! (`DeployBackend::dense_storage`: a CUDA device with bf16 tensors; half the bytes of f32, 3.6 GB
//! instead of 7.2 GB for gpt-oss-20b), else as f32 (the CPU backend). Every use computes in f32
//! ([`as_f32`]); widening bf16 to f32 is exact, so the results are the same bits either way.
//! The embedding widens only the rows it gathers; a projection or the head widens its matrix
//! for the op that uses it (the op's graph keeps that copy while it needs it).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorCreationOptions, TensorData};
use half::bf16;

/// A tensor of bf16 values (the checkpoint's) on `device`, held as BF16.
pub fn bf16_tensor<B: Backend, const D: usize>(
    values: Vec<bf16>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(
        TensorData::new(values, shape),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::BF16),
    )
}

/// `t` in f32 (a copy when stored narrower; `t` itself when already f32).
pub fn as_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match t.dtype() {
        DType::F32 => t,
        _ => t.cast(FloatDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn bf16_is_held_as_bf16_and_widens_exactly() {
        let dev = Default::default();
        let values: Vec<bf16> = [1.0f32, -0.3, 3.4e38, 1e-40, f32::INFINITY, 0.1]
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let t = bf16_tensor::<Flex, 2>(values.clone(), [2, 3], &dev);
        assert_eq!(t.dtype(), DType::BF16);
        let wide = as_f32(t).into_data().to_vec::<f32>().unwrap();
        let want: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide), bits(&want));
        // the f32 path (the checkpoint codec) decodes the same bytes to the same values
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        let mut decoded = vec![0f32; values.len()];
        kernels::bf16::decode_le(&bytes, &mut decoded).unwrap();
        assert_eq!(bits(&decoded), bits(&want));
    }
}
