//! What an adapter covers in a base: per layer and module, adapted (with rank, alpha, scaling), targeted
//! by the config but without tensors, or holding tensors the config does not target.

use crate::adapter::LoraAdapter;
use crate::keys::{self, AttnProj, ExpertProj, Factor, ParsedKey};
use crate::targets::{module_selection, Selection};
use crate::validate::BaseDims;

/// One adaptable place of a gpt-oss base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// attention projection `model.layers.{layer}.self_attn.{proj}` (via `target_modules`)
    Attention {
        /// layer
        layer: usize,
        /// projection
        proj: AttnProj,
    },
    /// expert weight `model.layers.{layer}.mlp.experts.{proj}` (via `target_parameters`)
    Experts {
        /// layer
        layer: usize,
        /// expert weight
        proj: ExpertProj,
    },
}

impl Site {
    /// The layer.
    pub fn layer(self) -> usize {
        match self {
            Site::Attention { layer, .. } | Site::Experts { layer, .. } => layer,
        }
    }

    /// The path PEFT matches and names it by: the module path of an attention projection, the
    /// parameter path of an expert weight.
    pub fn path(self) -> String {
        match self {
            Site::Attention { layer, proj } => keys::attention_module(layer, proj),
            Site::Experts { layer, proj } => keys::expert_param(layer, proj),
        }
    }
}

/// How the adapter stands at one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverageStatus {
    /// targeted by the config and holding its tensors
    Adapted,
    /// targeted by the config, but its tensors are absent (PEFT would create the LoRA and load nothing)
    TargetedWithoutTensors,
    /// tensors present for a site the config does not target (PEFT would not load them; vLLM, which
    /// goes by the tensor keys, would apply them)
    UntargetedTensors,
}

/// One row of a [`Coverage`].
#[derive(Debug, Clone, PartialEq)]
pub struct CoverageEntry {
    /// where
    pub site: Site,
    /// [`Site::path`]
    pub path: String,
    /// adapted, missing or untargeted
    pub status: CoverageStatus,
    /// rank: the config's (`r` / `rank_pattern`), or for untargeted tensors the one their shape holds
    pub r: usize,
    /// alpha from `lora_alpha` / `alpha_pattern`
    pub alpha: f64,
    /// PEFT's scaling, alpha/r or alpha/sqrt(r) with rsLoRA, in f64 as PEFT holds it
    pub scaling: f64,
    /// the key of lora_A (present, or where PEFT would look for it)
    pub key_a: String,
    /// the key of lora_B
    pub key_b: String,
}

/// The coverage report of an adapter against a base ([`LoraAdapter::coverage`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Coverage {
    /// one entry per site that is targeted or holds tensors, in (layer, attention q/k/v/o, experts
    /// gate_up/down) order
    pub entries: Vec<CoverageEntry>,
    /// lora_A keys of expert tensors in layers with no targeted expert weight whose shapes fit neither
    /// gate_up_proj nor down_proj of the base
    pub unattributed: Vec<String>,
}

impl Coverage {
    /// Entries with `status`.
    pub fn with_status(&self, status: CoverageStatus) -> impl Iterator<Item = &CoverageEntry> {
        self.entries.iter().filter(move |e| e.status == status)
    }

    /// The adapted sites.
    pub fn adapted(&self) -> impl Iterator<Item = &CoverageEntry> {
        self.with_status(CoverageStatus::Adapted)
    }

    /// The entry of `site`, if it is targeted or holds tensors.
    pub fn get(&self, site: Site) -> Option<&CoverageEntry> {
        self.entries.iter().find(|e| e.site == site)
    }

    /// True when every targeted site holds tensors and every tensor is targeted.
    pub fn is_consistent(&self) -> bool {
        self.unattributed.is_empty()
            && self
                .entries
                .iter()
                .all(|e| e.status == CoverageStatus::Adapted)
    }
}

impl LoraAdapter {
    /// The coverage of this adapter in a base of dimensions `dims`: every site the config targets
    /// (PEFT's rules, see [`crate::AdapterConfig::targets_module`]) or that holds tensors. Expert
    /// tensors of a layer with no targeted expert weight are placed by PEFT's nesting
    /// (`experts.base_layer` is gate_up) and the base's shapes.
    pub fn coverage(&self, dims: &BaseDims) -> Coverage {
        let cfg = &self.config;
        let mut out = Coverage::default();
        let (untargeted, unattributed) = self.untargeted_experts(dims);
        out.unattributed = unattributed;
        let mut layers: Vec<usize> = (0..dims.layers).collect();
        layers.extend(self.attention.keys().map(|&(l, _)| l));
        layers.extend(self.experts.keys().map(|&(l, _)| l));
        layers.extend(untargeted.iter().map(|(l, ..)| *l));
        layers.sort_unstable();
        layers.dedup();
        for l in layers {
            for proj in AttnProj::ALL {
                let site = Site::Attention { layer: l, proj };
                let path = site.path();
                let targeted = module_selection(cfg, &path) == Selection::Selected;
                let slot = self.attention.get(&(l, proj));
                let (key_a, key_b) = slot.map_or_else(
                    || {
                        (
                            keys::attention_key(l, proj, Factor::A),
                            keys::attention_key(l, proj, Factor::B),
                        )
                    },
                    |s| (s.a.clone(), s.b.clone()),
                );
                let r = slot.map_or(cfg.rank_for(&path), |s| self.tensors[&s.a].shape[0]);
                out.push(site, path, targeted, slot.is_some(), r, key_a, key_b, cfg);
            }
            let both = ExpertProj::ALL.iter().all(|&p| cfg.targets_expert(l, p));
            for proj in ExpertProj::ALL {
                let site = Site::Experts { layer: l, proj };
                let path = site.path();
                let targeted = cfg.targets_expert(l, proj);
                let found = self
                    .experts
                    .get(&(l, proj))
                    .map(|s| (s.a.clone(), s.b.clone(), s.r))
                    .or_else(|| {
                        untargeted
                            .iter()
                            .find(|u| u.0 == l && u.1 == proj)
                            .map(|u| {
                                let rows = self.tensors[&u.2].shape[0];
                                let r = if rows.is_multiple_of(dims.experts.max(1)) {
                                    rows / dims.experts.max(1)
                                } else {
                                    rows
                                };
                                (u.2.clone(), u.3.clone(), r)
                            })
                    });
                let has = found.is_some();
                let (key_a, key_b, r) = found.unwrap_or_else(|| {
                    (
                        keys::expert_key(l, proj, both, Factor::A),
                        keys::expert_key(l, proj, both, Factor::B),
                        cfg.rank_for(&path),
                    )
                });
                out.push(site, path, targeted, has, r, key_a, key_b, cfg);
            }
        }
        out
    }

    /// Expert tensors of layers where the config targets no expert weight, as (layer, weight, A key,
    /// B key), and the A keys of those whose weight cannot be told.
    #[allow(clippy::type_complexity)]
    pub(crate) fn untargeted_experts(
        &self,
        dims: &BaseDims,
    ) -> (Vec<(usize, ExpertProj, String, String)>, Vec<String>) {
        let (mut found, mut unknown) = (Vec::new(), Vec::new());
        for key in self.tensors.keys() {
            let Some(ParsedKey::ExpertWrapper {
                layer,
                nested,
                factor: Factor::A,
            }) = keys::parse_key(key)
            else {
                continue;
            };
            if ExpertProj::ALL
                .iter()
                .any(|&p| self.config.targets_expert(layer, p))
            {
                continue;
            }
            let b = keys::expert_wrapper_key(layer, nested, Factor::B);
            let (a_shape, b_shape) = (&self.tensors[key].shape, &self.tensors[&b].shape);
            let nested_present =
                self.tensors
                    .contains_key(&keys::expert_wrapper_key(layer, true, Factor::A));
            let proj = if nested {
                Some(ExpertProj::GateUp)
            } else if nested_present {
                Some(ExpertProj::Down)
            } else {
                expert_by_shape(dims, a_shape, b_shape)
            };
            match proj {
                Some(p) => found.push((layer, p, key.clone(), b)),
                None => unknown.push(key.clone()),
            }
        }
        (found, unknown)
    }
}

/// The expert weight whose `(in, out)` the stacked `A [r·E, in]`, `B [out, r·E]` fit.
pub(crate) fn expert_by_shape(dims: &BaseDims, a: &[usize], b: &[usize]) -> Option<ExpertProj> {
    ExpertProj::ALL.into_iter().find(|&p| {
        let (i, o) = dims.expert_dims(p);
        a.get(1) == Some(&i) && b.first() == Some(&o)
    })
}

impl Coverage {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        site: Site,
        path: String,
        targeted: bool,
        has: bool,
        r: usize,
        key_a: String,
        key_b: String,
        cfg: &crate::AdapterConfig,
    ) {
        let status = match (targeted, has) {
            (true, true) => CoverageStatus::Adapted,
            (true, false) => CoverageStatus::TargetedWithoutTensors,
            (false, true) => CoverageStatus::UntargetedTensors,
            (false, false) => return,
        };
        let alpha = cfg.alpha_for(&path);
        self.entries.push(CoverageEntry {
            site,
            status,
            r,
            alpha,
            scaling: cfg.scaling_with(r, alpha),
            key_a,
            key_b,
            path,
        });
    }
}
