//! Building `Wq = Q(W + s·B·A)` from burn tensors. The Q step goes through host data and the
//! codec (the one quantizer shared with export); a device kernel can replace `fake_quantize_tensor`
//! without changing its callers.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

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

/// `quant` applied to a `[out, in]` tensor (through host memory; identity for `None`).
pub fn fake_quantize_tensor<B: Backend>(
    w: Tensor<B, 2>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    if quant == Quantizer::None {
        return Ok(w);
    }
    let device = w.device();
    let data = w.into_data();
    let dtype = data.dtype;
    let mut data = if dtype == DType::F32 {
        data
    } else {
        data.convert::<f32>()
    };
    let values = data
        .as_mut_slice::<f32>()
        .expect("TensorData converted to f32 has an f32 slice");
    fake_quantize_slice(values, quant)?;
    Ok(Tensor::from_data(data, (&device, dtype)))
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

/// `Wq = Q(W + s·B·A)` on `device`, with no autodiff tracking intended (inner backends).
pub fn quantized_weight<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    fake_quantize_tensor(merged_weight(base, lora, device)?, quant)
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
    let check = |what: &'static str, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(CodecError::Length {
                what,
                expected,
                got,
            })
        }
    };
    check("x columns (the base weight's `in`)", inp, x_dims[1])?;
    if let Some(len) = bias_len {
        check("bias length (the base weight's `out`)", out, len)?;
    }
    if let Some(l) = lora {
        let [r, a_in] = l.a.dims();
        let [b_out, b_r] = l.b.dims();
        check("LoRA A columns (the base weight's `in`)", inp, a_in)?;
        check("LoRA B rows (the base weight's `out`)", out, b_out)?;
        check("LoRA B columns (the rank of A)", r, b_r)?;
    }
    Ok(())
}
