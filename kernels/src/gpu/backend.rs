//! The lora-qat ops on CubeCL devices (`burn::backend::Cuda`, `burn::backend::Vulkan`): the
//! forward of the LoRA-QAT linear and the chunked cross-entropy in burn's device ops around the
//! deployed weights of `deploy.rs` (the autodiff nodes are the generic ones of `ops/`); the
//! grouped expert linear is `grouped.rs`, routing `route.rs`.

use burn::tensor::ops::FloatTensor;
use burn_cubecl::element::BoolElement;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};

use crate::mxfp4::CodecError;
use crate::ops::{
    chunked_forward_primitives, forward, BaseWeight, ChunkedCeBackend, Lora, LoraLinearBackend,
    Quantizer, RowStats,
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
