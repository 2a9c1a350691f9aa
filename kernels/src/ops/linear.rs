//! The LoRA-QAT linear as a backend extension: a forward-only implementation for plain backends
//! (Flex, and Cuda behind the `cuda` feature); the Autodiff implementation with the custom
//! straight-through backward lives in `autodiff.rs`.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::deploy_backend::DeployBackend;
use super::quant::{apply_weight, check_shapes};
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::mxfp4::CodecError;

/// A backend that runs the LoRA-QAT linear `x · Q(W + s·B·A)ᵀ` (no bias) as one op, and its
/// grouped all-experts form ([`GroupedLoraLinearBackend`](super::GroupedLoraLinearBackend)).
pub trait LoraLinearBackend:
    super::grouped::GroupedLoraLinearBackend
    + super::chunked_ce::ChunkedCeBackend
    + super::deploy_backend::DeployBackend
    + super::flash_attention::FlashAttentionBackend
    + super::route::RoutingBackend
{
    /// `x [n, in] -> [n, out]` with `Wq = Q(W + s·B·A)`; shapes are already checked.
    ///
    /// Under autodiff the backward is straight-through and never forms an `[out, in]` gradient:
    /// `dx = dy·Wq` (Wq recomputed, not kept), `dA = s·(dy·B)ᵀ·x`, `dB = s·dyᵀ·(x·Aᵀ)`.
    /// The base weight gets no gradient. `n == 0` returns `[0, out]` without building `Wq`.
    fn lora_linear(
        x: FloatTensor<Self>,
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError>;
}

/// The forward of a plain (non-autodiff) backend: `x · Wqᵀ` on the device of `x`
/// ([`apply_weight`]: low rank for `Quantizer::None`).
pub fn forward<B: DeployBackend>(
    x: FloatTensor<B>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<FloatTensor<B>, CodecError> {
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let [n, _] = x.dims();
    let device = x.device();
    let y = if n == 0 {
        Tensor::<B, 2>::zeros([0, base.shape()[0]], &device)
    } else {
        apply_weight(x, base, lora, quant)?
    };
    Ok(y.into_primitive().tensor())
}

impl LoraLinearBackend for burn::backend::Flex {
    fn lora_linear(
        x: FloatTensor<Self>,
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        forward::<Self>(x, base, lora, quant)
    }
}

/// The LoRA-QAT linear `y = x · Q(W + s·B·A)ᵀ + bias`, `x [n, in]`, `y [n, out]`.
///
/// Under `Autodiff` the gradients of `x`, `A` and `B` are the exact straight-through ones
/// (those of [`lora_linear_reference`](super::lora_linear_reference)) without forming any
/// `[out, in]` gradient; a tracked bias gets its gradient through burn's own add.
///
/// Errors: [`CodecError::NonFinite`] when `quant` is `Bf16`/`Mxfp4` and the merged weight has a
/// NaN/Inf (checked in forward, so nothing non-finite is trained through; `Quantizer::None`
/// does not inspect values), [`CodecError::Length`] on mismatched shapes or an MXFP4 `in`
/// that is not a multiple of 32.
pub fn lora_linear<B: LoraLinearBackend>(
    x: Tensor<B, 2>,
    base: &BaseWeight<B>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    check_shapes(x.dims(), base, bias.as_ref().map(|b| b.dims()[0]), lora)?;
    let y = B::lora_linear(x.into_primitive().tensor(), base, lora, quant)?;
    let y = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y));
    Ok(match bias {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    })
}
