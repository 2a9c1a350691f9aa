//! The trainable state of a run (the LoRA factors keyed by PEFT name and their AdamW moments) and
//! where it lives: on the host, with the exact torch-CPU AdamW kernel (the reference; the default
//! on the CPU), or on the devices beside the layers that use it (the default on a GPU: the step's
//! summed gradients are clipped and applied where they were computed, and the replicas take the
//! new factors from there, with no transfer of gradients or factors through the host). Both write
//! the same checkpoints: the device state is read back only to save.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use kernels::ops::LoraLinearBackend;

use super::clip::{clip_grad_norm, global_grad_norm};
use super::clip_device::{clip_grad_norm_device, first_non_finite};
use super::optim::{AdamW, DeviceAdamW};
use super::parallel::Replicas;
use super::step::{DeviceGrads, StepGrads};
use crate::checkpoint::GptOssConfig;
use crate::model::GptOssForCausalLM;

/// Where the LoRA factors and the optimizer state live (`--optimizer-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OptimizerPlace {
    /// Host memory, the exact torch-CPU AdamW.
    Host,
    /// Beside each layer on its device.
    Device,
}

impl FromStr for OptimizerPlace {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(Self::Host),
            "device" => Ok(Self::Device),
            _ => bail!("--optimizer-on {s:?}: expected host or device"),
        }
    }
}

/// Host copy of the trainable tensors: PEFT name -> (shape, values).
type Params = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// What one update did.
#[derive(Debug, Clone, Copy)]
pub struct Stepped {
    /// The step's mean loss.
    pub loss: f64,
    /// Counted tokens.
    pub counted: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// The LoRA factors and their optimizer state, on the host or on the devices (`B` is the
/// backend the gradients are computed on, without autodiff).
pub enum Trainable<B: Backend> {
    Host {
        params: Params,
        adamw: AdamW,
    },
    Device {
        params: BTreeMap<String, Tensor<B, 2>>,
        adamw: DeviceAdamW<B>,
    },
}

impl<B: Backend> Trainable<B> {
    /// The state of `adapter` and `adamw` at `place`; on the devices, each factor where `model`
    /// (replica 0, with `adapter` attached) holds it.
    pub fn new<AB>(
        place: OptimizerPlace,
        adapter: &adapters::LoraAdapter,
        adamw: AdamW,
        model: &GptOssForCausalLM<AB>,
    ) -> Result<Self>
    where
        AB: AutodiffBackend<InnerBackend = B>,
    {
        Ok(match place {
            OptimizerPlace::Host => Self::Host {
                params: adapter
                    .tensors()
                    .map(|(k, s, d)| (k.to_string(), (s.to_vec(), d.to_vec())))
                    .collect(),
                adamw,
            },
            OptimizerPlace::Device => {
                let params: BTreeMap<String, Tensor<B, 2>> = model
                    .lora_tensors()
                    .into_iter()
                    .map(|(k, t)| (k, t.inner()))
                    .collect();
                let adamw = DeviceAdamW::from_host(&adamw, &params)?;
                Self::Device { params, adamw }
            }
        })
    }

    /// One optimizer step from the step's gradients: `reduce` (the all-reduce across nodes, on
    /// the host copy) when given, then every factor without a gradient given zeros, clipping to
    /// `max_norm` (0: none), AdamW at `lr`. A non-finite loss or gradient norm, or a factor made
    /// non-finite, is an error (with the state not updated in the first case).
    pub fn update(
        &mut self,
        g: DeviceGrads<B>,
        reduce: Option<&mut dyn FnMut(StepGrads) -> Result<StepGrads>>,
        lr: f64,
        max_norm: f64,
    ) -> Result<Stepped> {
        match self {
            Self::Host { params, adamw } => {
                let mut g = g.into_host()?;
                if let Some(reduce) = reduce {
                    g = reduce(g)?;
                }
                for (n, (_, v)) in params.iter() {
                    g.grads
                        .entry(n.clone())
                        .or_insert_with(|| vec![0.0; v.len()]);
                }
                check_names(g.grads.len(), params.len())?;
                // both maps are sorted by name: the views line up with `params`
                let mut views: Vec<&mut [f32]> =
                    g.grads.values_mut().map(Vec::as_mut_slice).collect();
                let grad_norm = match max_norm > 0.0 {
                    true => clip_grad_norm(&mut views, max_norm)?,
                    false => global_grad_norm(&views.iter().map(|v| &**v).collect::<Vec<_>>()),
                };
                finite(g.loss, grad_norm)?;
                let mut pv: Vec<(&str, &mut [f32])> = params
                    .iter_mut()
                    .map(|(k, (_, v))| (k.as_str(), v.as_mut_slice()))
                    .collect();
                let gv: Vec<&[f32]> = g.grads.values().map(Vec::as_slice).collect();
                adamw.step(lr, &mut pv, &gv)?;
                if let Some((name, _)) = params
                    .iter()
                    .find(|(_, (_, v))| v.iter().any(|x| !x.is_finite()))
                {
                    bail!("the update made {name} non-finite (learning rate {lr})");
                }
                Ok(Stepped {
                    loss: g.loss,
                    counted: g.counted,
                    grad_norm,
                })
            }
            Self::Device { params, adamw } => {
                let g = match reduce {
                    Some(reduce) => g.through_host(reduce)?,
                    None => g,
                };
                let (loss, counted) = (g.loss, g.counted);
                let mut grads = g.grads.into_map();
                for (n, p) in params.iter() {
                    grads.entry(n.clone()).or_insert_with(|| p.zeros_like());
                }
                check_names(grads.len(), params.len())?;
                let grad_norm = clip_grad_norm_device(&mut grads, max_norm)?;
                finite(loss, grad_norm)?;
                adamw.step(lr, params, &grads)?;
                if let Some(name) = first_non_finite(params)? {
                    bail!("the update made {name} non-finite (learning rate {lr})");
                }
                Ok(Stepped {
                    loss,
                    counted,
                    grad_norm,
                })
            }
        }
    }

    /// The factors as a PEFT adapter (read from the devices when there).
    pub fn adapter(&self, config: &adapters::AdapterConfig) -> Result<adapters::LoraAdapter> {
        let parts: Vec<(String, Vec<usize>, Vec<f32>)> = match self {
            Self::Host { params, .. } => params
                .iter()
                .map(|(k, (s, d))| (k.clone(), s.clone(), d.clone()))
                .collect(),
            Self::Device { params, .. } => params
                .iter()
                .map(|(k, t)| {
                    let d = t
                        .clone()
                        .into_data()
                        .to_vec::<f32>()
                        .map_err(|e| anyhow!("{k}: reading the factor: {e:?}"))?;
                    Ok((k.clone(), t.dims().to_vec(), d))
                })
                .collect::<Result<_>>()?,
        };
        adapters::LoraAdapter::from_parts(config.clone(), parts).context("rebuilding the adapter")
    }

    /// The optimizer state on the host (what a checkpoint holds).
    pub fn optimizer(&self) -> Result<Cow<'_, AdamW>> {
        Ok(match self {
            Self::Host { adamw, .. } => Cow::Borrowed(adamw),
            Self::Device { adamw, .. } => Cow::Owned(adamw.to_host()?),
        })
    }

    /// `replicas` with the current factors attached (uploaded from the host, or moved from the
    /// devices).
    pub fn load_into<AB>(
        &self,
        replicas: Replicas<AB>,
        config: &adapters::AdapterConfig,
        base: &GptOssConfig,
    ) -> Result<Replicas<AB>>
    where
        AB: AutodiffBackend<InnerBackend = B> + LoraLinearBackend,
        B: LoraLinearBackend,
    {
        match self {
            Self::Host { .. } => replicas.with_adapter(&self.adapter(config)?, base),
            Self::Device { params, .. } => replicas.with_lora_values(params),
        }
    }
}

fn check_names(grads: usize, params: usize) -> Result<()> {
    if grads != params {
        bail!("gradients for {grads} tensors, the adapter has {params}");
    }
    Ok(())
}

fn finite(loss: f64, grad_norm: f32) -> Result<()> {
    if !loss.is_finite() {
        bail!("non-finite loss ({loss})");
    }
    if !grad_norm.is_finite() {
        bail!("non-finite gradient norm ({grad_norm})");
    }
    Ok(())
}
