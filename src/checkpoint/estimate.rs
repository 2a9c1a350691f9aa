//! Size estimates from a config alone: bytes on disk in the release format and a lower bound
//! on the memory LoRA-QAT training needs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::GptOssConfig;
use super::spec::ExpertProj;

/// Tensors and bytes of one dtype.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DtypeBytes {
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// Bytes per dtype (keys `"BF16"`, `"U8"`, ...) of the release format for this config.
pub fn release_bytes_by_dtype(c: &GptOssConfig) -> BTreeMap<String, DtypeBytes> {
    let mut out: BTreeMap<String, DtypeBytes> = BTreeMap::new();
    for s in c.expected_tensors() {
        let e = out.entry(format!("{:?}", s.dtype)).or_default();
        e.tensors += 1;
        e.bytes += s.nbytes();
    }
    out
}

/// A lower bound on training memory; what it leaves out is listed in `excluded`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingEstimate {
    /// LoRA rank assumed (attention q/k/v/o and both expert projections in every layer).
    pub lora_rank: usize,
    /// Trainable LoRA parameters.
    pub lora_params: u64,
    /// Base weights held as stored (MXFP4 experts packed, the rest BF16).
    pub base_bytes: u64,
    /// LoRA weights, gradients and AdamW moments, all f32 (16 bytes per parameter).
    pub lora_state_bytes: u64,
    /// `base_bytes + lora_state_bytes`.
    pub lower_bound_bytes: u64,
    /// One layer's experts dequantized to f32 (the QAT forward's W + ΔW), if materialized at once.
    pub one_layer_dequantized_experts_bytes: u64,
    /// What the bound does not include.
    pub excluded: Vec<String>,
}

impl GptOssConfig {
    /// Trainable parameters of rank-`r` LoRA on attention q/k/v/o and on both expert
    /// projections of every layer (one rank-`r` pair per expert, PEFT `target_parameters`).
    pub fn lora_param_count(&self, r: usize) -> u64 {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = (h + q) + 2 * (h + kv) + (q + h);
        let experts: usize = ExpertProj::ALL
            .iter()
            .map(|p| {
                let (rows, cols) = p.dims(self);
                self.num_local_experts * (rows + cols)
            })
            .sum();
        (r * (attn + experts) * self.num_hidden_layers) as u64
    }

    /// Lower bound on LoRA-QAT training memory at rank `r` (see [`TrainingEstimate`]).
    pub fn training_estimate(&self, r: usize) -> TrainingEstimate {
        let base = self.release_nbytes();
        let lora = self.lora_param_count(r);
        let per_layer: usize = ExpertProj::ALL
            .iter()
            .map(|p| {
                let (rows, cols) = p.dims(self);
                rows * cols
            })
            .sum();
        TrainingEstimate {
            lora_rank: r,
            lora_params: lora,
            base_bytes: base,
            lora_state_bytes: lora * 16,
            lower_bound_bytes: base + lora * 16,
            one_layer_dequantized_experts_bytes: (per_layer * self.num_local_experts * 4) as u64,
            excluded: vec![
                "activations saved for backward (grow with batch × sequence length)".into(),
                "transient dequantized expert weights and other work buffers".into(),
                "non-expert weights if held in f32 rather than BF16 (doubles their share)".into(),
            ],
        }
    }
}
