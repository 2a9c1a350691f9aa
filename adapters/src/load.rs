//! Reading an adapter directory (adapter_config.json + adapter_model.safetensors).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::adapter::{LoraAdapter, Tensor};
use crate::config::AdapterConfig;
use crate::error::AdapterError;
use crate::{CONFIG_FILE, WEIGHTS_FILE};

impl LoraAdapter {
    /// Loads a PEFT adapter directory. F32 tensors are read as is; BF16 and F16 are converted to f32
    /// (logged, and listed by [`LoraAdapter::source_dtypes`]). Checks the config is supported and the
    /// tensors are consistent with it; [`LoraAdapter::validate`] checks them against a base model.
    pub fn load(dir: &Path) -> Result<Self, AdapterError> {
        Self::load_where(dir, |_| true)
    }

    /// [`load`](Self::load) keeping only the tensors whose key `keep` accepts (both factors of a
    /// module must be kept together), e.g. one layer's: a pass over a large model can hold one
    /// layer's factors at a time. Only the kept tensors are read.
    pub fn load_where(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Self, AdapterError> {
        let config = AdapterConfig::read(&dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(AdapterError::MissingFile { path });
        }
        let file = File::open(&path).map_err(|source| AdapterError::Io {
            path: path.clone(),
            action: "opening",
            source,
        })?;
        // SAFETY: the map is read-only and dropped before this function returns; the file is not written by
        // this process meanwhile (a concurrent writer elsewhere could only corrupt values, which are copied out).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| AdapterError::Io {
            path: path.clone(),
            action: "memory-mapping",
            source,
        })?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| AdapterError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let mut dtypes: Vec<String> = Vec::new();
        for (key, view) in st.tensors() {
            if !keep(&key) {
                continue;
            }
            let bytes = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::BF16 => bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::F16 => bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(AdapterError::Dtype {
                        path,
                        key,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let dt = format!("{:?}", view.dtype());
            if !dtypes.contains(&dt) {
                dtypes.push(dt);
            }
            tensors.insert(
                key,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        drop(st);
        drop(mmap);
        dtypes.sort();
        if dtypes.iter().any(|d| d != "F32") {
            tracing::info!(file = %path.display(), dtypes = ?dtypes, "adapter tensors converted to f32");
        }
        let adapter = Self::index(config, tensors, path, dtypes)?;
        tracing::debug!(
            dir = %dir.display(),
            attention = adapter.attention.len(),
            experts = adapter.experts.len(),
            "adapter loaded"
        );
        Ok(adapter)
    }
}
