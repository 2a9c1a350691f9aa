//! The whole model: `GptOssForCausalLM { model: { embed_tokens, layers, norm }, lm_head }`.

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use kernels::ops::LoraLinearBackend;

use super::embedding::{Embedding, LmHead};
use super::layer::DecoderLayer;
use super::lora::LoraPair;
use super::loss::{causal_lm_loss, LossOutput};
use super::mode::ForwardMode;
use super::rms_norm::RmsNorm;
use super::rope::{RopeTables, YarnParams};

/// `model`: embedding, decoder layers, final norm, and the rotary embedding parameters.
#[derive(Module, Debug)]
pub struct GptOssModel<B: Backend> {
    /// `model.embed_tokens`.
    pub embed_tokens: Embedding<B>,
    /// `model.layers`.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm`.
    pub norm: RmsNorm<B>,
    /// YaRN parameters of the rotary embedding.
    pub rope: YarnParams,
    /// Per-head width (the rotary tables' width).
    pub head_dim: usize,
}

/// gpt-oss with its (untied) output head.
#[derive(Module, Debug)]
pub struct GptOssForCausalLM<B: Backend> {
    /// The decoder.
    pub model: GptOssModel<B>,
    /// `lm_head`.
    pub lm_head: LmHead<B>,
}

/// Logits and, when labels were given, the loss.
#[derive(Debug, Clone)]
pub struct CausalLmOutput<B: Backend> {
    /// `[batch, seq, vocab]`.
    pub logits: Tensor<B, 3>,
    /// Mean loss over the counted tokens.
    pub loss: LossOutput<B>,
}

impl<B: Backend> GptOssForCausalLM<B> {
    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.lm_head.weight.dims()[0]
    }

    /// `ids` (row-major `[batch, seq]`) as an Int tensor, each checked to be `< vocab`.
    pub fn input_ids(
        &self,
        ids: &[i64],
        batch: usize,
        seq: usize,
        device: &B::Device,
    ) -> anyhow::Result<Tensor<B, 2, Int>> {
        anyhow::ensure!(
            ids.len() == batch * seq && seq > 0,
            "input_ids: {} values for batch {batch} × seq {seq}",
            ids.len()
        );
        let vocab = self.vocab_size();
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| !(0..vocab as i64).contains(&id))
        {
            anyhow::bail!(
                "input_ids[{}, {}] = {id} is outside the vocabulary (0..{vocab})",
                i / seq,
                i % seq
            );
        }
        Ok(Tensor::from_data(
            TensorData::new(ids.to_vec(), [batch, seq]),
            device,
        ))
    }

    /// Every LoRA pair of the model, in layer order (attention q, k, v, o, then experts
    /// gate_up, down).
    pub fn lora_pairs(&self) -> Vec<&LoraPair<B>> {
        let mut out = Vec::new();
        for layer in &self.model.layers {
            let a = &layer.self_attn;
            for proj in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                out.extend(proj.lora.as_ref());
            }
            let e = &layer.mlp.experts;
            out.extend(e.gate_up_proj.lora.as_ref());
            out.extend(e.down_proj.lora.as_ref());
        }
        out
    }

    /// `(PEFT key, tensor)` of every LoRA factor.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        self.lora_pairs()
            .into_iter()
            .flat_map(LoraPair::tensors)
            .collect()
    }
}

impl<B: AutodiffBackend> GptOssForCausalLM<B> {
    /// `(PEFT key, gradient)` of every LoRA factor after `loss.backward()`.
    pub fn lora_grads(
        &self,
        grads: &B::Gradients,
    ) -> Vec<(String, Option<Tensor<B::InnerBackend, 2>>)> {
        self.lora_pairs()
            .into_iter()
            .flat_map(|p| p.grads(grads))
            .collect()
    }
}

impl<B: LoraLinearBackend> GptOssForCausalLM<B> {
    /// `ids [batch, seq] -> logits [batch, seq, vocab]` (positions `0..seq`, no padding mask).
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let [_, seq] = ids.dims();
        let device = ids.device();
        let m = &self.model;
        let rope = RopeTables::new(&m.rope, m.head_dim, seq, &device);
        let mut x = m.embed_tokens.forward(ids);
        for layer in &m.layers {
            x = layer.forward(x, &rope, mode)?;
        }
        Ok(self.lm_head.forward(m.norm.forward(x)))
    }

    /// Logits and the mean causal-LM loss against `labels` (`[batch · seq]` row-major, -100 ignored,
    /// shifted inside like transformers).
    pub fn forward_with_loss(
        &self,
        ids: Tensor<B, 2, Int>,
        labels: &[i64],
        mode: ForwardMode,
    ) -> anyhow::Result<CausalLmOutput<B>> {
        let logits = self.forward(ids, mode)?;
        let loss = causal_lm_loss(logits.clone(), labels)?;
        Ok(CausalLmOutput { logits, loss })
    }
}
