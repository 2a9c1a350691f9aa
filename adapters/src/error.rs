//! The one error type of this crate. Every message names the file and, where there is one, the key.

use std::path::PathBuf;

/// Everything that can go wrong reading, checking or writing an adapter directory.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file or directory could not be read or written.
    #[error("{path}: {action}: {source}")]
    Io {
        /// the file or directory
        path: PathBuf,
        /// what was being done ("reading", "creating directory", ...)
        action: &'static str,
        /// the underlying error
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("{path}: missing (an adapter directory holds adapter_config.json and adapter_model.safetensors)")]
    MissingFile {
        /// the file that was expected
        path: PathBuf,
    },
    /// adapter_config.json is not valid JSON, or not an object.
    #[error("{path}: not a valid adapter config: {message}")]
    Json {
        /// the config file
        path: PathBuf,
        /// the parser's message
        message: String,
    },
    /// A config key has a value of the wrong type or an impossible value.
    #[error("{path}: key `{key}`: {message}")]
    ConfigValue {
        /// the config file
        path: PathBuf,
        /// the config key
        key: String,
        /// what is wrong
        message: String,
    },
    /// The config asks for a LoRA variant this tool does not implement.
    #[error("{path}: key `{key}` = {value}: not supported ({reason})")]
    Unsupported {
        /// the config file
        path: PathBuf,
        /// the config key
        key: String,
        /// the value found, as JSON
        value: String,
        /// why, and what is supported
        reason: String,
    },
    /// The safetensors file is malformed (truncated, bad header...).
    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors {
        /// the tensor file
        path: PathBuf,
        /// the parser's message
        message: String,
    },
    /// A tensor has a dtype that cannot be read as f32.
    #[error("{path}: tensor `{key}` has dtype {dtype}; expected F32 (BF16 and F16 are converted)")]
    Dtype {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// the dtype found
        dtype: String,
    },
    /// A tensor key is not one of the LoRA keys this tool knows for gpt-oss.
    #[error("{path}: tensor `{key}`: {message}")]
    UnknownKey {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// why it is not understood
        message: String,
    },
    /// A lora_A has no lora_B or the reverse.
    #[error("{path}: tensor `{key}` has no partner: `{missing}` is absent")]
    MissingPartner {
        /// the tensor file
        path: PathBuf,
        /// the tensor that is present
        key: String,
        /// the tensor that should be present
        missing: String,
    },
    /// A tensor's shape disagrees with the config or the base model.
    #[error("{path}: tensor `{key}`: expected shape {expected:?} ({why}), got {got:?}")]
    Shape {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// the expected shape
        expected: Vec<usize>,
        /// the shape found
        got: Vec<usize>,
        /// where the expectation comes from
        why: String,
    },
    /// A tensor names a layer the base model does not have.
    #[error("{path}: tensor `{key}` names layer {layer}, but the base model has {layers} layers")]
    LayerOutOfRange {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// the layer named
        layer: usize,
        /// the number of layers of the base
        layers: usize,
    },
    /// A tensor holds NaN or infinity.
    #[error("{path}: tensor `{key}` holds a non-finite value {value} at flat index {index}")]
    NonFinite {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// flat index of the first bad value
        index: usize,
        /// the bad value
        value: f32,
    },
    /// A tensor given to the in-memory constructor is inconsistent.
    #[error("{path}: tensor `{key}`: {message}")]
    Inconsistent {
        /// where the adapter came from
        path: PathBuf,
        /// the tensor key
        key: String,
        /// what is wrong
        message: String,
    },
    /// The config targets a module (or expert weight) of the base whose tensors are absent.
    #[error("{path}: tensor `{key}` is absent, but {by} selects `{module}` (PEFT would create a LoRA there and load nothing into it)")]
    MissingTensors {
        /// the tensor file
        path: PathBuf,
        /// the tensor key PEFT would read
        key: String,
        /// the module or parameter path
        module: String,
        /// the config key that selects it (`target_modules` or `target_parameters`)
        by: String,
    },
    /// Tensors of a module (or expert weight) the config does not target.
    #[error("{path}: tensor `{key}` adapts `{module}`, which the config does not target ({why}): PEFT would not load it, vLLM would apply it")]
    Untargeted {
        /// the tensor file
        path: PathBuf,
        /// the tensor key
        key: String,
        /// the module or parameter path
        module: String,
        /// what the config says instead
        why: String,
    },
    /// An expert LoRA stored under `mlp.experts.lora_*` (one projection targeted in the layer) whose
    /// shapes are those of the other projection.
    #[error("{path}: tensor `{key}`: target_parameters selects {} of layer {layer}, but lora_A {a_shape:?} and lora_B {b_shape:?} have the shapes of its {} (gate_up_proj: A [r·E, hidden], B [2·intermediate, r·E]; down_proj: A [r·E, intermediate], B [hidden, r·E])", selected.name(), shaped.name())]
    ExpertMismatch {
        /// the tensor file
        path: PathBuf,
        /// the lora_A key
        key: String,
        /// the layer
        layer: usize,
        /// the expert weight target_parameters selects
        selected: crate::keys::ExpertProj,
        /// the expert weight the shapes fit
        shaped: crate::keys::ExpertProj,
        /// lora_A's shape
        a_shape: Vec<usize>,
        /// lora_B's shape
        b_shape: Vec<usize>,
    },
    /// save would replace an existing directory and `overwrite` was not given.
    #[error("{path}: {message}")]
    Exists {
        /// the target directory
        path: PathBuf,
        /// what was refused
        message: String,
    },
}
