//! One optimizer step's gradients: the micro-batches' losses, each weighted by its share of the
//! step's counted tokens (the mean over every counted token of the step, as transformers ≥ 4.46
//! normalizes with `num_items_in_batch`), backward (whole graph, or layer by layer with
//! recomputation under gradient checkpointing), and the LoRA gradients summed on the host, keyed
//! by PEFT name.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use kernels::ops::LoraLinearBackend;

use super::batch::Batch;
use super::recompute::{checkpointed_grads, BatchGrads};
use crate::model::{ForwardMode, GptOssForCausalLM, PositionIds};

/// The summed gradients and the step's mean loss.
#[derive(Debug, Clone, PartialEq)]
pub struct StepGrads {
    /// PEFT name -> gradient (stacked like PEFT's tensors).
    pub grads: BTreeMap<String, Vec<f32>>,
    /// Mean loss over the step's counted tokens.
    pub loss: f64,
    /// Counted tokens.
    pub counted: usize,
}

/// Loss of one micro-batch (mean over its counted tokens), as a differentiable scalar; the
/// cross-entropy runs in chunks of rows over the vocabulary (no full-sequence logits).
pub fn batch_loss<B: LoraLinearBackend>(
    model: &GptOssForCausalLM<B>,
    batch: &Batch,
    mode: ForwardMode,
) -> Result<burn::tensor::Tensor<B, 1>> {
    let ids = model.input_ids(&batch.ids, batch.batch, batch.seq, &model.embed_device())?;
    let positions = PositionIds::from_i64(&batch.positions, batch.batch, batch.seq)?;
    Ok(model.loss_at(ids, &positions, &batch.labels, mode)?.loss)
}

/// [`BatchGrads`] of one micro-batch through the whole autodiff graph.
fn full_graph_grads<B>(
    model: &GptOssForCausalLM<B>,
    batch: &Batch,
    weight: f64,
    mode: ForwardMode,
) -> Result<BatchGrads<B>>
where
    B: AutodiffBackend + LoraLinearBackend,
{
    let loss = batch_loss(model, batch, mode)?;
    let value: f64 = loss.clone().into_scalar().elem();
    let g = loss.mul_scalar(weight).backward();
    Ok((value, model.lora_grads(&g)))
}

/// Forward and backward over `batches`; batches with no counted token are left out. With
/// `checkpointing`, each decoder layer is recomputed in backward ([`checkpointed_grads`]).
pub fn step_grads<B>(
    model: &GptOssForCausalLM<B>,
    batches: &[Batch],
    mode: ForwardMode,
    checkpointing: bool,
) -> Result<StepGrads>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    let total: usize = batches.iter().map(Batch::counted).sum();
    let all: Vec<&Batch> = batches.iter().collect();
    share_grads(model, &all, total, mode, checkpointing)
}

/// One replica's share of a step: [`step_grads`] over `batches`, each weighted by its counted
/// tokens over `total`, the counted tokens of the whole step (every replica's batches), so that
/// the replicas' sums add up to the step's gradient. `loss` is this share's part of the step's
/// mean loss and `counted` its counted tokens.
pub fn share_grads<B>(
    model: &GptOssForCausalLM<B>,
    batches: &[&Batch],
    total: usize,
    mode: ForwardMode,
    checkpointing: bool,
) -> Result<StepGrads>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    if total == 0 {
        bail!("no counted token in the step");
    }
    let frozen = checkpointing.then(|| model.valid());
    let mut grads = GradSum::default();
    let mut loss_sum = 0f64;
    let mut counted = 0;
    for b in batches.iter().filter(|b| b.counted() > 0) {
        let weight = b.counted() as f64 / total as f64;
        counted += b.counted();
        let (value, batch_grads) = match &frozen {
            Some(frozen) => checkpointed_grads(model, frozen, b, weight, mode)?,
            None => full_graph_grads(model, b, weight, mode)?,
        };
        loss_sum += value * weight;
        grads.add(batch_grads);
    }
    Ok(StepGrads {
        grads: grads.into_host()?,
        loss: loss_sum,
        counted,
    })
}

/// LoRA gradients summed per PEFT name where they were computed (the device), micro-batch after
/// micro-batch (`acc + g`, the f32 sum the host would do), and read to the host once.
pub struct GradSum<B: Backend> {
    sums: BTreeMap<String, Tensor<B, 2>>,
}

impl<B: Backend> Default for GradSum<B> {
    fn default() -> Self {
        Self {
            sums: BTreeMap::new(),
        }
    }
}

impl<B: Backend> GradSum<B> {
    /// Adds one micro-batch's `(PEFT key, gradient)` (factors without a gradient are skipped).
    pub fn add(&mut self, grads: Vec<(String, Option<Tensor<B, 2>>)>) {
        for (name, grad) in grads {
            let Some(grad) = grad else { continue };
            let sum = match self.sums.remove(&name) {
                Some(acc) => acc + grad,
                None => grad,
            };
            self.sums.insert(name, sum);
        }
    }

    /// The sums on the host, by PEFT name.
    pub fn into_host(self) -> Result<BTreeMap<String, Vec<f32>>> {
        self.sums
            .into_iter()
            .map(|(name, t)| {
                let host = t
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
                Ok((name, host))
            })
            .collect()
    }
}

/// The all-reduce of the replicas' shares, in rank order (deterministic): gradients summed per
/// PEFT name (each tensor one buffer: an expert projection's factors are stacked), losses and
/// counted tokens summed.
pub fn all_reduce(shares: Vec<StepGrads>) -> StepGrads {
    let mut shares = shares.into_iter();
    let Some(mut out) = shares.next() else {
        return StepGrads {
            grads: BTreeMap::new(),
            loss: 0.0,
            counted: 0,
        };
    };
    for share in shares {
        out.loss += share.loss;
        out.counted += share.counted;
        for (name, g) in share.grads {
            match out.grads.get_mut(&name) {
                Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, h)| *a += h),
                None => {
                    out.grads.insert(name, g);
                }
            }
        }
    }
    out
}
