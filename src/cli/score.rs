//! `lora-qat score` (being built).

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {}

pub fn run(_args: &ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("`score` is being built")
}
