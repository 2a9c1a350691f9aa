//! The memory model: bytes per decoder layer and for the embedding/head, derived from the config and
//! from what our implementation keeps, and the per-device [`Breakdown`] of a range of layers.
//!
//! Notation: `T = batch·seq` tokens, `N = T·top_k` expert rows, `H` hidden, `I` intermediate,
//! `Q = heads·head_dim`, `KV = kv_heads·head_dim`, `E` experts, `r` the LoRA rank, `V` vocab.
//!
//! - packed experts: `E·out·(in/32)·(16 + 1)` bytes per projection (blocks + scale bytes, as stored;
//!   uploaded once and kept, `kernels::gpu::resident`);
//! - non-expert weights: on a GPU the matrices (`embed_tokens`, `lm_head`, attention q/k/v/o) are
//!   held as the checkpoint's BF16 (2 B/param, `model::storage`), the vectors (norms, biases,
//!   sinks) and the router as f32 (4 B/param); a projection widens its matrix to f32 for its op,
//!   and the layer's graph keeps that copy (`4·(Q·H + 2·KV·H + H·Q)` in `saved`); the head widens
//!   `lm_head` for the loss (`4·V·H`, transient on the last stage). The CPU holds them all in f32;
//! - LoRA: f32 parameter, gradient, AdamW `m` and `v` = 16 B per parameter;
//! - activations saved by a layer's graph (f32, estimated from the op sequence in `model::*` and
//!   the custom ops' saved state in `kernels::ops::*`): the two RMSNorms keep input and normalized
//!   output (`4·T·H`); the flash op keeps q, k, v (after RoPE), its output and one f32
//!   log-sum-exp per row (`T·(2Q + 2KV + heads)`); the LoRA linear keeps `x·Aᵀ` (`T·r`) per adapted
//!   projection and `o_proj` its input (`T·Q`) when adapted; the router its logits and the top-k
//!   softmax (`T·E + 3·T·k`); the grouped expert op keeps its `x` when adapted (`N·H` gate_up,
//!   `N·I` down) and never a weight; gate_up's output and SwiGLU's intermediates (`2·N·I + 4·N·I`),
//!   the weighted output and its scores (`N·H + N`); the i64 row order and slots (`16·N` bytes).
//!   With gradient checkpointing a layer keeps only its input `[T, H]` (`model`'s
//!   `train::recompute`) and one layer's graph exists at a time, during its recompute;
//! - the head: final norm input and output (`2·T·H`) and two f32 row statistics (`2·T`); logits are
//!   never kept (chunked cross-entropy).

use std::ops::Range;

use serde::Serialize;

use super::devices::DeviceKind;
use crate::checkpoint::GptOssConfig;

/// Bytes of an f32.
const F32: u64 = 4;
/// Bytes per LoRA parameter: f32 parameter, gradient, AdamW `exp_avg` and `exp_avg_sq`.
pub const LORA_BYTES_PER_PARAM: u64 = 16;

/// Which projections of one layer carry a LoRA adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerTargets {
    /// Adapted attention projections (`q_proj`, ...).
    pub attention: Vec<String>,
    /// Adapted expert projections (`gate_up_proj`, `down_proj`).
    pub experts: Vec<String>,
}

/// What a run trains, and on how many tokens per step.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per micro-batch (per device, per replica).
    pub batch: usize,
    /// LoRA rank.
    pub lora_r: usize,
    /// QAT (MXFP4 deployed experts, bf16 attention) rather than plain LoRA.
    pub qat: bool,
    /// Kind of device (decides how experts are deployed).
    pub kind: DeviceKind,
    /// Adapted projections per layer (one entry per layer).
    pub targets: Vec<LayerTargets>,
}

/// The bytes one decoder layer contributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerMemory {
    /// MXFP4 blocks + scales of both expert projections, as stored.
    pub experts_packed: u64,
    /// Non-expert parameters (norms, attention, sinks, router, expert biases).
    pub non_expert_params: u64,
    /// Of those, the attention matrices (q, k, v, o weights), held in bf16.
    pub bf16_params: u64,
    /// LoRA parameters.
    pub lora_params: u64,
    /// Activations the layer's autodiff graph keeps for backward.
    pub saved: u64,
    /// The layer input `[batch, seq, hidden]` f32 (all a checkpointed layer keeps).
    pub input: u64,
    /// Deployed weights of the largest adapted expert projection (see [`deploy_bytes`]).
    pub deploy: u64,
    /// Device low-rank buffers of the grouped op: `M`, `x·Aᵀ∘M`, `dy·B∘M`, each `[N, E·r]` f32.
    pub lowrank: u64,
    /// Attention work buffers: a deployed adapted projection (f32) and the flash backward's
    /// `dq, dk, dv` and per-row `D`.
    pub attention: u64,
}

/// All the bytes of a model under a workload.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMemory {
    /// One entry per decoder layer.
    pub layers: Vec<LayerMemory>,
    /// `embed_tokens` parameters.
    pub embed_params: u64,
    /// `lm_head` and final norm parameters.
    pub head_params: u64,
    /// Of those, the final norm's.
    pub head_norm: u64,
    /// `lm_head` widened to f32 for the loss: `4·V·H` on a GPU (0 on the CPU, which holds f32).
    pub head_wide: u64,
    /// The matrices are held in bf16 (a GPU; the CPU holds them in f32).
    pub matrices_bf16: bool,
    /// Final norm input/output and the loss' row statistics.
    pub head_activations: u64,
    /// RoPE cos/sin tables `[T, head_dim]` each, shared by the layers.
    pub rope_tables: u64,
    /// Rows per cross-entropy chunk (`kernels::ops::default_chunk_rows`).
    pub chunk_rows: usize,
    /// One chunk's logits and their gradient: `2·min(chunk_rows, T)·V` f32.
    pub ce_chunks: u64,
    /// `[T, H]` f32: one hidden state (pipeline send/receive buffers are two of these).
    pub hidden_state: u64,
}

/// Bytes of the deployed weights of one expert projection `[out, in]` while it runs: on a GPU all
/// `E` experts at once as MXFP4 codes (½ B/weight) and one 4-byte scale word per block of 32
/// (`kernels::gpu::stacked::deploy_stacked`, `ScaleLayout::Word`); on the CPU one expert at a time
/// decoded to f32.
pub fn deploy_bytes(kind: DeviceKind, experts: u64, out: u64, inp: u64) -> u64 {
    match kind {
        DeviceKind::Gpu => experts * out * inp / 2 + experts * out * inp / 32 * 4,
        DeviceKind::Cpu => out * inp * F32,
    }
}

/// `(out, in)` of a projection by name.
fn dims(c: &GptOssConfig, name: &str) -> (u64, u64) {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let q = (c.num_attention_heads * c.head_dim) as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    match name {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_up_proj" => (2 * i, h),
        _ => (h, i), // down_proj
    }
}

impl ModelMemory {
    /// The model of `config` under `w` (`w.targets` has one entry per layer).
    pub fn new(c: &GptOssConfig, w: &Workload) -> Self {
        let (h, i, v) = (
            c.hidden_size as u64,
            c.intermediate_size as u64,
            c.vocab_size as u64,
        );
        let (e, k, heads) = (
            c.num_local_experts as u64,
            c.experts_per_token as u64,
            c.num_attention_heads as u64,
        );
        let q = heads * c.head_dim as u64;
        let kv = (c.num_key_value_heads * c.head_dim) as u64;
        let r = w.lora_r as u64;
        let t = (w.batch * w.seq) as u64;
        let n = t * k;
        let packed = |out: u64, inp: u64| e * out * (inp / 32) * 17;
        let layers = w
            .targets
            .iter()
            .map(|tg| {
                let adapted = |name: &str| tg.experts.iter().any(|p| p == name);
                let lora_attn: u64 = tg
                    .attention
                    .iter()
                    .map(|p| dims(c, p))
                    .map(|(o, n_in)| r * (o + n_in))
                    .sum();
                let lora_exp: u64 = tg
                    .experts
                    .iter()
                    .map(|p| dims(c, p))
                    .map(|(o, n_in)| e * r * (o + n_in))
                    .sum();
                let o_adapted = tg.attention.iter().any(|p| p == "o_proj");
                let attn_matrices = q * h + 2 * kv * h + h * q;
                // on a GPU each projection's op works on its matrix widened from bf16
                let widened = match w.kind {
                    DeviceKind::Gpu => attn_matrices,
                    DeviceKind::Cpu => 0,
                };
                let saved_elems = 4 * t * h
                    + t * (2 * q + 2 * kv + heads)
                    + r * t * tg.attention.len() as u64
                    + if o_adapted { t * q } else { 0 }
                    + t * e
                    + 3 * t * k
                    + if adapted("gate_up_proj") { n * h } else { 0 }
                    + if adapted("down_proj") { n * i } else { 0 }
                    + 6 * n * i
                    + n * h
                    + n
                    + widened;
                let deploy = tg
                    .experts
                    .iter()
                    .filter(|_| w.qat || w.kind == DeviceKind::Cpu)
                    .map(|p| dims(c, p))
                    .map(|(o, n_in)| deploy_bytes(w.kind, e, o, n_in))
                    .max()
                    .unwrap_or(match w.kind {
                        // the CPU decodes every expert it runs, adapted or not
                        DeviceKind::Cpu => 2 * i * h * F32,
                        DeviceKind::Gpu => 0,
                    });
                let lowrank = match (w.kind, tg.experts.is_empty()) {
                    (DeviceKind::Gpu, false) => 3 * n * e * r * F32,
                    _ => 0,
                };
                let attn_deploy = tg
                    .attention
                    .iter()
                    .filter(|_| w.qat)
                    .map(|p| dims(c, p))
                    .map(|(o, n_in)| o * n_in * F32)
                    .max()
                    .unwrap_or(0);
                LayerMemory {
                    experts_packed: packed(2 * i, h) + packed(h, i),
                    non_expert_params: 2 * h
                        + (q * h + q)
                        + 2 * (kv * h + kv)
                        + (h * q + h)
                        + heads
                        + (e * h + e)
                        + e * (2 * i + h),
                    bf16_params: attn_matrices,
                    lora_params: lora_attn + lora_exp,
                    saved: saved_elems * F32 + 16 * n,
                    input: t * h * F32,
                    deploy,
                    lowrank,
                    attention: attn_deploy + (t * (q + 2 * kv) + t * heads) * F32,
                }
            })
            .collect();
        let chunk_rows = kernels::ops::default_chunk_rows(c.vocab_size);
        ModelMemory {
            layers,
            embed_params: v * h,
            head_params: v * h + h,
            head_norm: h,
            head_wide: match w.kind {
                DeviceKind::Gpu => v * h * F32,
                DeviceKind::Cpu => 0,
            },
            matrices_bf16: w.kind == DeviceKind::Gpu,
            head_activations: (2 * t * h + 2 * t) * F32,
            rope_tables: 2 * t * c.head_dim as u64 * F32,
            chunk_rows,
            ce_chunks: 2 * (chunk_rows as u64).min(t) * v * F32,
            hidden_state: t * h * F32,
        }
    }

    /// Total LoRA parameters over all layers.
    pub fn lora_params(&self) -> u64 {
        self.layers.iter().map(|l| l.lora_params).sum()
    }

    /// What one device holding `layers` (plus the embedding when the range starts at 0 and the
    /// head when it ends at the last layer) needs; `pipelined` adds the stage's send/receive buffers.
    pub fn stage(&self, layers: Range<usize>, checkpointing: bool, pipelined: bool) -> Breakdown {
        let ls = &self.layers[layers.clone()];
        let first = layers.start == 0;
        let last = layers.end == self.layers.len();
        let max = |f: fn(&LayerMemory) -> u64| ls.iter().map(f).max().unwrap_or(0);
        let sum = |f: fn(&LayerMemory) -> u64| ls.iter().map(f).sum::<u64>();
        let params = sum(|l| l.non_expert_params)
            + if first { self.embed_params } else { 0 }
            + if last { self.head_params } else { 0 };
        // embed_tokens and lm_head are matrices too
        let bf16_params = match self.matrices_bf16 {
            true => {
                sum(|l| l.bf16_params)
                    + if first { self.embed_params } else { 0 }
                    + if last {
                        self.head_params - self.head_norm
                    } else {
                        0
                    }
            }
            false => 0,
        };
        let mut activations = Vec::new();
        if checkpointing {
            activations.push(Part::new("layer inputs [T, H] f32", sum(|l| l.input)));
            activations.push(Part::new("one layer's graph (recompute)", max(|l| l.saved)));
        } else {
            activations.push(Part::new("every layer's graph", sum(|l| l.saved)));
        }
        activations.push(Part::new("RoPE tables", self.rope_tables));
        if last {
            activations.push(Part::new(
                "final norm + loss row stats",
                self.head_activations,
            ));
        }
        let mut transient = vec![
            Part::new("deployed experts, one projection", max(|l| l.deploy)),
            Part::new("grouped low-rank buffers", max(|l| l.lowrank)),
            Part::new("attention work buffers", max(|l| l.attention)),
            Part::new("gradients in flight (≤ one layer)", max(|l| l.saved)),
        ];
        if last {
            transient.push(Part::new(
                "cross-entropy chunk (logits + grad)",
                self.ce_chunks,
            ));
            if self.head_wide > 0 {
                transient.push(Part::new("lm_head widened to f32", self.head_wide));
            }
        }
        if pipelined {
            transient.push(Part::new(
                "stage send/receive [T, H] ×2",
                2 * self.hidden_state,
            ));
        }
        let lora_params = sum(|l| l.lora_params);
        let mut b = Breakdown {
            experts_packed: sum(|l| l.experts_packed),
            non_expert_bf16: params * 2,
            non_expert_held: bf16_params * 2 + (params - bf16_params) * F32,
            lora_params,
            lora_state: lora_params * LORA_BYTES_PER_PARAM,
            activations: activations.iter().map(|p| p.bytes).sum(),
            activation_parts: activations,
            transient: transient.iter().map(|p| p.bytes).sum(),
            transient_parts: transient,
            total: 0,
        };
        b.total = b.experts_packed + b.non_expert_held + b.lora_state + b.activations + b.transient;
        b
    }
}

/// A named share of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// What it is.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

impl Part {
    fn new(name: &str, bytes: u64) -> Self {
        Self {
            name: name.to_string(),
            bytes,
        }
    }
}

/// The bytes one device needs, by component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    /// MXFP4 blocks + scales of the experts held, as stored.
    pub experts_packed: u64,
    /// Non-expert weights as the checkpoint stores them (BF16; informational, not in `total`).
    pub non_expert_bf16: u64,
    /// As the model holds them: bf16 matrices, f32 vectors and router (counted in `total`).
    pub non_expert_held: u64,
    /// LoRA parameters held.
    pub lora_params: u64,
    /// LoRA parameter + gradient + AdamW m + v, f32.
    pub lora_state: u64,
    /// Activations kept for backward.
    pub activations: u64,
    /// Its parts.
    pub activation_parts: Vec<Part>,
    /// Work buffers alive at the peak.
    pub transient: u64,
    /// Its parts.
    pub transient_parts: Vec<Part>,
    /// Everything counted.
    pub total: u64,
}

impl Breakdown {
    /// The largest counted component: `(name, bytes)`.
    pub fn dominant(&self) -> (&'static str, u64) {
        [
            ("packed experts", self.experts_packed),
            ("non-expert weights", self.non_expert_held),
            ("LoRA + AdamW state", self.lora_state),
            ("activations", self.activations),
            ("transient buffers", self.transient),
        ]
        .into_iter()
        .max_by_key(|p| p.1)
        .unwrap_or(("nothing", 0))
    }
}
