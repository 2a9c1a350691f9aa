//! `merge-export`: the base walked shard by shard and tensor by tensor through its memory map,
//! adapted tensors replaced by their deployed bytes ([`super::deployed`]), every other tensor
//! copied byte for byte, into an output that mirrors the base (shard names and assignment,
//! tensor order, dtypes, metadata, side files) plus a provenance file. Written by the streaming
//! [`ShardedWriter`]: a temporary directory beside the target, fsynced, renamed; mapped pages of
//! the base are dropped once used, so peak memory does not grow with the model.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::deployed::{attention_bytes, ExpertsJob};
use super::paths::check_output_path;
use super::provenance::provenance;
use super::set::{MergeSet, Role};
use super::trust::TrustPolicy;
use crate::checkpoint::writer::{ShardedWriter, WriterOptions};
use crate::checkpoint::{names, Checkpoint, Dtype, ShardLayout, INDEX_FILE, MXFP4_BLOCK};

/// The dtype of the exported experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    /// MXFP4 blocks and scales, exactly the release format (what QAT trained).
    #[default]
    Mxfp4,
    /// Dequantized BF16 experts (`…experts.{gate_up,down}_proj`, `[E, in, out]` as transformers
    /// loads them) and no `quantization_config`.
    Bf16,
}

/// Options of [`merge_export`].
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Expert dtype.
    pub dtype: ExportDtype,
    /// Replace an existing output (only once the new one is complete).
    pub overwrite: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// What to require of the adapters' provenance and signatures.
    pub trust: TrustPolicy,
}

/// What [`merge_export`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The output directory.
    pub dir: PathBuf,
    /// Tensors recomputed from the adapters.
    pub merged: usize,
    /// Tensors copied from the base.
    pub copied: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Merges the adapters at `loras` (summed in order) into the base at `base_dir` and writes the
/// result to `out`.
pub fn merge_export(
    base_dir: &Path,
    loras: &[PathBuf],
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let t0 = Instant::now();
    check_output_path(base_dir, out)?;
    let base = Checkpoint::open(base_dir)?;
    let set = MergeSet::load(loras, &base, &opts.trust)?;
    let layout = base.layout();
    let metadata: BTreeMap<String, String> = layout[0].metadata.iter().cloned().collect();
    if let Some(s) = layout
        .iter()
        .find(|s| s.metadata.iter().cloned().collect::<BTreeMap<_, _>>() != metadata)
    {
        tracing::warn!(
            "{}: header metadata differs from {}'s; the export writes {}'s in every shard",
            s.file_name,
            layout[0].file_name,
            layout[0].file_name
        );
    }
    let mut writer = ShardedWriter::create(
        out,
        WriterOptions {
            max_shard_bytes: u64::MAX,
            overwrite: opts.overwrite,
            metadata,
        },
    )?;
    let total: u64 = base.shard_files().map(|(_, n)| n).sum();
    let bar = progress_bar(opts.progress, total);
    let bf16 = opts.dtype == ExportDtype::Bf16;
    let layers = base.config().num_hidden_layers;
    let (mut merged, mut copied, mut bytes) = (0usize, 0usize, 0u64);
    // scales computed with their blocks, written when the scales tensor comes
    let mut stash: HashMap<String, Vec<u8>> = HashMap::new();
    for shard in &layout {
        if base.is_sharded() {
            writer.start_planned_shard(&shard.file_name, &plan(shard, &set, layers, bf16))?;
        }
        for t in &shard.tensors {
            let name = t.name.as_str();
            let size = base.tensor(name)?.bytes.len() as u64;
            match set.role(name, layers, bf16) {
                Role::Copy => {
                    writer.add_tensor(name, t.dtype, &t.shape, base.tensor(name)?.bytes)?;
                    copied += 1;
                    bytes += size;
                }
                Role::Attention(l, p) => {
                    let data = attention_bytes(&base, &*set.layer(l)?, p)?;
                    writer.add_tensor(name, t.dtype, &t.shape, &data)?;
                    merged += 1;
                    bytes += size;
                }
                Role::ExpertBlocks(l, p) => {
                    let loras = set.layer(l)?;
                    let job = ExpertsJob::new(&base, &loras, p)?;
                    let scales_name = names::expert_scales(l, p.stem());
                    if bf16 {
                        let (n, rows, cols) =
                            (job.packed.experts, job.packed.rows, job.packed.cols);
                        let stem = format!("{}.{}", names::experts(l), p.stem());
                        writer.add_tensor_with(&stem, Dtype::BF16, &[n, cols, rows], |w| {
                            stream_bf16(&job, w)
                        })?;
                        bytes += (n * rows * cols * 2) as u64;
                    } else {
                        let mut scales = Vec::new();
                        writer.add_tensor_with(name, t.dtype, &t.shape, |w| {
                            stream_blocks(&job, w, &mut scales)
                        })?;
                        stash.insert(scales_name, scales);
                        bytes += size;
                    }
                    merged += 1;
                }
                Role::ExpertScales(l, p) => {
                    if !bf16 {
                        let scales = match stash.remove(name) {
                            Some(s) => s,
                            // the scales come first in this shard layout: compute them now (the
                            // blocks are recomputed, identically, when their turn comes)
                            None => {
                                let loras = set.layer(l)?;
                                scales_only(&ExpertsJob::new(&base, &loras, p)?)?
                            }
                        };
                        writer.add_tensor(name, t.dtype, &t.shape, &scales)?;
                        merged += 1;
                        bytes += size;
                    }
                }
            }
            base.release(name);
            bar.inc(size);
        }
    }
    bar.finish_and_clear();
    copy_side_files(&base, &mut writer, bf16)?;
    let prov = provenance(&base, &set, opts.dtype, merged)?;
    writer.write_file(super::PROVENANCE_FILE, prov.as_bytes())?;
    let summary = writer.finish()?;
    Ok(ExportSummary {
        dir: summary.dir,
        merged,
        copied,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The tensors the export writes for a base shard, in order: the base's, except that a BF16
/// export replaces each expert `_blocks`/`_scales` pair by one `[E, in, out]` BF16 tensor.
fn plan(
    shard: &ShardLayout,
    set: &MergeSet,
    layers: usize,
    bf16: bool,
) -> Vec<(String, Dtype, Vec<usize>)> {
    let mut out = Vec::with_capacity(shard.tensors.len());
    for t in &shard.tensors {
        match (bf16, set.role(&t.name, layers, bf16)) {
            (true, Role::ExpertBlocks(l, p)) => {
                let (e, rows, cols) = (t.shape[0], t.shape[1], t.shape[2] * MXFP4_BLOCK);
                let stem = format!("{}.{}", names::experts(l), p.stem());
                out.push((stem, Dtype::BF16, vec![e, cols, rows]));
            }
            (true, Role::ExpertScales(..)) => {}
            _ => out.push((t.name.clone(), t.dtype, t.shape.clone())),
        }
    }
    out
}

/// Streams the deployed blocks of every expert, batch by batch; the scales are collected.
fn stream_blocks(job: &ExpertsJob<'_>, w: &mut dyn Write, scales: &mut Vec<u8>) -> Result<()> {
    let n = job.packed.experts;
    let batch = job.batch();
    for start in (0..n).step_by(batch) {
        for (b, s) in job.experts(start..(start + batch).min(n))? {
            w.write_all(&b)?;
            scales.extend_from_slice(&s);
        }
    }
    Ok(())
}

/// Only the deployed scales of every expert.
fn scales_only(job: &ExpertsJob<'_>) -> Result<Vec<u8>> {
    let mut scales = Vec::new();
    stream_blocks(job, &mut std::io::sink(), &mut scales)?;
    Ok(scales)
}

/// Streams every expert's deployed weight, decoded and transposed to `[in, out]`, as BF16
/// (exact: every MXFP4 value is a bf16 value).
fn stream_bf16(job: &ExpertsJob<'_>, w: &mut dyn Write) -> Result<()> {
    let (n, rows, cols) = (job.packed.experts, job.packed.rows, job.packed.cols);
    let batch = job.batch();
    let mut values = vec![0f32; rows * cols];
    let mut transposed = vec![0f32; rows * cols];
    let mut out = vec![0u8; rows * cols * 2];
    for start in (0..n).step_by(batch) {
        for (b, s) in job.experts(start..(start + batch).min(n))? {
            kernels::mxfp4::dequantize(&b, &s, &mut values)?;
            for (r, row) in values.chunks_exact(cols).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    transposed[c * rows + r] = *v;
                }
            }
            kernels::bf16::encode_le(&transposed, &mut out)?;
            w.write_all(&out)?;
        }
    }
    Ok(())
}

/// Copies every regular file of the base directory that is not a weight file (config, generation
/// config, tokenizer, chat template, …); for a BF16 export `config.json` loses its
/// `quantization_config`. Sub-directories (e.g. the release's `original/`) are not copied.
fn copy_side_files(base: &Checkpoint, writer: &mut ShardedWriter, bf16: bool) -> Result<()> {
    let dir = base.dir();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_weights = name.ends_with(".safetensors") || name == INDEX_FILE;
        if !e.file_type()?.is_file() || is_weights || name == super::PROVENANCE_FILE {
            if e.file_type()?.is_dir() {
                tracing::info!(
                    "{}: a directory, not copied into the export",
                    e.path().display()
                );
            }
            continue;
        }
        if bf16 && name == "config.json" {
            let text = std::fs::read_to_string(e.path())?;
            let mut cfg: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).with_context(|| format!("{}", e.path().display()))?;
            cfg.remove("quantization_config");
            cfg.insert("torch_dtype".into(), "bfloat16".into());
            let json = serde_json::to_string_pretty(&cfg)? + "\n";
            writer.write_file(&name, json.as_bytes())?;
        } else {
            writer.copy_file(&e.path(), &name)?;
        }
    }
    Ok(())
}

fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
