//! `model.safetensors.index.json`: which shard holds which tensor.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// File name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A parsed and checked shard index.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardIndex {
    /// `metadata` (`total_size` = bytes of tensor data).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Reads an index file and checks every file name it mentions.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let index: ShardIndex = serde_json::from_str(&text).with_context(|| {
            format!("{}: not a valid index (expected {{\"metadata\": .., \"weight_map\": {{tensor: file}}}})", path.display())
        })?;
        for (tensor, file) in &index.weight_map {
            check_file_name(file).with_context(|| {
                format!("{}: weight_map entry for tensor `{tensor}`", path.display())
            })?;
        }
        Ok(index)
    }

    /// Distinct shard file names, sorted.
    pub fn shard_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.weight_map.values().cloned().collect();
        files.sort();
        files.dedup();
        files
    }

    /// `metadata.total_size`, when present and a number.
    pub fn total_size(&self) -> Option<u64> {
        self.metadata.get("total_size").and_then(|v| v.as_u64())
    }
}

/// A shard file name must be a plain file name inside the checkpoint directory.
pub fn check_file_name(file: &str) -> Result<()> {
    if file.is_empty()
        || file == "."
        || file == ".."
        || file.contains('/')
        || file.contains('\\')
        || file.contains("..")
        || file.contains('\0')
    {
        bail!("file name {file:?} is not a plain file name (no `/`, `\\` or `..` allowed)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_file_name;

    #[test]
    fn file_names_must_be_plain() {
        assert!(check_file_name("model-00001-of-00002.safetensors").is_ok());
        for bad in [
            "",
            "..",
            "../x.safetensors",
            "a/b.safetensors",
            "/etc/passwd",
            "a\\b",
            "x..y",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
