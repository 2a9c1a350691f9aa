//! The data pipeline `prepare` and `train` share: read every row, render, tokenize and mask in
//! parallel (row batches over rayon, results kept in file order), truncate, split off eval, pack.
//! Bad rows stop the run with their file and line, or are skipped and counted (`skip_bad_rows`).

use anyhow::{bail, ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use super::encode::{Encoder, Shown};
use super::order::split_eval;
use super::pack::{build, pack, Sequence};
use super::row::classify;
use super::source::{read_rows, resolve, total_bytes, RawRow};
use super::store::TokenStore;

/// Rows per parallel batch.
const BATCH: usize = 2048;
/// Bad rows named one by one in warnings before the rest are only counted.
const WARN_ROWS: usize = 5;

/// How rows become sequences (the data flags of `prepare` and `train`).
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// Training data: files, directories or globs.
    pub data: Vec<String>,
    /// Eval data (instead of a split).
    pub eval_data: Vec<String>,
    /// Seeded fraction of the examples held out for eval (when no `eval_data`).
    pub eval_split: Option<f64>,
    /// Truncate examples to this many tokens; the sequence length with `packing`.
    pub max_length: Option<usize>,
    /// Pack examples into sequences of `max_length`.
    pub packing: bool,
    /// Seed of the eval split.
    pub seed: u64,
    /// Skip (and count) rows that cannot be used instead of stopping.
    pub skip_bad_rows: bool,
    /// Keep the rendering of the first N training examples (`--show`).
    pub show: usize,
}

/// Counts of what happened to the rows of one set of files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStats {
    /// Rows read.
    pub rows: usize,
    /// Examples kept.
    pub examples: usize,
    /// Examples cut to `max_length` (kept or dropped).
    pub truncated: usize,
    /// Examples dropped because truncation cut all their trained tokens.
    pub dropped_truncated: usize,
    /// Examples dropped because they have no trained token at all.
    pub dropped_untrained: usize,
    /// Rows skipped as unusable (`skip_bad_rows`).
    pub skipped_bad_rows: usize,
}

/// One split: its examples and how they form sequences.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// The examples.
    pub store: TokenStore,
    /// Example indices of each sequence.
    pub groups: Vec<Vec<usize>>,
}

impl Split {
    fn new(store: TokenStore, packing: Option<usize>) -> Self {
        let groups = pack(&store.lengths(), packing);
        Self { store, groups }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there is no sequence.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Sequence `i`.
    pub fn sequence(&self, i: usize) -> Sequence {
        build(&self.store, &self.groups[i])
    }

    /// Summary numbers.
    pub fn summary(&self) -> SplitSummary {
        let trained = (0..self.store.len())
            .map(|e| {
                self.store
                    .example(e)
                    .1
                    .iter()
                    .skip(1)
                    .filter(|&&t| t)
                    .count()
            })
            .sum();
        SplitSummary {
            examples: self.store.len(),
            sequences: self.groups.len(),
            tokens: self.store.tokens(),
            trained_tokens: trained,
        }
    }
}

/// What a split holds.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub examples: usize,
    pub sequences: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// The prepared data.
pub struct Prepared {
    /// Training sequences.
    pub train: Split,
    /// Eval sequences (from `eval_data` or the split), if asked for.
    pub eval: Option<Split>,
    /// What happened to the training files' rows.
    pub train_stats: ReadStats,
    /// What happened to the eval files' rows (`eval_data`).
    pub eval_stats: Option<ReadStats>,
    /// Renderings of the first `show` training examples, in dataset order.
    pub shown: Vec<(String, Shown)>,
}

/// Reads, encodes, splits and packs.
pub fn prepare(enc: &Encoder, opts: &DataOptions) -> Result<Prepared> {
    if opts.packing && opts.max_length.is_none() {
        bail!("--packing needs --max_length (the length of a packed sequence)");
    }
    if let Some(f) = opts.eval_split {
        ensure!(
            f > 0.0 && f < 1.0,
            "--eval_split {f}: must lie strictly between 0 and 1"
        );
    }
    if let Some(m) = opts.max_length {
        ensure!(m > 1, "--max_length {m}: must be at least 2");
        if enc.template.is_some() {
            let header = enc.header_len()?;
            ensure!(
                m > header,
                "--max_length {m} is not longer than the chat template's header ({header} tokens: \
                 the system prompt and an empty user turn); no assistant token would fit"
            );
        }
    }
    let (store, train_stats, shown) = read_split(enc, &opts.data, opts, opts.show)?;
    let packing = opts.packing.then_some(opts.max_length).flatten();
    let (train, eval, eval_stats) = if !opts.eval_data.is_empty() {
        let (eval_store, stats, _) = read_split(enc, &opts.eval_data, opts, 0)?;
        (store, Some(Split::new(eval_store, packing)), Some(stats))
    } else if let Some(f) = opts.eval_split {
        ensure!(
            store.len() >= 2,
            "--eval_split needs at least 2 examples, the data has {}",
            store.len()
        );
        let (t, e) = split_eval(store.len(), f, opts.seed);
        (
            store.select(&t),
            Some(Split::new(store.select(&e), packing)),
            None,
        )
    } else {
        (store, None, None)
    };
    Ok(Prepared {
        train: Split::new(train, packing),
        eval,
        train_stats,
        eval_stats,
        shown,
    })
}

type Encodings = Vec<(String, Result<Shown, String>)>;
/// A split read from files: its examples, what happened to the rows, the shown renderings.
type ReadSplit = (TokenStore, ReadStats, Vec<(String, Shown)>);

fn read_split(
    enc: &Encoder,
    specs: &[String],
    opts: &DataOptions,
    show: usize,
) -> Result<ReadSplit> {
    let files = resolve(specs)?;
    let bar = ProgressBar::new(total_bytes(&files));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("tokenizing");
    let mut store = TokenStore::default();
    let mut stats = ReadStats::default();
    let mut shown = Vec::new();
    let mut done_bytes = 0u64;
    for file in &files {
        let mut sink = |rows: Vec<RawRow>, bytes: u64| -> Result<bool> {
            bar.set_position(done_bytes + bytes);
            let encoded: Encodings = rows
                .into_par_iter()
                .map(|raw| {
                    let result = raw
                        .content
                        .parse()
                        .and_then(|v| classify(&v))
                        .and_then(|row| enc.encode_shown(&row));
                    (raw.location, result)
                })
                .collect();
            for (location, result) in encoded {
                stats.rows += 1;
                let s = match result {
                    Ok(s) => s,
                    Err(e) if opts.skip_bad_rows => {
                        stats.skipped_bad_rows += 1;
                        if stats.skipped_bad_rows <= WARN_ROWS {
                            tracing::warn!("skipping {location}: {e}");
                        }
                        continue;
                    }
                    Err(e) => bail!("{location}: {e} (--skip_bad_rows skips such rows)"),
                };
                keep(
                    &mut store,
                    &mut stats,
                    &mut shown,
                    show,
                    opts.max_length,
                    location,
                    s,
                );
            }
            Ok(true)
        };
        read_rows(file, BATCH, &mut sink)?;
        done_bytes += std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
    }
    bar.finish_and_clear();
    if stats.skipped_bad_rows > WARN_ROWS {
        tracing::warn!("{} bad rows skipped in all", stats.skipped_bad_rows);
    }
    if stats.rows == 0 {
        bail!("{}: the data holds no row", specs.join(", "));
    }
    if store.is_empty() {
        bail!(
            "{}: none of the {} rows gives a trainable example ({} bad, {} without a trained token, \
             {} whose trained tokens lie past --max_length)",
            specs.join(", "),
            stats.rows,
            stats.skipped_bad_rows,
            stats.dropped_untrained,
            stats.dropped_truncated
        );
    }
    Ok((store, stats, shown))
}

/// Truncates, drops examples with nothing to train, and stores the rest.
fn keep(
    store: &mut TokenStore,
    stats: &mut ReadStats,
    shown: &mut Vec<(String, Shown)>,
    show: usize,
    max_length: Option<usize>,
    location: String,
    s: Shown,
) {
    let e = &s.encoded;
    let trained_at = |n: usize| e.trained[..n].iter().skip(1).any(|&t| t);
    let len = e.ids.len();
    if !trained_at(len) {
        stats.dropped_untrained += 1;
        return;
    }
    let n = max_length.map_or(len, |m| len.min(m));
    if n < len {
        stats.truncated += 1;
        if !trained_at(n) {
            stats.dropped_truncated += 1;
            return;
        }
    }
    store.push(&e.ids[..n], &e.trained[..n]);
    stats.examples += 1;
    if shown.len() < show {
        shown.push((location, s));
    }
}
