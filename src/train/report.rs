//! What a run leaves for people: a JSONL log (one line per log entry), the loss curves as an SVG
//! (train loss; eval loss with the deployed weights and without quantization), and a model card.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// Appends one entry to `output_dir/train_log.jsonl`.
pub fn append_log(output_dir: &Path, entry: &Value) -> Result<()> {
    let path = output_dir.join("train_log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{entry}").with_context(|| format!("cannot write {}", path.display()))
}

fn series(history: &[Value], key: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Draws `loss.svg`: every loss series of the history against the step.
pub fn plot(history: &[Value], path: &Path) -> Result<()> {
    let lines = [
        ("loss", "train loss", RGBColor(31, 119, 180)),
        (
            "eval_loss",
            "eval loss (deployed weights)",
            RGBColor(214, 39, 40),
        ),
        (
            "eval_loss_unquantized",
            "eval loss (unquantized W + ΔW)",
            RGBColor(44, 160, 44),
        ),
        (
            "eval_loss_quantized",
            "eval loss (if served as MXFP4)",
            RGBColor(255, 127, 14),
        ),
    ];
    let data: Vec<_> = lines
        .iter()
        .map(|(k, l, c)| (series(history, k), *l, *c))
        .collect();
    let all: Vec<(f64, f64)> = data.iter().flat_map(|d| d.0.iter().copied()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("lora-qat training", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| err(&e))?;
    for (points, label, color) in data {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// What the model card states about a run.
pub struct CardFacts<'a> {
    /// base model id or path
    pub base: &'a str,
    /// base fingerprint from the provenance
    pub fingerprint: Option<&'a str>,
    /// quantization recipe name
    pub quant: &'a str,
    /// the coverage table
    pub coverage: &'a str,
    /// the training arguments
    pub config_json: &'a Value,
    /// the last log entry (losses)
    pub last: Option<&'a Value>,
    /// optimizer steps done
    pub steps: usize,
    /// input tokens seen
    pub tokens_seen: usize,
}

/// The model card (`README.md`): PEFT's card header (metadata a hub and PEFT read), what the
/// adapter is, how it was trained, how to check, merge and serve it.
pub fn model_card(f: &CardFacts) -> String {
    let metric = |k: &str| {
        f.last
            .and_then(|e| e.get(k))
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |v| format!("{v:.4}"))
    };
    let base = f.base;
    format!(
        "---\nbase_model: {base}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n\
         - base_model:adapter:{base}\n- lora\n- qat\n- mxfp4\n- lora-qat\n- transformers\n---\n\n\
         # LoRA adapter for {base}\n\n\
         Trained by `lora-qat train` ({} steps, {} input tokens) with quantization `{}`: the forward \
         used the weights that `lora-qat merge-export` writes (MXFP4 experts, bf16 attention), so \
         what was trained is what is served.\n\n\
         - base fingerprint: `{}`\n\
         - provenance: `lora_qat_provenance.json` (base, recipe, training arguments, dataset \
         fingerprint, SHA-256 of every file); signatures, if any: `lora_qat_signatures.json`\n\n\
         ## Last evaluation\n\n| metric | value |\n|---|---|\n| eval_loss (deployed weights) | {} |\n\
         | eval_loss_unquantized (W + ΔW) | {} |\n| train loss | {} |\n\n\
         ## Adapted modules\n\n```\n{}\n```\n\n\
         ## Check it\n\n```\nlora-qat inspect THIS_DIR --base {base}\n```\n\n\
         Shows rank, alpha, coverage and norms, checks every file against the manifest and the base \
         fingerprint, and who signed it.\n\n\
         ## Merge and serve\n\n```\n\
         lora-qat merge-export --lora-path THIS_DIR --base-path {base} --output-path merged/\n\
         lora-qat verify --export merged/ --lora-path THIS_DIR --base-path {base}\n\
         vllm serve merged/   # or: python -m sglang.launch_server --model-path merged/ ; trtllm-serve merged/\n\
         ```\n\n\
         `merged/` is a gpt-oss checkpoint in the release format (MXFP4 experts), served like the \
         original. The directory is also a PEFT adapter (`adapter_config.json`, \
         `adapter_model.safetensors`): `PeftModel.from_pretrained(model, THIS_DIR)` loads it, but \
         applying it unmerged on a dequantized base is not what was trained.\n\n\
         ## Training configuration\n\n```json\n{}\n```\n",
        f.steps,
        f.tokens_seen,
        f.quant,
        f.fingerprint.unwrap_or("unknown"),
        metric("eval_loss"),
        metric("eval_loss_unquantized"),
        metric("loss"),
        f.coverage,
        serde_json::to_string_pretty(f.config_json).unwrap_or_default()
    )
}
