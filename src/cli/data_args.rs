//! The data flags `prepare` and `train` share (kebab-case, with TRL's snake_case spellings).

use anyhow::Result;

use crate::data::{DataOptions, RenderOptions};

/// Data flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Training data: JSONL or Parquet files, directories or glob patterns (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<String>,
    /// Eval data (files, directories or globs) instead of a split of the training data.
    #[arg(long = "eval-data", visible_alias = "eval_data")]
    pub eval_data: Vec<String>,
    /// Hold out this seeded fraction of the examples for eval (0 < f < 1).
    #[arg(long = "eval-split", visible_alias = "eval_split")]
    pub eval_split: Option<f64>,
    /// Truncate examples to this many tokens (and the sequence length when packing).
    #[arg(
        long = "max-length",
        visible_alias = "max_length",
        alias = "max_seq_length"
    )]
    pub max_length: Option<usize>,
    /// Pack examples into sequences of --max-length, attention confined to each example.
    #[arg(long, num_args = 0..=1, default_value = "false", default_missing_value = "true",
          value_parser = parse_bool)]
    pub packing: bool,
    /// Train only the assistant turns of conversations (`false`: every token).
    #[arg(long = "assistant-only-loss", visible_alias = "assistant_only_loss", num_args = 0..=1,
          default_value = "true", default_missing_value = "true", value_parser = parse_bool)]
    pub assistant_only_loss: bool,
    /// The date the chat template prints (YYYY-MM-DD; default today): fixed dates make runs
    /// reproducible.
    #[arg(long = "chat-template-date", visible_alias = "chat_template_date")]
    pub chat_template_date: Option<String>,
    /// `reasoning_effort` for the template: low, medium or high.
    #[arg(long = "reasoning-effort", visible_alias = "reasoning_effort")]
    pub reasoning_effort: Option<String>,
    /// More template variables, a JSON object (e.g. '{"model_identity": "You are ..."}'); a row's
    /// own keys override them.
    #[arg(long = "chat-template-kwargs", visible_alias = "chat_template_kwargs")]
    pub chat_template_kwargs: Option<String>,
    /// Skip rows that cannot be used (counted and warned) instead of stopping at the first.
    #[arg(long = "skip-bad-rows", visible_alias = "skip_bad_rows")]
    pub skip_bad_rows: bool,
}

impl DataArgs {
    /// The rendering options.
    pub fn render_options(&self) -> Result<RenderOptions> {
        Ok(RenderOptions {
            date: self.chat_template_date.clone(),
            reasoning_effort: self.reasoning_effort.clone(),
            kwargs: self.chat_template_kwargs.clone(),
            assistant_only_loss: self.assistant_only_loss,
        })
    }

    /// The pipeline options (`seed` orders the eval split).
    pub fn data_options(&self, seed: u64, show: usize) -> DataOptions {
        DataOptions {
            data: self.data.clone(),
            eval_data: self.eval_data.clone(),
            eval_split: self.eval_split,
            max_length: self.max_length,
            packing: self.packing,
            seed,
            skip_bad_rows: self.skip_bad_rows,
            show,
        }
    }
}

/// `true`/`false` as users of TRL type them (`True`, `1`, `yes`, ...).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}
