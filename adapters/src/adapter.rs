//! The in-memory adapter: config + f32 tensors under PEFT's key names, indexed by (layer, projection).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::AdapterConfig;
use crate::error::AdapterError;
use crate::keys::{self, AttnProj, ExpertProj, Factor, ParsedKey};

/// One stored tensor: a row-major f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// dimensions, outermost first
    pub shape: Vec<usize>,
    /// row-major values
    pub data: Vec<f32>,
}

/// The LoRA of one attention projection. `W` is `[out, in]` (nn.Linear), `ΔW = scale·B·A`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionLora<'a> {
    /// `[r, in]` row-major
    pub a: &'a [f32],
    /// `[out, r]` row-major
    pub b: &'a [f32],
    /// rank
    pub r: usize,
    /// input features
    pub in_features: usize,
    /// output features
    pub out_features: usize,
    /// alpha/r (or alpha/sqrt(r))
    pub scale: f32,
}

/// The stacked per-expert LoRAs of one expert weight (PEFT `target_parameters` layout).
#[derive(Debug, Clone, Copy)]
pub struct ExpertLora<'a> {
    /// `[r·E, in]` row-major, expert-major: row `e·r + j`
    pub a: &'a [f32],
    /// `[out, r·E]` row-major, rank-major: column `j·E + e`
    pub b: &'a [f32],
    /// rank per expert
    pub r: usize,
    /// number of experts E
    pub experts: usize,
    /// input features
    pub in_features: usize,
    /// output features
    pub out_features: usize,
    /// alpha/r (or alpha/sqrt(r))
    pub scale: f32,
}

impl<'a> ExpertLora<'a> {
    /// Expert `e`'s `A_e` (`[r, in]`): rows `e·r..(e+1)·r` of the stacked A, borrowed.
    ///
    /// # Panics
    /// When `e >= experts` (a caller bug).
    pub fn expert_a(&self, e: usize) -> &'a [f32] {
        let n = self.r * self.in_features;
        &self.a[e * n..(e + 1) * n]
    }

    /// Expert `e`'s `B_e` (`[out, r]`): column `j` is column `j·E + e` of the stacked B (PEFT's
    /// rank-major order). This and [`expert_a`](Self::expert_a) are the one place PEFT's
    /// per-expert slicing is written.
    ///
    /// # Panics
    /// When `e >= experts` (a caller bug).
    pub fn expert_b(&self, e: usize) -> Vec<f32> {
        assert!(e < self.experts, "expert {e} of {}", self.experts);
        let (r, n) = (self.r, self.experts);
        self.b
            .chunks_exact(r * n)
            .flat_map(|row| (0..r).map(move |j| row[j * n + e]))
            .collect()
    }
}

/// Where the A and B of one adapted module live, with their rank and scaling.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub a: String,
    pub b: String,
    pub r: usize,
    pub experts: usize,
    pub scale: f32,
}

/// A PEFT LoRA adapter for gpt-oss.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub(crate) config: AdapterConfig,
    pub(crate) source: PathBuf,
    pub(crate) tensors: BTreeMap<String, Tensor>,
    pub(crate) attention: BTreeMap<(usize, AttnProj), Slot>,
    pub(crate) experts: BTreeMap<(usize, ExpertProj), Slot>,
    pub(crate) source_dtypes: Vec<String>,
}

/// Label used as "file" in messages about an adapter built in memory.
pub const IN_MEMORY: &str = "<in-memory adapter>";

impl LoraAdapter {
    /// Builds an adapter from a config and named tensors (PEFT key names, f32, row-major), checking that
    /// every key is a known gpt-oss LoRA key, shapes match their data, each A has its B, ranks agree with
    /// `r`/`rank_pattern`, expert stacks are whole, and values are finite. Whether the tensors are the
    /// ones the config targets is checked against a base by [`validate`](Self::validate).
    pub fn from_parts(
        config: AdapterConfig,
        tensors: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Self, AdapterError> {
        config.check_supported(Path::new(IN_MEMORY))?;
        let mut map = BTreeMap::new();
        for (key, shape, data) in tensors {
            if map.contains_key(&key) {
                return Err(inconsistent(
                    Path::new(IN_MEMORY),
                    &key,
                    "given twice".into(),
                ));
            }
            map.insert(key, Tensor { shape, data });
        }
        Self::index(config, map, PathBuf::from(IN_MEMORY), vec!["F32".into()])
    }

    /// Indexes `tensors` by module and checks their mutual consistency (no base model needed).
    pub(crate) fn index(
        config: AdapterConfig,
        tensors: BTreeMap<String, Tensor>,
        source: PathBuf,
        source_dtypes: Vec<String>,
    ) -> Result<Self, AdapterError> {
        let path = source.as_path();
        let targets = config.target_parameters.clone().unwrap_or_default();
        let mut attention = BTreeMap::new();
        let mut experts = BTreeMap::new();
        for (key, t) in &tensors {
            let n: usize = t.shape.iter().product();
            if t.shape.len() != 2 || n != t.data.len() {
                let msg = format!(
                    "shape {:?} (must be 2-D) does not fit {} values",
                    t.shape,
                    t.data.len()
                );
                return Err(inconsistent(path, key, msg));
            }
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(AdapterError::NonFinite {
                    path: path.into(),
                    key: key.clone(),
                    index: i,
                    value: t.data[i],
                });
            }
            let parsed = keys::parse_key(key).ok_or_else(|| AdapterError::UnknownKey {
                path: path.into(),
                key: key.clone(),
                message: keys::describe_unsupported(key),
            })?;
            let (factor, partner) = match parsed {
                ParsedKey::Attention {
                    layer,
                    proj,
                    factor,
                } => (factor, keys::attention_key(layer, proj, factor.partner())),
                ParsedKey::ExpertWrapper {
                    layer,
                    nested,
                    factor,
                } => (
                    factor,
                    keys::expert_wrapper_key(layer, nested, factor.partner()),
                ),
            };
            if !tensors.contains_key(&partner) {
                return Err(AdapterError::MissingPartner {
                    path: path.into(),
                    key: key.clone(),
                    missing: partner,
                });
            }
            if factor == Factor::B {
                continue; // indexed from its A
            }
            let b = &tensors[&partner];
            match parsed {
                ParsedKey::Attention { layer, proj, .. } => {
                    let module = keys::attention_module(layer, proj);
                    let r = config.rank_for(&module);
                    check_shape(
                        path,
                        key,
                        &t.shape,
                        &[r, t.shape[1]],
                        "rank from r/rank_pattern",
                    )?;
                    check_shape(
                        path,
                        &partner,
                        &b.shape,
                        &[b.shape[0], r],
                        "rank from r/rank_pattern",
                    )?;
                    let scale = config.scaling_for(&module);
                    attention.insert(
                        (layer, proj),
                        Slot {
                            a: key.clone(),
                            b: partner,
                            r,
                            experts: 1,
                            scale,
                        },
                    );
                }
                ParsedKey::ExpertWrapper { layer, nested, .. } => {
                    let proj =
                        keys::attribute_expert(&targets, layer, nested).map_err(|message| {
                            AdapterError::UnknownKey {
                                path: path.into(),
                                key: key.clone(),
                                message,
                            }
                        })?;
                    // no expert weight of this layer targeted: kept, refused by `validate` (and
                    // reported by `coverage`), which can tell gate_up from down by the base's shapes
                    let Some(proj) = proj else { continue };
                    let param = keys::expert_param(layer, proj);
                    let r = config.rank_for(&param);
                    let rows = t.shape[0];
                    if rows == 0 || rows % r != 0 {
                        let msg = format!(
                            "{rows} rows is not a whole number of rank-{r} expert blocks (r·E)"
                        );
                        return Err(inconsistent(path, key, msg));
                    }
                    check_shape(
                        path,
                        &partner,
                        &b.shape,
                        &[b.shape[0], rows],
                        "columns r·E equal to lora_A's rows",
                    )?;
                    let scale = config.scaling_for(&param);
                    let slot = Slot {
                        a: key.clone(),
                        b: partner,
                        r,
                        experts: rows / r,
                        scale,
                    };
                    experts.insert((layer, proj), slot);
                }
            }
        }
        Ok(LoraAdapter {
            config,
            source,
            tensors,
            attention,
            experts,
            source_dtypes,
        })
    }

    /// The adapter's config.
    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// The file the tensors came from (or [`IN_MEMORY`]).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The dtypes the tensors had on disk (F32, or BF16/F16 converted to f32 at load).
    pub fn source_dtypes(&self) -> &[String] {
        &self.source_dtypes
    }

    /// The LoRA of attention projection `proj` of `layer`, if adapted.
    pub fn attention(&self, layer: usize, proj: AttnProj) -> Option<AttentionLora<'_>> {
        let s = self.attention.get(&(layer, proj))?;
        let (a, b) = (&self.tensors[&s.a], &self.tensors[&s.b]);
        Some(AttentionLora {
            a: &a.data,
            b: &b.data,
            r: s.r,
            in_features: a.shape[1],
            out_features: b.shape[0],
            scale: s.scale,
        })
    }

    /// The stacked expert LoRAs of expert weight `proj` of `layer`, if adapted.
    pub fn experts(&self, layer: usize, proj: ExpertProj) -> Option<ExpertLora<'_>> {
        let s = self.experts.get(&(layer, proj))?;
        let (a, b) = (&self.tensors[&s.a], &self.tensors[&s.b]);
        Some(ExpertLora {
            a: &a.data,
            b: &b.data,
            r: s.r,
            experts: s.experts,
            in_features: a.shape[1],
            out_features: b.shape[0],
            scale: s.scale,
        })
    }

    /// The adapted attention projections, in (layer, q/k/v/o) order.
    pub fn attention_modules(&self) -> impl Iterator<Item = (usize, AttnProj)> + '_ {
        self.attention.keys().copied()
    }

    /// The adapted expert weights, in (layer, gate_up/down) order.
    pub fn expert_modules(&self) -> impl Iterator<Item = (usize, ExpertProj)> + '_ {
        self.experts.keys().copied()
    }

    /// Every tensor as (PEFT key, shape, values), in key order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice(), t.data.as_slice()))
    }

    /// Number of stored tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the adapter holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

fn inconsistent(path: &Path, key: &str, message: String) -> AdapterError {
    AdapterError::Inconsistent {
        path: path.into(),
        key: key.into(),
        message,
    }
}

pub(crate) fn check_shape(
    path: &Path,
    key: &str,
    got: &[usize],
    expected: &[usize],
    why: &str,
) -> Result<(), AdapterError> {
    if got == expected {
        return Ok(());
    }
    Err(AdapterError::Shape {
        path: path.into(),
        key: key.into(),
        expected: expected.to_vec(),
        got: got.to_vec(),
        why: why.into(),
    })
}
