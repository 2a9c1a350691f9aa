//! One decoder layer: pre-norm attention and pre-norm MoE, both residual.

use anyhow::Context;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use kernels::ops::LoraLinearBackend;

use super::attention::Attention;
use super::mlp::Mlp;
use super::mode::ForwardMode;
use super::positions::PositionIds;
use super::rms_norm::RmsNorm;
use super::rope::RopeTables;

/// `model.layers.{l}`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm<B>,
    /// `self_attn`.
    pub self_attn: Attention<B>,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm<B>,
    /// `mlp`.
    pub mlp: Mlp<B>,
    /// Layer index (for error messages).
    pub index: usize,
}

impl<B: Backend> DecoderLayer<B> {
    /// The device holding this layer.
    pub fn device(&self) -> B::Device {
        self.input_layernorm.weight.device()
    }
}

impl<B: LoraLinearBackend> DecoderLayer<B> {
    /// `[batch, seq, hidden] -> [batch, seq, hidden]` at `positions` (`rope` holds their tables).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        positions: &PositionIds,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let l = self.index;
        let h = self
            .self_attn
            .forward(
                self.input_layernorm.forward(x.clone()),
                rope,
                positions,
                mode,
            )
            .with_context(|| format!("layer {l} attention"))?;
        let x = x + h;
        let h = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()), mode)
            .with_context(|| format!("layer {l} experts"))?;
        Ok(x + h)
    }
}

impl<B: AutodiffBackend> DecoderLayer<B> {
    /// `(PEFT key, gradient)` of this layer's LoRA factors after a backward pass: attention q, k,
    /// v, o, then the experts' stacked gate_up and down, A before B.
    pub fn lora_grads(
        &self,
        grads: &B::Gradients,
    ) -> Vec<(String, Option<Tensor<B::InnerBackend, 2>>)> {
        let mut out = Vec::new();
        let a = &self.self_attn;
        for p in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
            .into_iter()
            .filter_map(|p| p.lora.as_ref())
        {
            out.extend(p.grads(grads));
        }
        let e = &self.mlp.experts;
        for p in [&e.gate_up_proj, &e.down_proj]
            .into_iter()
            .filter_map(|p| p.lora.as_ref())
        {
            out.extend(p.grads(grads));
        }
        out
    }
}
