//! What [`combine`](super::combine) returns and why it refuses: the combined adapter with its
//! summary, and the errors (each naming the part, the module and the shapes).

use std::fmt;

use crate::adapter::LoraAdapter;
use crate::error::AdapterError;
use crate::WEIGHTS_FILE;

/// Why adapters cannot be combined.
#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    /// Fewer than two parts.
    #[error("combine needs at least two adapters, got {got}")]
    TooFewParts {
        /// how many were given
        got: usize,
    },
    /// Two parts adapt the same module with factors of different shapes: adapters of different bases.
    #[error("{0}")]
    ShapeMismatch(Box<ShapeMismatch>),
    /// The parts' configs name different base models (or revisions).
    #[error(
        "the parts name different base models: {first} has {key} = {first_value:?}, {part} has {value:?}"
    )]
    DifferentBases {
        /// `base_model_name_or_path` or `revision`
        key: &'static str,
        /// the first part naming one
        first: String,
        /// its value
        first_value: String,
        /// the part naming another
        part: String,
        /// its value
        value: String,
    },
    /// A scaled factor `s·B` overflowed f32.
    #[error("{part}: `{key}` times its scaling {scale} is not finite at flat index {index}")]
    NonFinite {
        /// the part
        part: String,
        /// the part's lora_B key
        key: String,
        /// the part's scaling of the module
        scale: f32,
        /// flat index of the first bad value
        index: usize,
    },
    /// The combined tensors do not form a valid adapter (a bug in this module if it ever happens).
    #[error("building the combined adapter: {0}")]
    Adapter(Box<AdapterError>),
}

impl From<AdapterError> for CombineError {
    fn from(e: AdapterError) -> Self {
        CombineError::Adapter(Box::new(e))
    }
}

/// The details of [`CombineError::ShapeMismatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// the part that disagrees with the first one adapting the module
    pub part: String,
    /// the module path
    pub module: String,
    /// the part's lora_A key
    pub key: String,
    /// the part's lora_A and lora_B shapes, as text
    pub shape: String,
    /// the first part adapting the module
    pub first: String,
    /// its lora_A and lora_B shapes, as text
    pub first_shape: String,
    /// which dimension differs
    pub what: String,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: `{}` is {} but {} has {} for this module ({}); the parts are adapters of different bases",
            self.part, self.module, self.key, self.shape, self.first, self.first_shape, self.what
        )
    }
}

/// One module of the combination.
#[derive(Debug, Clone, PartialEq)]
pub struct CombinedModule {
    /// module path (`model.layers.0.self_attn.q_proj`) or expert parameter path
    /// (`model.layers.0.mlp.experts.gate_up_proj`)
    pub path: String,
    /// true for an expert weight
    pub expert: bool,
    /// each part's rank for this module (0 where the part does not adapt it), in part order
    pub part_ranks: Vec<usize>,
    /// the combined rank (the sum)
    pub rank: usize,
}

/// What [`combine`] built, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CombineSummary {
    /// number of parts
    pub parts: usize,
    /// label of each part (its directory, or where it came from)
    pub part_labels: Vec<String>,
    /// every adapted module, attention first (layer, q/k/v/o order), then expert weights
    pub modules: Vec<CombinedModule>,
    /// the combined config's `r` (= `lora_alpha`)
    pub r: usize,
    /// number of modules with their own rank (a `rank_pattern` entry)
    pub rank_pattern_entries: usize,
    /// Σ over modules of the combined rank
    pub total_rank: usize,
    /// the largest combined rank of a module (serving engines need a max LoRA rank at least this)
    pub max_rank: usize,
    /// number of tensors
    pub tensors: usize,
    /// number of f32 values
    pub parameters: usize,
    /// the kept `base_model_name_or_path`
    pub base_model_name_or_path: Option<String>,
    /// the kept `revision`
    pub revision: Option<String>,
}

impl CombineSummary {
    /// Bytes of tensor data (f32).
    pub fn tensor_bytes(&self) -> usize {
        self.parameters * 4
    }
}

/// The combined adapter and its summary.
#[derive(Debug, Clone)]
pub struct Combined {
    /// the adapter (in memory; [`LoraAdapter::save`] writes it)
    pub adapter: LoraAdapter,
    /// what was combined
    pub summary: CombineSummary,
}

/// How a part is named in messages: its directory when it was loaded from one.
pub fn part_label(index: usize, adapter: &LoraAdapter) -> String {
    let src = adapter.source();
    let shown = if src.file_name().is_some_and(|n| n == WEIGHTS_FILE) {
        src.parent().unwrap_or(src)
    } else {
        src
    };
    format!("part {} ({})", index + 1, shown.display())
}

/// Errors of [`combine_dirs`].
#[derive(Debug, thiserror::Error)]
pub enum CombineDirsError {
    /// A part could not be read.
    #[error("part {index} ({dir}): {source}")]
    Load {
        /// 1-based position of the part
        index: usize,
        /// the directory
        dir: String,
        /// why
        source: Box<AdapterError>,
    },
    /// The parts could not be combined.
    #[error(transparent)]
    Combine(#[from] CombineError),
}
