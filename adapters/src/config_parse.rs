//! Parsing adapter_config.json into [`AdapterConfig`], and refusing the LoRA variants we do not implement.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{AdapterConfig, TargetModules};
use crate::error::AdapterError;
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
}
