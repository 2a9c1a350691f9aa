//! The `lora-qat` command line: one file per command, each with its clap `Args` and a `run`.

pub mod combine;
pub mod data_args;
pub mod export;
pub mod inspect;
pub mod plan;
pub mod prepare;
pub mod quickstart;
pub mod score;
pub mod sign;
pub mod train;

use clap::{Parser, Subcommand};

/// LoRA quantization-aware fine-tuning of gpt-oss, exported as a real MXFP4 checkpoint.
#[derive(Debug, Parser)]
#[command(name = "lora-qat", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `debug`, `lora_qat=trace`.
    #[arg(long, global = true, default_value = "info", env = "LORA_QAT_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe and validate a base checkpoint (a directory, a hub repo id or a config.json).
    Inspect(inspect::InspectArgs),
    /// Forward pass on given token ids: writes logits and the mean loss.
    Score(score::ScoreArgs),
    /// What training would see: rendered, tokenized, masked (and packed) sequences as JSON lines.
    Prepare(prepare::PrepareArgs),
    /// LoRA-QAT fine-tuning: writes checkpoints, logs, the PEFT adapter and its model card.
    Train(Box<train::TrainArgs>),
    /// Fold adapters into the base and write a real MXFP4 checkpoint (streaming, exact).
    MergeExport(export::MergeExportArgs),
    /// Check an export against the base and the adapters, tensor by tensor.
    Verify(export::VerifyArgs),
    /// Sum several adapters of one base into one PEFT adapter (ranks concatenated, exact in f32).
    Combine(combine::CombineArgs),
    /// Write an ed25519 key pair for signing adapters (`KEY`, `KEY.pub`).
    Keygen(sign::KeygenArgs),
    /// Sign an adapter directory's manifest with an ed25519 key.
    Sign(sign::SignArgs),
    /// Per-device memory plan and strategy (data parallel, layer placement) for given devices.
    Plan(plan::PlanArgs),
    /// The embedded default: a tiny random gpt-oss, trained briefly, merge-exported and verified.
    Quickstart(quickstart::QuickstartArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Inspect(args) => inspect::run(&args),
            Command::Score(args) => score::run(&args),
            Command::Prepare(args) => prepare::run(&args),
            Command::Train(args) => train::run(&args),
            Command::MergeExport(args) => export::run_merge_export(&args),
            Command::Verify(args) => export::run_verify(&args),
            Command::Combine(args) => combine::run(&args),
            Command::Keygen(args) => sign::run_keygen(&args),
            Command::Sign(args) => sign::run_sign(&args),
            Command::Plan(args) => plan::run(&args),
            Command::Quickstart(args) => quickstart::run(&args),
        }
    }
}
