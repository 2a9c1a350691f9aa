//! burn custom ops: the LoRA-QAT linear `y = x · Q(W + s·B·A)ᵀ + bias` with exact
//! straight-through gradients (DESIGN §2.4, §2.5), its plain-tensor reference, and the weight
//! types it takes (dense or packed MXFP4 base, LoRA factors, quantizer); and the chunked
//! cross-entropy through a frozen output head, which never forms the `[N, vocab]` logits.

mod autodiff;
mod chunked_ce;
mod chunked_ce_autodiff;
mod deploy_backend;
mod grouped;
mod grouped_autodiff;
mod grouped_backward;
mod linear;
mod merge;
mod offsets;
mod quant;
mod reference;
mod route;
pub mod routing;
mod weight;

pub use chunked_ce::{
    chunked_cross_entropy, chunked_forward, cross_entropy_reference, default_chunk_rows,
    forward_primitives as chunked_forward_primitives, ChunkedCeBackend, CrossEntropyError,
    RowStats, DEFAULT_CHUNK_LOGITS,
};
pub use deploy_backend::DeployBackend;
pub use grouped::{
    grouped_forward, grouped_lora_linear, grouped_lora_linear_frozen_bias, GroupedLora,
    GroupedLoraLinearBackend,
};
pub use grouped_backward::{host_grouped_backward, GroupedBackward, GroupedGrads};
pub use linear::{forward, lora_linear, LoraLinearBackend};
pub use merge::add_lora_delta;
pub use offsets::ExpertOffsets;
#[cfg(feature = "gpu")]
pub(crate) use quant::host_quantized_weight;
pub use quant::{merged_weight, quantized_weight};
pub use reference::lora_linear_reference;
pub use route::{route_on_host, Route, RoutingBackend};
pub use weight::{BaseWeight, Lora, OwnedPacked, PackedWeight, Quantizer};
mod flash_attention;
mod flash_attention_reference;
pub use flash_attention::{
    flash_attention, AttentionDims, AttentionError, AttentionGrads, AttentionInputs, AttentionMask,
    FlashAttentionBackend,
};
pub use flash_attention_reference::{
    flash_attention_reference, flash_attention_reference_grads, HostAttention, HostGrads,
};
