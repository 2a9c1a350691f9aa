//! Which modules a run adapts, and the adapter it starts from. By default every layer's attention
//! q/k/v/o and both expert projections (PEFT: `target_modules` + `target_parameters`). Narrowed by
//! module names (`q_proj`, `self_attn`, `experts`, `gate_up_proj`, a module path), a regex, or
//! `layers_to_transform`. A target that matches nothing is an error: an expert LoRA silently not
//! applied is the field's most reported failure.

use std::collections::BTreeSet;

use adapters::{AdapterConfig, AttnProj, ExpertProj, LoraAdapter};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;

use super::config::TrainConfig;

/// One adaptable module of the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Module {
    /// `model.layers.{l}.self_attn.{q,k,v,o}_proj`.
    Attention(usize, AttnProj),
    /// `model.layers.{l}.mlp.experts.{gate_up,down}_proj`.
    Experts(usize, ExpertProj),
}

impl Module {
    /// The module path PEFT matches against.
    pub fn path(self) -> String {
        match self {
            Self::Attention(l, p) => adapters::attention_module(l, p),
            Self::Experts(l, p) => adapters::expert_param(l, p),
        }
    }

    fn layer(self) -> usize {
        match self {
            Self::Attention(l, _) | Self::Experts(l, _) => l,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Attention(_, p) => p.name(),
            Self::Experts(_, p) => p.name(),
        }
    }
}

/// Every adaptable module of a base with `layers` layers.
fn all_modules(layers: usize) -> Vec<Module> {
    let mut v = Vec::new();
    for l in 0..layers {
        v.extend(AttnProj::ALL.map(|p| Module::Attention(l, p)));
        v.extend([ExpertProj::GateUp, ExpertProj::Down].map(|p| Module::Experts(l, p)));
    }
    v
}

/// Whether a target entry names module `m` (group names, PEFT's suffix rule, or a regex that must
/// match the whole path).
fn matches(target: &str, m: Module) -> Result<bool> {
    let path = m.path();
    Ok(match target {
        "all-linear" | "all" => true,
        "self_attn" | "attention" => matches!(m, Module::Attention(..)),
        "experts" | "mlp.experts" | "mlp" => matches!(m, Module::Experts(..)),
        t if t.contains(['*', '(', '|', '\\', '[', '+', '?', '$', '^']) => {
            let re = Regex::new(&format!("^(?:{t})$"))
                .with_context(|| format!("target {t:?}: bad regex"))?;
            re.is_match(&path)
        }
        t => path == t || path.ends_with(&format!(".{t}")) || m.short() == t,
    })
}

/// The adapted modules of a run (in layer order), checked against the base's layer count.
pub fn select(cfg: &TrainConfig, layers: usize) -> Result<Vec<Module>> {
    let targets = cfg
        .lora_target_modules
        .clone()
        .unwrap_or_else(|| vec!["all-linear".to_string()]);
    if targets.is_empty() {
        bail!("lora_target_modules is empty: nothing would be trained");
    }
    let wanted_layers: Option<BTreeSet<usize>> = cfg
        .layers_to_transform
        .as_ref()
        .map(|v| v.iter().copied().collect());
    if let Some(ls) = &wanted_layers {
        if let Some(bad) = ls.iter().find(|&&l| l >= layers) {
            bail!("layers_to_transform: layer {bad} does not exist (the base has {layers} layers, 0..{})", layers - 1);
        }
    }
    let mut chosen = BTreeSet::new();
    for t in &targets {
        let mut hit = false;
        for m in all_modules(layers) {
            if matches(t, m)? {
                hit = true;
                if wanted_layers
                    .as_ref()
                    .is_none_or(|ls| ls.contains(&m.layer()))
                {
                    chosen.insert(m);
                }
            }
        }
        if !hit {
            bail!(
                "lora_target_modules: {t:?} matches no module of the base (adaptable: q_proj, k_proj, \
                 v_proj, o_proj, gate_up_proj, down_proj, self_attn, experts, all-linear, a module \
                 path such as model.layers.0.self_attn.q_proj, or a regex over those paths)"
            );
        }
    }
    if chosen.is_empty() {
        bail!(
            "lora_target_modules {targets:?} with layers_to_transform {:?} select no module",
            cfg.layers_to_transform
        );
    }
    Ok(chosen.into_iter().collect())
}

/// The PEFT config of an adapter over `modules`, as PEFT writes it for gpt-oss: attention through
/// `target_modules` (short names when every layer has them, else module paths), experts through
/// `target_parameters` (one path per layer and projection).
pub fn adapter_config(
    cfg: &TrainConfig,
    modules: &[Module],
    layers: usize,
    base_id: Option<String>,
) -> AdapterConfig {
    let attn: Vec<Module> = modules
        .iter()
        .copied()
        .filter(|m| matches!(m, Module::Attention(..)))
        .collect();
    let mut target_modules = Vec::new();
    for p in AttnProj::ALL {
        let with: Vec<&Module> = attn
            .iter()
            .filter(|m| matches!(m, Module::Attention(_, q) if *q == p))
            .collect();
        if with.len() == layers {
            target_modules.push(p.name().to_string());
        } else {
            target_modules.extend(
                with.iter()
                    .map(|m| m.path().trim_start_matches("model.").to_string()),
            );
        }
    }
    let target_parameters = modules
        .iter()
        .filter(|m| matches!(m, Module::Experts(..)))
        .map(|m| m.path().trim_start_matches("model.").to_string())
        .collect();
    let mut c = AdapterConfig::new_gpt_oss(
        cfg.lora_r,
        cfg.lora_alpha,
        target_modules,
        target_parameters,
    );
    c.use_rslora = cfg.use_rslora;
    c.base_model_name_or_path = base_id;
    c
}

/// A fresh adapter: `A` uniform in ±1/√in (PEFT's kaiming-uniform with a = √5), `B` zero, so the
/// first forward equals the base's. Seeded: the same seed gives the same adapter.
pub fn init_adapter(
    config: AdapterConfig,
    modules: &[Module],
    dims: &adapters::BaseDims,
    seed: u64,
) -> Result<LoraAdapter> {
    let r = config.r;
    let both = |l: usize| {
        modules.contains(&Module::Experts(l, ExpertProj::GateUp))
            && modules.contains(&Module::Experts(l, ExpertProj::Down))
    };
    let mut tensors = Vec::new();
    for (i, &m) in modules.iter().enumerate() {
        let (key_a, key_b, a_shape, b_shape, fan_in) = match m {
            Module::Attention(l, p) => {
                let (i_f, o_f) = dims.attention_dims(p);
                (
                    adapters::attention_key(l, p, adapters::Factor::A),
                    adapters::attention_key(l, p, adapters::Factor::B),
                    vec![r, i_f],
                    vec![o_f, r],
                    i_f,
                )
            }
            Module::Experts(l, p) => {
                let (i_f, o_f) = dims.expert_dims(p);
                let e = dims.experts;
                (
                    adapters::expert_key(l, p, both(l), adapters::Factor::A),
                    adapters::expert_key(l, p, both(l), adapters::Factor::B),
                    vec![r * e, i_f],
                    vec![o_f, r * e],
                    i_f,
                )
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let a: Vec<f32> = (0..a_shape.iter().product::<usize>())
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        let b = vec![0f32; b_shape.iter().product()];
        tensors.push((key_a, a_shape, a));
        tensors.push((key_b, b_shape, b));
    }
    LoraAdapter::from_parts(config, tensors).context("building the initial adapter")
}

/// The coverage table printed before the first step: per layer, which modules are adapted.
pub fn coverage(modules: &[Module], layers: usize) -> String {
    let names = crate::adapter_report::COLUMNS;
    let mut out = format!(
        "{:<7}{}\n",
        "layer",
        names.map(|n| format!("{n:>13}")).concat()
    );
    for l in 0..layers {
        let row: String = all_modules(layers)
            .into_iter()
            .filter(|m| m.layer() == l)
            .map(|m| format!("{:>13}", if modules.contains(&m) { "lora" } else { "-" }))
            .collect();
        out.push_str(&format!("{l:<7}{row}\n"));
    }
    let attn = modules
        .iter()
        .filter(|m| matches!(m, Module::Attention(..)))
        .count();
    out.push_str(&format!(
        "{} modules adapted: {attn} attention projections, {} expert projections",
        modules.len(),
        modules.len() - attn
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: Option<&[&str]>, layers: Option<&[usize]>) -> TrainConfig {
        TrainConfig {
            lora_target_modules: targets.map(|t| t.iter().map(|s| s.to_string()).collect()),
            layers_to_transform: layers.map(|l| l.to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_cover_every_layer_and_narrowing_works() {
        assert_eq!(select(&cfg(None, None), 4).unwrap().len(), 24);
        let m = select(&cfg(Some(&["q_proj", "experts"]), Some(&[1, 3])), 4).unwrap();
        assert_eq!(m.len(), 6);
        let m = select(
            &cfg(Some(&["model.layers.2.mlp.experts.down_proj"]), None),
            4,
        )
        .unwrap();
        assert_eq!(m, vec![Module::Experts(2, ExpertProj::Down)]);
        let m = select(
            &cfg(Some(&[r"model\.layers\.[01]\.self_attn\.(q|v)_proj"]), None),
            4,
        )
        .unwrap();
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn targets_that_match_nothing_are_errors() {
        let e = select(&cfg(Some(&["q_proj", "router"]), None), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"router\" matches no module"), "{e}");
        let e = select(&cfg(None, Some(&[7])), 4).unwrap_err().to_string();
        assert!(e.contains("layer 7 does not exist"), "{e}");
        let e = select(&cfg(Some(&[]), None), 4).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
