//! Several adapters of one base summed into one PEFT adapter (`lora-qat combine`).
//!
//! For every adapted module (attention q/k/v/o of a layer, expert gate_up/down of a layer) the parts'
//! ranks are concatenated in the order the parts are given, and each part's scaling `s_i` is folded
//! into its `B` (`s_i·B_i`, rounded to f32 once), so the combined adapter, at scaling 1, has
//! `ΔW = Σ_i s_i·B_i·A_i` exactly up to that one rounding:
//!
//! - attention: `A = [A_1; A_2; …]` (rows), `B = [s_1·B_1 | s_2·B_2 | …]` (columns);
//! - experts (`A [r·E, in]` expert-major, `B [out, r·E]` rank-major): A's rows are interleaved per expert
//!   (expert `e`'s block is `A_1[e] ; A_2[e] ; …`, `R = Σ r_i` rows), and since column `j·E + e` of a
//!   rank-major B holds rank `j` of expert `e`, B's rows are again the parts' (scaled) rows concatenated.
//!
//! A module adapted by only some parts gets only those parts' factors. The config: `r` = the most common
//! total rank (the larger one on a tie), `lora_alpha = r`, every module whose total rank differs gets its
//! own exact-path `rank_pattern`/`alpha_pattern` entry with alpha = its rank (scaling 1 in PEFT, which reads
//! the patterns, and in vLLM, which computes alpha/r from the global values), `use_rslora` false, and
//! `target_modules` / `target_parameters` list exactly the adapted modules by full path. Expert keys are
//! the combination's: when both expert weights of a layer are adapted, gate_up goes under
//! `experts.base_layer` even if the part that adapts it had only that one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::adapter::LoraAdapter;
use crate::config::AdapterConfig;
use crate::keys::{self, AttnProj, ExpertProj, Factor};

mod report;

pub use report::{
    part_label, CombineDirsError, CombineError, CombineSummary, Combined, CombinedModule,
    ShapeMismatch,
};

/// Shape facts of one part's factors for a module.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dims {
    r: usize,
    experts: usize,
    in_features: usize,
    out_features: usize,
}

impl Dims {
    fn shapes(&self) -> String {
        let re = self.r * self.experts;
        format!(
            "lora_A [{re}, {}] / lora_B [{}, {re}]",
            self.in_features, self.out_features
        )
    }

    fn differs(&self, other: &Dims) -> Option<String> {
        if self.experts != other.experts {
            return Some(format!("{} experts vs {}", self.experts, other.experts));
        }
        if self.in_features != other.in_features {
            let (a, b) = (self.in_features, other.in_features);
            return Some(format!("in_features {a} vs {b}"));
        }
        if self.out_features != other.out_features {
            let (a, b) = (self.out_features, other.out_features);
            return Some(format!("out_features {a} vs {b}"));
        }
        None
    }
}

/// A module of the combination: attention projection or expert weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Module {
    Attn(usize, AttnProj),
    Expert(usize, ExpertProj),
}

impl Module {
    fn path(self) -> String {
        match self {
            Module::Attn(l, p) => keys::attention_module(l, p),
            Module::Expert(l, p) => keys::expert_param(l, p),
        }
    }

    /// The factors, dims and scaling of this module in part `index`, if it adapts it.
    fn of(self, index: usize, part: &LoraAdapter) -> Option<Factors<'_>> {
        let (a, b, dims, scale) = match self {
            Module::Attn(l, p) => part.attention(l, p).map(|x| {
                let d = Dims {
                    r: x.r,
                    experts: 1,
                    in_features: x.in_features,
                    out_features: x.out_features,
                };
                (x.a, x.b, d, x.scale)
            })?,
            Module::Expert(l, p) => part.experts(l, p).map(|x| {
                let d = Dims {
                    r: x.r,
                    experts: x.experts,
                    in_features: x.in_features,
                    out_features: x.out_features,
                };
                (x.a, x.b, d, x.scale)
            })?,
        };
        Some(Factors {
            part: index,
            a,
            b,
            dims,
            scale,
        })
    }

    /// Key of `factor` of this module in `part`'s own file (its expert nesting may differ from the
    /// combination's).
    fn key_in(self, part: &LoraAdapter, factor: Factor) -> String {
        let both = match self {
            Module::Expert(l, _) => both_experts(part, l),
            Module::Attn(..) => false,
        };
        self.key(both, factor)
    }

    /// Key of `factor` in an adapter whose expert weights of this layer are `both` adapted or not.
    fn key(self, both: bool, factor: Factor) -> String {
        match self {
            Module::Attn(l, p) => keys::attention_key(l, p, factor),
            Module::Expert(l, p) => keys::expert_key(l, p, both, factor),
        }
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// One part's factors of a module.
#[derive(Debug, Clone, Copy)]
struct Factors<'a> {
    part: usize,
    a: &'a [f32],
    b: &'a [f32],
    dims: Dims,
    scale: f32,
}

/// True when `a` adapts both expert weights of `layer`.
fn both_experts(a: &LoraAdapter, layer: usize) -> bool {
    ExpertProj::ALL
        .iter()
        .all(|p| a.experts(layer, *p).is_some())
}

/// The one value the parts agree on for an optional config string, refusing two different ones.
fn agreed(
    parts: &[&LoraAdapter],
    labels: &[String],
    key: &'static str,
    get: impl Fn(&AdapterConfig) -> Option<&String>,
) -> Result<Option<String>, CombineError> {
    let mut first: Option<(usize, &String)> = None;
    for (i, p) in parts.iter().enumerate() {
        let Some(v) = get(p.config()) else { continue };
        match first {
            None => first = Some((i, v)),
            Some((f, fv)) if fv != v => {
                return Err(CombineError::DifferentBases {
                    key,
                    first: labels[f].clone(),
                    first_value: fv.clone(),
                    part: labels[i].clone(),
                    value: v.clone(),
                })
            }
            Some(_) => {}
        }
    }
    if let Some((_, v)) = first {
        for (i, p) in parts.iter().enumerate() {
            if get(p.config()).is_none() {
                tracing::warn!(part = %labels[i], %key, value = %v, "part does not name it; keeping the other parts' value");
            }
        }
    }
    Ok(first.map(|(_, v)| v.clone()))
}

/// Sums `parts` (in this order) into one adapter; see the module documentation for the layout and config.
/// Refuses fewer than two parts, parts whose factors for the same module disagree in shape (different
/// bases), and parts naming different `base_model_name_or_path` or `revision`.
pub fn combine(parts: &[&LoraAdapter]) -> Result<Combined, CombineError> {
    if parts.len() < 2 {
        return Err(CombineError::TooFewParts { got: parts.len() });
    }
    let labels: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| part_label(i, p))
        .collect();
    let base = agreed(parts, &labels, "base_model_name_or_path", |c| {
        c.base_model_name_or_path.as_ref()
    })?;
    let revision = agreed(parts, &labels, "revision", |c| c.revision.as_ref())?;

    let mut modules = BTreeSet::new();
    for p in parts {
        modules.extend(p.attention_modules().map(|(l, a)| Module::Attn(l, a)));
        modules.extend(p.expert_modules().map(|(l, e)| Module::Expert(l, e)));
    }
    let expert_layers_both: BTreeSet<usize> = modules
        .iter()
        .filter_map(|m| match m {
            Module::Expert(l, ExpertProj::GateUp)
                if modules.contains(&Module::Expert(*l, ExpertProj::Down)) =>
            {
                Some(*l)
            }
            _ => None,
        })
        .collect();

    let mut tensors = Vec::with_capacity(modules.len() * 2);
    let mut summary_modules = Vec::with_capacity(modules.len());
    for &m in &modules {
        let present: Vec<Factors> = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| m.of(i, p))
            .collect();
        let first = present[0];
        for f in &present[1..] {
            if let Some(what) = f.dims.differs(&first.dims) {
                return Err(CombineError::ShapeMismatch(Box::new(ShapeMismatch {
                    part: labels[f.part].clone(),
                    module: m.path(),
                    key: m.key_in(parts[f.part], Factor::A),
                    shape: f.dims.shapes(),
                    first: labels[first.part].clone(),
                    first_shape: first.dims.shapes(),
                    what,
                })));
            }
        }
        let Dims {
            experts: n_exp,
            in_features: n_in,
            out_features: n_out,
            ..
        } = first.dims;
        let rank: usize = present.iter().map(|f| f.dims.r).sum();
        let mut part_ranks = vec![0; parts.len()];
        for f in &present {
            part_ranks[f.part] = f.dims.r;
        }

        // A: expert-major blocks of `rank` rows, each part's rows of that expert in part order
        let mut a = Vec::with_capacity(rank * n_exp * n_in);
        for e in 0..n_exp {
            for f in &present {
                let n = f.dims.r * n_in;
                a.extend_from_slice(&f.a[e * n..(e + 1) * n]);
            }
        }
        // B: each output row is the parts' scaled rows side by side (rank-major columns j·E + e)
        let mut b = Vec::with_capacity(n_out * rank * n_exp);
        for o in 0..n_out {
            for f in &present {
                let w = f.dims.r * n_exp;
                b.extend(f.b[o * w..(o + 1) * w].iter().map(|v| f.scale * v));
            }
        }
        if let Some(bad) = b.iter().position(|v| !v.is_finite()) {
            // name the part and the index the bad value came from
            let (o, mut col) = (bad / (rank * n_exp), bad % (rank * n_exp));
            for f in &present {
                let w = f.dims.r * n_exp;
                if col < w {
                    return Err(CombineError::NonFinite {
                        part: labels[f.part].clone(),
                        key: m.key_in(parts[f.part], Factor::B),
                        scale: f.scale,
                        index: o * w + col,
                    });
                }
                col -= w;
            }
        }
        let both = matches!(m, Module::Expert(l, _) if expert_layers_both.contains(&l));
        tracing::debug!(module = %m, rank, ?part_ranks, "combined");
        tensors.push((m.key(both, Factor::A), vec![rank * n_exp, n_in], a));
        tensors.push((m.key(both, Factor::B), vec![n_out, rank * n_exp], b));
        summary_modules.push(CombinedModule {
            path: m.path(),
            expert: matches!(m, Module::Expert(..)),
            part_ranks,
            rank,
        });
    }

    // r: the most common total rank, the larger on a tie
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for m in &summary_modules {
        *counts.entry(m.rank).or_default() += 1;
    }
    let r = counts
        .iter()
        .max_by_key(|(rank, n)| (**n, **rank))
        .map_or(1, |(rank, _)| *rank);
    let target_modules = summary_modules
        .iter()
        .filter(|m| !m.expert)
        .map(|m| m.path.clone())
        .collect();
    let target_parameters = summary_modules
        .iter()
        .filter(|m| m.expert)
        .map(|m| m.path.clone())
        .collect();
    let mut config = AdapterConfig::new_gpt_oss(r, r as f64, target_modules, target_parameters);
    config.base_model_name_or_path = base.clone();
    config.revision = revision.clone();
    let task_types: BTreeSet<Option<&String>> = parts
        .iter()
        .map(|p| p.config().task_type.as_ref())
        .collect();
    if task_types.len() == 1 {
        config.task_type = task_types.into_iter().next().flatten().cloned();
    }
    // patterns in reverse module order, so that set_module_rank (which puts each entry first) leaves them
    // in module order
    let mut rank_pattern_entries = 0;
    for m in summary_modules.iter().rev() {
        if m.rank != r {
            config.set_module_rank(&m.path, m.rank, m.rank as f64);
            rank_pattern_entries += 1;
        }
    }

    let summary = CombineSummary {
        parts: parts.len(),
        part_labels: labels,
        total_rank: summary_modules.iter().map(|m| m.rank).sum(),
        max_rank: summary_modules.iter().map(|m| m.rank).max().unwrap_or(0),
        modules: summary_modules,
        r,
        rank_pattern_entries,
        tensors: tensors.len(),
        parameters: tensors.iter().map(|t| t.2.len()).sum(),
        base_model_name_or_path: base,
        revision,
    };
    let adapter = LoraAdapter::from_parts(config, tensors)?;
    tracing::info!(
        parts = summary.parts,
        modules = summary.modules.len(),
        r = summary.r,
        rank_pattern = summary.rank_pattern_entries,
        total_rank = summary.total_rank,
        "adapters combined"
    );
    Ok(Combined { adapter, summary })
}

/// [`combine`] of adapter directories: loads each (naming the directory on error), then combines.
pub fn combine_dirs(dirs: &[&Path]) -> Result<Combined, CombineDirsError> {
    let mut parts = Vec::with_capacity(dirs.len());
    for (i, d) in dirs.iter().enumerate() {
        let a = LoraAdapter::load(d).map_err(|source| CombineDirsError::Load {
            index: i + 1,
            dir: d.display().to_string(),
            source: Box::new(source),
        })?;
        parts.push(a);
    }
    let refs: Vec<&LoraAdapter> = parts.iter().collect();
    Ok(combine(&refs)?)
}
