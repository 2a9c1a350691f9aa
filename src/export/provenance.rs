//! The provenance file of an export (`lora_qat_export.json`): the tool and version, the base,
//! the merged adapters in merge order (path, rank, alpha, targets, SHA-256 of their weights and
//! config) and the arithmetic used.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::set::MergeSet;
use super::write::ExportDtype;
use crate::checkpoint::Checkpoint;

/// Hex SHA-256 of a file's bytes (streamed).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// The provenance JSON (pretty, newline-terminated).
pub fn provenance(
    base: &Checkpoint,
    set: &MergeSet,
    dtype: ExportDtype,
    merged: usize,
) -> Result<String> {
    let mut adapters = Vec::new();
    for src in &set.sources {
        let (dir, c) = (&src.path, &src.config);
        adapters.push(json!({
            "path": dir.display().to_string(),
            "base_model_name_or_path": c.base_model_name_or_path,
            "r": c.r,
            "lora_alpha": c.lora_alpha,
            "use_rslora": c.use_rslora,
            "tensors": src.tensors,
            "adapter_model.safetensors.sha256": sha256_file(&dir.join(adapters::WEIGHTS_FILE))?,
            "adapter_config.json.sha256": sha256_file(&dir.join(adapters::CONFIG_FILE))?,
            "adapter_provenance": src.trust.record(),
        }));
    }
    let (experts, arithmetic) = match dtype {
        ExportDtype::Mxfp4 => (
            "mxfp4",
            "per adapted weight: W (dequantized base, exact) + Σ s·B·A in f32, adapters in the order listed, each B·A summed over the rank in ascending order without FMA; then one quantization (MXFP4 for experts, round-to-nearest-even bf16 for attention): the weights the QAT forward computes with",
        ),
        ExportDtype::Bf16 => (
            "bf16",
            "as for mxfp4, then every expert decoded and stored as bf16 [E, in, out] (exact)",
        ),
    };
    let v: Value = json!({
        "tool": "lora-qat",
        "version": env!("CARGO_PKG_VERSION"),
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "base": base.dir().display().to_string(),
        "base_fingerprint": base.fingerprint()?,
        "experts_dtype": experts,
        "adapters": adapters,
        "tensors_merged": merged,
        "arithmetic": arithmetic,
    });
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}
