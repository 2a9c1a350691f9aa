//! Pipelined layer placement: one replica's stages (contiguous layer ranges, one device each) run
//! in their own threads, so while stage `s` works on micro-batch `m`, stage `s − 1` works on
//! `m + 1` (GPipe's schedule: every stage runs its forwards as inputs arrive; the last stage runs
//! the head and backward of each micro-batch as soon as its forward is done; the others run their
//! backwards, in micro-batch order, after their forwards).
//!
//! Activations go forward and their gradients backward over channels (`to_device` onto the
//! receiving stage's device). Without gradient checkpointing a stage keeps each micro-batch's
//! autodiff graph until its backward; with it, only its layers' inputs ([`recompute_backward`]).
//! Each stage adds its layers' LoRA gradients over the micro-batches in micro-batch order, which
//! is the order the sequential step adds them in: the result is bit-identical to
//! [`super::step::share_grads`].

use std::ops::Range;
use std::sync::mpsc::{channel, Receiver, Sender};

use anyhow::{anyhow, bail, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use kernels::ops::{LoraLinearBackend, RoutingBackend};

use super::batch::Batch;
use super::recompute::{forward_keeping_inputs, head_grad, recompute_backward, LoraGrads};
use super::step::DeviceGrads;
use crate::model::placement::{forward_layers, moved, RopeByDevice};
use crate::model::{ForwardMode, GptOssForCausalLM, PositionIds};

type Inner<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 3>;

/// Another stage stopped (its own error is the one reported).
#[derive(Debug, thiserror::Error)]
#[error("stage {0} stopped")]
struct Stopped(usize);

/// What a stage keeps of a micro-batch's forward for its backward.
enum Saved<B: AutodiffBackend> {
    /// Gradient checkpointing: each layer's input.
    Inputs(Vec<Inner<B>>),
    /// The autodiff graph: its input leaf and output.
    Graph(Tensor<B, 3>, Tensor<B, 3>),
}

/// One stage's part of the step.
type StageOut<B> = DeviceGrads<<B as AutodiffBackend>::InnerBackend>;

/// A stage's place in the pipeline.
struct Stage<B: AutodiffBackend> {
    index: usize,
    layers: Range<usize>,
    last: bool,
    fwd_in: Option<Receiver<Inner<B>>>,
    fwd_out: Option<Sender<Inner<B>>>,
    bwd_in: Option<Receiver<Inner<B>>>,
    bwd_out: Option<Sender<Inner<B>>>,
}

/// [`super::step::share_grads`] of one replica whose layers are split into `ranges` (one device
/// each), with the stages running in parallel threads.
pub fn pipelined_grads<B>(
    model: &GptOssForCausalLM<B>,
    ranges: &[Range<usize>],
    batches: &[&Batch],
    total: usize,
    mode: ForwardMode,
    checkpointing: bool,
) -> Result<DeviceGrads<B::InnerBackend>>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    if total == 0 {
        bail!("no counted token in the step");
    }
    let batches: Vec<&Batch> = batches
        .iter()
        .copied()
        .filter(|b| b.counted() > 0)
        .collect();
    let frozen = model.valid();
    let n = ranges.len();
    let (fwd_tx, fwd_rx): (Vec<_>, Vec<_>) = (1..n).map(|_| channel::<Inner<B>>()).unzip();
    let (bwd_tx, bwd_rx): (Vec<_>, Vec<_>) = (1..n).map(|_| channel::<Inner<B>>()).unzip();
    let mut fwd_in: Vec<_> = std::iter::once(None)
        .chain(fwd_rx.into_iter().map(Some))
        .collect();
    let mut fwd_out: Vec<_> = fwd_tx
        .into_iter()
        .map(Some)
        .chain(std::iter::once(None))
        .collect();
    let mut bwd_in: Vec<_> = bwd_rx
        .into_iter()
        .map(Some)
        .chain(std::iter::once(None))
        .collect();
    let mut bwd_out: Vec<_> = std::iter::once(None)
        .chain(bwd_tx.into_iter().map(Some))
        .collect();
    let stages: Vec<Stage<B>> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Stage {
            index: i,
            layers: r.clone(),
            last: i + 1 == n,
            fwd_in: fwd_in[i].take(),
            fwd_out: fwd_out[i].take(),
            bwd_in: bwd_in[i].take(),
            bwd_out: bwd_out[i].take(),
        })
        .collect();
    let (frozen, batches) = (&frozen, &batches);
    let results: Vec<Result<StageOut<B>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stages
            .into_iter()
            .map(|st| {
                scope.spawn(move || {
                    let i = st.index;
                    run_stage(model, frozen, st, batches, total, mode, checkpointing)
                        .with_context(|| format!("pipeline stage {i}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("pipeline stage {i} panicked")))
            })
            .collect()
    });
    // report a stage's own error, not the others stopping after it
    if let Some(e) = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|e| e.downcast_ref::<Stopped>().is_none())
        .or_else(|| results.iter().find_map(|r| r.as_ref().err()))
    {
        bail!("{e:#}");
    }
    let mut out = DeviceGrads::empty();
    for st in results.into_iter().flatten() {
        out.add(st);
    }
    Ok(out)
}

fn recv<B: AutodiffBackend>(rx: &Option<Receiver<Inner<B>>>, from: usize) -> Result<Inner<B>> {
    rx.as_ref()
        .context("no channel")?
        .recv()
        .map_err(|_| Stopped(from).into())
}

fn send<B: AutodiffBackend>(tx: &Option<Sender<Inner<B>>>, x: Inner<B>, to: usize) -> Result<()> {
    tx.as_ref()
        .context("no channel")?
        .send(x)
        .map_err(|_| Stopped(to).into())
}

/// One stage: its forwards, then its backwards (the last stage runs each backward right after the
/// forward).
fn run_stage<B>(
    model: &GptOssForCausalLM<B>,
    frozen: &GptOssForCausalLM<B::InnerBackend>,
    st: Stage<B>,
    batches: &[&Batch],
    total: usize,
    mode: ForwardMode,
    checkpointing: bool,
) -> Result<StageOut<B>>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    let own = &model.model.layers[st.layers.clone()];
    let own_frozen = &frozen.model.layers[st.layers.clone()];
    let device = own[0].device();
    let (first, i) = (st.index == 0, st.index);
    let mut out = StageOut::<B>::empty();
    let mut pending = Vec::new();
    for batch in batches {
        let positions = PositionIds::from_i64(&batch.positions, batch.batch, batch.seq)?;
        let x = match first {
            true => {
                let ids =
                    frozen.input_ids(&batch.ids, batch.batch, batch.seq, &frozen.embed_device())?;
                frozen.model.embed_tokens.forward(ids)
            }
            false => recv::<B>(&st.fwd_in, i - 1)?,
        };
        let (y, saved) = match checkpointing {
            true => {
                let mut rope =
                    RopeByDevice::new(&frozen.model.rope, frozen.model.head_dim, &positions);
                let (y, inputs) =
                    forward_keeping_inputs(own_frozen, x, &mut rope, &positions, mode)?;
                (y, Saved::<B>::Inputs(inputs))
            }
            false => {
                let mut rope =
                    RopeByDevice::new(&model.model.rope, model.model.head_dim, &positions);
                let leaf = Tensor::<B, 3>::from_inner(moved(x, &device));
                let leaf = if first { leaf } else { leaf.require_grad() };
                let h = forward_layers(own, leaf.clone(), &mut rope, &positions, mode)?;
                (h.clone().inner(), Saved::Graph(leaf, h))
            }
        };
        <B::InnerBackend as RoutingBackend>::routing_errors(&device)?;
        if st.last {
            let weight = batch.counted() as f64 / total as f64;
            let (value, upstream) = head_grad(model, y, batch, weight)?;
            out.loss += value * weight;
            out.counted += batch.counted();
            backward(model, &st, own, saved, upstream, &positions, mode, &mut out)?;
        } else {
            send::<B>(&st.fwd_out, y, i + 1)?;
            pending.push((positions, saved));
        }
    }
    for (positions, saved) in pending {
        let upstream = recv::<B>(&st.bwd_in, i + 1)?;
        backward(model, &st, own, saved, upstream, &positions, mode, &mut out)?;
    }
    Ok(out)
}

/// A stage's backward of one micro-batch from the gradient at its output: its LoRA gradients into
/// `out`, the gradient at its input to the previous stage.
#[allow(clippy::too_many_arguments)]
fn backward<B>(
    model: &GptOssForCausalLM<B>,
    st: &Stage<B>,
    own: &[crate::model::layer::DecoderLayer<B>],
    saved: Saved<B>,
    upstream: Inner<B>,
    positions: &PositionIds,
    mode: ForwardMode,
    out: &mut StageOut<B>,
) -> Result<()>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    let (grads, dx) = match saved {
        Saved::Inputs(inputs) => {
            let mut rope = RopeByDevice::new(&model.model.rope, model.model.head_dim, positions);
            let (grads, dx) =
                recompute_backward(own, inputs, upstream, &mut rope, positions, mode)?;
            (grads, Some(dx))
        }
        Saved::Graph(leaf, y) => {
            let on = y.device();
            let g = (y * Tensor::from_inner(moved(upstream, &on)))
                .sum()
                .backward();
            let grads: LoraGrads<B> = own.iter().flat_map(|l| l.lora_grads(&g)).collect();
            (grads, leaf.grad(&g))
        }
    };
    out.grads.add(grads);
    if st.index > 0 {
        let dx = dx.context("no gradient reached the stage's input")?;
        send::<B>(&st.bwd_out, dx, st.index - 1)?;
    }
    Ok(())
}
