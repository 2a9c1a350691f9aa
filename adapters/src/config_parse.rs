//! Parsing adapter_config.json into [`AdapterConfig`], and refusing the LoRA variants we do not implement.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{AdapterConfig, LayerIndexes, LayersPattern, TargetModules};
use crate::error::AdapterError;
use crate::pattern;

/// Keys that select LoRA variants we do not implement: supported only when null, false, empty or absent.
/// Reviewed against every field of PEFT 0.21's `LoraConfig`:
/// - changes what the saved factors mean, so refused here: `lora_bias`, `modules_to_save`,
///   `layer_replication`, `trainable_token_indices`, `use_qalora`, `alora_invocation_tokens`,
///   `use_bdlora`, `kasa_config`, `monteclora_config`, `arrow_config`, `velora_config`; and, typed and
///   checked in `check_supported`: `use_dora`, `bias`, `fan_in_fan_out`, `lora_dropout` with
///   `target_parameters`, `init_lora_weights` naming a base-modifying init, `peft_type`.
/// - does not change the saved weights, so accepted: `init_lora_weights` true/false/"gaussian"/
///   "orthogonal"/"eva"/"mica" (initialisation only; MiCA's variant only freezes lora_B, its forward
///   is vanilla LoRA), `eva_config`, `corda_config`, `lora_ga_config`, `loftq_config` (parameters of
///   an initialisation, ignored by PEFT unless `init_lora_weights` names it, which is checked),
///   `qalora_group_size` (only read with `use_qalora`), `megatron_config`/`megatron_core` (which
///   parallel linear class wraps the base; the LoRA math is the same), `ensure_weight_tying` (only acts
///   with tied embeddings among the targets or modules_to_save, both refused), `lora_dropout` on
///   modules (training only), `use_rslora`, `rank_pattern`, `alpha_pattern` (implemented), and the
///   metadata `task_type`, `inference_mode`, `auto_mapping`, `peft_version`, `revision`,
///   `base_model_name_or_path`.
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
    ("use_qalora", "QA-LoRA (pooled inputs into lora_A) is not implemented"),
    (
        "alora_invocation_tokens",
        "activated LoRA (applied only after the invocation tokens) is not implemented",
    ),
    ("use_bdlora", "block-diagonal LoRA is not implemented"),
    (
        "kasa_config",
        "KaSA (a trained diagonal lora_diag between A and B) is not implemented",
    ),
    (
        "monteclora_config",
        "MonteCLoRA (variational sampling around the factors) is not implemented",
    ),
    (
        "arrow_config",
        "Arrow (routing between several LoRA experts) is not implemented",
    ),
    (
        "velora_config",
        "VeLoRA: its inference forward is plain LoRA, but its files carry lora_velora_embed buffers \
         this tool neither reads nor writes back",
    ),
];

/// `init_lora_weights` values that replace the base weights when the adapter is created (PiSSA, OLoRA
/// and CorDA keep the residual `W - BA`, LoftQ a quantized base, LoRA-GA `W - offset`; peft
/// `tuners/lora/layer.py` `*_init`). Such an adapter applies to that modified base, not to the released
/// one, unless it was saved with `path_initial_model_for_weight_conversion`, which rewrites it for the
/// original base and writes `init_lora_weights: true` (peft_model.py `save_pretrained`).
fn base_modifying_init(v: &str) -> bool {
    v.starts_with("pissa")
        || v.eq_ignore_ascii_case("olora")
        || matches!(v, "corda" | "loftq" | "lora_ga")
}

/// `init_lora_weights` values that leave the base alone (PEFT accepts no others).
const HARMLESS_INITS: &[&str] = &["gaussian", "orthogonal", "eva", "mica"];

fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
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
    fn modules(&mut self, key: &str) -> Result<Option<TargetModules>, AdapterError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(TargetModules::Regex(s))),
            Some(v) => {
                self.map.insert(key.into(), v);
                Ok(self.strings(key)?.map(TargetModules::List))
            }
        }
    }
    fn layer_indexes(&mut self, key: &str) -> Result<Option<LayerIndexes>, AdapterError> {
        let value = self.take(key);
        let index = |v: &Value| {
            v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.err(
                    key,
                    format!("expected a layer index (an integer >= 0), got {v}"),
                )
            })
        };
        match value {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(index)
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(LayerIndexes::List(v))),
            Some(v) => index(&v).map(|l| Some(LayerIndexes::One(l))),
        }
    }
    fn layers_pattern(&mut self, key: &str) -> Result<Option<LayersPattern>, AdapterError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(LayersPattern::One(s))),
            Some(v) => {
                self.map.insert(key.into(), v);
                Ok(self.strings(key)?.map(LayersPattern::List))
            }
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
        let mut cfg = Self::from_map(map, path)?;
        // serde_json's Map sorts keys; PEFT takes the first matching pattern key in the file's order
        let order = crate::json_order::pattern_key_order(text).map_err(|e| AdapterError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::json_order::reorder(&mut cfg.rank_pattern, &order.rank_pattern);
        crate::json_order::reorder(&mut cfg.alpha_pattern, &order.alpha_pattern);
        Ok(cfg)
    }

    /// Builds a config from a parsed JSON object, typing the known keys, then checks it is supported.
    /// `rank_pattern` / `alpha_pattern` come out in the map's (sorted) key order; the file's order, which
    /// decides which overlapping pattern wins, is kept only by [`from_json_str`](Self::from_json_str).
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
        let target_modules = rd.modules("target_modules")?;
        let exclude_modules = rd.modules("exclude_modules")?;
        let layers_to_transform = rd.layer_indexes("layers_to_transform")?;
        let layers_pattern = rd.layers_pattern("layers_pattern")?;
        let target_parameters = rd.strings("target_parameters")?;
        let base_model_name_or_path = rd.string("base_model_name_or_path")?;
        let revision = rd.string("revision")?;
        let mut rank_pattern = Vec::new();
        for (k, v) in rd.object("rank_pattern")? {
            rank_pattern.push((k, rd.rank("rank_pattern", &v)?));
        }
        let mut alpha_pattern = Vec::new();
        for (k, v) in rd.object("alpha_pattern")? {
            let a = v.as_f64().ok_or_else(|| {
                rd.err(
                    "alpha_pattern",
                    format!("`{k}`: expected a number, got {v}"),
                )
            })?;
            alpha_pattern.push((k, a));
        }
        let cfg = AdapterConfig {
            peft_type,
            r,
            lora_alpha,
            target_modules,
            exclude_modules,
            layers_to_transform,
            layers_pattern,
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
        match self.extra.get("init_lora_weights") {
            Some(Value::String(s)) if base_modifying_init(s) => {
                return Err(unsupported(
                    "init_lora_weights",
                    format!("{s:?}"),
                    "this initialisation replaced the base weights (residual or quantized base), so the \
                     adapter applies to that modified base, not to the released one; save it from PEFT \
                     with path_initial_model_for_weight_conversion to get a plain LoRA",
                ));
            }
            Some(Value::String(s)) if !HARMLESS_INITS.contains(&s.as_str()) => {
                return Err(unsupported(
                    "init_lora_weights",
                    format!("{s:?}"),
                    "an initialisation PEFT 0.21 does not know",
                ));
            }
            _ => {}
        }
        let dropout_on_experts = self.lora_dropout != 0.0
            && self
                .target_parameters
                .as_ref()
                .is_some_and(|t| !t.is_empty());
        if dropout_on_experts {
            return Err(unsupported(
                "lora_dropout",
                format!("{}", self.lora_dropout),
                "with target_parameters (the experts) PEFT's ParamWrapper refuses dropout: \
                 \"lora.ParamWrapper does not work with lora_dropout != 0.\" since \"it's not possible \
                 to factor out x from lora_B(lora_A(dropout(x)))\" (peft tuners/lora/layer.py)",
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(config_value(path, "lora_alpha", "not finite".into()));
        }
        self.check_selection_keys(path)
    }

    /// PEFT's own rules on `layers_to_transform` / `layers_pattern` (LoraConfig `__post_init__`), and
    /// regexes this tool can evaluate.
    fn check_selection_keys(&self, path: &Path) -> Result<(), AdapterError> {
        let is_str = matches!(self.target_modules, Some(TargetModules::Regex(_)));
        if is_str && self.layers_to_transform.is_some() {
            return Err(config_value(
                path,
                "layers_to_transform",
                "cannot be used when target_modules is a string (a regex or \"all-linear\"); PEFT \
                 refuses this config"
                    .into(),
            ));
        }
        if is_str && self.layers_pattern.is_some() {
            return Err(config_value(
                path,
                "layers_pattern",
                "cannot be used when target_modules is a string; PEFT refuses this config".into(),
            ));
        }
        let has_pattern = match &self.layers_pattern {
            None => false,
            Some(LayersPattern::One(s)) => !s.is_empty(),
            Some(LayersPattern::List(v)) => !v.is_empty(),
        };
        if has_pattern && self.layers_to_transform.is_none() {
            return Err(config_value(
                path,
                "layers_pattern",
                "needs layers_to_transform; PEFT refuses this config".into(),
            ));
        }
        let full = |re: &str| format!("^(?:{re})$");
        match &self.target_modules {
            Some(t @ TargetModules::Regex(re)) if !t.is_all_linear() => {
                pattern::check_regex(re, full)
                    .map_err(|m| config_value(path, "target_modules", m))?;
            }
            _ => {}
        }
        if let Some(TargetModules::Regex(re)) = &self.exclude_modules {
            pattern::check_regex(re, full).map_err(|m| config_value(path, "exclude_modules", m))?;
        }
        if let Some(p) = &self.layers_pattern {
            for re in p.patterns() {
                pattern::check_regex(re, pattern::layers_pattern_regex)
                    .map_err(|m| config_value(path, "layers_pattern", m))?;
            }
        }
        Ok(())
    }
}

fn config_value(path: &Path, key: &str, message: String) -> AdapterError {
    AdapterError::ConfigValue {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    }
}
