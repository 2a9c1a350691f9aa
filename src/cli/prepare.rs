//! `lora-qat prepare`: what training would see. Reads the data through the checkpoint's chat
//! template and tokenizer (config, tokenizer and template only: no weight is read), writes one JSON
//! object per (packed) sequence: `input_ids`, `labels` (-100 = not trained), `position_ids`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::data_args::DataArgs;
use crate::checkpoint::resolve_model;
use crate::data::order::epoch_order;
use crate::data::show::mark;
use crate::data::{load_encoder, prepare, Split};

/// Arguments of `lora-qat prepare`.
#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Base checkpoint (directory or hub repo id): its config.json, tokenizer.json and chat template.
    #[arg(
        long,
        alias = "model_name_or_path",
        alias = "base-path",
        alias = "base_path"
    )]
    pub base: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output JSONL: one sequence per line.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the eval sequences here (with --eval-data or --eval-split).
    #[arg(long = "eval-out", visible_alias = "eval_out")]
    pub eval_out: Option<PathBuf>,
    /// Shuffle the sequences as epoch 0 of training would (and seed the eval split); default:
    /// dataset order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print this many rendered examples with the trained spans marked «like this».
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub overwrite: bool,
}

/// Seed of the eval split when `--seed` is not given (TRL's default seed).
const DEFAULT_SEED: u64 = 42;

/// Runs `lora-qat prepare`.
pub fn run(args: &PrepareArgs) -> Result<()> {
    let started = Instant::now();
    for out in std::iter::once(&args.out).chain(&args.eval_out) {
        if out.exists() && !args.overwrite {
            bail!("{} exists; pass --overwrite to replace it", out.display());
        }
    }
    if args.eval_out.is_some() && args.data.eval_data.is_empty() && args.data.eval_split.is_none() {
        bail!("--eval-out needs --eval-data or --eval-split");
    }
    let dir = resolve_model(&args.base)?;
    let encoder = load_encoder(&dir, &args.data.render_options()?)?;
    let load_s = started.elapsed().as_secs_f64();
    let opts = args
        .data
        .data_options(args.seed.unwrap_or(DEFAULT_SEED), args.show);
    let prepared = prepare(&encoder, &opts)?;
    let encoded_s = started.elapsed().as_secs_f64() - load_s;

    write_split(&prepared.train, args.seed, &args.out)?;
    if let (Some(path), Some(eval)) = (&args.eval_out, &prepared.eval) {
        write_split(eval, args.seed, path)?;
    }

    let color = std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout().lock();
    for (location, s) in &prepared.shown {
        writeln!(
            stdout,
            "=== {location} ({} tokens, {} trained)",
            s.encoded.ids.len(),
            s.encoded.trained.iter().filter(|&&t| t).count()
        )?;
        writeln!(stdout, "{}", mark(s, color))?;
    }
    let train = prepared.train.summary();
    let seconds = started.elapsed().as_secs_f64();
    let summary = json!({
        "rows": prepared.train_stats.rows,
        "examples": train.examples,
        "sequences": train.sequences,
        "tokens": train.tokens,
        "trained_tokens": train.trained_tokens,
        "truncated": prepared.train_stats.truncated,
        "dropped_truncated": prepared.train_stats.dropped_truncated,
        "dropped_untrained": prepared.train_stats.dropped_untrained,
        "skipped_bad_rows": prepared.train_stats.skipped_bad_rows,
        "eval": prepared.eval.as_ref().map(Split::summary),
        "eval_rows": prepared.eval_stats.as_ref(),
        "load_seconds": load_s,
        "encode_seconds": encoded_s,
        "fast_tokenizer": encoder.is_fast(),
        "seconds": seconds,
        "tokens_per_s": train.tokens as f64 / encoded_s.max(1e-9),
        "threads": rayon::current_num_threads(),
    });
    if args.json {
        writeln!(stdout, "{summary}")?;
    } else {
        let s = &prepared.train_stats;
        writeln!(
            stdout,
            "rows {}  examples {}  sequences {}  tokens {}  trained tokens {}",
            s.rows, train.examples, train.sequences, train.tokens, train.trained_tokens
        )?;
        writeln!(stdout, "truncated {} (dropped: {} with every trained token cut)  dropped without a trained token {}  bad rows skipped {}",
                 s.truncated, s.dropped_truncated, s.dropped_untrained, s.skipped_bad_rows)?;
        if let Some(e) = prepared.eval.as_ref().map(Split::summary) {
            writeln!(
                stdout,
                "eval: examples {}  sequences {}  tokens {}  trained tokens {}",
                e.examples, e.sequences, e.tokens, e.trained_tokens
            )?;
        }
        writeln!(
            stdout,
            "wrote {} in {seconds:.2} s ({:.0} tokens/s)",
            args.out.display(),
            train.tokens as f64 / encoded_s.max(1e-9)
        )?;
    }
    Ok(())
}

/// Writes the split's sequences (seeded epoch-0 order with a seed, else dataset order) to a
/// temporary file beside `path`, then renames it into place.
fn write_split(split: &Split, seed: Option<u64>, path: &Path) -> Result<()> {
    let order: Vec<usize> = match seed {
        Some(s) => epoch_order(split.len(), s, 0),
        None => (0..split.len()).collect(),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for i in order {
            serde_json::to_writer(&mut w, &split.sequence(i))?;
            w.write_all(b"\n")?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
