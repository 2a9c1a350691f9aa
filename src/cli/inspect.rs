//! `lora-qat inspect` (being built).

#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

pub fn run(_args: &InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("`inspect` is being built")
}
