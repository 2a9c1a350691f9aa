//! `adapter_config.json`: PEFT's LoRA config. Known keys are typed; every other key is kept verbatim in
//! `extra` so that a load + save gives back an equal JSON value.

use serde_json::{Map, Number, Value};

use crate::pattern;

/// Which modules `target_modules` (or `exclude_modules`) names: PEFT accepts a list (exact name or
/// `.`-suffix) or one regex string (full match); the string `"all-linear"` (any case) in
/// `target_modules` means every `nn.Linear` but the output head, i.e. attention q/k/v/o here.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// names matched exactly or as a `.`-separated suffix of the module path
    List(Vec<String>),
    /// a regular expression that must match the whole module path
    Regex(String),
}

impl TargetModules {
    /// True for PEFT's `"all-linear"` shorthand (compared case-insensitively, as PEFT does).
    pub fn is_all_linear(&self) -> bool {
        matches!(self, TargetModules::Regex(s) if s.eq_ignore_ascii_case(crate::targets::ALL_LINEAR))
    }

    fn to_json(&self) -> Value {
        match self {
            TargetModules::Regex(s) => Value::String(s.clone()),
            TargetModules::List(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        }
    }
}

/// `layers_to_transform`: one layer index or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerIndexes {
    /// a single index (PEFT compares with `==`)
    One(usize),
    /// a list of indexes (PEFT tests membership; an empty list means no filter)
    List(Vec<usize>),
}

impl LayerIndexes {
    /// True when PEFT's filter is active (an int, or a non-empty list).
    pub fn is_active(&self) -> bool {
        !matches!(self, LayerIndexes::List(l) if l.is_empty())
    }

    /// True when layer `l` passes the filter.
    pub fn contains(&self, l: usize) -> bool {
        match self {
            LayerIndexes::One(x) => *x == l,
            LayerIndexes::List(v) => v.contains(&l),
        }
    }
}

/// `layers_pattern`: the name (a regex) of the module list holding the layers, or several tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayersPattern {
    /// one pattern
    One(String),
    /// patterns tried in order, the first that matches gives the index
    List(Vec<String>),
}

impl LayersPattern {
    /// The patterns, in order.
    pub fn patterns(&self) -> &[String] {
        match self {
            LayersPattern::One(s) => std::slice::from_ref(s),
            LayersPattern::List(v) => v,
        }
    }
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
    /// modules never adapted, checked before `target_modules` (a list: exact or `.`-suffix; a string:
    /// regex full match); does not apply to `target_parameters`
    pub exclude_modules: Option<TargetModules>,
    /// keeps only these layers among the `target_modules` suffix matches (PEFT's quirk: not regex
    /// strings, not exact-path entries, not `target_parameters`)
    pub layers_to_transform: Option<LayerIndexes>,
    /// where `layers_to_transform` finds the layer index
    pub layers_pattern: Option<LayersPattern>,
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
        let tm = self
            .target_modules
            .as_ref()
            .map_or(Value::Null, TargetModules::to_json);
        let exclude = self
            .exclude_modules
            .as_ref()
            .map_or(Value::Null, TargetModules::to_json);
        let layers = match &self.layers_to_transform {
            None => Value::Null,
            Some(LayerIndexes::One(l)) => Value::from(*l),
            Some(LayerIndexes::List(v)) => {
                Value::Array(v.iter().map(|&l| Value::from(l)).collect())
            }
        };
        let pattern = match &self.layers_pattern {
            None => Value::Null,
            Some(LayersPattern::One(s)) => Value::String(s.clone()),
            Some(LayersPattern::List(v)) => {
                Value::Array(v.iter().cloned().map(Value::String).collect())
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
        let entries: [(&str, Value); 19] = [
            ("peft_type", Value::String(self.peft_type.clone())),
            ("r", Value::from(self.r)),
            ("lora_alpha", num(self.lora_alpha)),
            ("target_modules", tm),
            ("exclude_modules", exclude),
            ("layers_to_transform", layers),
            ("layers_pattern", pattern),
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
        self.scaling_f64_for(module_path) as f32
    }

    /// [`scaling_for`](Self::scaling_for) before the rounding to f32: exactly PEFT's
    /// `LoraLayer.scaling` (Python floats are f64, `math.sqrt` and `/` correctly rounded as here).
    pub fn scaling_f64_for(&self, module_path: &str) -> f64 {
        self.scaling_with(self.rank_for(module_path), self.alpha_for(module_path))
    }

    /// alpha/r, or alpha/sqrt(r) with rsLoRA.
    pub fn scaling_with(&self, r: usize, alpha: f64) -> f64 {
        let r = r as f64;
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
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

    /// True when PEFT would wrap the module at `module_path` (a path of the gpt-oss module tree, such as
    /// `model.layers.0.self_attn.q_proj`) through `target_modules`: PEFT 0.21's
    /// `check_target_module_exists` with `exclude_modules`, `layers_to_transform` / `layers_pattern`
    /// and `"all-linear"` (see [`crate::targets`]).
    pub fn targets_module(&self, module_path: &str) -> bool {
        crate::targets::module_selection(self, module_path) == crate::targets::Selection::Selected
    }

    /// True when PEFT's `target_parameters` rule (`_inject_parameters`: an entry equals the parameter
    /// path or is a `.`-suffix of it, literally) selects the parameter at `param_path`.
    pub fn targets_parameter(&self, param_path: &str) -> bool {
        self.target_parameters.as_deref().is_some_and(|t| {
            t.iter()
                .any(|e| pattern::target_list_matches(e, param_path))
        })
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
            "kasa_config",
            "layer_replication",
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
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
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
