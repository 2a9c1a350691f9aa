//! One optimizer step's gradients: the micro-batches' losses, each weighted by its share of the
//! step's counted tokens (the mean over every counted token of the step, as transformers ≥ 4.46
//! normalizes with `num_items_in_batch`), backward (whole graph, or layer by layer with
//! recomputation under gradient checkpointing), and the LoRA gradients summed where they were
//! computed, keyed by PEFT name ([`DeviceGrads`]; [`StepGrads`] is their host copy).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use kernels::ops::LoraLinearBackend;

use super::batch::Batch;
use super::recompute::{checkpointed_grads, BatchGrads};
use crate::model::{ForwardMode, GptOssForCausalLM, PositionIds};

/// The summed gradients and the step's mean loss, on the host.
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
/// `checkpointing`, each decoder layer is recomputed in backward ([`checkpointed_grads`]). The
/// sums are read to the host.
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
    share_grads(model, &all, total, mode, checkpointing)?.into_host()
}

/// One replica's share of a step: [`step_grads`] over `batches`, each weighted by its counted
/// tokens over `total`, the counted tokens of the whole step (every replica's batches), so that
/// the replicas' sums add up to the step's gradient. `loss` is this share's part of the step's
/// mean loss and `counted` its counted tokens. The gradients stay on the devices of their layers.
pub fn share_grads<B>(
    model: &GptOssForCausalLM<B>,
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
    Ok(DeviceGrads {
        grads,
        loss: loss_sum,
        counted,
    })
}

/// The summed gradients of a step (or of one replica's or stage's share of it) where they were
/// computed, with the loss and counted tokens.
#[derive(Debug)]
pub struct DeviceGrads<B: Backend> {
    /// PEFT name -> gradient (stacked like PEFT's tensors), each on its layer's device.
    pub grads: GradSum<B>,
    /// This share's part of the step's mean loss.
    pub loss: f64,
    /// Counted tokens.
    pub counted: usize,
}

impl<B: Backend> DeviceGrads<B> {
    /// Nothing yet.
    pub fn empty() -> Self {
        Self {
            grads: GradSum::default(),
            loss: 0.0,
            counted: 0,
        }
    }

    /// Adds `other` (another replica's or stage's share): losses and counts summed, each
    /// gradient added to this one's of the same name on this one's device.
    pub fn add(&mut self, other: Self) {
        self.loss += other.loss;
        self.counted += other.counted;
        self.grads.merge(other.grads);
    }

    /// The host copy.
    pub fn into_host(self) -> Result<StepGrads> {
        Ok(StepGrads {
            grads: self.grads.into_host()?,
            loss: self.loss,
            counted: self.counted,
        })
    }

    /// Runs `f` on the host copy (e.g. the all-reduce across nodes) and puts its result back on
    /// the devices, in the shapes the gradients had; `f` must return the same tensors.
    pub fn through_host(self, f: impl FnOnce(StepGrads) -> Result<StepGrads>) -> Result<Self> {
        let places: BTreeMap<String, ([usize; 2], B::Device)> = self
            .grads
            .sums
            .iter()
            .map(|(k, t)| (k.clone(), (t.dims(), t.device())))
            .collect();
        let host = f(self.into_host()?)?;
        let mut sums = BTreeMap::new();
        for (name, values) in host.grads {
            let Some((shape, device)) = places.get(&name) else {
                bail!("{name}: a gradient the step did not compute");
            };
            if values.len() != shape[0] * shape[1] {
                bail!(
                    "{name}: {} gradient values for a {shape:?} tensor",
                    values.len()
                );
            }
            let t = Tensor::from_data(TensorData::new(values, *shape), device);
            sums.insert(name, t);
        }
        if let Some(name) = places.keys().find(|k| !sums.contains_key(*k)) {
            bail!("{name}: its gradient was lost on the way through the host");
        }
        Ok(Self {
            grads: GradSum { sums },
            loss: host.loss,
            counted: host.counted,
        })
    }
}

/// LoRA gradients summed per PEFT name where they were computed (the device), micro-batch after
/// micro-batch (`acc + g`, the f32 sum the host would do), and read to the host once.
#[derive(Debug)]
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

    /// Adds another sum's gradients to this one's of the same name (moved to this one's
    /// device; names only in `other` are taken as they are).
    pub fn merge(&mut self, other: GradSum<B>) {
        for (name, grad) in other.sums {
            let sum = match self.sums.remove(&name) {
                Some(acc) => {
                    let device = acc.device();
                    acc + grad.to_device(&device)
                }
                None => grad,
            };
            self.sums.insert(name, sum);
        }
    }

    /// The sums by PEFT name.
    pub fn into_map(self) -> BTreeMap<String, Tensor<B, 2>> {
        self.sums
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
/// PEFT name on the devices of replica 0's (each tensor one buffer: an expert projection's
/// factors are stacked), losses and counted tokens summed.
pub fn all_reduce<B: Backend>(shares: Vec<DeviceGrads<B>>) -> DeviceGrads<B> {
    let mut shares = shares.into_iter();
    let mut out = shares.next().unwrap_or_else(DeviceGrads::empty);
    for share in shares {
        out.add(share);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn grads(values: &[(&str, [f32; 2])]) -> DeviceGrads<Flex> {
        let dev = Default::default();
        let mut sum = GradSum::default();
        sum.add(
            values
                .iter()
                .map(|(k, v)| {
                    let t = Tensor::from_data(TensorData::new(v.to_vec(), [1, 2]), &dev);
                    (k.to_string(), Some(t))
                })
                .collect(),
        );
        DeviceGrads {
            grads: sum,
            loss: 0.5,
            counted: 3,
        }
    }

    #[test]
    fn device_grads_add_and_go_through_the_host() {
        let mut a = grads(&[("x", [1.0, 2.0]), ("y", [3.0, 4.0])]);
        a.add(grads(&[("x", [10.0, 20.0]), ("z", [5.0, 6.0])]));
        assert_eq!((a.loss, a.counted), (1.0, 6));
        // what the node exchange does to the host copy comes back on the device, in shape
        let back = a
            .through_host(|mut h| {
                h.grads.get_mut("y").unwrap()[0] = -1.0;
                h.loss = 2.0;
                Ok(h)
            })
            .unwrap();
        assert_eq!(back.loss, 2.0);
        let host = back.into_host().unwrap();
        assert_eq!(host.grads["x"], [11.0, 22.0]);
        assert_eq!(host.grads["y"], [-1.0, 4.0]);
        assert_eq!(host.grads["z"], [5.0, 6.0]);
        // a tensor lost, one of another length or one not computed is an error naming it
        let lost = grads(&[("x", [1.0, 2.0])]).through_host(|mut h| {
            h.grads.clear();
            Ok(h)
        });
        assert!(lost
            .unwrap_err()
            .to_string()
            .contains("x: its gradient was lost"));
        let short = grads(&[("x", [1.0, 2.0])]).through_host(|mut h| {
            h.grads.insert("x".into(), vec![1.0]);
            Ok(h)
        });
        assert!(short
            .unwrap_err()
            .to_string()
            .contains("x: 1 gradient values"));
        let extra = grads(&[("x", [1.0, 2.0])]).through_host(|mut h| {
            h.grads.insert("w".into(), vec![1.0, 2.0]);
            Ok(h)
        });
        assert!(extra
            .unwrap_err()
            .to_string()
            .contains("w: a gradient the step"));
    }
}
