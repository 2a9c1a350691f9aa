//! gpt-oss attention (`self_attn`): q/k/v/o projections with biases, YaRN RoPE, grouped-query
//! attention, per-head sinks (an extra softmax logit that is dropped), causal or sliding window,
//! confined to the packed segments of the position ids.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::ops::LoraLinearBackend;

use super::linear::LoraLinear;
use super::mask::AttentionPattern;
use super::mode::ForwardMode;
use super::positions::PositionIds;
use super::rope::RopeTables;
use super::sdpa;

/// `model.layers.{l}.self_attn`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[heads·head_dim, hidden]`.
    pub q_proj: LoraLinear<B>,
    /// `[kv_heads·head_dim, hidden]`.
    pub k_proj: LoraLinear<B>,
    /// `[kv_heads·head_dim, hidden]`.
    pub v_proj: LoraLinear<B>,
    /// `[hidden, heads·head_dim]`.
    pub o_proj: LoraLinear<B>,
    /// `[heads]`, frozen: the sink logit of each head.
    pub sinks: Param<Tensor<B, 1>>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Causal or sliding window.
    pub pattern: AttentionPattern,
}

impl<B: LoraLinearBackend> Attention<B> {
    /// `x [batch, seq, hidden] -> [batch, seq, hidden]`; `rope` holds the tables of `positions`
    /// (`[batch, seq]`), whose segments bound what each query sees.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        positions: &PositionIds,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let x2 = x.reshape([batch * seq, hidden]);
        let split =
            |t: Tensor<B, 2>, heads: usize| t.reshape([batch, seq, heads, d]).swap_dims(1, 2);
        let q = rope.apply(split(self.q_proj.forward(x2.clone(), mode)?, h));
        let k = rope.apply(split(self.k_proj.forward(x2.clone(), mode)?, kv));
        let v = split(self.v_proj.forward(x2, mode)?, kv);
        let out = sdpa::attention(q, k, v, self.sinks.val(), self.pattern, positions)?
            .swap_dims(1, 2)
            .reshape([batch * seq, h * d]);
        Ok(self
            .o_proj
            .forward(out, mode)?
            .reshape([batch, seq, hidden]))
    }
}
