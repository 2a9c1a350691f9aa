//! The adapters being merged: loaded, each validated against the base, and looked up per
//! checkpoint tensor. Several adapters are merged in the order given.

use std::path::{Path, PathBuf};

use adapters::{AttnProj, LoraAdapter};
use anyhow::{bail, Context, Result};
use kernels::deploy::HostLora;

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

/// The adapters of one merge, in the order given.
#[derive(Debug)]
pub struct MergeSet {
    /// `(directory, adapter)`.
    pub adapters: Vec<(PathBuf, LoraAdapter)>,
}

impl MergeSet {
    /// Loads every adapter directory and validates it against `base` (layers in range, shapes,
    /// expert counts, finite values); errors name the adapter.
    pub fn load(paths: &[PathBuf], base: &Checkpoint) -> Result<Self> {
        if paths.is_empty() {
            bail!("no adapter given (--lora-path)");
        }
        let dims = base_dims(base.config());
        let mut adapters = Vec::with_capacity(paths.len());
        for p in paths {
            let a = LoraAdapter::load(p)
                .with_context(|| format!("loading the adapter {}", p.display()))?;
            a.validate(&dims).with_context(|| {
                format!(
                    "the adapter {} does not fit the base {}",
                    p.display(),
                    base.dir().display()
                )
            })?;
            adapters.push((p.clone(), a));
        }
        Ok(Self { adapters })
    }

    /// The role of tensor `name` of the base. With `all_experts`, every expert tensor is an
    /// expert role even without an adapter on it (a BF16 export converts them all).
    pub fn role(&self, name: &str, layers: usize, all_experts: bool) -> Role {
        let Some(l) = layer_of(name).filter(|&l| l < layers) else {
            return Role::Copy;
        };
        for p in AttnProj::ALL {
            if name == names::attn_weight(l, p.name()) && !self.attention(l, p).is_empty() {
                return Role::Attention(l, p);
            }
        }
        for p in ExpertProj::ALL {
            if !all_experts && self.experts(l, p).is_empty() {
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

    /// The LoRAs of attention projection `p` of layer `l`, in merge order.
    pub fn attention(&self, l: usize, p: AttnProj) -> Vec<HostLora<'_>> {
        self.adapters
            .iter()
            .filter_map(|(_, a)| a.attention(l, p))
            .map(|lo| HostLora {
                a: lo.a,
                b: lo.b,
                rank: lo.r,
                scale: lo.scale,
            })
            .collect()
    }

    /// The stacked expert LoRAs of `p` in layer `l`, in merge order.
    pub fn experts(&self, l: usize, p: ExpertProj) -> Vec<adapters::ExpertLora<'_>> {
        self.adapters
            .iter()
            .filter_map(|(_, a)| a.experts(l, lora_proj(p)))
            .collect()
    }

    /// The adapter directories.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.adapters.iter().map(|(p, _)| p.as_path())
    }
}

/// `l` of a `model.layers.{l}.…` name.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}
