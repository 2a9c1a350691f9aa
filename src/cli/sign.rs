//! `lora-qat keygen` and `lora-qat sign`: ed25519 keys, and signatures over an adapter's
//! provenance sidecar (whose SHA-256 manifest covers every file of the directory).

use std::path::PathBuf;

use adapters::provenance::{self, BaseRef, Provenance};
use adapters::signing::{self, SecretKey};
use anyhow::{Context, Result};

use crate::checkpoint::{resolve_model, Checkpoint};

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
    /// For an adapter without provenance (made by PEFT): the base it belongs to, whose
    /// fingerprint is recorded when the adapter is sealed before signing.
    #[arg(long = "base", alias = "base-path")]
    pub base: Option<String>,
}

fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{user}@{host}")
}

/// Runs `lora-qat keygen`.
pub fn run_keygen(args: &KeygenArgs) -> Result<()> {
    let comment = args.comment.clone().unwrap_or_else(default_comment);
    let key = SecretKey::generate(&comment)?;
    let public = key.write_pair(&args.out, args.overwrite)?;
    println!("{}", key.public().line());
    eprintln!(
        "wrote the secret key {} (keep it private) and the public key {} (share it: \
         `merge-export --trusted-keys` takes .pub lines)",
        args.out.display(),
        public.display()
    );
    Ok(())
}

/// Seals an adapter that has no provenance (made by PEFT), so that it can be signed.
fn seal_foreign(args: &SignArgs) -> Result<()> {
    let config = adapters::AdapterConfig::read(&args.adapter.join(adapters::CONFIG_FILE))?;
    let fingerprint = match &args.base {
        Some(b) => Some(Checkpoint::open(&resolve_model(b)?)?.fingerprint()?),
        None => None,
    };
    let base = BaseRef {
        model_id: args.base.clone().or(config.base_model_name_or_path),
        revision: config.revision,
        fingerprint,
    };
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut p = Provenance::new(env!("CARGO_PKG_VERSION"), &created, "sign", base);
    provenance::seal(&args.adapter, &mut p)?;
    eprintln!(
        "{}: had no provenance; sealed it ({} files{})",
        args.adapter.display(),
        p.files.len(),
        if p.base.fingerprint.is_some() {
            ", base fingerprint recorded"
        } else {
            "; no base fingerprint: pass --base to record one"
        }
    );
    Ok(())
}

/// Runs `lora-qat sign`.
pub fn run_sign(args: &SignArgs) -> Result<()> {
    let key = SecretKey::read(&args.key)?;
    if !args.adapter.join(adapters::CONFIG_FILE).is_file() {
        anyhow::bail!(
            "{} is not an adapter directory (no {})",
            args.adapter.display(),
            adapters::CONFIG_FILE
        );
    }
    if provenance::read(&args.adapter)?.is_none() {
        seal_foreign(args)?;
    }
    let entry = signing::sign(&args.adapter, &key)
        .with_context(|| format!("signing {}", args.adapter.display()))?;
    println!(
        "signed {} (provenance sha256 {}) as {} ({})",
        args.adapter.display(),
        entry.provenance_sha256,
        entry.comment,
        entry.public_key
    );
    Ok(())
}
