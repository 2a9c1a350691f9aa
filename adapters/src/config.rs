//! `adapter_config.json`: PEFT's LoRA config. Known keys are typed; every other key is kept verbatim in
//! `extra` so that a load + save gives back an equal JSON value.


use serde_json::{Map, Number, Value};

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
    /// per-module rank overrides (PEFT pattern keys), in the file's order: PEFT takes the first
    /// key that matches
    pub rank_pattern: Vec<(String, usize)>,
    /// per-module alpha overrides (PEFT pattern keys), in the file's order
    pub alpha_pattern: Vec<(String, f64)>,
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

impl AdapterConfig {
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
        pattern::lookup(self.rank_pattern.iter().map(|(k, v)| (k, v)), module_path)
            .copied()
            .unwrap_or(self.r)
    }

    /// Alpha of the module at `module_path`, honouring `alpha_pattern`.
    pub fn alpha_for(&self, module_path: &str) -> f64 {
        pattern::lookup(self.alpha_pattern.iter().map(|(k, v)| (k, v)), module_path)
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

    /// Gives the one module (or expert parameter) at `module_path` its own rank and alpha, as an
    /// exact-path entry (dots escaped) put first in `rank_pattern` and `alpha_pattern`, so it wins
    /// over every other pattern.
    pub fn set_module_rank(&mut self, module_path: &str, r: usize, alpha: f64) {
        let key = regex::escape(module_path);
        self.rank_pattern.retain(|(k, _)| *k != key);
        self.alpha_pattern.retain(|(k, _)| *k != key);
        self.rank_pattern.insert(0, (key.clone(), r));
        self.alpha_pattern.insert(0, (key, alpha));
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
            "velora_config",
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
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
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
