//! Training data: datasets (JSONL, Parquet), the checkpoint's chat template, tokenization, loss
//! masks, truncation, packing, the eval split and the seeded order of every epoch.
//!
//! `prepare` and `train` share [`prepare`](dataset::prepare): what `prepare` writes is what `train`
//! trains on.

pub mod dataset;
pub mod encode;
pub mod fast_bpe;
pub mod order;
pub mod pack;
pub mod pyjson;
pub mod row;
pub mod show;
pub mod source;
pub mod store;
pub mod template;
pub mod value;

use std::path::Path;

use anyhow::{Context, Result};

pub use dataset::{prepare, DataOptions, Prepared, ReadStats, Split, SplitSummary};
pub use encode::{Encoded, Encoder};
pub use order::{DataPosition, Sampler};
pub use pack::Sequence;
pub use template::{ChatTemplate, TemplateVars};

use crate::checkpoint::GptOssConfig;

/// How rows are rendered and masked (the template flags).
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// What `strftime_now` prints (`--chat_template_date YYYY-MM-DD`); `None`: today.
    pub date: Option<String>,
    /// `--reasoning_effort` (`low`, `medium`, `high`).
    pub reasoning_effort: Option<String>,
    /// `--chat_template_kwargs` (a JSON object): more template variables.
    pub kwargs: Option<String>,
    /// Train only assistant turns of conversations (`--assistant_only_loss`, default true).
    pub assistant_only_loss: bool,
}

/// The encoder of a checkpoint directory: its `config.json` (vocabulary size), `tokenizer.json`
/// and chat template (`chat_template.jinja`, else `tokenizer_config.json`). No weight is read.
pub fn load_encoder(dir: &Path, opts: &RenderOptions) -> Result<Encoder> {
    let config_path = dir.join("config.json");
    anyhow::ensure!(
        config_path.is_file(),
        "{}: no config.json (needed for the vocabulary size)",
        dir.display()
    );
    let config = GptOssConfig::from_file(&config_path)?;
    let date = opts.date.as_deref().map(template::parse_date).transpose()?;
    let template = ChatTemplate::find(dir, date)?;
    let mut vars = TemplateVars::default();
    if let Some(effort) = &opts.reasoning_effort {
        anyhow::ensure!(
            ["low", "medium", "high"].contains(&effort.as_str()),
            "--reasoning_effort {effort:?}: expected low, medium or high"
        );
        vars.defaults
            .push(("reasoning_effort".into(), effort.as_str().into()));
    }
    if let Some(kw) = &opts.kwargs {
        let v = value::from_json(kw).context("--chat_template_kwargs: not valid JSON")?;
        let keys: Vec<minijinja::Value> = match v.kind() {
            minijinja::value::ValueKind::Map => v.try_iter()?.collect(),
            _ => anyhow::bail!("--chat_template_kwargs: expected a JSON object"),
        };
        for k in keys {
            vars.defaults.push((k.to_string(), v.get_item(&k)?));
        }
    }
    Encoder::new(
        dir,
        template,
        vars,
        opts.assistant_only_loss,
        config.vocab_size,
    )
}
