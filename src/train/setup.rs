//! Everything resolved before the first step, with every bad input reported here: the base, the
//! data (through the same pipeline as `prepare`), the adapted modules and the starting adapter, the
//! output directory and the resume point, the step count.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::config::TrainConfig;
use super::parallel::stage_ranges;
use super::state;
use super::targets::{self, Module};
use crate::checkpoint::{resolve_model, Checkpoint};
use crate::data::{load_encoder, prepare, DataOptions, Prepared, RenderOptions};
use crate::model::load::base_dims;

/// How the run uses its devices: `devices` in rank order, cut into replicas (data parallel) of
/// `stages` devices each (layer placement), on this node of `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The processes (nodes) of the run and this one's rank.
    pub nodes: super::nodes::NodeSpec,
    /// Devices (CPU peers or GPUs).
    pub devices: usize,
    /// Pipeline stages per replica.
    pub stages: usize,
    /// GPU or CPU (how experts are deployed, for the layer split).
    pub kind: crate::plan::DeviceKind,
    /// Where the LoRA factors and the optimizer state live.
    pub optimizer: super::trainable::OptimizerPlace,
}

impl Layout {
    /// One CPU device.
    pub fn cpu() -> Self {
        Self {
            nodes: super::nodes::NodeSpec::single(),
            devices: 1,
            stages: 1,
            kind: crate::plan::DeviceKind::Cpu,
            optimizer: super::trainable::OptimizerPlace::Host,
        }
    }

    /// Data-parallel replicas (`devices / stages`), checked to divide.
    pub fn replicas(&self) -> Result<usize> {
        if self.stages == 0 || self.devices == 0 || !self.devices.is_multiple_of(self.stages) {
            bail!(
                "{} devices cannot be cut into pipelines of {} stages (--pipeline-stages must \
                 divide the number of devices)",
                self.devices,
                self.stages
            );
        }
        Ok(self.devices / self.stages)
    }

    /// Replicas over all nodes (every node runs the same layout).
    pub fn global_replicas(&self) -> Result<usize> {
        Ok(self.replicas()? * self.nodes.nnodes)
    }
}

/// A run ready to start.
pub struct Setup {
    /// Devices, replicas and stages.
    pub layout: Layout,
    /// The decoder layers of each pipeline stage (one range without layer placement).
    pub stages: Vec<std::ops::Range<usize>>,
    pub cfg: TrainConfig,
    pub ckpt: Arc<Checkpoint>,
    pub data: Prepared,
    pub adapter_config: adapters::AdapterConfig,
    /// The adapter of step 0 (fresh or `init_adapter`).
    pub initial: adapters::LoraAdapter,
    /// The checkpoint to resume from.
    pub resume: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// The coverage table.
    pub coverage: String,
    pub pad_id: u32,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// What the run's adapters carry (base fingerprint, recipe, arguments, data fingerprint).
    pub provenance: adapters::provenance::Provenance,
}

/// Default eval fraction when evals are asked for without eval data (at least one example).
const DEFAULT_EVAL_SPLIT: f64 = 0.1;

/// Resolves a configuration into a runnable setup.
pub fn setup(cfg: TrainConfig, layout: Layout) -> Result<Setup> {
    cfg.validate()?;
    layout.nodes.validate()?;
    let replicas = layout.global_replicas()?;
    // only node 0 writes into the output directory
    let leader = layout.nodes.is_leader();
    let base = cfg
        .model_name_or_path
        .clone()
        .context("no base model: pass --base (or model_name_or_path in the recipe)")?;
    let output_dir = PathBuf::from(
        cfg.output_dir
            .clone()
            .context("no output directory: pass --output-dir")?,
    );
    if cfg.data.is_empty() {
        bail!("no training data: pass --data (or dataset_name in the recipe)");
    }
    let resume = match &cfg.resume_from_checkpoint {
        Some(spec) => Some(state::resume_dir(spec, &output_dir)?),
        None => None,
    };
    if leader && resume.is_none() && state::holds_a_run(&output_dir)? {
        if !cfg.overwrite_output_dir {
            bail!(
                "{} holds a previous run; pass --overwrite_output_dir to start over, or \
                 --resume_from_checkpoint latest to continue it",
                output_dir.display()
            );
        }
        std::fs::remove_dir_all(&output_dir)
            .with_context(|| format!("cannot clear {}", output_dir.display()))?;
    }
    let dir = resolve_model(&base)?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let config = ckpt.config().clone();
    let dims = base_dims(&config);
    let stages = stage_ranges(&cfg, &config, layout.stages, layout.kind)?;

    // data, exactly as `prepare` sees it
    let render = RenderOptions {
        date: cfg.chat_template_date.clone(),
        reasoning_effort: cfg.reasoning_effort.clone(),
        kwargs: cfg.chat_template_kwargs.clone(),
        assistant_only_loss: cfg.assistant_only_loss,
    };
    let encoder = load_encoder(&dir, &render)?;
    let eval_split = match (cfg.eval_split, cfg.evals() && cfg.eval_data.is_empty()) {
        (Some(f), _) => Some(f),
        (None, true) => Some(DEFAULT_EVAL_SPLIT),
        (None, false) => None,
    };
    let data = prepare(
        &encoder,
        &DataOptions {
            data: cfg.data.clone(),
            eval_data: cfg.eval_data.clone(),
            eval_split,
            max_length: Some(cfg.max_length),
            packing: cfg.packing,
            seed: cfg.seed,
            skip_bad_rows: cfg.skip_bad_rows,
            show: 0,
        },
    )?;
    if data.train.is_empty() {
        bail!("no training sequence left after the eval split");
    }

    // the adapter
    let (modules, initial) = match &cfg.init_adapter {
        Some(path) => init_from(&cfg, path, &dims)?,
        None => {
            let modules = targets::select(&cfg, config.num_hidden_layers)?;
            let ac = targets::adapter_config(
                &cfg,
                &modules,
                config.num_hidden_layers,
                Some(base.clone()),
            );
            let a = targets::init_adapter(ac, &modules, &dims, cfg.seed)?;
            (modules, a)
        }
    };
    let coverage = targets::coverage(&modules, config.num_hidden_layers);
    let adapter_config = initial.config().clone();

    let micro = data.train.len().div_ceil(cfg.per_device_train_batch_size);
    // every replica (of every node) takes `gradient_accumulation_steps` micro-batches per step
    let steps_per_epoch = (micro / (cfg.gradient_accumulation_steps * replicas)).max(1);
    let total_steps = match cfg.max_steps {
        Some(n) => n,
        None => ((cfg.num_train_epochs * steps_per_epoch as f64).ceil() as usize).max(1),
    };
    let pad_id = config.pad_token_id.unwrap_or(0);
    if leader {
        std::fs::create_dir_all(&output_dir)
            .with_context(|| format!("cannot create {}", output_dir.display()))?;
        std::fs::write(
            output_dir.join("training_args.json"),
            serde_json::to_string_pretty(&cfg)?,
        )
        .with_context(|| format!("cannot write {}/training_args.json", output_dir.display()))?;
    }
    for n in &cfg.no_effect {
        tracing::warn!("accepted, no effect here: {n}");
    }
    let provenance = super::provenance::provenance(&cfg, &ckpt, &data)?;
    Ok(Setup {
        layout,
        stages,
        cfg,
        ckpt,
        data,
        adapter_config,
        initial,
        resume,
        output_dir,
        coverage,
        pad_id,
        total_steps,
        steps_per_epoch,
        provenance,
    })
}

/// `--init_adapter`: the run trains that adapter; its rank and targets must agree with any given
/// explicitly, and its shapes with the base.
fn init_from(
    cfg: &TrainConfig,
    path: &str,
    dims: &adapters::BaseDims,
) -> Result<(Vec<Module>, adapters::LoraAdapter)> {
    let a = adapters::LoraAdapter::load(std::path::Path::new(path))
        .with_context(|| format!("--init_adapter {path}"))?;
    a.validate(dims)
        .with_context(|| format!("--init_adapter {path} does not fit the base model"))?;
    let r = a.config().r;
    if cfg.explicit.contains("lora_r") && cfg.lora_r != r {
        bail!(
            "--init_adapter {path} has rank {r}, the run asks for lora_r {}",
            cfg.lora_r
        );
    }
    let mut modules: Vec<Module> = a
        .attention_modules()
        .map(|(l, p)| Module::Attention(l, p))
        .collect();
    modules.extend(a.expert_modules().map(|(l, p)| Module::Experts(l, p)));
    modules.sort();
    if cfg.explicit.contains("lora_target_modules") || cfg.explicit.contains("layers_to_transform")
    {
        let wanted = targets::select(cfg, dims.layers)?;
        if wanted != modules {
            bail!(
                "--init_adapter {path} adapts {} modules, the run's targets select {}: they must be the same",
                modules.len(),
                wanted.len()
            );
        }
    }
    Ok((modules, a))
}
