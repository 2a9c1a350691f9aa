//! `lora-qat quickstart`, the embedded default: a tiny random gpt-oss in the release format
//! ([`GptOssConfig::init_checkpoint`]), a brief LoRA-QAT run on a bundled chat sample with
//! `configs/quickstart.yaml`, merge-export, verify, and a summary. Everything goes under one
//! directory; nothing outside it is touched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::checkpoint::GptOssConfig;
use crate::export::{merge_export, verify, ExportOptions, VerifyReport};
use crate::train::config::TrainConfig;
use crate::train::setup::{setup, Layout};
use crate::train::trainer;

const CONFIG: &str = include_str!("../../assets/quickstart/config.json");
const RECIPE: &str = include_str!("../../configs/quickstart.yaml");
const CHAT_SAMPLE: &str = include_str!("../../assets/quickstart/chat_sample.jsonl");
const SIDE_FILES: [(&str, &str); 4] = [
    (
        "tokenizer.json",
        include_str!("../../assets/quickstart/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_str!("../../assets/quickstart/tokenizer_config.json"),
    ),
    (
        "chat_template.jinja",
        include_str!("../../assets/quickstart/chat_template.jinja"),
    ),
    (
        "generation_config.json",
        include_str!("../../assets/quickstart/generation_config.json"),
    ),
];
/// Marks a directory the quickstart made (the only kind `--overwrite` removes).
const MARKER: &str = ".lora-qat-quickstart";

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Working directory (base/, data/, run/, export/ go inside).
    pub dir: PathBuf,
    /// Replace a previous quickstart directory.
    pub overwrite: bool,
    /// Override the recipe's `max_steps`.
    pub max_steps: Option<usize>,
}

/// What the quickstart did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub dir: PathBuf,
    pub steps: usize,
    /// `(step, eval_loss, eval_loss_unquantized)` of every eval.
    pub evals: Vec<(u64, f64, f64)>,
    pub export: PathBuf,
    pub report: VerifyReport,
    pub seconds: f64,
}

fn prepare_dir(opts: &Options) -> Result<()> {
    let dir = &opts.dir;
    if dir.exists() {
        if !opts.overwrite {
            bail!(
                "{} already exists; pass --overwrite to replace a previous quickstart",
                dir.display()
            );
        }
        if !dir.join(MARKER).is_file() {
            bail!(
                "{} exists and was not made by `lora-qat quickstart`; refusing to replace it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by lora-qat quickstart\n")?;
    Ok(())
}

fn evals(history: &[Value]) -> Vec<(u64, f64, f64)> {
    history
        .iter()
        .filter_map(|e| {
            Some((
                e.get("step")?.as_u64()?,
                e.get("eval_loss")?.as_f64()?,
                e.get("eval_loss_unquantized")?.as_f64()?,
            ))
        })
        .collect()
}

fn path_str(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// Runs the quickstart into `opts.dir`.
pub fn run(opts: &Options) -> Result<Summary> {
    let t0 = Instant::now();
    prepare_dir(opts)?;
    let dir = &opts.dir;
    let (base, data, run_dir, export) = (
        dir.join("base"),
        dir.join("data"),
        dir.join("run"),
        dir.join("export"),
    );

    let config = GptOssConfig::from_json_str(CONFIG, "the quickstart config")?;
    let side: Vec<(&str, &[u8])> = SIDE_FILES.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
    config.init_checkpoint(CONFIG, &base, 0, &side, false)?;
    eprintln!("quickstart: random gpt-oss written to {}", base.display());
    std::fs::create_dir_all(&data)?;
    let sample = data.join("chat_sample.jsonl");
    std::fs::write(&sample, CHAT_SAMPLE)?;

    let mut cfg = TrainConfig::default();
    let unknown = cfg.apply_recipe_str(RECIPE, "configs/quickstart.yaml")?;
    debug_assert!(unknown.is_empty(), "{unknown:?}");
    cfg.set("model_name_or_path", &path_str(&base))?;
    cfg.set("output_dir", &path_str(&run_dir))?;
    if let Some(n) = opts.max_steps {
        cfg.set("max_steps", &Value::from(n))?;
        cfg.set("eval_steps", &Value::from(n.div_ceil(2).max(1)))?;
    }
    cfg.data = vec![sample.display().to_string()];
    let outcome = trainer::run::<burn::backend::Autodiff<burn::backend::Flex>>(
        setup(cfg, Layout::cpu())?,
        &[Default::default()],
    )?;

    merge_export(
        &base,
        std::slice::from_ref(&run_dir),
        &export,
        &ExportOptions::default(),
    )?;
    let report = verify(
        &export,
        &base,
        std::slice::from_ref(&run_dir),
        &Default::default(),
    )?;
    if report.mismatches() > 0 {
        bail!(
            "verify found {} mismatching tensors in {}",
            report.mismatches(),
            export.display()
        );
    }
    Ok(Summary {
        dir: dir.clone(),
        steps: outcome.state.global_step,
        evals: evals(&outcome.state.log_history),
        export,
        report,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.dir.display();
        writeln!(f, "lora-qat quickstart: done in {:.1} s", self.seconds)?;
        writeln!(
            f,
            "  base      {d}/base    a random tiny gpt-oss in the release format (MXFP4 experts)"
        )?;
        if let (Some(first), Some(last)) = (self.evals.first(), self.evals.last()) {
            writeln!(
                f,
                "  training  {} LoRA-QAT steps: eval loss {:.3} -> {:.3} (deployed weights: MXFP4 experts, bf16 attention)",
                self.steps, first.1, last.1
            )?;
            writeln!(
                f,
                "            quantization gap (deployed - unquantized W + ΔW): {:+.4} -> {:+.4}",
                first.1 - first.2,
                last.1 - last.2
            )?;
        }
        writeln!(
            f,
            "  adapter   {d}/run     PEFT adapter, checkpoints, trainer_state.json, loss.svg"
        )?;
        let merged = self
            .report
            .checks
            .iter()
            .filter(|c| c.kind == "merged")
            .count();
        writeln!(
            f,
            "  export    {}  MXFP4 checkpoint; verify: all {} tensors match ({merged} merged, the rest byte-identical to the base)",
            self.export.display(),
            self.report.checks.len()
        )?;
        write!(
            f,
            "  next      lora-qat score --base {} --input IDS.safetensors --out logits.safetensors",
            self.export.display()
        )
    }
}
