//! gpt-oss in burn, with LoRA and the QAT forward.
//!
//! Module paths equal the checkpoint's tensor names (`model.layers.{l}.self_attn.q_proj.weight`, …).
//! Attention, router, norms, embedding and head are frozen f32 tensors holding the bf16 values;
//! experts stay packed (MXFP4 in the memory-mapped checkpoint) and are decoded per expert when used.
//! The MoE runs grouped by expert: each expert multiplies only the tokens routed to it. The LoRA
//! factors (PEFT layout and keys) are the only trainable parameters. Every adapted linear goes
//! through `kernels::ops` (the custom op or its autodiff reference, see [`GradPath`]), with the
//! deployed weights under QAT ([`QuantMode::Mxfp4`]).
//!
//! The model is generic over `B: kernels::ops::LoraLinearBackend` (Flex, Autodiff<Flex>, Cuda).

pub mod attention;
pub mod causal_lm;
pub mod embedding;
pub mod expert_lora;
pub mod experts;
pub mod grouping;
pub mod layer;
pub mod linear;
pub mod load;
pub mod lora;
pub mod lora_values;
pub mod loss;
pub mod mask;
pub mod mlp;
pub mod mode;
pub mod packed;
pub mod placement;
pub mod positions;
pub mod rms_norm;
pub mod rope;
pub mod router;
pub mod sdpa;
pub mod storage;
pub mod swiglu;

pub use causal_lm::{CausalLmOutput, GptOssForCausalLM, GptOssModel};
pub use loss::{causal_lm_loss, LossOutput, IGNORE_INDEX};
pub use mode::{ForwardMode, GradPath, QuantMode};
pub use placement::LayerPlacement;
pub use positions::PositionIds;

use burn::module::{Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A frozen parameter: part of the module tree (named like the checkpoint), never tracked.
pub(crate) fn frozen<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), tensor.set_require_grad(false))
}
