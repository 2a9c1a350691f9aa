//! Checking an opened checkpoint's tensors against what its config implies.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::open::Checkpoint;

/// Most mismatches listed in one error.
const MAX_LISTED: usize = 20;

/// Every tensor the config implies must be present with the right dtype and shape; returns the
/// names of extra tensors (reported, not fatal). All mismatches are listed in one error.
pub(crate) fn check_against_config(ckpt: &Checkpoint) -> Result<Vec<String>> {
    let specs = ckpt.config.expected_tensors();
    let mut problems = Vec::new();
    let mut expected = BTreeMap::new();
    for spec in &specs {
        expected.insert(spec.name.as_str(), ());
        let Some(entry) = ckpt.tensors.get(&spec.name) else {
            let whence = ckpt
                .index
                .as_ref()
                .map(|_| "neither in the index nor in any shard")
                .unwrap_or("not in model.safetensors");
            problems.push(format!("tensor `{}` is missing ({whence})", spec.name));
            continue;
        };
        let file = ckpt.shards[entry.shard].path.display();
        if entry.dtype != spec.dtype || entry.shape != spec.shape {
            problems.push(format!(
                "{file}: tensor `{}` is {:?} {:?}, but the config implies {:?} {:?}",
                spec.name, entry.dtype, entry.shape, spec.dtype, spec.shape
            ));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = format!(
            "{}: {n} tensor(s) do not match config.json (hidden {}, intermediate {}, {} layers, {} experts):",
            ckpt.dir.display(),
            ckpt.config.hidden_size,
            ckpt.config.intermediate_size,
            ckpt.config.num_hidden_layers,
            ckpt.config.num_local_experts
        );
        for p in problems.iter().take(MAX_LISTED) {
            msg.push_str("\n  ");
            msg.push_str(p);
        }
        if n > MAX_LISTED {
            msg.push_str(&format!("\n  ... and {} more", n - MAX_LISTED));
        }
        bail!(msg);
    }
    Ok(ckpt
        .tensors
        .keys()
        .filter(|k| !expected.contains_key(k.as_str()))
        .cloned()
        .collect())
}
