//! `lora-qat quickstart`: see [`crate::quickstart`].

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `lora-qat quickstart`.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// Working directory: base/, data/, run/ and export/ are written inside.
    #[arg(long, default_value = "lora-qat-quickstart")]
    pub dir: PathBuf,
    /// Replace a previous quickstart directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Training steps (the recipe's `max_steps` otherwise).
    #[arg(long = "max-steps", alias = "max_steps")]
    pub max_steps: Option<usize>,
}

/// Runs the quickstart and prints its summary.
pub fn run(args: &QuickstartArgs) -> Result<()> {
    let summary = crate::quickstart::run(&crate::quickstart::Options {
        dir: args.dir.clone(),
        overwrite: args.overwrite,
        max_steps: args.max_steps,
    })?;
    println!("{summary}");
    Ok(())
}
