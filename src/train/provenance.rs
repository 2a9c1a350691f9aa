//! What a trained adapter carries in its provenance sidecar: the base (id, revision, fingerprint),
//! the quantization recipe, the training arguments, a fingerprint of the data as training saw it
//! (token ids and loss masks of every sequence, after template, split and packing) and the tool.
//! Sealed into the final adapter and into every checkpoint.

use std::path::Path;

use adapters::provenance::{BaseRef, Provenance};
use anyhow::Result;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::{QuantCfg, TrainConfig};
use crate::checkpoint::Checkpoint;
use crate::data::{Prepared, Split};

/// SHA-256 over every sequence of a split: its length, token ids and labels, in order.
fn split_fingerprint(split: &Split) -> Value {
    let mut h = Sha256::new();
    let (mut tokens, mut trained) = (0usize, 0usize);
    for i in 0..split.len() {
        let s = split.sequence(i);
        h.update((s.input_ids.len() as u64).to_le_bytes());
        for t in &s.input_ids {
            h.update(t.to_le_bytes());
        }
        for l in &s.labels {
            h.update(l.to_le_bytes());
        }
        tokens += s.input_ids.len();
        trained += s.trained_tokens();
    }
    json!({
        "sha256": format!("{:x}", h.finalize()),
        "sequences": split.len(),
        "tokens": tokens,
        "trained_tokens": trained,
    })
}

/// The dataset fingerprint: the sources as given, and a hash per split of what training saw.
pub fn dataset_fingerprint(cfg: &TrainConfig, data: &Prepared) -> Value {
    json!({
        "sources": cfg.data,
        "eval_sources": cfg.eval_data,
        "train": split_fingerprint(&data.train),
        "eval": data.eval.as_ref().map(split_fingerprint),
        "what": "SHA-256 over each sequence's length, token ids (u32 LE) and labels (i64 LE), in order, after the chat template, the eval split and packing",
    })
}

/// The quantization recipe a run trained under.
pub fn quantization(q: QuantCfg) -> Value {
    match q {
        QuantCfg::Mxfp4MlpWeightOnly => json!({
            "quant_cfg": q.name(),
            "experts": "MXFP4 (E2M1, 32-element blocks, E8M0 scales) of W + ΔW, straight-through gradients",
            "attention": "bf16 of W + ΔW",
            "export": "lora-qat merge-export writes exactly these weights",
        }),
        QuantCfg::None => json!({
            "quant_cfg": q.name(),
            "experts": "dequantized W + ΔW in f32 (no quantization in training)",
        }),
    }
}

/// The provenance of a run's adapters (files are filled in when sealed).
pub fn provenance(cfg: &TrainConfig, ckpt: &Checkpoint, data: &Prepared) -> Result<Provenance> {
    let base = BaseRef {
        model_id: cfg.model_name_or_path.clone(),
        revision: revision_of(ckpt.dir()),
        fingerprint: Some(ckpt.fingerprint()?),
    };
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut p = Provenance::new(env!("CARGO_PKG_VERSION"), &created, "train", base);
    p.quantization = quantization(cfg.quant_cfg);
    p.training = serde_json::to_value(cfg)?;
    p.dataset = dataset_fingerprint(cfg, data);
    Ok(p)
}

/// The hub revision of a base resolved in the Hugging Face cache
/// (`…/models--org--name/snapshots/<commit>/`), if the directory is one.
fn revision_of(dir: &Path) -> Option<String> {
    let parent = dir.parent()?;
    let commit = dir.file_name()?.to_str()?;
    let is_commit = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    (parent.file_name()? == "snapshots" && is_commit).then(|| commit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_from_hub_cache_layout() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let p = format!("/cache/models--openai--gpt-oss-20b/snapshots/{c}");
        assert_eq!(revision_of(Path::new(&p)).as_deref(), Some(c));
        assert_eq!(revision_of(Path::new("/data/gpt-oss-20b")), None);
    }
}
