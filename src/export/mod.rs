//! `merge-export` and `verify` (DESIGN §1, §2.5): the adapters folded into the base through the
//! one deployed-weight function of training (`kernels::deploy`), streamed into a checkpoint that
//! mirrors the base; and the proof that an export holds exactly those weights.

pub mod deployed;
pub mod paths;
pub mod provenance;
pub mod set;
pub mod trust;
pub mod verify;
pub mod write;

pub use set::MergeSet;
pub use trust::TrustPolicy;
pub use verify::{verify, Check, VerifyReport};
pub use write::{merge_export, ExportDtype, ExportOptions, ExportSummary};

/// The provenance file written into every export.
pub const PROVENANCE_FILE: &str = "lora_qat_export.json";
