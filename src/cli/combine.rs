//! `lora-qat combine`: several adapters of one base summed into one PEFT adapter.
//!
//! The sum is [`adapters::combine::combine`] (ranks concatenated, each part's scaling folded into its B,
//! exact in f32 up to the one rounding of s·B). The output is assembled in a staging directory beside
//! the target (the adapter files, then [`write_provenance_sidecar`]), synced, and renamed into place;
//! an existing output is kept unless `--overwrite` (and even then only an adapter directory or an empty
//! one is replaced); on any failure the staging directory is removed and the target is as it was.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use adapters::combine::{combine, CombineSummary};
use adapters::{LoraAdapter, CONFIG_FILE, WEIGHTS_FILE};
use anyhow::{bail, Context};

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
    for (l, a, b) in single_expert_layers(&combined.adapter) {
        tracing::warn!(
            layer = l,
            adapted = a,
            missing = b,
            "the combination adapts one expert weight of this layer only: PEFT loads it, vLLM expects both"
        );
    }
    let bytes = write_atomically(&combined.adapter, out, args.overwrite, |staging| {
        write_provenance_sidecar(&args.adapters, staging)
    })?;
    print_summary(&combined.summary, out, bytes, args.json);
    Ok(())
}

/// The place for the provenance sidecar of a combined adapter: called with the parts' directories (in
/// order) and the staging directory that already holds the combined `adapter_config.json` and
/// `adapter_model.safetensors`, before it is synced and renamed into place. Whatever it writes there is
/// part of the output; an error aborts the whole write (nothing is left behind). Nothing yet.
pub fn write_provenance_sidecar(parts: &[PathBuf], staging: &Path) -> anyhow::Result<()> {
    tracing::debug!(
        parts = parts.len(),
        staging = %staging.display(),
        "no provenance sidecar written (not implemented yet)"
    );
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

/// Layers where the combination adapts one expert weight but not the other: (layer, adapted, missing).
fn single_expert_layers(a: &LoraAdapter) -> Vec<(usize, &'static str, &'static str)> {
    use adapters::ExpertProj::{Down, GateUp};
    let mods: Vec<_> = a.expert_modules().collect();
    let mut out = Vec::new();
    for &(l, p) in &mods {
        let other = if p == GateUp { Down } else { GateUp };
        if !mods.contains(&(l, other)) {
            out.push((l, p.name(), other.name()));
        }
    }
    out
}

/// Writes `adapter` to a staging directory beside `out`, lets `extra` add files there, syncs, and renames
/// it into place (replacing an existing `out` only when `overwrite`; checked again here). Returns the bytes
/// written. On failure the staging directory is removed and `out` is untouched.
fn write_atomically(
    adapter: &LoraAdapter,
    out: &Path,
    overwrite: bool,
    extra: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tag = format!(
        ".{}.combine-{}-{stamp}",
        name.to_string_lossy(),
        std::process::id()
    );
    let staging = parent.join(format!("{tag}.tmp"));
    let result = (|| -> anyhow::Result<u64> {
        adapter
            .save(&staging, false)
            .context("writing the combined adapter")?;
        extra(&staging)?;
        let mut bytes = 0;
        for entry in
            fs::read_dir(&staging).with_context(|| format!("listing {}", staging.display()))?
        {
            let path = entry?.path();
            let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}", path.display()))?;
            bytes += f.metadata()?.len();
        }
        File::open(&staging)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", staging.display()))?;
        Ok(bytes)
    })();
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let placed = (|| -> anyhow::Result<()> {
        if out.exists() || out.is_symlink() {
            // the output appeared or was checked long ago: check again right before replacing it
            check_output(out, &[], overwrite)?;
            let old = parent.join(format!("{tag}.old"));
            fs::rename(out, &old)
                .with_context(|| format!("moving the old {} aside", out.display()))?;
            if let Err(e) = fs::rename(&staging, out) {
                let _ = fs::rename(&old, out);
                return Err(e).with_context(|| format!("renaming into {}", out.display()));
            }
            fs::remove_dir_all(&old)
                .with_context(|| format!("removing the replaced {}", old.display()))?;
        } else {
            fs::rename(&staging, out)
                .with_context(|| format!("renaming into {}", out.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = placed {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))?;
    Ok(bytes)
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
