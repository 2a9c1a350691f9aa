//! `lora-qat keygen` and `lora-qat sign`: ed25519 keys, and signatures over an adapter's manifest.

use std::path::PathBuf;

/// Arguments of `lora-qat keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Secret key file to write; the public key goes to `KEY.pub`.
    #[arg(long = "out")]
    pub out: PathBuf,
    /// Who the key belongs to (written into the public key line); default user@host.
    #[arg(long)]
    pub comment: Option<String>,
    /// Replace existing key files.
    #[arg(long)]
    pub overwrite: bool,
}

/// Arguments of `lora-qat sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The adapter directory.
    pub adapter: PathBuf,
    /// Secret key file (from `lora-qat keygen`).
    #[arg(long)]
    pub key: PathBuf,
}

/// Runs `lora-qat keygen`.
pub fn run_keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    anyhow::bail!("keygen {}: being written", args.out.display())
}

/// Runs `lora-qat sign`.
pub fn run_sign(args: &SignArgs) -> anyhow::Result<()> {
    anyhow::bail!("sign {}: being written", args.adapter.display())
}
