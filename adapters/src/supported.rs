//! What adapter configs this tool refuses: the LoRA variants it does not implement, and settings
//! PEFT itself would reject. Every error names the file and the key.

use std::path::Path;

use serde_json::Value;

use crate::config::{AdapterConfig, LayersPattern, TargetModules};
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

impl AdapterConfig {
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
