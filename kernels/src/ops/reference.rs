//! The reference LoRA-QAT linear, composed of plain burn tensor ops. Under autodiff it gives the
//! straight-through gradient through burn's own autodiff, forming the dense `[out, in]` weight
//! gradient on the way: slow, obviously right, the parity target of the custom op.

use burn::tensor::Tensor;

use super::deploy_backend::DeployBackend;
use super::quant::{check_shapes, merged_weight, quantized_weight};
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::mxfp4::CodecError;

/// `y = x · Q(W + s·B·A)ᵀ + bias` with a straight-through Q: the weight used is
/// `wq = (m - detach(m)) + q` with `m = W + (B·A)·s` in burn ops (tracked) and `q` the exact
/// `Q(W + s·B·A)` of [`quantized_weight`], so it equals `q` in forward and has the gradient of
/// `m` in backward (the `.detach()` trick).
///
/// Errors: [`CodecError::NonFinite`] when `Q` is `Bf16`/`Mxfp4` and `m` has a NaN/Inf,
/// [`CodecError::Length`] on mismatched shapes or an MXFP4 `in` that is not a multiple of 32.
pub fn lora_linear_reference<B: DeployBackend>(
    x: Tensor<B, 2>,
    base: &BaseWeight<B>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    check_shapes(x.dims(), base, bias.as_ref().map(|b| b.dims()[0]), lora)?;
    let device = x.device();
    let merged = merged_weight(base, lora, &device)?;
    let wq = match quant {
        Quantizer::None => merged,
        _ => {
            let q = quantized_weight(base, lora, quant, &device)?;
            merged.clone() - merged.detach() + q
        }
    };
    let y = x.matmul(wq.transpose());
    Ok(match bias {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    })
}
