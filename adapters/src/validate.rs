//! Checking an adapter against the dimensions of the base model it will be applied to.

use std::path::Path;

use crate::adapter::{check_shape, LoraAdapter};
use crate::error::AdapterError;
use crate::keys::{self, AttnProj, ExpertProj, Factor};

/// Dimensions of the base model, given by the caller (this crate does not read checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseDims {
    /// number of decoder layers
    pub layers: usize,
    /// hidden size H
    pub hidden: usize,
    /// expert intermediate size I
    pub intermediate: usize,
    /// attention heads
    pub heads: usize,
    /// key/value heads
    pub kv_heads: usize,
    /// dimension of one head
    pub head_dim: usize,
    /// experts per layer E
    pub experts: usize,
}

impl BaseDims {
    /// `(in, out)` of an attention projection.
    pub fn attention_dims(&self, proj: AttnProj) -> (usize, usize) {
        match proj {
            AttnProj::Q => (self.hidden, self.heads * self.head_dim),
            AttnProj::K | AttnProj::V => (self.hidden, self.kv_heads * self.head_dim),
            AttnProj::O => (self.heads * self.head_dim, self.hidden),
        }
    }

    /// `(in, out)` of one expert's weight.
    pub fn expert_dims(&self, proj: ExpertProj) -> (usize, usize) {
        match proj {
            ExpertProj::GateUp => (self.hidden, 2 * self.intermediate),
            ExpertProj::Down => (self.intermediate, self.hidden),
        }
    }
}

impl LoraAdapter {
    /// Checks the adapter against `dims`: every layer in range, every A/B shaped as the base implies
    /// (ranks from r/rank_pattern, expert stacks of `r·E`), every `target_parameters` entry naming an expert
    /// weight of this base with its tensors present, all values finite. Errors name the file and key.
    pub fn validate(&self, dims: &BaseDims) -> Result<(), AdapterError> {
        let path = self.source.as_path();
        for &(layer, proj) in self.attention.keys() {
            let slot = &self.attention[&(layer, proj)];
            check_layer(path, &slot.a, layer, dims)?;
            let (i, o) = dims.attention_dims(proj);
            let why = format!(
                "{} of the base: in {i}, out {o}, rank {}",
                proj.name(),
                slot.r
            );
            check_shape(
                path,
                &slot.a,
                &self.tensors[&slot.a].shape,
                &[slot.r, i],
                &why,
            )?;
            check_shape(
                path,
                &slot.b,
                &self.tensors[&slot.b].shape,
                &[o, slot.r],
                &why,
            )?;
        }
        for &(layer, proj) in self.experts.keys() {
            let slot = &self.experts[&(layer, proj)];
            check_layer(path, &slot.a, layer, dims)?;
            let (i, o) = dims.expert_dims(proj);
            let re = slot.r * dims.experts;
            let why = format!(
                "{} of the base: in {i}, out {o}, {} experts of rank {}",
                proj.name(),
                dims.experts,
                slot.r
            );
            check_shape(path, &slot.a, &self.tensors[&slot.a].shape, &[re, i], &why)?;
            check_shape(path, &slot.b, &self.tensors[&slot.b].shape, &[o, re], &why)?;
        }
        self.check_targets(dims)?;
        for (key, t) in &self.tensors {
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(AdapterError::NonFinite {
                    path: path.into(),
                    key: key.clone(),
                    index: i,
                    value: t.data[i],
                });
            }
        }
        Ok(())
    }

    /// Every `target_parameters` entry must select an expert weight of this base, and each selected weight
    /// must have its tensors.
    fn check_targets(&self, dims: &BaseDims) -> Result<(), AdapterError> {
        let Some(targets) = &self.config.target_parameters else {
            return Ok(());
        };
        let cfg = Path::new(crate::CONFIG_FILE);
        for t in targets {
            let one = std::slice::from_ref(t);
            let hits = (0..dims.layers).any(|l| {
                ExpertProj::ALL
                    .iter()
                    .any(|&p| keys::expert_targeted(one, l, p))
            });
            if !hits {
                return Err(AdapterError::ConfigValue {
                    path: cfg.into(),
                    key: "target_parameters".into(),
                    message: format!(
                        "entry {t:?} selects no expert weight of a base with {} layers \
                         (expected e.g. layers.0.mlp.experts.gate_up_proj or mlp.experts.down_proj)",
                        dims.layers
                    ),
                });
            }
        }
        for l in 0..dims.layers {
            let both = ExpertProj::ALL
                .iter()
                .all(|&p| keys::expert_targeted(targets, l, p));
            for p in ExpertProj::ALL {
                if keys::expert_targeted(targets, l, p) && !self.experts.contains_key(&(l, p)) {
                    return Err(AdapterError::Inconsistent {
                        path: self.source.clone(),
                        key: keys::expert_key(l, p, both, Factor::A),
                        message: format!(
                            "absent, but target_parameters selects {}",
                            keys::expert_param(l, p)
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_layer(path: &Path, key: &str, layer: usize, dims: &BaseDims) -> Result<(), AdapterError> {
    if layer < dims.layers {
        return Ok(());
    }
    Err(AdapterError::LayerOutOfRange {
        path: path.into(),
        key: key.into(),
        layer,
        layers: dims.layers,
    })
}
