//! Building `Wq = Q(W + s·B·A)` from burn tensors. With a quantizer, the merge and the Q step
//! go through host data, [`add_lora_delta`] and the codec (the arithmetic and the quantizer
//! shared with export); a device kernel can replace `quantized_weight` without changing its
//! callers.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::merge::add_lora_delta;
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::bf16;
use crate::mxfp4::{self, CodecError};

/// Applies `quant` in place to a row-major `[out, in]` weight; errors on the first NaN/Inf
/// (flat index) for `Bf16` (of the rounded values) and `Mxfp4` (of the input; the contents are
/// then unspecified). `None` leaves the values untouched and unchecked.
pub fn fake_quantize_slice(values: &mut [f32], quant: Quantizer) -> Result<(), CodecError> {
    match quant {
        Quantizer::None => Ok(()),
        Quantizer::Bf16 => {
            bf16::round_slice_in_place(values);
            first_non_finite(values)
        }
        Quantizer::Mxfp4 => mxfp4::fake_quantize_in_place(values),
    }
}

/// The first NaN/Inf of an already rounded weight (a NaN/Inf input, or a finite value beyond
/// the bf16 range that rounded to Inf) as [`CodecError::NonFinite`].
fn first_non_finite(values: &[f32]) -> Result<(), CodecError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(CodecError::NonFinite {
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// `W + s·B·A` (or `W` without LoRA) as a tensor on `device`. Under autodiff the LoRA part is
/// tracked, the base never is.
pub fn merged_weight<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    let w = base.to_dense(device)?;
    Ok(match lora {
        Some(l) => w + l.b.clone().matmul(l.a.clone()).mul_scalar(l.scale),
        None => w,
    })
}

/// `Wq = Q(W + s·B·A)` on `device`, untracked. For `Bf16`/`Mxfp4` the merge runs on host
/// through [`add_lora_delta`] (the arithmetic export shares) and `Q` through the codec;
/// `None` stays on the device (`W + (B·A)·s` in burn ops).
pub fn quantized_weight<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    if quant == Quantizer::None {
        return merged_weight(base, lora, device);
    }
    let shape = base.shape();
    let (mut values, dtype) = match base {
        BaseWeight::Dense(w) => {
            let (values, dtype) = host_f32(w.clone());
            (values, Some(dtype))
        }
        BaseWeight::Packed(p) => {
            let mut values = vec![0f32; shape[0] * shape[1]];
            p.dequantize_into(&mut values)?;
            (values, None)
        }
    };
    if let Some(l) = lora {
        let rank = l.a.dims()[0];
        let (a, _) = host_f32(l.a.clone());
        let (b, _) = host_f32(l.b.clone());
        add_lora_delta(&mut values, shape, &a, &b, rank, l.scale)?;
    }
    fake_quantize_slice(&mut values, quant)?;
    let data = TensorData::new(values, shape);
    Ok(match dtype {
        Some(dtype) => Tensor::from_data(data, (device, dtype)),
        None => Tensor::from_data(data, device),
    })
}

/// The values of a tensor as host f32, with its dtype.
fn host_f32<B: Backend>(t: Tensor<B, 2>) -> (Vec<f32>, DType) {
    let data = t.into_data();
    let dtype = data.dtype;
    let values = data
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("TensorData converted to f32 holds f32");
    (values, dtype)
}

/// Checks that `x [n, in]`, the base `[out, in]` and the LoRA factors `A [r, in]`, `B [out, r]`
/// agree, reporting the first mismatch as a [`CodecError::Length`].
pub fn check_shapes<B: Backend>(
    x_dims: [usize; 2],
    base: &BaseWeight<B>,
    bias_len: Option<usize>,
    lora: Option<&Lora<B>>,
) -> Result<(), CodecError> {
    let [out, inp] = base.shape();
    CodecError::expect_len("x columns (the base weight's `in`)", inp, x_dims[1])?;
    if let Some(len) = bias_len {
        CodecError::expect_len("bias length (the base weight's `out`)", out, len)?;
    }
    if let Some(l) = lora {
        let [r, a_in] = l.a.dims();
        let [b_out, b_r] = l.b.dims();
        CodecError::expect_len("LoRA A columns (the base weight's `in`)", inp, a_in)?;
        CodecError::expect_len("LoRA B rows (the base weight's `out`)", out, b_out)?;
        CodecError::expect_len("LoRA B columns (the rank of A)", r, b_r)?;
    }
    Ok(())
}

/// `x · Q(W + s·B·A)ᵀ` (`x [n, in] -> [n, out]`). With `Quantizer::None` and a LoRA, the low-rank
/// form `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` (PEFT's forward: no dense merge); otherwise through `Wq`.
pub fn apply_weight<B: Backend>(
    x: Tensor<B, 2>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    let device = x.device();
    Ok(match (quant, lora) {
        (Quantizer::None, Some(l)) => {
            let w = quantized_weight(base, None, Quantizer::None, &device)?;
            let low = x
                .clone()
                .matmul(l.a.clone().transpose())
                .mul_scalar(l.scale);
            x.matmul(w.transpose()) + low.matmul(l.b.clone().transpose())
        }
        _ => x.matmul(quantized_weight(base, lora, quant, &device)?.transpose()),
    })
}

/// `dy · Q(W + s·B·A)` (`dy [n, out] -> [n, in]`), the input gradient of [`apply_weight`]; the
/// low-rank form `dy·W + s·(dy·B)·A` with `Quantizer::None` and a LoRA.
pub fn apply_weight_transposed<B: Backend>(
    dy: Tensor<B, 2>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    let device = dy.device();
    Ok(match (quant, lora) {
        (Quantizer::None, Some(l)) => {
            let w = quantized_weight(base, None, Quantizer::None, &device)?;
            let low = dy.clone().matmul(l.b.clone()).mul_scalar(l.scale);
            dy.matmul(w) + low.matmul(l.a.clone())
        }
        _ => dy.matmul(quantized_weight(base, lora, quant, &device)?),
    })
}
