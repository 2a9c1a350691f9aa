//! Gradient checkpointing: one micro-batch's gradients with each decoder layer recomputed in
//! backward, so only one layer's activations are alive at a time.
//!
//! The forward runs on the inner (non-autodiff) backend and keeps nothing but each layer's input
//! `[batch, seq, hidden]`. Backward then walks the layers from the top: the final norm and the
//! chunked LM-head loss are differentiated from the last hidden state, and each layer is run again
//! under autodiff from its saved input and differentiated with the gradient that arrived at its
//! output (a vector–Jacobian product through `sum(out · g)`, whose seed is exactly `g`). The
//! values are those of the un-checkpointed graph: the same ops on the same inputs.
//!
//! The pieces ([`forward_keeping_inputs`], [`head_grad`], [`recompute_backward`]) work on any
//! contiguous range of layers; the pipeline ([`super::pipeline`]) runs them per stage.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use kernels::ops::{default_chunk_rows, LoraLinearBackend, RoutingBackend};

use super::batch::Batch;
use crate::model::layer::DecoderLayer;
use crate::model::loss::{counted_rows_loss, counted_targets};
use crate::model::placement::{moved, RopeByDevice};
use crate::model::{ForwardMode, GptOssForCausalLM, PositionIds};

/// `(PEFT key, gradient)` of LoRA factors, in layer order.
pub type LoraGrads<B> = Vec<(
    String,
    Option<Tensor<<B as AutodiffBackend>::InnerBackend, 2>>,
)>;

/// A micro-batch's loss value and its LoRA gradients, scaled by `weight` like `loss · weight`
/// would be.
pub type BatchGrads<B> = (f64, LoraGrads<B>);

/// Runs `layers` graph-free from `x`, moving it to each layer's device; returns the output and
/// each layer's input (on that layer's device).
pub fn forward_keeping_inputs<B: LoraLinearBackend>(
    layers: &[DecoderLayer<B>],
    mut x: Tensor<B, 3>,
    rope: &mut RopeByDevice<B>,
    positions: &PositionIds,
    mode: ForwardMode,
) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 3>>)> {
    let mut inputs = Vec::with_capacity(layers.len());
    for layer in layers {
        let on = layer.device();
        x = moved(x, &on);
        inputs.push(x.clone());
        x = layer.forward(x, rope.on(&on), positions, mode)?;
    }
    Ok((x, inputs))
}

/// The head of a micro-batch: the final norm and the chunked loss of `batch`'s labels from the
/// last hidden state `top` (moved to the head's device), differentiated with the loss scaled by
/// `weight`. Returns the loss value and the gradient at `top`.
pub fn head_grad<B>(
    model: &GptOssForCausalLM<B>,
    top: Tensor<B::InnerBackend, 3>,
    batch: &Batch,
    weight: f64,
) -> Result<(f64, Tensor<B::InnerBackend, 3>)>
where
    B: AutodiffBackend + LoraLinearBackend,
{
    let (rows, targets) =
        counted_targets(&batch.labels, batch.batch, batch.seq, model.vocab_size())?;
    let top = Tensor::<B, 3>::from_inner(moved(top, &model.head_device())).require_grad();
    let hidden = model.model.norm.forward(top.clone());
    let chunk = default_chunk_rows(model.vocab_size());
    let loss = counted_rows_loss(hidden, model.lm_head.weight_f32(), rows, &targets, chunk)?.loss;
    let value: f64 = loss.clone().into_scalar().elem();
    let g = loss.mul_scalar(weight).backward();
    let upstream = top
        .grad(&g)
        .context("no gradient reached the last hidden state")?;
    Ok((value, upstream))
}

/// Backward through `layers` by recomputation: from the top, each layer runs again under autodiff
/// from its saved input and is differentiated with the gradient at its output (`upstream` at the
/// last layer's output, moved to each layer's device). Returns the layers' LoRA gradients (layer
/// order) and the gradient at the first layer's input.
pub fn recompute_backward<B>(
    layers: &[DecoderLayer<B>],
    inputs: Vec<Tensor<B::InnerBackend, 3>>,
    mut upstream: Tensor<B::InnerBackend, 3>,
    rope: &mut RopeByDevice<B>,
    positions: &PositionIds,
    mode: ForwardMode,
) -> Result<(LoraGrads<B>, Tensor<B::InnerBackend, 3>)>
where
    B: AutodiffBackend + LoraLinearBackend,
{
    let mut grads = Vec::new();
    for (layer, input) in layers.iter().zip(inputs).rev() {
        let on = layer.device();
        let x = Tensor::<B, 3>::from_inner(input).require_grad();
        let out = layer.forward(x.clone(), rope.on(&on), positions, mode)?;
        let g = (out * Tensor::from_inner(moved(upstream, &on)))
            .sum()
            .backward();
        let mut layer_grads = layer.lora_grads(&g);
        layer_grads.append(&mut grads);
        grads = layer_grads;
        upstream = x
            .grad(&g)
            .with_context(|| format!("no gradient reached the input of layer {}", layer.index))?;
    }
    Ok((grads, upstream))
}

/// [`BatchGrads`] of `batch` with per-layer recomputation; `frozen` is `model.valid()` (the same
/// weights on the inner backend). Works across layer placement: each layer on its own device.
pub fn checkpointed_grads<B>(
    model: &GptOssForCausalLM<B>,
    frozen: &GptOssForCausalLM<B::InnerBackend>,
    batch: &Batch,
    weight: f64,
    mode: ForwardMode,
) -> Result<BatchGrads<B>>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    let (b, s) = (batch.batch, batch.seq);
    let positions = PositionIds::from_i64(&batch.positions, b, s)?;
    // labels are checked before the decoder runs
    counted_targets(&batch.labels, b, s, model.vocab_size())?;
    let ids = frozen.input_ids(&batch.ids, b, s, &frozen.embed_device())?;

    // forward without a graph, keeping each layer's input (on the layer's device)
    let x = frozen.model.embed_tokens.forward(ids);
    let mut rope = RopeByDevice::new(&frozen.model.rope, frozen.model.head_dim, &positions);
    let (top, inputs) =
        forward_keeping_inputs(&frozen.model.layers, x, &mut rope, &positions, mode)?;
    drop(rope);
    // what device routing flagged in any layer (one read per device for the whole pass)
    for on in frozen.layer_devices() {
        <B::InnerBackend as RoutingBackend>::routing_errors(&on)?;
    }

    // the head, then each layer again, from the top, under autodiff (the gradient moves back
    // across devices)
    let (value, upstream) = head_grad(model, top, batch, weight)?;
    let mut rope = RopeByDevice::new(&model.model.rope, model.model.head_dim, &positions);
    let (grads, _) = recompute_backward(
        &model.model.layers,
        inputs,
        upstream,
        &mut rope,
        &positions,
        mode,
    )?;
    Ok((value, grads))
}
