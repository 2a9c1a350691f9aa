//! PEFT-exact LoRA adapter directories for gpt-oss: read, write, validate against a base model, and PEFT's
//! per-expert slicing of the stacked expert factors (`ExpertLora::expert_a` / `expert_b`). The delta math itself
//! is `kernels::deploy`, the one deployed-weight function of training, merge-export and verify.
//!
//! Names follow the checkpoint (module paths such as `model.layers.0.self_attn.q_proj`), and tensor keys are
//! PEFT's own (`base_model.model.<module path>.lora_A.weight`), so an adapter written here loads in PEFT and
//! vLLM, and an adapter written by PEFT loads here.

mod adapter;
pub mod combine;
mod config;
mod config_parse;
mod coverage;
mod error;
pub mod json;
mod json_order;
mod keys;
mod load;
mod pattern;
pub mod provenance;
mod save;
mod serving;
pub mod signing;
mod supported;
mod targets;
mod validate;

pub use adapter::{AttentionLora, ExpertLora, LoraAdapter, Tensor, IN_MEMORY};
pub use config::{AdapterConfig, LayerIndexes, LayersPattern, TargetModules};
pub use coverage::{Coverage, CoverageEntry, CoverageStatus, Site};
pub use error::AdapterError;
pub use keys::{
    attention_key, attention_module, expert_key, expert_param, expert_targeted, AttnProj,
    ExpertProj, Factor, PEFT_PREFIX,
};
pub use serving::VLLM_MAX_LORA_RANK;
pub use validate::BaseDims;

/// File name of the adapter config inside an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights inside an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
