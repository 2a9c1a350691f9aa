//! `adapter_config.json`: PEFT's LoRA config. Known keys are typed; every other key is kept verbatim in
//! `extra` so that a load + save gives back an equal JSON value.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::error::AdapterError;
use crate::pattern;

/// Which modules `target_modules` names: PEFT accepts a list (exact name or `.`-suffix) or one regex string
/// (full match).
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// names matched exactly or as a `.`-separated suffix of the module path
    List(Vec<String>),
    /// a regular expression that must match the whole module path
    Regex(String),
}

/// PEFT's `LoraConfig` as stored in adapter_config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// must be "LORA"
    pub peft_type: String,
    /// default rank
    pub r: usize,
    /// default alpha
    pub lora_alpha: f64,
    /// nn.Linear-like modules adapted (attention projections here)
    pub target_modules: Option<TargetModules>,
    /// parameters adapted through PEFT's ParamWrapper (the expert weights here)
    pub target_parameters: Option<Vec<String>>,
    /// the base model the adapter was trained on
    pub base_model_name_or_path: Option<String>,
    /// the base model's revision
    pub revision: Option<String>,
    /// per-module rank overrides (PEFT pattern keys)
    pub rank_pattern: BTreeMap<String, usize>,
    /// per-module alpha overrides (PEFT pattern keys)
    pub alpha_pattern: BTreeMap<String, f64>,
    /// scaling alpha/sqrt(r) instead of alpha/r
    pub use_rslora: bool,
    /// DoRA (refused)
    pub use_dora: bool,
    /// dropout used in training (no effect on weights)
    pub lora_dropout: f64,
    /// bias training mode; only "none" is supported
    pub bias: String,
    /// transposed base weights (refused)
    pub fan_in_fan_out: bool,
    /// PEFT task type
    pub task_type: Option<String>,
    /// whether the adapter was saved for inference
    pub inference_mode: bool,
    /// every other key of the file, kept as is
    pub extra: Map<String, Value>,
}

/// Keys that select LoRA variants we do not implement: supported only when null, false, empty or absent.
const MUST_BE_OFF: &[(&str, &str)] = &[
    ("lora_bias", "LoRA bias terms are not implemented"),
    (
        "modules_to_save",
        "fully trained extra modules are not implemented",
    ),
    (
        "layer_replication",
        "layer replication changes the architecture",
    ),
    (
        "trainable_token_indices",
        "trainable tokens are not implemented",
    ),
    ("use_qalora", "QA-LoRA is not implemented"),
    (
        "alora_invocation_tokens",
        "activated LoRA is not implemented",
    ),
    ("use_bdlora", "block-diagonal LoRA is not implemented"),
];

fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A JSON number that is written as an integer when it is integral (PEFT's alphas are usually ints).
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

struct Reader<'a> {
    path: &'a Path,
    map: Map<String, Value>,
}

impl Reader<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> AdapterError {
        AdapterError::ConfigValue {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }
    fn string(&mut self, key: &str) -> Result<Option<String>, AdapterError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, got {v}"))),
        }
    }
    fn boolean(&mut self, key: &str, default: bool) -> Result<bool, AdapterError> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(self.err(key, format!("expected true or false, got {v}"))),
        }
    }
    fn float(&mut self, key: &str, default: f64) -> Result<f64, AdapterError> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| self.err(key, "not representable as f64")),
            Some(v) => Err(self.err(key, format!("expected a number, got {v}"))),
        }
    }
    fn rank(&self, key: &str, v: &Value) -> Result<usize, AdapterError> {
        match v.as_u64() {
            Some(r) if r > 0 => Ok(r as usize),
            _ => Err(self.err(key, format!("expected a positive integer rank, got {v}"))),
        }
    }
    fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, AdapterError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    v => Err(self.err(
                        key,
                        format!("expected a list of strings, found element {v}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.err(key, format!("expected a list of strings, got {v}"))),
        }
    }
    fn object(&mut self, key: &str) -> Result<Map<String, Value>, AdapterError> {
        match self.take(key) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(v) => Err(self.err(key, format!("expected an object, got {v}"))),
        }
    }
}

impl AdapterConfig {
    /// Reads and checks `path` (an adapter_config.json).
    pub fn read(path: &Path) -> Result<Self, AdapterError> {
        if !path.is_file() {
            return Err(AdapterError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| AdapterError::Io {
            path: path.to_path_buf(),
            action: "reading",
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a config; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, AdapterError> {
        let value: Value = serde_json::from_str(text).map_err(|e| AdapterError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(AdapterError::Json {
                path: path.to_path_buf(),
                message: "top level is not an object".into(),
            });
        };
        Self::from_map(map, path)
    }

    /// Builds a config from a parsed JSON object, typing the known keys, then checks it is supported.
    pub fn from_map(map: Map<String, Value>, path: &Path) -> Result<Self, AdapterError> {
        let mut rd = Reader { path, map };
        let peft_type = rd
            .string("peft_type")?
            .ok_or_else(|| rd.err("peft_type", "missing"))?;
        let r = match rd.take("r") {
            None => 8,
            Some(v) => rd.rank("r", &v)?,
        };
        let lora_alpha = rd.float("lora_alpha", 8.0)?;
        let target_modules = match rd.take("target_modules") {
            None => None,
            Some(Value::String(s)) => Some(TargetModules::Regex(s)),
            Some(v) => {
                rd.map.insert("target_modules".into(), v);
                rd.strings("target_modules")?.map(TargetModules::List)
            }
        };
        let target_parameters = rd.strings("target_parameters")?;
        let base_model_name_or_path = rd.string("base_model_name_or_path")?;
        let revision = rd.string("revision")?;
        let mut rank_pattern = BTreeMap::new();
        for (k, v) in rd.object("rank_pattern")? {
            rank_pattern.insert(k, rd.rank("rank_pattern", &v)?);
        }
        let mut alpha_pattern = BTreeMap::new();
        for (k, v) in rd.object("alpha_pattern")? {
            let a = v.as_f64().ok_or_else(|| {
                rd.err(
                    "alpha_pattern",
                    format!("`{k}`: expected a number, got {v}"),
                )
            })?;
            alpha_pattern.insert(k, a);
        }
        let cfg = AdapterConfig {
            peft_type,
            r,
            lora_alpha,
            target_modules,
            target_parameters,
            base_model_name_or_path,
            revision,
            rank_pattern,
            alpha_pattern,
            use_rslora: rd.boolean("use_rslora", false)?,
            use_dora: rd.boolean("use_dora", false)?,
            lora_dropout: rd.float("lora_dropout", 0.0)?,
            bias: rd.string("bias")?.unwrap_or_else(|| "none".into()),
            fan_in_fan_out: rd.boolean("fan_in_fan_out", false)?,
            task_type: rd.string("task_type")?,
            inference_mode: rd.boolean("inference_mode", false)?,
            extra: rd.map,
        };
        cfg.check_supported(path)?;
        Ok(cfg)
    }

    /// Refuses the LoRA variants this tool does not implement, naming the file and the key.
    pub fn check_supported(&self, path: &Path) -> Result<(), AdapterError> {
        let unsupported = |key: &str, value: String, reason: &str| AdapterError::Unsupported {
            path: path.to_path_buf(),
            key: key.into(),
            value,
            reason: reason.into(),
        };
        if self.peft_type != "LORA" {
            return Err(unsupported(
                "peft_type",
                format!("{:?}", self.peft_type),
                "only LORA adapters",
            ));
        }
        if self.use_dora {
            return Err(unsupported(
                "use_dora",
                "true".into(),
                "DoRA is not implemented",
            ));
        }
        if self.bias != "none" {
            return Err(unsupported(
                "bias",
                format!("{:?}", self.bias),
                "only \"none\"",
            ));
        }
        if self.fan_in_fan_out {
            return Err(unsupported(
                "fan_in_fan_out",
                "true".into(),
                "gpt-oss weights are not transposed",
            ));
        }
        for (key, reason) in MUST_BE_OFF {
            if let Some(v) = self.extra.get(*key).filter(|v| !is_off(v)) {
                return Err(unsupported(key, v.to_string(), reason));
            }
        }
        if !self.lora_alpha.is_finite() {
            return Err(AdapterError::ConfigValue {
                path: path.to_path_buf(),
                key: "lora_alpha".into(),
                message: "not finite".into(),
            });
        }
        Ok(())
    }

    /// The whole config as a JSON object (typed keys always written, PEFT style: `null` for unset).
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        let tm = match &self.target_modules {
            None => Value::Null,
            Some(TargetModules::Regex(s)) => Value::String(s.clone()),
            Some(TargetModules::List(l)) => {
                Value::Array(l.iter().cloned().map(Value::String).collect())
            }
        };
        let tp = self.target_parameters.as_ref().map_or(Value::Null, |l| {
            Value::Array(l.iter().cloned().map(Value::String).collect())
        });
        let rp = self
            .rank_pattern
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        let ap = self
            .alpha_pattern
            .iter()
            .map(|(k, v)| (k.clone(), num(*v)))
            .collect();
        let dropout = Number::from_f64(self.lora_dropout).map_or(Value::Null, Value::Number);
        let entries: [(&str, Value); 16] = [
            ("peft_type", Value::String(self.peft_type.clone())),
            ("r", Value::from(self.r)),
            ("lora_alpha", num(self.lora_alpha)),
            ("target_modules", tm),
            ("target_parameters", tp),
            (
                "base_model_name_or_path",
                opt_str(&self.base_model_name_or_path),
            ),
            ("revision", opt_str(&self.revision)),
            ("rank_pattern", Value::Object(rp)),
            ("alpha_pattern", Value::Object(ap)),
            ("use_rslora", Value::Bool(self.use_rslora)),
            ("use_dora", Value::Bool(self.use_dora)),
            ("lora_dropout", dropout),
            ("bias", Value::String(self.bias.clone())),
            ("fan_in_fan_out", Value::Bool(self.fan_in_fan_out)),
            ("task_type", opt_str(&self.task_type)),
            ("inference_mode", Value::Bool(self.inference_mode)),
        ];
        for (k, v) in entries {
            m.insert(k.into(), v);
        }
        Value::Object(m)
    }

    /// Rank of the module (or parameter) at `module_path`, honouring `rank_pattern`.
    pub fn rank_for(&self, module_path: &str) -> usize {
        pattern::lookup(self.rank_pattern.iter(), module_path)
            .copied()
            .unwrap_or(self.r)
    }

    /// Alpha of the module at `module_path`, honouring `alpha_pattern`.
    pub fn alpha_for(&self, module_path: &str) -> f64 {
        pattern::lookup(self.alpha_pattern.iter(), module_path)
            .copied()
            .unwrap_or(self.lora_alpha)
    }

    /// LoRA scaling of the module at `module_path`: alpha/r, or alpha/sqrt(r) with rsLoRA (as PEFT computes
    /// it, in f64, then rounded to f32).
    pub fn scaling_for(&self, module_path: &str) -> f32 {
        let r = self.rank_for(module_path) as f64;
        let alpha = self.alpha_for(module_path);
        let s = if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        };
        s as f32
    }

    /// True when `target_modules` selects the module at `module_path` (PEFT's rule: a list entry equals the
    /// path or a `.`-suffix of it; a string is a regex matching the whole path).
    pub fn targets_module(&self, module_path: &str) -> bool {
        match &self.target_modules {
            None => false,
            Some(TargetModules::List(l)) => l
                .iter()
                .any(|t| pattern::target_list_matches(t, module_path)),
            Some(TargetModules::Regex(re)) => pattern::target_regex_matches(re, module_path),
        }
    }

    /// True when `target_parameters` selects expert weight `proj` of `layer`.
    pub fn targets_expert(&self, layer: usize, proj: crate::keys::ExpertProj) -> bool {
        self.target_parameters
            .as_deref()
            .is_some_and(|t| crate::keys::expert_targeted(t, layer, proj))
    }

    /// A config as PEFT 0.21 writes it for gpt-oss LoRA (attention projections via `target_modules`,
    /// expert weights via `target_parameters`), for adapters created by training.
    pub fn new_gpt_oss(
        r: usize,
        lora_alpha: f64,
        target_modules: Vec<String>,
        target_parameters: Vec<String>,
    ) -> Self {
        let mut extra = Map::new();
        let mut auto = Map::new();
        auto.insert("base_model_class".into(), "GptOssForCausalLM".into());
        auto.insert(
            "parent_library".into(),
            "transformers.models.gpt_oss.modeling_gpt_oss".into(),
        );
        extra.insert("auto_mapping".into(), Value::Object(auto));
        for k in [
            "alora_invocation_tokens",
            "arrow_config",
            "corda_config",
            "eva_config",
            "exclude_modules",
            "kasa_config",
            "layer_replication",
            "layers_pattern",
            "layers_to_transform",
            "lora_ga_config",
            "megatron_config",
            "modules_to_save",
            "monteclora_config",
            "trainable_token_indices",
            "use_bdlora",
        ] {
            extra.insert(k.into(), Value::Null);
        }
        extra.insert("ensure_weight_tying".into(), Value::Bool(false));
        extra.insert("init_lora_weights".into(), Value::Bool(true));
        extra.insert("loftq_config".into(), Value::Object(Map::new()));
        extra.insert("lora_bias".into(), Value::Bool(false));
        extra.insert("megatron_core".into(), "megatron.core".into());
        extra.insert("qalora_group_size".into(), Value::from(16));
        extra.insert("use_qalora".into(), Value::Bool(false));
        AdapterConfig {
            peft_type: "LORA".into(),
            r,
            lora_alpha,
            target_modules: Some(TargetModules::List(target_modules)),
            target_parameters: Some(target_parameters),
            base_model_name_or_path: None,
            revision: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_rslora: false,
            use_dora: false,
            lora_dropout: 0.0,
            bias: "none".into(),
            fan_in_fan_out: false,
            task_type: None,
            inference_mode: true,
            extra,
        }
    }
}
