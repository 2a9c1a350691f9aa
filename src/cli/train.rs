//! `lora-qat train`: the single-binary equivalent of ModelOpt's `sft.py --quant_cfg
//! MXFP4_MLP_WEIGHT_ONLY_CFG` with LoRA. Flags are kebab-case with TRL/ModelOpt's snake_case
//! spellings as aliases; every value goes through the same parser as the recipe's keys
//! (`train::config::TrainConfig::set`), and flags override the recipe.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::plan::DeviceKind;
use crate::train::config::TrainConfig;
use crate::train::nodes::NodeSpec;
use crate::train::setup::{setup, Layout};
use crate::train::trainable::OptimizerPlace;
use crate::train::trainer;

/// Declares the flags that map one-to-one onto recipe keys.
macro_rules! flags {
    ($($(#[doc = $doc:literal])* $field:ident = $long:literal $(| $alias:literal)*;)*) => {
        /// Arguments of `lora-qat train`.
        #[derive(Debug, clap::Args)]
        pub struct TrainArgs {
            /// Recipe file (YAML): ModelOpt's `configs/sft_lora.yaml` keys and TRL's `SFTConfig` keys.
            #[arg(long)]
            pub config: Option<PathBuf>,
            /// Training data: JSONL or Parquet files, directories or globs (repeatable).
            #[arg(long, alias = "dataset_name", alias = "train_file")]
            pub data: Vec<String>,
            /// Eval data (repeatable) instead of a split of the training data.
            #[arg(long = "eval-data", visible_alias = "eval_data")]
            pub eval_data: Vec<String>,
            /// Compute device(s): `cpu`, `cuda[:N]` (builds with the `cuda` feature) or `vulkan`
            /// (builds with the `vulkan` feature; Mesa's lavapipe runs it on a CPU); several for
            /// data parallelism and layer placement: `cuda:0-7`, `cuda:0,cuda:2`, or CPU peers
            /// `cpu:0-1` (all on the host).
            #[arg(long, default_value = "cpu")]
            pub device: crate::device::DeviceSet,
            /// Devices per replica: each replica's layers are split over this many devices
            /// (layer placement); the devices are cut into replicas (data parallel) of this size.
            #[arg(long = "pipeline-stages", visible_alias = "pipeline_stages", default_value_t = 1)]
            pub pipeline_stages: usize,
            /// Processes (nodes) of a multi-node run; each runs `train` with the same arguments,
            /// its own `--node-rank` and node 0's `--master-addr`.
            #[arg(long, default_value_t = 1)]
            pub nnodes: usize,
            /// This process's rank, 0 to --nnodes - 1 (node 0 writes the run's files).
            #[arg(long = "node-rank", visible_alias = "node_rank", default_value_t = 0)]
            pub node_rank: usize,
            /// `HOST:PORT` where node 0 listens for the other nodes.
            #[arg(long = "master-addr", visible_alias = "master_addr")]
            pub master_addr: Option<String>,
            /// Where the LoRA factors and AdamW state live: `host` (the exact torch-CPU AdamW;
            /// default with `--device cpu`) or `device` (beside each layer on its device, no
            /// gradient or factor crosses to the host; default on a GPU).
            #[arg(long = "optimizer-on", visible_alias = "optimizer_on")]
            pub optimizer_on: Option<crate::train::trainable::OptimizerPlace>,
            /// Seconds to wait for the other nodes when starting.
            #[arg(long = "node-timeout", visible_alias = "node_timeout", default_value_t = 600)]
            pub node_timeout: u64,
            $(
                $(#[doc = $doc])*
                #[arg(long = $long $(, visible_alias = $alias)*, num_args = 0..=1, default_missing_value = "true")]
                pub $field: Option<String>,
            )*
        }

        impl TrainArgs {
            /// `(recipe key, value)` of every flag given.
            fn given(&self) -> Vec<(&'static str, String)> {
                let mut v = Vec::new();
                $( if let Some(x) = &self.$field { v.push((stringify!($field), x.clone())); } )*
                v
            }
        }
    };
}

flags! {
    /// Base checkpoint: a local directory or a hub repo id (resolved in the Hugging Face cache).
    model_name_or_path = "base" | "model_name_or_path" | "base-path";
    /// Output directory: checkpoints, logs, the final adapter and its model card.
    output_dir = "output-dir" | "output_dir";
    /// Hold out this seeded fraction of the examples for eval.
    eval_split = "eval-split" | "eval_split";
    /// Truncate examples to this many tokens (the sequence length when packing; default 1024).
    max_length = "max-length" | "max_length" | "max_seq_length";
    /// Pack examples into sequences of --max-length (attention confined to each example).
    packing = "packing";
    /// Train only the assistant turns of conversations (default true).
    assistant_only_loss = "assistant-only-loss" | "assistant_only_loss";
    /// The date the chat template prints (YYYY-MM-DD).
    chat_template_date = "chat-template-date" | "chat_template_date";
    /// `reasoning_effort` for the template: low, medium or high.
    reasoning_effort = "reasoning-effort" | "reasoning_effort";
    /// More template variables, a JSON object.
    chat_template_kwargs = "chat-template-kwargs" | "chat_template_kwargs";
    /// Skip unusable rows (counted) instead of stopping.
    skip_bad_rows = "skip-bad-rows" | "skip_bad_rows";
    /// Peak learning rate (default 2e-5).
    learning_rate = "learning-rate" | "learning_rate" | "lr";
    /// Epochs (default 3; ignored when --max-steps is set).
    num_train_epochs = "num-train-epochs" | "num_train_epochs";
    /// Optimizer steps (-1: from the epochs).
    max_steps = "max-steps" | "max_steps";
    /// Sequences per micro-batch (default 8).
    per_device_train_batch_size = "per-device-train-batch-size" | "per_device_train_batch_size";
    /// Sequences per eval batch (default 8).
    per_device_eval_batch_size = "per-device-eval-batch-size" | "per_device_eval_batch_size";
    /// Micro-batches per optimizer step (default 1).
    gradient_accumulation_steps = "gradient-accumulation-steps" | "gradient_accumulation_steps";
    /// constant, constant_with_warmup, linear (default), cosine, cosine_with_min_lr.
    lr_scheduler_type = "lr-scheduler-type" | "lr_scheduler_type";
    /// lr_scheduler_kwargs as JSON, e.g. '{"min_lr_rate": 0.1}'.
    lr_scheduler_kwargs = "lr-scheduler-kwargs" | "lr_scheduler_kwargs";
    /// Floor of cosine_with_min_lr as a fraction of the peak.
    min_lr_rate = "min-lr-rate" | "min_lr_rate";
    /// Warmup steps (a value below 1 is a ratio, as transformers 5 reads it).
    warmup_steps = "warmup-steps" | "warmup_steps";
    /// Warmup as a fraction of the steps.
    warmup_ratio = "warmup-ratio" | "warmup_ratio";
    /// AdamW weight decay (default 0).
    weight_decay = "weight-decay" | "weight_decay";
    /// AdamW beta1 (default 0.9).
    adam_beta1 = "adam-beta1" | "adam_beta1";
    /// AdamW beta2 (default 0.999).
    adam_beta2 = "adam-beta2" | "adam_beta2";
    /// AdamW epsilon (default 1e-8).
    adam_epsilon = "adam-epsilon" | "adam_epsilon";
    /// Global gradient-norm clip (default 1.0; 0 turns clipping off).
    max_grad_norm = "max-grad-norm" | "max_grad_norm";
    /// Log every N steps (default 10).
    logging_steps = "logging-steps" | "logging_steps";
    /// no (default), steps or epoch.
    eval_strategy = "eval-strategy" | "eval_strategy" | "evaluation_strategy";
    /// Eval every N steps (default: logging_steps).
    eval_steps = "eval-steps" | "eval_steps";
    /// Also evaluate before the first step.
    eval_on_start = "eval-on-start" | "eval_on_start";
    /// steps (default), epoch or no.
    save_strategy = "save-strategy" | "save_strategy";
    /// Checkpoint every N steps (default 500).
    save_steps = "save-steps" | "save_steps";
    /// Keep at most N checkpoints.
    save_total_limit = "save-total-limit" | "save_total_limit";
    /// LoRA rank (default 16).
    lora_r = "lora-r" | "lora_r";
    /// LoRA alpha (default 32).
    lora_alpha = "lora-alpha" | "lora_alpha";
    /// LoRA dropout (only 0 is supported).
    lora_dropout = "lora-dropout" | "lora_dropout";
    /// rsLoRA scaling (alpha / sqrt(r)).
    use_rslora = "use-rslora" | "use_rslora";
    /// Adapted modules, comma-separated (default all-linear: attention q/k/v/o and both expert projections).
    lora_target_modules = "lora-target-modules" | "lora_target_modules" | "target_modules";
    /// Adapt only these layers, comma-separated.
    layers_to_transform = "layers-to-transform" | "layers_to_transform";
    /// Seed of the data order, eval split and adapter init (default 42).
    seed = "seed";
    /// Recompute each decoder layer in backward (accepted; see docs/PERFORMANCE.md).
    gradient_checkpointing = "gradient-checkpointing" | "gradient_checkpointing";
    /// MXFP4_MLP_WEIGHT_ONLY_CFG (default: QAT with the deployed weights) or NONE (plain LoRA).
    quant_cfg = "quant-cfg" | "quant_cfg";
    /// ModelOpt's recipe name: general/ptq/mxfp4_mlp_weight_only means MXFP4_MLP_WEIGHT_ONLY_CFG.
    recipe = "recipe";
    /// Start from this PEFT adapter (step 2 of SFT-then-QAT).
    init_adapter = "init-adapter" | "init_adapter";
    /// Continue from checkpoint-N (a path) or `latest`.
    resume_from_checkpoint = "resume-from-checkpoint" | "resume_from_checkpoint";
    /// Replace a previous run in --output-dir.
    overwrite_output_dir = "overwrite-output-dir" | "overwrite_output_dir";
}

/// The configuration: defaults, then the recipe, then the flags.
pub fn config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::default();
    if let Some(path) = &args.config {
        let unknown = cfg.apply_recipe(path)?;
        if !unknown.is_empty() {
            tracing::warn!(
                "{}: unknown keys, not used: {}",
                path.display(),
                unknown.join(", ")
            );
        }
    }
    for (key, value) in args.given() {
        let flag = format!("--{}", key.replace('_', "-"));
        if !cfg.set(key, &Value::String(value.clone()))? {
            bail!("{flag}: no such setting");
        }
    }
    if !args.data.is_empty() {
        cfg.data = args.data.clone();
    }
    if !args.eval_data.is_empty() {
        cfg.eval_data = args.eval_data.clone();
    }
    Ok(cfg)
}

/// Runs `lora-qat train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = config(args)?;
    let layout = Layout {
        nodes: NodeSpec {
            nnodes: args.nnodes,
            rank: args.node_rank,
            master_addr: args.master_addr.clone(),
            timeout: std::time::Duration::from_secs(args.node_timeout),
        },
        devices: args.device.len(),
        stages: args.pipeline_stages,
        kind: if args.device.is_cpu() {
            DeviceKind::Cpu
        } else {
            DeviceKind::Gpu
        },
        optimizer: args.optimizer_on.unwrap_or(if args.device.is_cpu() {
            OptimizerPlace::Host
        } else {
            OptimizerPlace::Device
        }),
    };
    let s = setup(cfg, layout)?;
    log_plan(&s, &args.device);
    let outcome = crate::device::dispatch(&args.device, TrainJob(s))?;
    let last = outcome
        .state
        .log_history
        .iter()
        .rev()
        .find(|e| e.get("loss").is_some());
    let written = match args.node_rank {
        0 => outcome.output_dir.display().to_string(),
        k => format!("node {k} (node 0 writes the run)"),
    };
    eprintln!(
        "{} after {} steps: {written}{}",
        if outcome.interrupted {
            "interrupted"
        } else {
            "done"
        },
        outcome.state.global_step,
        last.map_or(String::new(), |e| format!(" (last loss {})", e["loss"]))
    );
    Ok(())
}

/// Logs the memory plan of this run (`lora-qat plan`) on the CPU against the host's memory, with a
/// warning when it does not fit (packed experts are memory-mapped there, so the figure is an upper
/// bound of what must stay resident). A device's capacity is not read: the log says how to plan.
fn log_plan(s: &crate::train::setup::Setup, device: &crate::device::DeviceSet) {
    use crate::plan::{plan, Devices, PlanOptions};
    let Some(bytes_each) = host_memory().filter(|_| device.is_cpu()) else {
        tracing::info!(
            "memory per device: `lora-qat plan --base BASE --devices NxSIZE --seq {}`",
            s.cfg.max_length
        );
        return;
    };
    let devices = Devices {
        kind: DeviceKind::Cpu,
        count: 1,
        bytes_each,
        spec: format!("cpu:{:.1}GB", bytes_each as f64 / 1e9),
    };
    let options = PlanOptions::from_train_config(&s.cfg, devices);
    match plan("base", s.ckpt.config(), &options) {
        Ok(p) if p.fits() => tracing::info!("memory plan:\n{p}"),
        Ok(p) => tracing::warn!("memory plan: this run may not fit in host memory\n{p}"),
        Err(e) => tracing::warn!("no memory plan: {e:#}"),
    }
}

/// `MemTotal` of `/proc/meminfo` in bytes (`None` where it cannot be read).
fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Training, on the backend of `--device`.
struct TrainJob(crate::train::setup::Setup);

impl crate::device::Job for TrainJob {
    type Output = trainer::Outcome;

    fn run<B>(self, devices: &[B::Device]) -> Result<trainer::Outcome>
    where
        B: burn::tensor::backend::AutodiffBackend + kernels::ops::LoraLinearBackend,
        B::InnerBackend: kernels::ops::LoraLinearBackend,
    {
        trainer::run::<B>(self.0, devices)
    }
}
