//! Checkpoint I/O for gpt-oss in the release format: `config.json` (both styles), single-file
//! or sharded safetensors read through `mmap` with validation, a streaming sharded writer, and
//! hub repo ids resolved through the local Hugging Face cache.

mod config;
pub mod download;
mod estimate;
mod fingerprint;
mod hub;
mod index;
mod json_fields;
mod layout;
pub mod names;
mod open;
mod random;
pub mod report;
mod scan;
mod shard;
mod spec;
mod st_header;
mod tensor;
mod validate;
pub mod writer;

pub use config::{GptOssConfig, LayerType, QuantizationConfig, RopeConfig};
pub use estimate::{release_bytes_by_dtype, DtypeBytes, TrainingEstimate};
pub use hub::{default_cache_root, parse_repo_id, resolve_in_cache, resolve_model};
pub use index::{check_file_name, ShardIndex, INDEX_FILE, SINGLE_FILE};
pub use layout::{LaidOut, ShardLayout};
pub use open::Checkpoint;
pub use scan::{DataScan, TensorScan, PLAUSIBLE_SCALES};
pub use spec::{ExpertProj, TensorSpec, MXFP4_BLOCK, MXFP4_BLOCK_BYTES};
pub(crate) use st_header::write_f32_tensors;
pub use tensor::{PackedExperts, TensorRef};

/// Re-exported so callers name dtypes without depending on safetensors directly.
pub use safetensors::Dtype;
