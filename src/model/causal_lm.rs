//! The whole model: `GptOssForCausalLM { model: { embed_tokens, layers, norm }, lm_head }`.

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use kernels::ops::{default_chunk_rows, ChunkedCeBackend, LoraLinearBackend};

use super::embedding::{Embedding, LmHead};
use super::expert_lora::ExpertLora;
use super::layer::DecoderLayer;
use super::lora::LoraPair;
use super::loss::{causal_lm_loss, counted_rows_loss, counted_targets, LossOutput};
use super::mode::ForwardMode;
use super::placement::{forward_layers, moved, RopeByDevice};
use super::positions::PositionIds;
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
    /// The device of `embed_tokens` (where token ids go).
    pub fn embed_device(&self) -> B::Device {
        self.model.embed_tokens.weight.device()
    }

    /// The device of the final norm, `lm_head` and the loss.
    pub fn head_device(&self) -> B::Device {
        self.lm_head.weight.device()
    }

    /// The distinct devices of the decoder layers, in layer order.
    pub fn layer_devices(&self) -> Vec<B::Device> {
        let mut out: Vec<B::Device> = Vec::new();
        for d in self.model.layers.iter().map(DecoderLayer::device) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

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

    /// The attention LoRA pairs and the expert LoRAs of every layer, in layer order
    /// (q, k, v, o, then gate_up, down).
    fn loras(&self) -> (Vec<&LoraPair<B>>, Vec<Vec<&ExpertLora<B>>>) {
        let mut attn = Vec::new();
        let mut experts = Vec::new();
        for layer in &self.model.layers {
            let a = &layer.self_attn;
            attn.extend(
                [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                    .into_iter()
                    .filter_map(|p| p.lora.as_ref()),
            );
            let e = &layer.mlp.experts;
            experts.push(
                [&e.gate_up_proj, &e.down_proj]
                    .into_iter()
                    .filter_map(|p| p.lora.as_ref())
                    .collect(),
            );
        }
        (attn, experts)
    }

    /// `(PEFT key, tensor)` of every LoRA factor, layer by layer (attention q, k, v, o, then the
    /// experts' stacked gate_up and down), A before B.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let mut out = Vec::new();
        for layer in &self.model.layers {
            let a = &layer.self_attn;
            for p in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                .into_iter()
                .filter_map(|p| p.lora.as_ref())
            {
                out.extend(p.tensors());
            }
            let e = &layer.mlp.experts;
            for p in [&e.gate_up_proj, &e.down_proj]
                .into_iter()
                .filter_map(|p| p.lora.as_ref())
            {
                out.extend(p.tensors());
            }
        }
        out
    }

    /// Number of trainable LoRA values.
    pub fn lora_param_count(&self) -> usize {
        let (attn, experts) = self.loras();
        let a: usize = attn
            .iter()
            .map(|p| p.lora_a.num_params() + p.lora_b.num_params())
            .sum();
        let e: usize = experts.iter().flatten().map(|p| p.num_params()).sum();
        a + e
    }
}

impl<B: AutodiffBackend> GptOssForCausalLM<B> {
    /// `(PEFT key, gradient)` of every LoRA factor after `loss.backward()`, in the order of
    /// [`lora_tensors`](Self::lora_tensors); expert gradients are stacked like PEFT's tensors.
    pub fn lora_grads(
        &self,
        grads: &B::Gradients,
    ) -> Vec<(String, Option<Tensor<B::InnerBackend, 2>>)> {
        self.model
            .layers
            .iter()
            .flat_map(|layer| layer.lora_grads(grads))
            .collect()
    }
}

impl<B: LoraLinearBackend> GptOssForCausalLM<B> {
    /// The rotary tables at `positions` (shared by every layer).
    pub fn rope_tables(&self, positions: &PositionIds, device: &B::Device) -> RopeTables<B> {
        RopeTables::at(&self.model.rope, self.model.head_dim, positions, device)
    }

    /// `ids [batch, seq] -> logits [batch, seq, vocab]` (positions `0..seq`, no padding mask).
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let [batch, seq] = ids.dims();
        self.forward_at(ids, &PositionIds::contiguous(batch, seq), mode)
    }

    /// `ids [batch, seq] -> logits [batch, seq, vocab]` at the given position ids: rotary angles
    /// from the ids, and each token attends only within its packed segment (see [`PositionIds`]).
    /// Contiguous ids give exactly [`forward`](Self::forward).
    pub fn forward_at(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        Ok(self.lm_head.forward(self.hidden_at(ids, positions, mode)?))
    }

    /// `ids [batch, seq] -> [batch, seq, hidden]`: the decoder's output after the final norm (what
    /// `lm_head` multiplies; transformers' `last_hidden_state`), at the given position ids.
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 3>> {
        let [batch, seq] = ids.dims();
        anyhow::ensure!(
            [positions.batch(), positions.seq()] == [batch, seq],
            "position_ids are [{}, {}], but input_ids are [{batch}, {seq}]",
            positions.batch(),
            positions.seq()
        );
        let m = &self.model;
        let mut rope = RopeByDevice::new(&m.rope, m.head_dim, positions);
        let x = m.embed_tokens.forward(moved(ids, &self.embed_device()));
        let x = forward_layers(&m.layers, x, &mut rope, positions, mode)?;
        // what device routing flagged in any layer (one read per device for the whole pass)
        for device in self.layer_devices() {
            B::routing_errors(&device)?;
        }
        Ok(m.norm.forward(moved(x, &self.head_device())))
    }

    /// Logits and the mean causal-LM loss against `labels` (`[batch · seq]` row-major, -100 ignored,
    /// shifted inside like transformers).
    pub fn forward_with_loss(
        &self,
        ids: Tensor<B, 2, Int>,
        labels: &[i64],
        mode: ForwardMode,
    ) -> anyhow::Result<CausalLmOutput<B>> {
        let [batch, seq] = ids.dims();
        self.forward_with_loss_at(ids, &PositionIds::contiguous(batch, seq), labels, mode)
    }

    /// [`forward_with_loss`](Self::forward_with_loss) at the given position ids. For packed rows
    /// the labels should be -100 at the first token of each segment (no prediction across a
    /// boundary); that is the caller's (the data side's) business.
    pub fn forward_with_loss_at(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        labels: &[i64],
        mode: ForwardMode,
    ) -> anyhow::Result<CausalLmOutput<B>> {
        let logits = self.forward_at(ids, positions, mode)?;
        let loss = causal_lm_loss(logits.clone(), labels)?;
        Ok(CausalLmOutput { logits, loss })
    }
}

impl<B: LoraLinearBackend + ChunkedCeBackend> GptOssForCausalLM<B> {
    /// The mean causal-LM loss of [`forward_with_loss_at`](Self::forward_with_loss_at) (same
    /// labels, shift and -100 rule) without the logits: the final hidden rows that are counted
    /// are gathered and go through the frozen `lm_head` in chunks of
    /// [`default_chunk_rows`] (≤ 64 MiB of logits at a time, none kept for backward). This is the
    /// training loss; use [`forward_with_loss_at`](Self::forward_with_loss_at) when the logits
    /// themselves are wanted.
    pub fn loss_at(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        labels: &[i64],
        mode: ForwardMode,
    ) -> anyhow::Result<LossOutput<B>> {
        let chunk = default_chunk_rows(self.vocab_size());
        self.loss_at_chunked(ids, positions, labels, mode, chunk)
    }

    /// [`loss_at`](Self::loss_at) with `chunk` rows of logits at a time (`>= 1`).
    pub fn loss_at_chunked(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        labels: &[i64],
        mode: ForwardMode,
        chunk: usize,
    ) -> anyhow::Result<LossOutput<B>> {
        let [batch, seq] = ids.dims();
        // labels and chunk are checked before the decoder runs
        anyhow::ensure!(chunk >= 1, "the chunk size must be at least 1 row");
        let (rows, targets) = counted_targets(labels, batch, seq, self.vocab_size())?;
        let hidden = self.hidden_at(ids, positions, mode)?;
        counted_rows_loss(hidden, self.lm_head.weight_f32(), rows, &targets, chunk)
    }
}
