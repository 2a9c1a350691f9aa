//! The facts `lora-qat inspect` reports about a checkpoint or a bare config (serializable).

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::GptOssConfig;
use super::estimate::{release_bytes_by_dtype, DtypeBytes, TrainingEstimate};
use super::open::Checkpoint;
use super::scan::DataScan;

/// Architecture facts.
#[derive(Debug, Clone, Serialize)]
pub struct Architecture {
    /// `config.json` `architectures[0]`-equivalent name.
    pub model_type: &'static str,
    /// Decoder layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// H.
    pub hidden_size: usize,
    /// I.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads.
    pub num_key_value_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Sliding window.
    pub sliding_window: usize,
    /// `sliding_attention` / `full_attention` per layer.
    pub layer_types: Vec<&'static str>,
    /// RoPE parameters.
    pub rope: Rope,
    /// SwiGLU clamp.
    pub swiglu_limit: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
}

/// RoPE facts.
#[derive(Debug, Clone, Serialize)]
pub struct Rope {
    /// Always `yarn`.
    pub rope_type: &'static str,
    /// Base frequency.
    pub theta: f64,
    /// YaRN factor.
    pub factor: f64,
    /// YaRN beta_fast.
    pub beta_fast: f64,
    /// YaRN beta_slow.
    pub beta_slow: f64,
    /// Pre-training context.
    pub original_max_position_embeddings: usize,
    /// YaRN truncation.
    pub truncate: bool,
    /// Factor applied to cos/sin.
    pub attention_scaling: f64,
}

/// Parameter counts.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// All parameters (an MXFP4 element counts as 1).
    pub total: u64,
    /// Used per token (top-k experts).
    pub active: u64,
    /// Held in MXFP4.
    pub mxfp4: u64,
}

/// MXFP4 tensors.
#[derive(Debug, Clone, Serialize)]
pub struct Quantized {
    /// `*_blocks` + `*_scales` tensors.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// One shard file.
#[derive(Debug, Clone, Serialize)]
pub struct ShardFile {
    /// File name.
    pub file: String,
    /// Size in bytes (header included).
    pub bytes: u64,
}

/// Everything `inspect` says.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// What was inspected.
    pub source: String,
    /// `"checkpoint"` or `"config"` (estimates only).
    pub kind: &'static str,
    /// Architecture.
    pub architecture: Architecture,
    /// Parameters.
    pub parameters: Params,
    /// Tensor data bytes per dtype (estimated for a bare config).
    pub bytes_by_dtype: BTreeMap<String, DtypeBytes>,
    /// Bytes on disk: all shard files (estimated as tensor data for a bare config).
    pub bytes_on_disk: u64,
    /// Whether `bytes_by_dtype`/`bytes_on_disk` are estimates from the config.
    pub estimated: bool,
    /// MXFP4 tensors.
    pub quantized: Quantized,
    /// Shard files (empty for a bare config).
    pub shards: Vec<ShardFile>,
    /// Tensors the release format does not have.
    pub unexpected_tensors: Vec<String>,
    /// Data scan, when run.
    pub scan: Option<DataScan>,
    /// Training memory lower bound.
    pub training_estimate: TrainingEstimate,
    /// Validation outcome.
    pub verdict: Verdict,
}

/// Validation outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// No errors.
    pub ok: bool,
    /// One-line summary.
    pub summary: String,
    /// Fatal findings.
    pub errors: Vec<String>,
    /// Suspicious findings.
    pub warnings: Vec<String>,
}

impl InspectReport {
    /// Report for a bare config: architecture, parameters, release-format size estimates.
    pub fn from_config(source: &str, c: &GptOssConfig, lora_rank: usize) -> Self {
        let by_dtype = release_bytes_by_dtype(c);
        let specs = c.expected_tensors();
        let q: Vec<_> = specs.iter().filter(|s| s.is_quantized()).collect();
        InspectReport {
            source: source.to_string(),
            kind: "config",
            architecture: architecture(c),
            parameters: params(c),
            bytes_on_disk: by_dtype.values().map(|d| d.bytes).sum(),
            bytes_by_dtype: by_dtype,
            estimated: true,
            quantized: Quantized {
                tensors: q.len(),
                bytes: q.iter().map(|s| s.nbytes()).sum(),
            },
            shards: Vec::new(),
            unexpected_tensors: Vec::new(),
            scan: None,
            training_estimate: c.training_estimate(lora_rank),
            verdict: Verdict {
                ok: true,
                summary: "config is valid (no weights to check)".into(),
                errors: Vec::new(),
                warnings: Vec::new(),
            },
        }
    }

    /// Report for an opened checkpoint (which passed structural validation); with `scan`, every
    /// byte is read and checked.
    pub fn from_checkpoint(source: &str, ck: &Checkpoint, scan: bool, lora_rank: usize) -> Self {
        let c = ck.config();
        let mut by_dtype: BTreeMap<String, DtypeBytes> = BTreeMap::new();
        let mut quantized = Quantized {
            tensors: 0,
            bytes: 0,
        };
        for name in ck.tensor_names() {
            let t = ck.tensor(name).expect("listed tensor exists");
            let e = by_dtype.entry(format!("{:?}", t.dtype)).or_default();
            e.tensors += 1;
            e.bytes += t.bytes.len() as u64;
            if name.ends_with("_blocks") || name.ends_with("_scales") {
                quantized.tensors += 1;
                quantized.bytes += t.bytes.len() as u64;
            }
        }
        let shards: Vec<ShardFile> = ck
            .shard_files()
            .map(|(p, bytes)| ShardFile {
                file: p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes,
            })
            .collect();
        let scan = scan.then(|| ck.scan_data());
        let mut errors = Vec::new();
        let mut warnings: Vec<String> = ck
            .unexpected_tensors()
            .iter()
            .map(|n| format!("unexpected tensor `{n}` (not in the release format)"))
            .collect();
        if let Some(s) = &scan {
            errors.extend(s.errors.iter().cloned());
            warnings.extend(s.warnings.iter().cloned());
        }
        let n = ck.tensor_names().count();
        let summary = match (&scan, errors.is_empty()) {
            (_, false) => format!("FAILED: {} problem(s) in the tensor data", errors.len()),
            (Some(s), true) => format!(
                "OK: {n} tensors match the config; all {} data bytes read, BF16 finite, MXFP4 scales plausible",
                s.bytes_read
            ),
            (None, true) => format!("OK: {n} tensors match the config (data not scanned)"),
        };
        InspectReport {
            source: source.to_string(),
            kind: "checkpoint",
            architecture: architecture(c),
            parameters: params(c),
            bytes_on_disk: shards.iter().map(|s| s.bytes).sum(),
            bytes_by_dtype: by_dtype,
            estimated: false,
            quantized,
            shards,
            unexpected_tensors: ck.unexpected_tensors().to_vec(),
            scan,
            training_estimate: c.training_estimate(lora_rank),
            verdict: Verdict {
                ok: errors.is_empty(),
                summary,
                errors,
                warnings,
            },
        }
    }
}

fn architecture(c: &GptOssConfig) -> Architecture {
    Architecture {
        model_type: "gpt_oss",
        layers: c.num_hidden_layers,
        experts: c.num_local_experts,
        top_k: c.experts_per_token,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        sliding_window: c.sliding_window,
        layer_types: c.layer_types.iter().map(|t| t.as_str()).collect(),
        rope: Rope {
            rope_type: "yarn",
            theta: c.rope.theta,
            factor: c.rope.factor,
            beta_fast: c.rope.beta_fast,
            beta_slow: c.rope.beta_slow,
            original_max_position_embeddings: c.rope.original_max_position_embeddings,
            truncate: c.rope.truncate,
            attention_scaling: c.rope.attention_scaling(),
        },
        swiglu_limit: c.swiglu_limit,
        rms_norm_eps: c.rms_norm_eps,
    }
}

fn params(c: &GptOssConfig) -> Params {
    Params {
        total: c.param_count(),
        active: c.active_param_count(),
        mxfp4: c
            .expected_tensors()
            .iter()
            .filter(|s| s.is_quantized())
            .map(|s| s.param_count())
            .sum(),
    }
}
