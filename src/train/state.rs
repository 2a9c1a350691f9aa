//! What a run records and resumes from. `output_dir/checkpoint-N/` holds the PEFT adapter, the
//! AdamW state (`optimizer.safetensors`, keyed by PEFT names) and `trainer_state.json` (step, data
//! position, log history); never base weights. A checkpoint is written into a temporary directory
//! and renamed, so a run killed at any moment leaves only whole checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::DataPosition;

/// The trainer's state, as `trainer_state.json` (HF's file name and `log_history` shape).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Total optimizer steps of the run.
    pub max_steps: usize,
    /// Epochs done (fractional).
    pub epoch: f64,
    /// Where the data stream is.
    pub data_position: DataPosition,
    /// Micro-batches skipped because no token in them was trained.
    pub skipped_batches: usize,
    /// Tokens fed so far (all, and the counted ones).
    pub num_input_tokens_seen: usize,
    pub num_trained_tokens: usize,
    /// One entry per log: `step`, `loss`, `learning_rate`, `grad_norm`, `tokens_per_s`, and at
    /// evals `eval_loss` (deployed weights) and `eval_loss_unquantized`.
    pub log_history: Vec<serde_json::Value>,
    /// Seed of the run (data order, adapter init).
    pub seed: u64,
}

/// File names inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl TrainerState {
    /// Writes `path` (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a lora-qat trainer state", path.display()))
    }
}

/// `checkpoint-N` directories of `dir`, sorted by N.
pub fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let (Some(n), true) = (n, p.join(STATE_FILE).is_file()) {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves `--resume_from_checkpoint DIR|latest|true` against `output_dir`.
pub fn resume_dir(spec: &str, output_dir: &Path) -> Result<PathBuf> {
    if matches!(spec, "latest" | "true" | "True") {
        return match checkpoints(output_dir)?.pop() {
            Some((_, p)) => Ok(p),
            None => bail!(
                "--resume_from_checkpoint {spec}: {} holds no checkpoint-N",
                output_dir.display()
            ),
        };
    }
    let p = PathBuf::from(spec);
    if !p.join(STATE_FILE).is_file() {
        bail!("--resume_from_checkpoint {spec}: not a checkpoint directory (no {STATE_FILE})");
    }
    Ok(p)
}

/// Removes the oldest checkpoints beyond `limit`.
pub fn prune(dir: &Path, limit: Option<usize>) -> Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let all = checkpoints(dir)?;
    if all.len() > limit.max(1) {
        for (_, p) in &all[..all.len() - limit.max(1)] {
            std::fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}

/// Whether `dir` holds the output of a run (a final adapter, a state or a checkpoint).
pub fn holds_a_run(dir: &Path) -> Result<bool> {
    Ok(dir.join("adapter_model.safetensors").exists()
        || dir.join(STATE_FILE).exists()
        || !checkpoints(dir)?.is_empty())
}
