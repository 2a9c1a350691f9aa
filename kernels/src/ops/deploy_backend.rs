//! Where the deployed weight `Wq = Q(W + s·B·A)` is built: a backend extension, so the CPU builds
//! it with the host codec ([`crate::deploy::deploy`]) and a GPU backend with the CubeCL kernels of
//! `gpu/` (the same bits, from the packed base uploaded once), while every caller (the QAT
//! forward and backward, the reference op) stays generic.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::quant::{deployed_packed, host_quantized_weight};
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::mxfp4::CodecError;

/// A backend that builds deployed weights. All results are constants (never tracked).
pub trait DeployBackend: Backend {
    /// The base weight as a dense tensor on `device` (a packed base decoded exactly).
    fn base_dense(
        base: &BaseWeight<Self>,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError>;

    /// `Q(W + s·B·A)` for `quant` `Bf16` or `Mxfp4` (the values of the bytes `merge-export`
    /// writes). Errors: [`CodecError::NonFinite`] where the host codec refuses a NaN/Inf (a
    /// device marks it NaN instead, which the loss then carries).
    fn deployed_weight(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError>;

    /// `MXFP4(W + s·B·A)` kept packed, for a backward to reuse what its forward built; `None`
    /// where the backend prefers to rebuild it (a device, where building is cheap).
    fn deployed_base(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
    ) -> Result<Option<BaseWeight<Self>>, CodecError>;

    /// The dtype a model holds its frozen dense matrices in on `device` (they are bf16 in the
    /// checkpoint and widened to f32 at use): F32 unless the backend widens bf16 cheaply.
    fn dense_storage(_device: &Self::Device) -> DType {
        DType::F32
    }
}

/// The CPU keeps f32 dense matrices: burn-flex 0.21 casts bf16 through an f64 buffer
/// (8 B/element, one thread), which costs more time and memory at the use than bf16 storage saves.
impl DeployBackend for burn::backend::Flex {
    fn base_dense(
        base: &BaseWeight<Self>,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        base.to_dense(device)
    }

    fn deployed_weight(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        host_quantized_weight(base, lora, quant, device)
    }

    fn deployed_base(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
    ) -> Result<Option<BaseWeight<Self>>, CodecError> {
        Ok(Some(BaseWeight::Packed(Arc::new(deployed_packed(
            base, lora,
        )?))))
    }
}

impl<B: DeployBackend, C: CheckpointStrategy> DeployBackend for Autodiff<B, C> {
    fn base_dense(
        base: &BaseWeight<Self>,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        Ok(Tensor::from_inner(B::base_dense(&base.inner(), device)?))
    }

    fn deployed_weight(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        let lora = lora.map(Lora::inner);
        let w = B::deployed_weight(&base.inner(), lora.as_ref(), quant, device)?;
        Ok(Tensor::from_inner(w))
    }

    fn deployed_base(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
    ) -> Result<Option<BaseWeight<Self>>, CodecError> {
        let lora = lora.map(Lora::inner);
        Ok(B::deployed_base(&base.inner(), lora.as_ref())?.map(BaseWeight::from_inner))
    }

    fn dense_storage(device: &Self::Device) -> DType {
        B::dense_storage(device)
    }
}
