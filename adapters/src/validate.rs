//! Checking an adapter against the dimensions of the base model it will be applied to.

use std::path::{Path, PathBuf};

use crate::adapter::{check_shape, LoraAdapter, IN_MEMORY};
use crate::coverage::{CoverageStatus, Site};
use crate::error::AdapterError;
use crate::keys::{self, AttnProj, ExpertProj, ParsedKey};
use crate::CONFIG_FILE;

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
    /// Checks the adapter against `dims`: every layer in range; every A/B shaped as the base implies
    /// (ranks from r/rank_pattern, expert stacks of `r·E`; an expert LoRA stored under
    /// `mlp.experts.lora_*` for the one targeted weight of its layer must have that weight's shapes);
    /// every `target_modules` / `target_parameters` entry selecting something of this base, and only
    /// what this tool adapts; every targeted module with its tensors and every tensor targeted (see
    /// [`coverage`](Self::coverage)); all values finite. Errors name the file and the key.
    pub fn validate(&self, dims: &BaseDims) -> Result<(), AdapterError> {
        let path = self.source.as_path();
        let (untargeted, unattributed) = self.untargeted_experts(dims);
        for ((layer, _), slot) in self.attention.iter() {
            check_layer(path, &slot.a, *layer, dims)?;
        }
        for ((layer, _), slot) in self.experts.iter() {
            check_layer(path, &slot.a, *layer, dims)?;
        }
        for (layer, _, key, _) in &untargeted {
            check_layer(path, key, *layer, dims)?;
        }
        for key in &unattributed {
            if let Some(ParsedKey::ExpertWrapper { layer, .. }) = keys::parse_key(key) {
                check_layer(path, key, layer, dims)?;
            }
        }
        for &(layer, proj) in self.attention.keys() {
            let slot = &self.attention[&(layer, proj)];
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
            let (a, b) = (&self.tensors[&slot.a].shape, &self.tensors[&slot.b].shape);
            self.check_expert_attribution(dims, layer, proj, &slot.a, a, b)?;
            let (i, o) = dims.expert_dims(proj);
            let re = slot.r * dims.experts;
            let why = format!(
                "{} of the base: in {i}, out {o}, {} experts of rank {}",
                proj.name(),
                dims.experts,
                slot.r
            );
            check_shape(path, &slot.a, a, &[re, i], &why)?;
            check_shape(path, &slot.b, b, &[o, re], &why)?;
        }
        if let Some(key) = unattributed.first() {
            return Err(AdapterError::Inconsistent {
                path: path.into(),
                key: key.clone(),
                message: format!(
                    "an expert LoRA of a layer target_parameters does not select, with shapes that fit \
                     neither gate_up_proj (in {}, out {}) nor down_proj (in {}, out {}) of the base",
                    dims.hidden,
                    2 * dims.intermediate,
                    dims.intermediate,
                    dims.hidden
                ),
            });
        }
        crate::targets::check_against_base(&self.config, dims.layers, &self.config_path())?;
        self.check_coverage(dims)?;
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

    /// Where the config came from, for messages: `adapter_config.json` beside the tensor file.
    pub(crate) fn config_path(&self) -> PathBuf {
        if self.source == Path::new(IN_MEMORY) {
            return PathBuf::from(format!("{IN_MEMORY} {CONFIG_FILE}"));
        }
        self.source.with_file_name(CONFIG_FILE)
    }

    /// A layer with one targeted expert weight stores it under `mlp.experts.lora_*` whichever it is:
    /// its shapes must be that weight's, not the other's.
    fn check_expert_attribution(
        &self,
        dims: &BaseDims,
        layer: usize,
        proj: ExpertProj,
        key: &str,
        a: &[usize],
        b: &[usize],
    ) -> Result<(), AdapterError> {
        let both = ExpertProj::ALL
            .iter()
            .all(|&p| self.config.targets_expert(layer, p));
        let shaped = crate::coverage::expert_by_shape(dims, a, b);
        match shaped {
            Some(other) if !both && other != proj => Err(AdapterError::ExpertMismatch {
                path: self.source.clone(),
                key: key.into(),
                layer,
                selected: proj,
                shaped: other,
                a_shape: a.to_vec(),
                b_shape: b.to_vec(),
            }),
            _ => Ok(()),
        }
    }

    /// Every targeted site has its tensors, every tensor is targeted.
    fn check_coverage(&self, dims: &BaseDims) -> Result<(), AdapterError> {
        let cov = self.coverage(dims);
        for e in &cov.entries {
            let attention = matches!(e.site, Site::Attention { .. });
            match e.status {
                CoverageStatus::Adapted => {}
                CoverageStatus::TargetedWithoutTensors => {
                    return Err(AdapterError::MissingTensors {
                        path: self.source.clone(),
                        key: e.key_a.clone(),
                        module: e.path.clone(),
                        by: if attention {
                            "target_modules"
                        } else {
                            "target_parameters"
                        }
                        .into(),
                    });
                }
                CoverageStatus::UntargetedTensors => {
                    let why = if attention {
                        let mut unfiltered = self.config.clone();
                        unfiltered.layers_to_transform = None;
                        match crate::targets::module_selection(&self.config, &e.path) {
                            crate::targets::Selection::Excluded => "exclude_modules excludes it",
                            _ if unfiltered.targets_module(&e.path) => {
                                "layers_to_transform / layers_pattern leave its layer out"
                            }
                            _ => "no target_modules entry selects it",
                        }
                    } else {
                        "target_parameters selects no expert weight of its layer"
                    };
                    return Err(AdapterError::Untargeted {
                        path: self.source.clone(),
                        key: e.key_a.clone(),
                        module: e.path.clone(),
                        why: why.into(),
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
