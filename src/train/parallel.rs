//! Several devices in one process: data parallelism over replicas of the model, each replica
//! optionally a pipeline of layer-placed stages.
//!
//! `devices` (rank order) are cut into `devices / stages` replicas of `stages` consecutive
//! devices. Within a replica, the decoder layers are split into contiguous ranges by the planner
//! ([`crate::plan::strategy::balanced`]: the split with the smallest peak bytes); the embedding
//! sits on the first stage, the final norm, `lm_head` and the loss on the last, and activations
//! and their gradients move between stages with `to_device`. The stages of a replica run in their
//! own threads, pipelined over the micro-batches ([`super::pipeline`]).
//!
//! A step's micro-batches are sharded by rank (micro-batch `i` goes to replica `i mod R`); each
//! replica runs in its own thread and weighs its micro-batches by the whole step's counted tokens,
//! so the all-reduce (a sum in rank order on replica 0's devices, [`all_reduce`]) is the step's
//! gradient. Parameters and the AdamW state are one copy (on the host, or beside replica 0's
//! layers: [`super::trainable`]), updated once per step and then loaded into every replica, so
//! checkpoints are written once and a run resumes on any device count.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use kernels::ops::LoraLinearBackend;

use super::batch::Batch;
use super::config::TrainConfig;
use super::pipeline::pipelined_grads;
use super::step::{all_reduce, share_grads, DeviceGrads};
use crate::checkpoint::{Checkpoint, GptOssConfig};
use crate::model::{ForwardMode, GptOssForCausalLM, LayerPlacement};
use crate::plan::{memory::ModelMemory, strategy, DeviceKind, Devices, PlanOptions};

/// The layer ranges of a pipeline of `stages` stages for this run (the planner's balanced split).
pub fn stage_ranges(
    cfg: &TrainConfig,
    config: &GptOssConfig,
    stages: usize,
    kind: DeviceKind,
) -> Result<Vec<Range<usize>>> {
    let layers = config.num_hidden_layers;
    ensure!(
        (1..=layers).contains(&stages),
        "--pipeline-stages {stages}: must be between 1 and the model's {layers} layers"
    );
    let devices = Devices {
        kind,
        count: stages,
        bytes_each: u64::MAX,
        spec: format!("{stages} stages"),
    };
    let workload = PlanOptions::from_train_config(cfg, devices).workload(config)?;
    let model = ModelMemory::new(config, &workload);
    Ok(
        strategy::balanced(&model, stages, cfg.gradient_checkpointing)
            .into_iter()
            .map(|s| s.layers)
            .collect(),
    )
}

/// The replicas of the model, each on its group of devices.
pub struct Replicas<B: AutodiffBackend> {
    models: Vec<GptOssForCausalLM<B>>,
    ranges: Vec<Range<usize>>,
}

impl<B> Replicas<B>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    /// `devices.len() / ranges.len()` replicas of the base model of `ckpt`, replica `r` on
    /// `devices[r·S..(r+1)·S]` with stage `s` holding layers `ranges[s]`.
    pub fn new(
        ckpt: &Arc<Checkpoint>,
        devices: &[B::Device],
        ranges: Vec<Range<usize>>,
    ) -> Result<Self> {
        let stages = ranges.len();
        if stages == 0 || devices.is_empty() || !devices.len().is_multiple_of(stages) {
            bail!(
                "{} devices cannot be cut into pipelines of {stages} stages (the device count must \
                 be a multiple of --pipeline-stages)",
                devices.len()
            );
        }
        let layers = ckpt.config().num_hidden_layers;
        let models = devices
            .chunks(stages)
            .enumerate()
            .map(|(r, group)| {
                let placement = LayerPlacement::stages(&ranges, group, layers)?;
                GptOssForCausalLM::<B>::from_checkpoint_placed(Arc::clone(ckpt), &placement)
                    .with_context(|| format!("loading replica {r}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { models, ranges })
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The layer range of each stage.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Replica 0 (evaluation runs there).
    pub fn first(&self) -> &GptOssForCausalLM<B> {
        &self.models[0]
    }

    /// Every replica with `adapter` attached (the same values everywhere).
    pub fn with_adapter(
        self,
        adapter: &adapters::LoraAdapter,
        config: &GptOssConfig,
    ) -> Result<Self> {
        let models = self
            .models
            .into_iter()
            .map(|m| m.with_adapter(adapter, config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { models, ..self })
    }

    /// Every replica's LoRA factors replaced by `values` (PEFT name -> stacked tensor, as the
    /// optimizer on the devices keeps them), each moved to its layer's device.
    pub fn with_lora_values(
        self,
        values: &std::collections::BTreeMap<String, burn::tensor::Tensor<B::InnerBackend, 2>>,
    ) -> Result<Self> {
        let values: std::collections::BTreeMap<String, burn::tensor::Tensor<B, 2>> = values
            .iter()
            .map(|(k, t)| (k.clone(), burn::tensor::Tensor::from_inner(t.clone())))
            .collect();
        let models = self
            .models
            .into_iter()
            .map(|m| m.with_lora_values(&values))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { models, ..self })
    }

    /// This node's share of the step's gradient over `batches` (every node's micro-batches):
    /// micro-batch `i` goes to global replica `i mod global`, of which this node holds
    /// `first..first + R`; the replicas run in parallel threads and their shares are summed in
    /// rank order on replica 0's devices. With one node (`first` 0, `global` R) that is the
    /// step's gradient.
    pub fn step_grads(
        &self,
        batches: &[Batch],
        first: usize,
        global: usize,
        mode: ForwardMode,
        checkpointing: bool,
    ) -> Result<DeviceGrads<B::InnerBackend>> {
        let total: usize = batches.iter().map(Batch::counted).sum();
        let r = self.models.len();
        let shards: Vec<Vec<&Batch>> = (0..r)
            .map(|rank| batches.iter().skip(first + rank).step_by(global).collect())
            .collect();
        if r == 1 {
            return self.replica_grads(&self.models[0], &shards[0], total, mode, checkpointing);
        }
        let shares = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .models
                .iter()
                .zip(&shards)
                .map(|(model, shard)| {
                    scope
                        .spawn(move || self.replica_grads(model, shard, total, mode, checkpointing))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(rank, h)| match h.join() {
                    Ok(share) => share.with_context(|| format!("replica {rank}")),
                    Err(_) => bail!("replica {rank}: its thread panicked"),
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(all_reduce(shares))
    }

    /// One replica's share: its stages pipelined when it has several, else in sequence.
    fn replica_grads(
        &self,
        model: &GptOssForCausalLM<B>,
        shard: &[&Batch],
        total: usize,
        mode: ForwardMode,
        checkpointing: bool,
    ) -> Result<DeviceGrads<B::InnerBackend>> {
        match self.ranges.len() {
            1 => share_grads(model, shard, total, mode, checkpointing),
            _ => pipelined_grads(model, &self.ranges, shard, total, mode, checkpointing),
        }
    }
}
