//! `lora-qat combine`: several adapters of one base summed into one PEFT adapter.

use std::path::PathBuf;

/// Arguments of `lora-qat combine`.
#[derive(Debug, clap::Args)]
pub struct CombineArgs {
    /// The adapter directories to sum, in order.
    #[arg(required = true, num_args = 2..)]
    pub adapters: Vec<PathBuf>,
    /// The combined adapter directory (written under a temporary name, then renamed).
    #[arg(long = "output-path", alias = "output_path", alias = "output-dir")]
    pub output_path: PathBuf,
    /// Replace an existing adapter directory at the output path.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `lora-qat combine`.
pub fn run(args: &CombineArgs) -> anyhow::Result<()> {
    anyhow::bail!("combine of {} adapters: being written", args.adapters.len())
}
