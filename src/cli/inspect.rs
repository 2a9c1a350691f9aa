//! `lora-qat inspect`: describe and validate a base checkpoint (directory or hub repo id), or
//! estimate sizes from a bare `config.json`, or describe an adapter directory
//! ([`crate::adapter_report`]).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::report::InspectReport;
use crate::checkpoint::{resolve_model, Checkpoint, GptOssConfig};

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A model directory, a hub repo id (`openai/gpt-oss-120b`, from the local HF cache), or a
    /// `config.json` (architecture and size estimates only).
    #[arg(value_name = "DIR")]
    pub path: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Skip reading every tensor's data (headers, names, dtypes and shapes are still checked).
    #[arg(long)]
    pub no_scan: bool,
    /// LoRA rank assumed by the training memory estimate.
    #[arg(long, alias = "lora_r", default_value_t = 16)]
    pub lora_r: usize,
    /// For an adapter directory: the base to check it against (targets, shapes, fingerprint).
    #[arg(long, alias = "base-path", alias = "base_path")]
    pub base: Option<String>,
}

/// Runs `inspect`; fails (after printing the report) when validation finds errors.
pub fn run(args: &InspectArgs) -> Result<()> {
    let as_path = Path::new(&args.path);
    let report = if as_path.is_file() {
        let config = GptOssConfig::from_file(as_path)?;
        InspectReport::from_config(&args.path, &config, args.lora_r)
    } else {
        let dir = resolve_model(&args.path)?;
        if dir.join(adapters::CONFIG_FILE).is_file() && !dir.join("config.json").is_file() {
            return run_adapter(&dir, args);
        }
        if args.base.is_some() {
            bail!(
                "--base is for inspecting an adapter directory; {} is not one",
                dir.display()
            );
        }
        let ck = Checkpoint::open(&dir)?;
        InspectReport::from_checkpoint(&dir.display().to_string(), &ck, !args.no_scan, args.lora_r)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if !report.verdict.ok {
        bail!("{}", report.verdict.summary);
    }
    Ok(())
}

/// `inspect` of an adapter directory; fails (after printing the report) on any error.
fn run_adapter(dir: &Path, args: &InspectArgs) -> Result<()> {
    let report = crate::adapter_report::inspect(dir, args.base.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::adapter_report::render(&report));
    }
    if !report.ok() {
        bail!("{}: {}", dir.display(), report.errors.join("; "));
    }
    Ok(())
}

fn gib(b: u64) -> String {
    let units = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    match units.iter().find(|(_, shift)| b >= 1u64 << shift) {
        Some((unit, shift)) => format!("{:.2} {unit}", b as f64 / (1u64 << shift) as f64),
        None => format!("{b} B"),
    }
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{n} ({:.2} B)", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{n} ({:.2} M)", n as f64 / 1e6),
        n => n.to_string(),
    }
}

/// Human-readable rendering: one `label: value` fact per line.
fn render(r: &InspectReport) -> String {
    let a = &r.architecture;
    let mut s = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(s, "{:<24}{v}", format!("{k}:"));
    };
    line("source", format!("{} ({})", r.source, r.kind));
    line(
        "architecture",
        format!("{} (GptOssForCausalLM)", a.model_type),
    );
    line("layers", a.layers.to_string());
    line("experts", a.experts.to_string());
    line("top-k", a.top_k.to_string());
    line("hidden", a.hidden_size.to_string());
    line("intermediate", a.intermediate_size.to_string());
    line(
        "heads",
        format!(
            "{} query / {} kv",
            a.num_attention_heads, a.num_key_value_heads
        ),
    );
    line("head_dim", a.head_dim.to_string());
    line("vocab", a.vocab_size.to_string());
    line("window", a.sliding_window.to_string());
    let pattern: Vec<&str> = a
        .layer_types
        .iter()
        .map(|t| if *t == "sliding_attention" { "S" } else { "F" })
        .collect();
    line(
        "attention pattern",
        format!(
            "{} (S = sliding window {}, F = full)",
            pattern.join(""),
            a.sliding_window
        ),
    );
    let p = &a.rope;
    line(
        "rope",
        format!(
            "{} theta {} factor {} beta_fast {} beta_slow {} original {} truncate {} (cos/sin scale {:.6})",
            p.rope_type, p.theta, p.factor, p.beta_fast, p.beta_slow,
            p.original_max_position_embeddings, p.truncate, p.attention_scaling
        ),
    );
    line("swiglu limit", a.swiglu_limit.to_string());
    line("parameters", count(r.parameters.total));
    line("active per token", count(r.parameters.active));
    line("mxfp4 parameters", count(r.parameters.mxfp4));
    let est = if r.estimated {
        " (estimated, release format)"
    } else {
        ""
    };
    line(
        "bytes on disk",
        format!("{} = {}{est}", r.bytes_on_disk, gib(r.bytes_on_disk)),
    );
    for (dtype, d) in &r.bytes_by_dtype {
        line(
            &format!("  {dtype}"),
            format!(
                "{} tensors, {} bytes = {}",
                d.tensors,
                d.bytes,
                gib(d.bytes)
            ),
        );
    }
    line(
        "quantized (MXFP4)",
        format!(
            "{} tensors (blocks + scales), {} bytes",
            r.quantized.tensors, r.quantized.bytes
        ),
    );
    for sh in &r.shards {
        line("  shard", format!("{} ({} bytes)", sh.file, sh.bytes));
    }
    let t = &r.training_estimate;
    line(
        "training memory",
        format!(
            ">= {} at LoRA rank {} ({} trainable params; base as stored {} + f32 LoRA weights/grads/AdamW {})",
            gib(t.lower_bound_bytes),
            t.lora_rank,
            count(t.lora_params),
            gib(t.base_bytes),
            gib(t.lora_state_bytes)
        ),
    );
    line(
        "  not included",
        format!(
            "{}; one layer's experts dequantized to f32 would be {}",
            t.excluded.join("; "),
            gib(t.one_layer_dequantized_experts_bytes)
        ),
    );
    if let Some(scan) = &r.scan {
        line(
            "data read",
            format!(
                "{} bytes in {} tensors",
                scan.bytes_read,
                scan.tensors.len()
            ),
        );
    }
    for w in &r.verdict.warnings {
        line("warning", w.clone());
    }
    for e in &r.verdict.errors {
        line("error", e.clone());
    }
    line("validation", r.verdict.summary.clone());
    s
}
