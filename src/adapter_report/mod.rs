//! `lora-qat inspect ADAPTER [--base B]`: what an adapter directory is before anyone spends GPU
//! hours on it. Rank, alpha, scaling, parameters and bytes; the coverage table (layer × module);
//! finiteness and norms of every tensor; the provenance, verified against the manifest, and its
//! signatures; what vLLM would reject. With a base: every target exists in it, the shapes agree,
//! no target pattern is a silent no-op, and the base fingerprint matches.

mod render;

use std::path::Path;

use adapters::provenance::{self, Provenance};
use adapters::signing;
use adapters::LoraAdapter;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::{resolve_model, Checkpoint};
use crate::model::load::base_dims;

pub use render::render;

/// One adapted module (an attention projection, or one expert weight with all its experts).
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    /// module (or expert parameter) path
    pub module: String,
    /// layer
    pub layer: usize,
    /// q_proj, k_proj, v_proj, o_proj, gate_up_proj or down_proj
    pub proj: &'static str,
    /// rank (per expert for experts)
    pub rank: usize,
    /// number of experts (1 for attention)
    pub experts: usize,
    /// LoRA scaling (alpha/r or alpha/√r)
    pub scaling: f32,
    /// trainable parameters of A and B
    pub parameters: usize,
}

/// One stored tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// PEFT key
    pub key: String,
    /// shape
    pub shape: Vec<usize>,
    /// L2 norm (f64 accumulation)
    pub l2: f64,
    /// largest |value|
    pub max_abs: f32,
    /// every value finite (loading refuses otherwise; kept for the JSON report)
    pub finite: bool,
}

/// A signature, checked.
#[derive(Debug, Clone, Serialize)]
pub struct SignerInfo {
    /// hex public key
    pub public_key: String,
    /// who
    pub comment: String,
    /// verifies against the sidecar's bytes
    pub valid: bool,
}

/// The provenance as verified.
#[derive(Debug, Clone, Serialize)]
pub struct ProvenanceInfo {
    /// `sealed`, `none` (made outside lora-qat) or `tampered`
    pub status: &'static str,
    /// the sidecar, when readable
    pub provenance: Option<Provenance>,
    /// SHA-256 of the sidecar
    pub sha256: Option<String>,
    /// what failed (tampering)
    pub problems: Vec<String>,
    /// files not covered by the manifest
    pub unlisted: Vec<String>,
    /// signatures
    pub signatures: Vec<SignerInfo>,
}

/// The base check (`--base`).
#[derive(Debug, Clone, Serialize)]
pub struct BaseCheck {
    /// the base directory
    pub dir: String,
    /// its fingerprint
    pub fingerprint: String,
    /// `match`, `mismatch`, or `unknown` (the adapter records none)
    pub fingerprint_status: &'static str,
    /// layers of the base
    pub layers: usize,
}

/// Everything `inspect` says about an adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    /// the directory
    pub dir: String,
    /// adapter_config.json as loaded
    pub config: Value,
    /// default rank / alpha
    pub r: usize,
    /// default alpha
    pub lora_alpha: f64,
    /// rsLoRA
    pub use_rslora: bool,
    /// adapted modules in (layer, module) order
    pub modules: Vec<ModuleInfo>,
    /// every tensor
    pub tensors: Vec<TensorInfo>,
    /// total trainable parameters
    pub parameters: usize,
    /// bytes of adapter_model.safetensors
    pub weights_bytes: u64,
    /// dtypes on disk
    pub dtypes: Vec<String>,
    /// layers shown in the coverage table
    pub layers: usize,
    /// the provenance
    pub provenance: ProvenanceInfo,
    /// the base check
    pub base: Option<BaseCheck>,
    /// what vLLM would reject or handle differently
    pub serving_warnings: Vec<String>,
    /// notes (no provenance, unlisted files)
    pub notes: Vec<String>,
    /// errors: the adapter should not be used as is
    pub errors: Vec<String>,
}

impl AdapterReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn tensor_info(key: &str, shape: &[usize], data: &[f32]) -> TensorInfo {
    let l2 = data
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>();
    TensorInfo {
        key: key.to_string(),
        shape: shape.to_vec(),
        l2: l2.sqrt(),
        max_abs: data.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        finite: data.iter().all(|v| v.is_finite()),
    }
}

fn modules(a: &LoraAdapter) -> Vec<ModuleInfo> {
    let mut out = Vec::new();
    for (l, p) in a.attention_modules() {
        let lo = a.attention(l, p).expect("listed");
        out.push(ModuleInfo {
            module: adapters::attention_module(l, p),
            layer: l,
            proj: p.name(),
            rank: lo.r,
            experts: 1,
            scaling: lo.scale,
            parameters: lo.a.len() + lo.b.len(),
        });
    }
    for (l, p) in a.expert_modules() {
        let lo = a.experts(l, p).expect("listed");
        out.push(ModuleInfo {
            module: adapters::expert_param(l, p),
            layer: l,
            proj: p.name(),
            rank: lo.r,
            experts: lo.experts,
            scaling: lo.scale,
            parameters: lo.a.len() + lo.b.len(),
        });
    }
    out.sort_by_key(|m| (m.layer, order(m.proj)));
    out
}

/// Column order of the coverage table.
pub const COLUMNS: [&str; 6] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_up_proj",
    "down_proj",
];

fn order(proj: &str) -> usize {
    COLUMNS
        .iter()
        .position(|c| *c == proj)
        .unwrap_or(COLUMNS.len())
}

fn provenance_info(dir: &Path, errors: &mut Vec<String>) -> ProvenanceInfo {
    let mut info = ProvenanceInfo {
        status: "none",
        provenance: None,
        sha256: None,
        problems: Vec::new(),
        unlisted: Vec::new(),
        signatures: Vec::new(),
    };
    match provenance::verify(dir) {
        Ok(None) => {}
        Ok(Some(sealed)) => {
            info.status = "sealed";
            info.sha256 = Some(sealed.digest());
            match signing::signatures(dir, &sealed) {
                Ok(sigs) => {
                    for s in sigs {
                        if !s.valid {
                            errors.push(format!(
                                "the signature by {} ({}) does not verify: the provenance changed after signing",
                                s.entry.comment, s.entry.public_key
                            ));
                        }
                        info.signatures.push(SignerInfo {
                            public_key: s.entry.public_key,
                            comment: s.entry.comment,
                            valid: s.valid,
                        });
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
            info.unlisted = sealed.unlisted;
            info.provenance = Some(sealed.provenance);
        }
        Err(e) => {
            info.status = "tampered";
            if let adapters::provenance::TrustError::Tampered { problems, .. } = &e {
                info.problems = problems.clone();
            }
            info.provenance = provenance::read(dir).ok().flatten().map(|(p, _)| p);
            errors.push(e.to_string());
        }
    }
    info
}

/// Inspects the adapter directory `dir`, against `base` when given (a directory or hub id).
pub fn inspect(dir: &Path, base: Option<&str>) -> Result<AdapterReport> {
    let adapter = LoraAdapter::load(dir)?;
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let provenance = provenance_info(dir, &mut errors);
    if provenance.status == "none" {
        notes.push(format!(
            "no {}: made outside lora-qat (e.g. by PEFT); its files, base and origin cannot be checked",
            provenance::PROVENANCE_FILE
        ));
    }
    for f in &provenance.unlisted {
        notes.push(format!(
            "{f} is not covered by the manifest (added after sealing; not signed)"
        ));
    }
    let modules = modules(&adapter);
    let tensors: Vec<TensorInfo> = adapter
        .tensors()
        .map(|(k, s, d)| tensor_info(k, s, d))
        .collect();
    let mut layers = modules.iter().map(|m| m.layer + 1).max().unwrap_or(0);
    let base = match base {
        None => None,
        Some(b) => {
            let bdir = resolve_model(b)?;
            let ck = Checkpoint::open(&bdir)?;
            let dims = base_dims(ck.config());
            layers = dims.layers;
            if let Err(e) = adapter.validate(&dims) {
                errors.push(format!("does not fit the base {}: {e}", bdir.display()));
            }
            let fingerprint = ck.fingerprint()?;
            let recorded = provenance
                .provenance
                .as_ref()
                .and_then(|p| p.base.fingerprint.clone());
            let fingerprint_status = match recorded {
                None => "unknown",
                Some(fp) if fp == fingerprint => "match",
                Some(fp) => {
                    errors.push(format!(
                        "trained on another base: the provenance records fingerprint {fp}, {} has {fingerprint}",
                        bdir.display()
                    ));
                    "mismatch"
                }
            };
            Some(BaseCheck {
                dir: bdir.display().to_string(),
                fingerprint,
                fingerprint_status,
                layers,
            })
        }
    };
    let weights = dir.join(adapters::WEIGHTS_FILE);
    Ok(AdapterReport {
        dir: dir.display().to_string(),
        config: adapter.config().to_json(),
        r: adapter.config().r,
        lora_alpha: adapter.config().lora_alpha,
        use_rslora: adapter.config().use_rslora,
        parameters: modules.iter().map(|m| m.parameters).sum(),
        modules,
        tensors,
        weights_bytes: std::fs::metadata(&weights).map_or(0, |m| m.len()),
        dtypes: adapter.source_dtypes().to_vec(),
        layers,
        provenance,
        base,
        serving_warnings: adapter.serving_warnings(),
        notes,
        errors,
    })
}
