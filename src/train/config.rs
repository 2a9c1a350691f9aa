//! Everything a training run is configured by, from three layers: defaults (TRL's `SFTConfig` /
//! HF `TrainingArguments` where they apply), a recipe file (`--config FILE.yaml` with the keys of
//! ModelOpt's `configs/sft_lora.yaml` and TRL's `SFTConfig`), then command-line flags. Every key goes
//! through [`TrainConfig::set`], so a recipe and a flag are parsed and checked the same way. Unknown
//! keys, and known keys that have no effect here, are reported, never silently dropped.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// Quantization during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QuantCfg {
    /// ModelOpt's `MXFP4_MLP_WEIGHT_ONLY_CFG`: the QAT forward with the deployed weights.
    Mxfp4MlpWeightOnly,
    /// `NONE`: plain LoRA (step 1 of the SFT-then-QAT recipe).
    None,
}

impl QuantCfg {
    /// Parses ModelOpt's names (`--quant_cfg`) and its newer recipe paths (`--recipe`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mxfp4_mlp_weight_only_cfg" | "general/ptq/mxfp4_mlp_weight_only" | "mxfp4" => {
                Ok(Self::Mxfp4MlpWeightOnly)
            }
            "none" | "" => Ok(Self::None),
            _ => bail!(
                "quantization {s:?}: expected MXFP4_MLP_WEIGHT_ONLY_CFG (or the recipe \
                 general/ptq/mxfp4_mlp_weight_only) or NONE"
            ),
        }
    }

    /// The name users know.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mxfp4MlpWeightOnly => "MXFP4_MLP_WEIGHT_ONLY_CFG",
            Self::None => "NONE",
        }
    }
}

/// Warmup: a number of steps, or a ratio of the total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Warmup {
    /// Steps.
    Steps(usize),
    /// Fraction of the total steps (`warmup_ratio`, or `warmup_steps` below 1 as transformers 5 reads it).
    Ratio(f64),
}

/// The whole configuration of `train`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub model_name_or_path: Option<String>,
    pub output_dir: Option<String>,
    pub data: Vec<String>,
    pub eval_data: Vec<String>,
    pub eval_split: Option<f64>,
    pub max_length: usize,
    pub packing: bool,
    pub assistant_only_loss: bool,
    pub chat_template_date: Option<String>,
    pub reasoning_effort: Option<String>,
    pub chat_template_kwargs: Option<String>,
    pub skip_bad_rows: bool,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    pub max_steps: Option<usize>,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub lr_scheduler_type: String,
    pub min_lr_rate: Option<f64>,
    pub min_lr: Option<f64>,
    pub warmup: Warmup,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub logging_steps: usize,
    pub eval_strategy: String,
    pub eval_steps: Option<usize>,
    pub eval_on_start: bool,
    pub save_strategy: String,
    pub save_steps: usize,
    pub save_total_limit: Option<usize>,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub lora_target_modules: Option<Vec<String>>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub seed: u64,
    pub gradient_checkpointing: bool,
    pub quant_cfg: QuantCfg,
    pub init_adapter: Option<String>,
    pub resume_from_checkpoint: Option<String>,
    pub overwrite_output_dir: bool,
    /// Keys given that have no effect here, with why (reported at start).
    #[serde(skip)]
    pub no_effect: Vec<String>,
    /// Canonical names of the keys set by a recipe or a flag.
    #[serde(skip)]
    pub explicit: std::collections::BTreeSet<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: None,
            output_dir: None,
            data: Vec::new(),
            eval_data: Vec::new(),
            eval_split: None,
            max_length: 1024,
            packing: false,
            assistant_only_loss: true,
            chat_template_date: None,
            reasoning_effort: None,
            chat_template_kwargs: None,
            skip_bad_rows: false,
            learning_rate: 2e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            lr_scheduler_type: "linear".into(),
            min_lr_rate: None,
            min_lr: None,
            warmup: Warmup::Steps(0),
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 10,
            eval_strategy: "no".into(),
            eval_steps: None,
            eval_on_start: false,
            save_strategy: "steps".into(),
            save_steps: 500,
            save_total_limit: None,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            use_rslora: false,
            lora_target_modules: None,
            layers_to_transform: None,
            seed: 42,
            gradient_checkpointing: false,
            quant_cfg: QuantCfg::Mxfp4MlpWeightOnly,
            init_adapter: None,
            resume_from_checkpoint: None,
            overwrite_output_dir: false,
            no_effect: Vec::new(),
            explicit: Default::default(),
        }
    }
}

/// Keys accepted for compatibility that change nothing here, with the reason.
const NO_EFFECT: &[(&str, &str)] = &[
    (
        "attn_implementation",
        "attention is lora-qat's own blocked kernel",
    ),
    (
        "dtype",
        "the base stays MXFP4/bf16 as released; compute is f32",
    ),
    (
        "torch_dtype",
        "the base stays MXFP4/bf16 as released; compute is f32",
    ),
    ("bf16", "compute is f32"),
    ("use_peft", "lora-qat always trains a LoRA adapter"),
    (
        "report_to",
        "metrics go to trainer_state.json, a JSONL log and a plot in output_dir",
    ),
    (
        "dataset_num_proc",
        "tokenization uses every core (RAYON_NUM_THREADS)",
    ),
    ("calib_size", "weight-only MXFP4 needs no calibration"),
    ("run_name", "no tracker"),
    (
        "dataset_test_split",
        "hub split names do not apply; use eval_data or eval_split",
    ),
    (
        "dataset_train_split",
        "hub split names do not apply; pass the files in data",
    ),
    ("logging_strategy", "logs every logging_steps"),
    ("push_to_hub", "nothing is uploaded"),
    ("do_train", "train always trains"),
    ("do_eval", "evals follow eval_strategy"),
    ("ddp_find_unused_parameters", "single process"),
    ("dataloader_num_workers", "tokenization uses every core"),
];

fn as_bool(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => {
            crate::cli::data_args::parse_bool(s).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        }
        _ => bail!("{key}: expected true or false, got {v}"),
    }
}

fn as_f64(key: &str, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .with_context(|| format!("{key}: {n} is not a number")),
        Value::String(s) => s
            .trim()
            .parse()
            .with_context(|| format!("{key}: {s:?} is not a number")),
        _ => bail!("{key}: expected a number, got {v}"),
    }
}

fn as_usize(key: &str, v: &Value) -> Result<usize> {
    let f = as_f64(key, v)?;
    if f < 0.0 || f.fract() != 0.0 || f > u32::MAX as f64 * 1e3 {
        bail!("{key}: expected a whole number >= 0, got {v}");
    }
    Ok(f as usize)
}

fn as_string(key: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{key}: expected a string, got {v}"),
    }
}

fn as_strings(key: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(|x| as_string(key, x)).collect(),
        Value::String(s) => Ok(s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()),
        _ => bail!("{key}: expected a list of strings, got {v}"),
    }
}

fn opt<T>(v: &Value, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if v.is_null() {
        Ok(None)
    } else {
        f().map(Some)
    }
}

impl TrainConfig {
    /// Sets one key (canonical name or alias). Returns `false` for an unknown key.
    pub fn set(&mut self, key: &str, v: &Value) -> Result<bool> {
        if let Some((_, why)) = NO_EFFECT.iter().find(|(k, _)| *k == key) {
            self.no_effect.push(format!("{key} ({why})"));
            return Ok(true);
        }
        match key {
            "model_name_or_path" | "base" | "base_path" => {
                self.model_name_or_path = opt(v, || as_string(key, v))?
            }
            "output_dir" => self.output_dir = opt(v, || as_string(key, v))?,
            "data" | "dataset_name" | "train_file" | "data_files" => {
                self.data = as_strings(key, v)?
            }
            "eval_data" | "eval_file" => self.eval_data = as_strings(key, v)?,
            "eval_split" => self.eval_split = opt(v, || as_f64(key, v))?,
            "max_length" | "max_seq_length" => self.max_length = as_usize(key, v)?,
            "packing" => self.packing = as_bool(key, v)?,
            "assistant_only_loss" => self.assistant_only_loss = as_bool(key, v)?,
            "completion_only_loss" => {
                if !as_bool(key, v)? {
                    self.assistant_only_loss = false;
                }
            }
            "chat_template_date" => self.chat_template_date = opt(v, || as_string(key, v))?,
            "reasoning_effort" => self.reasoning_effort = opt(v, || as_string(key, v))?,
            "chat_template_kwargs" => {
                self.chat_template_kwargs = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Object(_) => Some(v.to_string()),
                    _ => bail!("{key}: expected a mapping"),
                }
            }
            "skip_bad_rows" => self.skip_bad_rows = as_bool(key, v)?,
            "learning_rate" | "lr" => self.learning_rate = as_f64(key, v)?,
            "num_train_epochs" | "epochs" => self.num_train_epochs = as_f64(key, v)?,
            "max_steps" => {
                let f = as_f64(key, v)?;
                self.max_steps = if f < 0.0 {
                    None
                } else {
                    Some(as_usize(key, v)?)
                };
            }
            "per_device_train_batch_size" | "batch_size" => {
                self.per_device_train_batch_size = as_usize(key, v)?
            }
            "per_device_eval_batch_size" => self.per_device_eval_batch_size = as_usize(key, v)?,
            "gradient_accumulation_steps" => self.gradient_accumulation_steps = as_usize(key, v)?,
            "lr_scheduler_type" => self.lr_scheduler_type = as_string(key, v)?,
            "lr_scheduler_kwargs" => {
                match v {
                    Value::Object(m) => {
                        for (k, x) in m {
                            match k.as_str() {
                            "min_lr_rate" => self.min_lr_rate = Some(as_f64(k, x)?),
                            "min_lr" => self.min_lr = Some(as_f64(k, x)?),
                            "num_cycles" if as_f64(k, x)? == 0.5 => {}
                            other => bail!("lr_scheduler_kwargs.{other}: not supported (min_lr_rate, min_lr)"),
                        }
                        }
                    }
                    Value::Null => {}
                    Value::String(s) => {
                        let parsed: Value = serde_json::from_str(s)
                            .with_context(|| format!("{key}: not a JSON mapping"))?;
                        return self.set(key, &parsed);
                    }
                    _ => bail!("{key}: expected a mapping such as {{min_lr_rate: 0.1}}"),
                }
            }
            "min_lr_rate" => self.min_lr_rate = Some(as_f64(key, v)?),
            "warmup_steps" => {
                let f = as_f64(key, v)?;
                self.warmup = if f > 0.0 && f < 1.0 {
                    Warmup::Ratio(f)
                } else {
                    Warmup::Steps(as_usize(key, v)?)
                };
            }
            "warmup_ratio" => self.warmup = Warmup::Ratio(as_f64(key, v)?),
            "weight_decay" => self.weight_decay = as_f64(key, v)?,
            "adam_beta1" => self.adam_beta1 = as_f64(key, v)?,
            "adam_beta2" => self.adam_beta2 = as_f64(key, v)?,
            "adam_epsilon" => self.adam_epsilon = as_f64(key, v)?,
            "max_grad_norm" => self.max_grad_norm = as_f64(key, v)?,
            "logging_steps" => self.logging_steps = as_usize(key, v)?,
            "eval_strategy" | "evaluation_strategy" => self.eval_strategy = as_string(key, v)?,
            "eval_steps" => self.eval_steps = opt(v, || as_usize(key, v))?,
            "eval_on_start" => self.eval_on_start = as_bool(key, v)?,
            "save_strategy" => self.save_strategy = as_string(key, v)?,
            "save_steps" => self.save_steps = as_usize(key, v)?,
            "save_total_limit" => self.save_total_limit = opt(v, || as_usize(key, v))?,
            "lora_r" | "r" => self.lora_r = as_usize(key, v)?,
            "lora_alpha" => self.lora_alpha = as_f64(key, v)?,
            "lora_dropout" => self.lora_dropout = as_f64(key, v)?,
            "use_rslora" => self.use_rslora = as_bool(key, v)?,
            "lora_target_modules" | "target_modules" => {
                self.lora_target_modules = opt(v, || as_strings(key, v))?
            }
            "layers_to_transform" => {
                self.layers_to_transform = match v {
                    Value::Null => None,
                    Value::Array(a) => {
                        Some(a.iter().map(|x| as_usize(key, x)).collect::<Result<_>>()?)
                    }
                    Value::Number(_) => Some(vec![as_usize(key, v)?]),
                    Value::String(s) => Some(
                        s.split(',')
                            .map(|x| {
                                x.trim()
                                    .parse()
                                    .with_context(|| format!("{key}: {x:?} is not a layer index"))
                            })
                            .collect::<Result<_>>()?,
                    ),
                    _ => bail!("{key}: expected a list of layer indices"),
                }
            }
            "seed" => self.seed = as_usize(key, v)? as u64,
            "gradient_checkpointing" => self.gradient_checkpointing = as_bool(key, v)?,
            "quant_cfg" | "recipe" => {
                self.quant_cfg = match v {
                    Value::Null => QuantCfg::None,
                    _ => QuantCfg::parse(&as_string(key, v)?)?,
                }
            }
            "init_adapter" | "init_lora_path" => self.init_adapter = opt(v, || as_string(key, v))?,
            "resume_from_checkpoint" => self.resume_from_checkpoint = opt(v, || as_string(key, v))?,
            "overwrite_output_dir" => self.overwrite_output_dir = as_bool(key, v)?,
            _ => return Ok(false),
        }
        let canonical = match key {
            "r" => "lora_r",
            "target_modules" => "lora_target_modules",
            other => other,
        };
        self.explicit.insert(canonical.to_string());
        Ok(true)
    }

    /// Applies a recipe file (YAML; JSON is YAML too). Returns the unknown keys.
    pub fn apply_recipe(&mut self, path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recipe {}", path.display()))?;
        self.apply_recipe_str(&text, &path.display().to_string())
    }

    /// [`apply_recipe`](Self::apply_recipe) on the recipe's text; `origin` names it in errors.
    pub fn apply_recipe_str(&mut self, text: &str, origin: &str) -> Result<Vec<String>> {
        let value: Value =
            serde_yaml_ng::from_str(text).with_context(|| format!("{origin}: not valid YAML"))?;
        let map = match value {
            Value::Object(m) => m,
            Value::Null => return Ok(Vec::new()),
            _ => bail!("{origin}: a recipe is a mapping of keys to values"),
        };
        let mut unknown = Vec::new();
        for (k, v) in &map {
            let known = self
                .set(k, v)
                .with_context(|| format!("recipe {origin}: key `{k}`"))?;
            if !known {
                unknown.push(k.clone());
            }
        }
        Ok(unknown)
    }

    /// Checks values that no single key can check; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            bail!("learning_rate {}: must be > 0", self.learning_rate);
        }
        if self.max_steps == Some(0) {
            bail!("max_steps 0: nothing to train (use -1 to train num_train_epochs)");
        }
        if self.max_steps.is_none() && self.num_train_epochs <= 0.0 {
            bail!(
                "num_train_epochs {}: must be > 0 when max_steps is not set",
                self.num_train_epochs
            );
        }
        for (k, v) in [
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            ("lora_r", self.lora_r),
            ("logging_steps", self.logging_steps),
        ] {
            if v == 0 {
                bail!("{k} 0: must be at least 1");
            }
        }
        if self.lora_dropout != 0.0 {
            bail!(
                "lora_dropout {}: LoRA dropout is not supported (it cannot apply to PEFT's expert \
                 LoRA, and the QAT forward trains the deployed weights); set lora_dropout: 0.0",
                self.lora_dropout
            );
        }
        if !["no", "steps", "epoch"].contains(&self.eval_strategy.as_str()) {
            bail!(
                "eval_strategy {:?}: expected no, steps or epoch",
                self.eval_strategy
            );
        }
        if !["no", "steps", "epoch"].contains(&self.save_strategy.as_str()) {
            bail!(
                "save_strategy {:?}: expected no, steps or epoch",
                self.save_strategy
            );
        }
        if self.save_strategy == "steps" && self.save_steps == 0 {
            bail!("save_steps 0: must be at least 1 (or save_strategy: no)");
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            bail!(
                "max_grad_norm {}: must be >= 0 (0 turns clipping off)",
                self.max_grad_norm
            );
        }
        if self.lora_alpha <= 0.0 {
            bail!("lora_alpha {}: must be > 0", self.lora_alpha);
        }
        Ok(())
    }

    /// Whether evals run during training.
    pub fn evals(&self) -> bool {
        self.eval_strategy != "no" || self.eval_on_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelopt_recipe_keys_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(
            &p,
            "model_name_or_path: openai/gpt-oss-20b\nattn_implementation: eager\nlearning_rate: 2.0e-4\n\
             num_train_epochs: 1.0\nwarmup_steps: 0.03\nlr_scheduler_type: cosine_with_min_lr\n\
             lr_scheduler_kwargs:\n  min_lr_rate: 0.1\nlora_target_modules: all-linear\nreport_to:\n  - trackio\n\
             recipe:\nfoo_bar: 1\neval_on_start: true\n",
        )
        .unwrap();
        let mut c = TrainConfig::default();
        let unknown = c.apply_recipe(&p).unwrap();
        assert_eq!(unknown, vec!["foo_bar"]);
        assert_eq!(c.learning_rate, 2e-4);
        assert_eq!(c.warmup, Warmup::Ratio(0.03));
        assert_eq!(c.min_lr_rate, Some(0.1));
        assert_eq!(c.lora_target_modules, Some(vec!["all-linear".to_string()]));
        assert_eq!(
            c.quant_cfg,
            QuantCfg::None,
            "an empty `recipe:` means no quantization, as in ModelOpt"
        );
        assert!(c.eval_on_start);
        assert_eq!(c.no_effect.len(), 2);
    }

    #[test]
    fn shipped_recipes_have_no_unknown_key() {
        for name in ["sft_lora.yaml", "quickstart.yaml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("configs")
                .join(name);
            let mut c = TrainConfig::default();
            let unknown = c.apply_recipe(&path).unwrap();
            assert!(
                unknown.is_empty() && c.no_effect.is_empty(),
                "{name}: {unknown:?} {:?}",
                c.no_effect
            );
            c.validate().unwrap();
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = TrainConfig::default();
        let e = c.set("learning_rate", &Value::from("fast")).unwrap_err();
        assert!(e.to_string().contains("learning_rate"), "{e}");
        assert!(c.set("quant_cfg", &Value::from("INT4")).is_err());
        c.set("learning_rate", &Value::from(0.0)).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("learning_rate"));
        let mut c = TrainConfig::default();
        c.set("gradient_accumulation_steps", &Value::from(0))
            .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gradient_accumulation_steps 0"));
        let mut c = TrainConfig::default();
        c.set("max_steps", &Value::from(0)).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_steps 0"));
        let mut c = TrainConfig::default();
        c.set("max_steps", &Value::from(-1)).unwrap();
        assert_eq!(c.max_steps, None);
        assert!(QuantCfg::parse("general/ptq/mxfp4_mlp_weight_only").is_ok());
    }
}
