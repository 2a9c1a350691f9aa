//! Parsing adapter_config.json into [`AdapterConfig`] (the refusals are `supported.rs`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{AdapterConfig, LayerIndexes, LayersPattern, TargetModules};
use crate::error::AdapterError;

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
}
