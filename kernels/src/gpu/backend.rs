//! The lora-qat ops on CubeCL devices (`burn::backend::Cuda`, `burn::backend::Vulkan`): the
//! forward of the LoRA-QAT linear, the grouped expert linear and the chunked cross-entropy in
//! burn's device ops around the deployed weights of `deploy.rs` (the autodiff nodes are the
//! generic ones of `ops/`).

use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};

use crate::mxfp4::CodecError;
use crate::ops::{
    chunked_forward_primitives, forward, grouped_forward, BaseWeight, ChunkedCeBackend,
    GroupedLora, GroupedLoraLinearBackend, Lora, LoraLinearBackend, Quantizer, RowStats,
};

type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> LoraLinearBackend for Cube<R, I, BT> {
    fn lora_linear(
        x: FloatTensor<Self>,
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        forward::<Self>(x, base, lora, quant)
    }
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> GroupedLoraLinearBackend for Cube<R, I, BT> {
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &[usize],
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        grouped_forward::<Self>(x, bases, bias, lora, offsets, quant)
    }
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> ChunkedCeBackend for Cube<R, I, BT> {
    fn chunked_ce_forward(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[i64],
        chunk: usize,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        chunked_forward_primitives::<Self>(h, weight, targets, chunk)
    }
}
