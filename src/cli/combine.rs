//! `lora-qat combine`: several adapters of one base summed into one PEFT adapter.
//!
//! The sum is [`adapters::combine::combine`] (ranks concatenated, each part's scaling folded into its B,
//! exact in f32 up to the one rounding of s·B). The output is assembled in a staging directory beside
//! the target (the adapter files, then [`write_provenance_sidecar`]: model card and provenance
//! sidecar listing the parts), synced, and renamed into place;
//! an existing output is kept unless `--overwrite` (and even then only an adapter directory or an empty
//! one is replaced); on any failure the staging directory is removed and the target is as it was.

use std::fs;
use std::path::{Path, PathBuf};

use adapters::combine::{combine, CombineSummary};
use adapters::provenance::{self, BaseRef, Provenance};
use adapters::{LoraAdapter, CONFIG_FILE, WEIGHTS_FILE};
use anyhow::{bail, Context};
use serde_json::{json, Value};

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
    /// Print a one-line JSON summary instead of the text one.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lora-qat combine`.
pub fn run(args: &CombineArgs) -> anyhow::Result<()> {
    let out = &args.output_path;
    check_output(out, &args.adapters, args.overwrite)?;
    let mut parts = Vec::with_capacity(args.adapters.len());
    for (i, dir) in args.adapters.iter().enumerate() {
        if !dir.is_dir() {
            bail!(
                "part {} ({}): not a directory (an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})",
                i + 1,
                dir.display()
            );
        }
        let a = LoraAdapter::load(dir)
            .with_context(|| format!("reading part {} ({})", i + 1, dir.display()))?;
        tracing::info!(part = i + 1, dir = %dir.display(), r = a.config().r, tensors = a.len(), "part read");
        parts.push(a);
    }
    warn_repeated(&args.adapters);
    let refs: Vec<&LoraAdapter> = parts.iter().collect();
    let combined = combine(&refs).context("combining the adapters")?;
    for w in combined.adapter.serving_warnings() {
        tracing::warn!("the combination, served by vLLM: {w}");
    }
    combined
        .adapter
        .save_with(out, args.overwrite, |staging| -> anyhow::Result<()> {
            write_provenance_sidecar(&args.adapters, staging)
        })
        .with_context(|| format!("writing the combined adapter {}", out.display()))?;
    let bytes = adapters::provenance::manifest(out)?
        .values()
        .map(|f| f.bytes)
        .sum();
    print_summary(&combined.summary, out, bytes, args.json);
    Ok(())
}

/// The provenance sidecar and model card of a combined adapter, written into the staging directory
/// (which holds the combined adapter files) before it is renamed into place. Each part's files are
/// checked against its own manifest (a tampered part is refused by name); parts whose provenance
/// records different base fingerprints are refused; the sidecar lists every part (directory, the
/// SHA-256 of its sidecar, its provenance) and takes the parts' common base, recipe and dataset.
pub fn write_provenance_sidecar(parts: &[PathBuf], staging: &Path) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut sealed = Vec::new();
    for (i, dir) in parts.iter().enumerate() {
        let s = provenance::verify(dir)
            .with_context(|| format!("part {} ({})", i + 1, dir.display()))?;
        records.push(json!({
            "dir": dir.display().to_string(),
            "provenance_sha256": s.as_ref().map(|s| s.digest()),
            "provenance": s.as_ref().map(|s| &s.provenance),
        }));
        if let Some(s) = s {
            sealed.push((i, s.provenance));
        }
    }
    let mut base = BaseRef::default();
    for (i, p) in &sealed {
        if let (Some(a), Some(b)) = (&base.fingerprint, &p.base.fingerprint) {
            if a != b {
                bail!(
                    "part {} ({}) was trained on another base than an earlier part: base fingerprint {b} \
                     vs {a}; combine only adapters of one base",
                    i + 1,
                    parts[*i].display()
                );
            }
        }
        if base.fingerprint.is_none() {
            base = p.base.clone();
        }
    }
    if base.model_id.is_none() {
        // parts made by PEFT: the base their configs name (combine refuses parts naming different ones)
        for dir in parts {
            let c = adapters::AdapterConfig::read(&dir.join(CONFIG_FILE))?;
            if c.base_model_name_or_path.is_some() {
                (base.model_id, base.revision) = (c.base_model_name_or_path, c.revision);
                break;
            }
        }
    }
    let common = |f: fn(&Provenance) -> &Value| -> Value {
        let vals: Vec<&Value> = sealed.iter().map(|(_, p)| f(p)).collect();
        match vals.first() {
            Some(v) if vals.len() == parts.len() && vals.iter().all(|x| x == v) => (*v).clone(),
            _ => Value::Null,
        }
    };
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut p = Provenance::new(env!("CARGO_PKG_VERSION"), &created, "combine", base);
    p.quantization = common(|p| &p.quantization);
    p.parts = records;
    let list: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{}. `{}`", i + 1, d.display()))
        .collect();
    let model = p.base.model_id.clone().unwrap_or_else(|| "BASE".into());
    let card = format!(
        "---\nbase_model: {model}\nlibrary_name: peft\ntags:\n- lora\n- lora-qat\n- combined\n---\n\n\
         # Combined LoRA adapter for {model}\n\n\
         Written by `lora-qat combine`: every module's ΔW is the sum of the parts' ΔW (ranks \
         concatenated, each part's scaling folded into its B, scaling 1). Parts, in order:\n\n{}\n\n\
         Their provenance is listed in `lora_qat_provenance.json`.\n\n\
         ## Merge and serve\n\n```\n\
         lora-qat inspect THIS_DIR --base {model}\n\
         lora-qat merge-export --lora-path THIS_DIR --base-path {model} --output-path merged/\n\
         vllm serve merged/\n```\n",
        list.join("\n")
    );
    fs::write(staging.join("README.md"), card)
        .with_context(|| format!("writing {}/README.md", staging.display()))?;
    provenance::seal(staging, &mut p)?;
    Ok(())
}

/// Refuses an output that exists (without `--overwrite`), that is not an adapter directory, or that is one
/// of the parts.
fn check_output(out: &Path, parts: &[PathBuf], overwrite: bool) -> anyhow::Result<()> {
    if out.file_name().is_none() {
        bail!(
            "--output-path {}: not a directory name that can be written",
            out.display()
        );
    }
    if let Ok(o) = out.canonicalize() {
        for (i, p) in parts.iter().enumerate() {
            if p.canonicalize().is_ok_and(|p| p == o) {
                bail!(
                    "--output-path {} is part {} of the combination; write the combination elsewhere",
                    out.display(),
                    i + 1
                );
            }
        }
    }
    if out.exists() || out.is_symlink() {
        if !out.is_dir() {
            bail!(
                "--output-path {} exists and is not a directory",
                out.display()
            );
        }
        if !overwrite {
            bail!(
                "--output-path {} already exists; pass --overwrite to replace it",
                out.display()
            );
        }
        let empty = fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .next()
            .is_none();
        if !empty && !out.join(CONFIG_FILE).is_file() {
            bail!(
                "--output-path {} exists and is not an adapter directory (no {CONFIG_FILE}); refusing to replace it",
                out.display()
            );
        }
    }
    Ok(())
}

fn warn_repeated(parts: &[PathBuf]) {
    let canon: Vec<Option<PathBuf>> = parts.iter().map(|p| p.canonicalize().ok()).collect();
    for i in 0..canon.len() {
        for j in 0..i {
            if canon[i].is_some() && canon[i] == canon[j] {
                tracing::warn!(
                    "part {} and part {} are the same directory: its delta is counted twice",
                    j + 1,
                    i + 1
                );
            }
        }
    }
}

fn print_summary(s: &CombineSummary, out: &Path, bytes: u64, json: bool) {
    let attention = s.modules.iter().filter(|m| !m.expert).count();
    let experts = s.modules.len() - attention;
    if json {
        let parts: Vec<_> = s
            .part_labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let modules = s.modules.iter().filter(|m| m.part_ranks[i] > 0).count();
                let rank: usize = s.modules.iter().map(|m| m.part_ranks[i]).sum();
                serde_json::json!({"part": label, "modules": modules, "total_rank": rank})
            })
            .collect();
        let v = serde_json::json!({
            "output": out.display().to_string(),
            "parts": parts,
            "modules": s.modules.len(),
            "attention_modules": attention,
            "expert_weights": experts,
            "r": s.r,
            "lora_alpha": s.r,
            "rank_pattern_entries": s.rank_pattern_entries,
            "max_rank": s.max_rank,
            "total_rank": s.total_rank,
            "tensors": s.tensors,
            "parameters": s.parameters,
            "bytes": bytes,
            "base_model_name_or_path": s.base_model_name_or_path,
            "revision": s.revision,
        });
        println!("{v}");
        return;
    }
    println!("combined {} adapters into {}", s.parts, out.display());
    for (i, label) in s.part_labels.iter().enumerate() {
        let modules = s.modules.iter().filter(|m| m.part_ranks[i] > 0).count();
        let rank: usize = s.modules.iter().map(|m| m.part_ranks[i]).sum();
        println!("  {label}: {modules} modules, total rank {rank}");
    }
    println!(
        "  modules: {} ({attention} attention projections, {experts} expert weights), total rank {}, max rank {}",
        s.modules.len(),
        s.total_rank,
        s.max_rank
    );
    println!(
        "  config: r = lora_alpha = {} (scaling 1), {} modules with their own rank in rank_pattern",
        s.r, s.rank_pattern_entries
    );
    println!(
        "  base: {}{}",
        s.base_model_name_or_path
            .as_deref()
            .unwrap_or("(not named)"),
        s.revision
            .as_deref()
            .map_or(String::new(), |r| format!(" @ {r}"))
    );
    println!(
        "  wrote {} tensors, {} parameters, {bytes} bytes",
        s.tensors, s.parameters
    );
}
