//! The tensors a release-format checkpoint must hold, derived from the config.

use safetensors::Dtype;

use super::config::GptOssConfig;
use super::names;

/// MXFP4 block size: elements per scale along the input axis.
pub const MXFP4_BLOCK: usize = 32;
/// Bytes per MXFP4 block (32 nibbles).
pub const MXFP4_BLOCK_BYTES: usize = MXFP4_BLOCK / 2;

/// Name, dtype and shape of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Full tensor name.
    pub name: String,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: String, dtype: Dtype, shape: &[usize]) -> Self {
        Self {
            name,
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Number of stored elements (bytes for U8).
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes on disk.
    pub fn nbytes(&self) -> u64 {
        self.numel() * self.dtype.bitsize() as u64 / 8
    }

    /// Model parameters held: MXFP4 blocks hold two elements per byte, scales hold none.
    pub fn param_count(&self) -> u64 {
        if self.name.ends_with("_blocks") {
            self.numel() * 2
        } else if self.name.ends_with("_scales") {
            0
        } else {
            self.numel()
        }
    }

    /// Whether this is MXFP4 data (blocks or scales).
    pub fn is_quantized(&self) -> bool {
        self.name.ends_with("_blocks") || self.name.ends_with("_scales")
    }
}

/// The two packed expert projections of a MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertProj {
    /// Fused, interleaved gate/up: rows `2I` (row 2i gate_i, 2i+1 up_i), cols `H`.
    GateUp,
    /// Down projection: rows `H`, cols `I`.
    Down,
}

impl ExpertProj {
    /// Both projections, in checkpoint order.
    pub const ALL: [ExpertProj; 2] = [ExpertProj::GateUp, ExpertProj::Down];

    /// Name stem in the checkpoint (`gate_up_proj` / `down_proj`).
    pub fn stem(self) -> &'static str {
        match self {
            ExpertProj::GateUp => "gate_up_proj",
            ExpertProj::Down => "down_proj",
        }
    }

    /// (rows = out features, cols = in features) for this config.
    pub fn dims(self, c: &GptOssConfig) -> (usize, usize) {
        match self {
            ExpertProj::GateUp => (2 * c.intermediate_size, c.hidden_size),
            ExpertProj::Down => (c.hidden_size, c.intermediate_size),
        }
    }
}

impl GptOssConfig {
    /// Name, dtype and shape of every tensor of the release format, in a stable order.
    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        let (h, e, v) = (self.hidden_size, self.num_local_experts, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bf = Dtype::BF16;
        let mut out = vec![TensorSpec::new(names::EMBED_TOKENS.into(), bf, &[v, h])];
        for l in 0..self.num_hidden_layers {
            out.push(TensorSpec::new(names::input_layernorm(l), bf, &[h]));
            for (proj, rows, cols) in [
                ("q_proj", q, h),
                ("k_proj", kv, h),
                ("v_proj", kv, h),
                ("o_proj", h, q),
            ] {
                out.push(TensorSpec::new(
                    names::attn_weight(l, proj),
                    bf,
                    &[rows, cols],
                ));
                out.push(TensorSpec::new(names::attn_bias(l, proj), bf, &[rows]));
            }
            out.push(TensorSpec::new(
                names::attn_sinks(l),
                bf,
                &[self.num_attention_heads],
            ));
            out.push(TensorSpec::new(
                names::post_attention_layernorm(l),
                bf,
                &[h],
            ));
            out.push(TensorSpec::new(names::router_weight(l), bf, &[e, h]));
            out.push(TensorSpec::new(names::router_bias(l), bf, &[e]));
            for proj in ExpertProj::ALL {
                let (rows, cols) = proj.dims(self);
                let nb = cols / MXFP4_BLOCK;
                let stem = proj.stem();
                out.push(TensorSpec::new(
                    names::expert_blocks(l, stem),
                    Dtype::U8,
                    &[e, rows, nb, MXFP4_BLOCK_BYTES],
                ));
                out.push(TensorSpec::new(
                    names::expert_scales(l, stem),
                    Dtype::U8,
                    &[e, rows, nb],
                ));
                out.push(TensorSpec::new(names::expert_bias(l, stem), bf, &[e, rows]));
            }
        }
        out.push(TensorSpec::new(names::FINAL_NORM.into(), bf, &[h]));
        out.push(TensorSpec::new(names::LM_HEAD.into(), bf, &[v, h]));
        out
    }

    /// Parameter count of the model (an MXFP4 element counts as 1; scales are not parameters).
    pub fn param_count(&self) -> u64 {
        self.expected_tensors()
            .iter()
            .map(TensorSpec::param_count)
            .sum()
    }

    /// Parameters used per token, counted as the gpt-oss model card does: everything except
    /// the embedding table (a lookup, not a matmul) and the experts not routed to
    /// (`num_local_experts - experts_per_token` per layer, weights and biases).
    pub fn active_param_count(&self) -> u64 {
        let total = self.param_count() - (self.vocab_size * self.hidden_size) as u64;
        let per_expert: u64 = ExpertProj::ALL
            .iter()
            .map(|p| {
                let (rows, cols) = p.dims(self);
                (rows * cols + rows) as u64
            })
            .sum();
        let idle = (self.num_local_experts - self.experts_per_token) as u64;
        total - per_expert * idle * self.num_hidden_layers as u64
    }

    /// Bytes on disk of the release format (tensor data only, headers excluded).
    pub fn release_nbytes(&self) -> u64 {
        self.expected_tensors().iter().map(TensorSpec::nbytes).sum()
    }
}
