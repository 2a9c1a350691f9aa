//! The provenance file of an export (`lora_qat_export.json`): the tool and version, the base,
//! the merged adapters in merge order (path, rank, alpha, targets, SHA-256 of their weights and
//! config) and the arithmetic used.

use anyhow::Result;
use serde_json::{json, Value};

use super::set::{MergeSet, Source};
use super::write::ExportDtype;
use crate::checkpoint::Checkpoint;

/// SHA-256 of one of an adapter's files: from its verified manifest when it is sealed (the
/// files were hashed by the trust check), else hashed here.
fn adapter_file_sha256(src: &Source, name: &str) -> Result<String> {
    let listed = src
        .trust
        .sealed
        .as_ref()
        .and_then(|s| s.provenance.files.get(name));
    match listed {
        Some(f) => Ok(f.sha256.clone()),
        None => Ok(adapters::provenance::sha256_file(&src.path.join(name))?),
    }
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
            "adapter_model.safetensors.sha256": adapter_file_sha256(src, adapters::WEIGHTS_FILE)?,
            "adapter_config.json.sha256": adapter_file_sha256(src, adapters::CONFIG_FILE)?,
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
        "base_fingerprint": set.base_fingerprint,
        "experts_dtype": experts,
        "adapters": adapters,
        "tensors_merged": merged,
        "arithmetic": arithmetic,
    });
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}
