//! `config.json` of a gpt-oss checkpoint, in both the released style (`rope_scaling` + top-level
//! `rope_theta`, `experts_per_token`) and the transformers-5 style (`rope_parameters`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::json_fields::Fields;

/// Attention pattern of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Banded causal attention: key `k` is visible from query `q` iff `q - window < k <= q`.
    SlidingAttention,
    /// Plain causal attention.
    FullAttention,
}

impl LayerType {
    /// The spelling used in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerType::SlidingAttention => "sliding_attention",
            LayerType::FullAttention => "full_attention",
        }
    }
}

/// YaRN rotary embedding parameters (gpt-oss always uses YaRN).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base frequency (`rope_theta`).
    pub theta: f64,
    /// Context extension factor.
    pub factor: f64,
    /// YaRN ramp: high-frequency cut.
    pub beta_fast: f64,
    /// YaRN ramp: low-frequency cut.
    pub beta_slow: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
    /// Whether the YaRN correction range is truncated to integers.
    pub truncate: bool,
    /// Explicit attention factor; `None` means YaRN's default, see [`RopeConfig::attention_scaling`].
    pub attention_factor: Option<f64>,
}

impl RopeConfig {
    /// The factor that multiplies cos and sin: the explicit one, else `0.1·ln(factor) + 1`
    /// (1 when `factor <= 1`), as in transformers' `_compute_yarn_parameters`.
    pub fn attention_scaling(&self) -> f64 {
        match self.attention_factor {
            Some(a) => a,
            None if self.factor <= 1.0 => 1.0,
            None => 0.1 * self.factor.ln() + 1.0,
        }
    }
}

/// `quantization_config` of the release: which modules stay unquantized, and the method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizationConfig {
    /// Always `"mxfp4"` for a checkpoint this crate accepts.
    pub quant_method: String,
    /// Glob patterns of modules kept in BF16.
    pub modules_to_not_convert: Vec<String>,
}

/// Architecture of a gpt-oss model, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct GptOssConfig {
    /// Model width H.
    pub hidden_size: usize,
    /// Expert width I.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of `embed_tokens` and `lm_head`).
    pub vocab_size: usize,
    /// Experts per MoE layer.
    pub num_local_experts: usize,
    /// Experts routed per token (top-k).
    pub experts_per_token: usize,
    /// Sliding attention window.
    pub sliding_window: usize,
    /// Attention pattern per layer (`num_hidden_layers` entries).
    pub layer_types: Vec<LayerType>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// YaRN RoPE parameters.
    pub rope: RopeConfig,
    /// Clamp of the SwiGLU gate/up activations.
    pub swiglu_limit: f32,
    /// Whether `lm_head` shares `embed_tokens` (false for gpt-oss).
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (`eos_token_id`, a number or a list).
    pub eos_token_id: Option<Vec<u32>>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
    /// Maximum context length (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// Whether the attention projections have biases (always true for gpt-oss).
    pub attention_bias: bool,
    /// `quantization_config`, when present.
    pub quantization: Option<QuantizationConfig>,
}

impl GptOssConfig {
    /// Reads and validates a `config.json`; errors name the file and the missing or bad field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses and validates config JSON; `origin` (a file name) is used in error messages.
    pub fn from_json_str(json: &str, origin: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(json).with_context(|| format!("{origin}: not valid JSON"))?;
        let Some(obj) = value.as_object() else {
            bail!("{origin}: expected a JSON object at the top level");
        };
        let config = parse(obj, origin)?;
        config
            .check()
            .with_context(|| format!("{origin}: inconsistent gpt-oss config"))?;
        Ok(config)
    }

    /// Attention pattern of layer `layer`.
    pub fn layer_type(&self, layer: usize) -> LayerType {
        self.layer_types[layer]
    }

    fn check(&self) -> Result<()> {
        let nonzero = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("num_local_experts", self.num_local_experts),
            ("experts_per_token", self.experts_per_token),
            ("sliding_window", self.sliding_window),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                bail!("field `{field}` must be positive");
            }
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if !v.is_multiple_of(32) {
                bail!("field `{field}` = {v} is not a multiple of 32 (the MXFP4 block size of the experts)");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.experts_per_token > self.num_local_experts {
            bail!(
                "experts_per_token ({}) exceeds num_local_experts ({})",
                self.experts_per_token,
                self.num_local_experts
            );
        }
        if self.layer_types.len() != self.num_hidden_layers {
            bail!(
                "layer_types has {} entries but num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim ({}) must be even for RoPE", self.head_dim);
        }
        if self.tie_word_embeddings {
            bail!("tie_word_embeddings = true is not the gpt-oss layout (lm_head is untied)");
        }
        if let Some(q) = &self.quantization {
            if q.quant_method != "mxfp4" {
                bail!(
                    "quantization_config.quant_method is {:?}; only \"mxfp4\" (the release format) is supported",
                    q.quant_method
                );
            }
        }
        Ok(())
    }
}

fn parse(obj: &Map<String, Value>, origin: &str) -> Result<GptOssConfig> {
    let f = Fields::new(obj, origin, "");
    if let Some(mt) = f.opt_str("model_type")? {
        if mt != "gpt_oss" {
            bail!("{origin}: model_type is {mt:?}, expected \"gpt_oss\"");
        }
    }
    let num_hidden_layers = f.req_usize("num_hidden_layers")?;
    let experts_per_token = match (
        f.opt_usize("experts_per_token")?,
        f.opt_usize("num_experts_per_tok")?,
    ) {
        (Some(a), Some(b)) if a != b => {
            bail!("{origin}: experts_per_token ({a}) and num_experts_per_tok ({b}) disagree")
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            bail!("{origin}: missing field `experts_per_token` (or `num_experts_per_tok`)")
        }
    };
    let layer_types = match obj.get("layer_types") {
        None | Some(Value::Null) => {
            tracing::warn!("{origin}: no layer_types; using the gpt-oss default (even layers sliding)");
            (0..num_hidden_layers)
                .map(|l| {
                    if l % 2 == 0 {
                        LayerType::SlidingAttention
                    } else {
                        LayerType::FullAttention
                    }
                })
                .collect()
        }
        Some(_) => f
            .req_str_list("layer_types")?
            .iter()
            .enumerate()
            .map(|(i, s)| match s.as_str() {
                "sliding_attention" => Ok(LayerType::SlidingAttention),
                "full_attention" => Ok(LayerType::FullAttention),
                other => bail!("{origin}: layer_types[{i}] is {other:?}, expected \"sliding_attention\" or \"full_attention\""),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let eos_token_id = match obj.get("eos_token_id") {
        None | Some(Value::Null) => None,
        Some(Value::Array(_)) => Some(f.req_u32_list("eos_token_id")?),
        Some(_) => Some(vec![f.req_u32("eos_token_id")?]),
    };
    let quantization = match obj.get("quantization_config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(q)) => {
            let qf = Fields::new(q, origin, "quantization_config.");
            Some(QuantizationConfig {
                quant_method: qf.req_string("quant_method")?,
                modules_to_not_convert: match q.get("modules_to_not_convert") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => qf.req_str_list("modules_to_not_convert")?,
                },
            })
        }
        Some(_) => bail!("{origin}: field `quantization_config` must be an object"),
    };
    Ok(GptOssConfig {
        hidden_size: f.req_usize("hidden_size")?,
        intermediate_size: f.req_usize("intermediate_size")?,
        num_hidden_layers,
        num_attention_heads: f.req_usize("num_attention_heads")?,
        num_key_value_heads: f.req_usize("num_key_value_heads")?,
        head_dim: f.req_usize("head_dim")?,
        vocab_size: f.req_usize("vocab_size")?,
        num_local_experts: f.req_usize("num_local_experts")?,
        experts_per_token,
        sliding_window: f.req_usize("sliding_window")?,
        layer_types,
        rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        rope: parse_rope(obj, origin)?,
        swiglu_limit: f.opt_f64("swiglu_limit")?.unwrap_or(7.0) as f32,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        eos_token_id,
        pad_token_id: f.opt_u32("pad_token_id")?,
        max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(131072),
        attention_bias: f.opt_bool("attention_bias")?.unwrap_or(true),
        quantization,
    })
}

/// RoPE from `rope_parameters` (transformers 5, theta inside) or `rope_scaling` + `rope_theta`.
fn parse_rope(obj: &Map<String, Value>, origin: &str) -> Result<RopeConfig> {
    let top = Fields::new(obj, origin, "");
    let (params, prefix, theta) = match (obj.get("rope_parameters"), obj.get("rope_scaling")) {
        (Some(Value::Object(p)), _) => {
            let pf = Fields::new(p, origin, "rope_parameters.");
            let theta = match pf.opt_f64("rope_theta")? {
                Some(t) => t,
                None => top.req_f64("rope_theta").with_context(|| {
                    format!("{origin}: rope_parameters has no rope_theta and neither has the top level")
                })?,
            };
            (p, "rope_parameters.", theta)
        }
        (_, Some(Value::Object(s))) => (s, "rope_scaling.", top.req_f64("rope_theta")?),
        _ => bail!(
            "{origin}: missing field `rope_scaling` (released style) or `rope_parameters` (transformers 5): gpt-oss needs YaRN RoPE"
        ),
    };
    let pf = Fields::new(params, origin, prefix);
    let rope_type = match pf.opt_str("rope_type")? {
        Some(t) => t.to_string(),
        None => pf.req_string("type")?,
    };
    if rope_type != "yarn" {
        bail!("{origin}: {prefix}rope_type is {rope_type:?}; gpt-oss uses \"yarn\"");
    }
    Ok(RopeConfig {
        theta,
        factor: pf.req_f64("factor")?,
        beta_fast: pf.opt_f64("beta_fast")?.unwrap_or(32.0),
        beta_slow: pf.opt_f64("beta_slow")?.unwrap_or(1.0),
        original_max_position_embeddings: pf.req_usize("original_max_position_embeddings")?,
        truncate: pf.opt_bool("truncate")?.unwrap_or(true),
        attention_factor: pf.opt_f64("attention_factor")?,
    })
}
