//! The adapters being merged: each loaded once, validated against the base and summarized (which
//! modules it adapts), then read again one layer at a time while the export walks the base, so
//! memory holds one layer's factors, not the whole adapters. Merged in the order given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use adapters::{AdapterConfig, AttnProj, LoraAdapter};
use anyhow::{bail, Context, Result};
use kernels::deploy::HostLora;

use super::trust::{Trust, TrustPolicy};
use crate::checkpoint::{names, Checkpoint, ExpertProj};
use crate::model::load::base_dims;

/// What one checkpoint tensor is to the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model.layers.{l}.self_attn.{q,k,v,o}_proj.weight` with at least one adapter on it.
    Attention(usize, AttnProj),
    /// `…mlp.experts.{proj}_blocks` with at least one adapter on it.
    ExpertBlocks(usize, ExpertProj),
    /// `…mlp.experts.{proj}_scales` with at least one adapter on it.
    ExpertScales(usize, ExpertProj),
    /// Not adapted: copied byte for byte.
    Copy,
}

/// The expert projection of the adapters crate for a checkpoint projection.
pub fn lora_proj(p: ExpertProj) -> adapters::ExpertProj {
    match p {
        ExpertProj::GateUp => adapters::ExpertProj::GateUp,
        ExpertProj::Down => adapters::ExpertProj::Down,
    }
}

/// One adapter of the merge, as validated.
#[derive(Debug, Clone)]
pub struct Source {
    /// The adapter directory.
    pub path: PathBuf,
    /// Its config.
    pub config: AdapterConfig,
    /// Number of tensors.
    pub tensors: usize,
    /// Its provenance and signatures, as checked.
    pub trust: Trust,
}

/// Every adapter's factors of one layer, in merge order.
#[derive(Debug)]
pub struct LayerLoras {
    /// The layer.
    pub layer: usize,
    adapters: Vec<LoraAdapter>,
}

impl LayerLoras {
    /// The LoRAs of attention projection `p`, in merge order.
    pub fn attention(&self, p: AttnProj) -> Vec<HostLora<'_>> {
        self.adapters
            .iter()
            .filter_map(|a| a.attention(self.layer, p))
            .map(|lo| HostLora {
                a: lo.a,
                b: lo.b,
                rank: lo.r,
                scale: lo.scale,
            })
            .collect()
    }

    /// The stacked expert LoRAs of `p`, in merge order.
    pub fn experts(&self, p: ExpertProj) -> Vec<adapters::ExpertLora<'_>> {
        self.adapters
            .iter()
            .filter_map(|a| a.experts(self.layer, lora_proj(p)))
            .collect()
    }
}

/// The adapters of one merge, in the order given.
#[derive(Debug)]
pub struct MergeSet {
    /// The adapters, in merge order.
    pub sources: Vec<Source>,
    /// The base's fingerprint (what the adapters' provenance was checked against).
    pub base_fingerprint: String,
    attention: BTreeSet<(usize, AttnProj)>,
    experts: BTreeSet<(usize, adapters::ExpertProj)>,
    /// The layer read last.
    cache: Mutex<Option<Arc<LayerLoras>>>,
}

/// `l` of a `…layers.{l}.…` name (checkpoint tensors and PEFT keys alike).
fn layer_of(name: &str) -> Option<usize> {
    let rest = name
        .split(".layers.")
        .nth(1)
        .or_else(|| name.strip_prefix("layers."))?;
    rest.split('.').next()?.parse().ok()
}

impl MergeSet {
    /// Checks every adapter directory's provenance, base fingerprint and signatures against
    /// `policy` (see [`super::trust`]), then loads it and validates it against `base` (layers in
    /// range, shapes, expert counts, finite values); errors name the adapter.
    pub fn load(paths: &[PathBuf], base: &Checkpoint, policy: &TrustPolicy) -> Result<Self> {
        if paths.is_empty() {
            bail!("no adapter given (--lora-path)");
        }
        let dims = base_dims(base.config());
        let fingerprint = base.fingerprint()?;
        let (mut sources, mut attention, mut experts) =
            (Vec::new(), BTreeSet::new(), BTreeSet::new());
        for p in paths {
            let trust = super::trust::check(p, &fingerprint, policy)?;
            let a = LoraAdapter::load(p)
                .with_context(|| format!("loading the adapter {}", p.display()))?;
            a.validate(&dims).with_context(|| {
                format!(
                    "the adapter {} does not fit the base {}",
                    p.display(),
                    base.dir().display()
                )
            })?;
            attention.extend(a.attention_modules());
            experts.extend(a.expert_modules());
            sources.push(Source {
                path: p.clone(),
                config: a.config().clone(),
                tensors: a.len(),
                trust,
            });
        }
        Ok(Self {
            sources,
            base_fingerprint: fingerprint,
            attention,
            experts,
            cache: Mutex::new(None),
        })
    }

    /// The role of tensor `name` of the base. With `all_experts`, every expert tensor is an
    /// expert role even without an adapter on it (a BF16 export converts them all).
    pub fn role(&self, name: &str, layers: usize, all_experts: bool) -> Role {
        let Some(l) = layer_of(name).filter(|&l| l < layers) else {
            return Role::Copy;
        };
        for p in AttnProj::ALL {
            if self.attention.contains(&(l, p)) && name == names::attn_weight(l, p.name()) {
                return Role::Attention(l, p);
            }
        }
        for p in ExpertProj::ALL {
            if !all_experts && !self.experts.contains(&(l, lora_proj(p))) {
                continue;
            }
            if name == names::expert_blocks(l, p.stem()) {
                return Role::ExpertBlocks(l, p);
            }
            if name == names::expert_scales(l, p.stem()) {
                return Role::ExpertScales(l, p);
            }
        }
        Role::Copy
    }

    /// Every adapter's factors of layer `l` (read from disk unless it was the last layer asked).
    pub fn layer(&self, l: usize) -> Result<Arc<LayerLoras>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.layer == l) {
            return Ok(Arc::clone(c));
        }
        *cache = None; // the previous layer's factors go before this one's come
        let mut adapters = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            let a = LoraAdapter::load_where(&s.path, |k| layer_of(k) == Some(l)).with_context(
                || format!("reading layer {l} of the adapter {}", s.path.display()),
            )?;
            adapters.push(a);
        }
        let layer = Arc::new(LayerLoras { layer: l, adapters });
        *cache = Some(Arc::clone(&layer));
        Ok(layer)
    }

    /// The adapter directories.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().map(|s| s.path.as_path())
    }
}
