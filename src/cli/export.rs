//! `lora-qat merge-export` and `lora-qat verify`: thin wrappers over [`crate::export`].

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::checkpoint::resolve_model;
use crate::export::{merge_export, verify, ExportDtype, ExportOptions, TrustPolicy};

/// The base and the adapters of a merge (shared by `merge-export` and `verify`).
#[derive(Debug, clap::Args)]
pub struct MergeSources {
    /// PEFT adapter directory; repeat to merge several (deltas summed in f32 in the order given,
    /// then one quantization). `verify` takes the same adapters in the same order.
    #[arg(
        long = "lora-path",
        alias = "lora_path",
        alias = "adapter",
        required = true
    )]
    pub lora_path: Vec<PathBuf>,
    /// Base checkpoint: a local directory or a hub repo id (resolved in the Hugging Face cache).
    #[arg(long = "base-path", alias = "base_path", alias = "base")]
    pub base_path: String,
    /// Merge adapters whose provenance names another base fingerprint (config.json or
    /// safetensors headers differ from this base's).
    #[arg(long = "allow-base-mismatch", alias = "allow_base_mismatch")]
    pub allow_base_mismatch: bool,
    /// Refuse adapters not signed by one of these public keys (a file of `.pub` lines).
    #[arg(long = "trusted-keys", alias = "trusted_keys")]
    pub trusted_keys: Option<PathBuf>,
}

impl MergeSources {
    /// The trust policy these arguments ask for.
    pub fn policy(&self) -> Result<TrustPolicy> {
        TrustPolicy::from_args(self.allow_base_mismatch, self.trusted_keys.as_deref())
    }
}

/// Arguments of `lora-qat merge-export`.
#[derive(Debug, clap::Args)]
pub struct MergeExportArgs {
    #[command(flatten)]
    pub sources: MergeSources,
    /// Output directory (written beside it under a temporary name, then renamed).
    #[arg(long = "output-path", alias = "output_path", alias = "output-dir")]
    pub output_path: PathBuf,
    /// `mxfp4`: the release format (what QAT trained); `bf16`: dequantized BF16 experts
    /// without `quantization_config`.
    #[arg(long, default_value = "mxfp4", value_parser = ["mxfp4", "bf16"])]
    pub dtype: String,
    /// Replace an existing output directory (only once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `merge-export`.
pub fn run_merge_export(args: &MergeExportArgs) -> Result<()> {
    let base = resolve_model(&args.sources.base_path)?;
    let opts = ExportOptions {
        dtype: match args.dtype.as_str() {
            "bf16" => ExportDtype::Bf16,
            _ => ExportDtype::Mxfp4,
        },
        overwrite: args.overwrite,
        progress: !args.json,
        trust: args.sources.policy()?,
    };
    let s = merge_export(&base, &args.sources.lora_path, &args.output_path, &opts)?;
    if args.json {
        let v = serde_json::json!({
            "output": s.dir.display().to_string(),
            "tensors_merged": s.merged,
            "tensors_copied": s.copied,
            "bytes": s.bytes,
            "seconds": s.seconds,
            "gb_per_s": s.bytes as f64 / 1e9 / s.seconds.max(1e-9),
        });
        println!("{v}");
    } else {
        println!(
            "wrote {}: {} tensors merged, {} copied, {:.2} GB in {:.1} s ({:.2} GB/s)",
            s.dir.display(),
            s.merged,
            s.copied,
            s.bytes as f64 / 1e9,
            s.seconds,
            s.bytes as f64 / 1e9 / s.seconds.max(1e-9)
        );
    }
    Ok(())
}

/// Arguments of `lora-qat verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The exported checkpoint to check.
    #[arg(long)]
    pub export: PathBuf,
    /// The base it was exported from and the adapters merged into it.
    #[command(flatten)]
    pub sources: MergeSources,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `verify`: a line per tensor, then the verdict; fails on any mismatch.
pub fn run_verify(args: &VerifyArgs) -> Result<()> {
    let base = resolve_model(&args.sources.base_path)?;
    let report = verify(
        &args.export,
        &base,
        &args.sources.lora_path,
        &args.sources.policy()?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            match &c.mismatch {
                None => println!("ok        {:<10} {}", c.kind, c.tensor),
                Some(m) => println!("MISMATCH  {:<10} {}: {m}", c.kind, c.tensor),
            }
        }
    }
    let (bad, n) = (report.mismatches(), report.checks.len());
    let merged = report.checks.iter().filter(|c| c.kind == "merged").count();
    if bad > 0 {
        bail!(
            "{}: {bad} of {n} tensors do not match (see above)",
            args.export.display()
        );
    }
    eprintln!(
        "{}: all {n} tensors match ({merged} equal to the recomputed deployed weights, {} byte-identical to the base)",
        args.export.display(),
        n - merged
    );
    Ok(())
}
