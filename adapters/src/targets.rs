//! PEFT 0.21's target selection, mirrored over the gpt-oss module tree of transformers 5
//! (`models/gpt_oss/modeling_gpt_oss.py`).
//!
//! - `target_modules` (`tuners_utils.check_target_module_exists`): `exclude_modules` first (a string:
//!   `re.fullmatch`; a list: exact or `.`-suffix); then a string `target_modules` is a regex that must
//!   match the whole path; a list entry equal to the path selects it outright; otherwise a `.`-suffix
//!   entry selects it, and only in this last case `layers_to_transform` / `layers_pattern` filter by the
//!   layer index (so an exact path is never filtered: PEFT's quirk, mirrored). `"all-linear"` (any case,
//!   `_maybe_include_all_linear_layers`) becomes the full paths of every `nn.Linear` but the output head:
//!   the attention q/k/v/o here (the router is a `GptOssTopKRouter` holding a bare parameter, not an
//!   `nn.Linear`).
//! - `target_parameters` (`BaseTuner._inject_parameters`): every parameter `<module>.<name>` equal to an
//!   entry or ending in `.<entry>`, literally; neither `exclude_modules` nor `layers_to_transform` apply.

use std::path::Path;

use crate::config::{AdapterConfig, LayersPattern, TargetModules};
use crate::error::AdapterError;
use crate::keys::{AttnProj, ExpertProj};
use crate::pattern;

/// PEFT's `INCLUDE_LINEAR_LAYERS_SHORTHAND`.
pub(crate) const ALL_LINEAR: &str = "all-linear";

/// What PEFT does with one module for `target_modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// wrapped with a LoRA layer
    Selected,
    /// matched by `exclude_modules`
    Excluded,
    /// not selected (including suffix matches dropped by `layers_to_transform`)
    NotMatched,
}

/// The kind of a gpt-oss module, for what PEFT and this tool can do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `nn.Linear` attention projection: adaptable
    Attention,
    /// `lm_head`, an `nn.Linear` PEFT can wrap but this tool does not adapt
    LmHead,
    /// `model.embed_tokens`, an `nn.Embedding` PEFT can wrap but this tool does not adapt
    Embedding,
    /// any other module: PEFT refuses to wrap it ("Target module ... is not supported")
    Other(&'static str),
}

/// One module of the base, as `named_modules()` lists it.
#[derive(Debug, Clone)]
pub(crate) struct BaseModule {
    pub path: String,
    pub kind: Kind,
}

/// The gpt-oss modules of a base with `layers` layers, in `named_modules()` order (the root, named
/// "", is left out, as PEFT skips it).
pub(crate) fn base_modules(layers: usize) -> Vec<BaseModule> {
    let m = |path: String, kind: Kind| BaseModule { path, kind };
    let mut v = vec![
        m("model".into(), Kind::Other("GptOssModel")),
        m("model.embed_tokens".into(), Kind::Embedding),
        m("model.layers".into(), Kind::Other("ModuleList")),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        v.push(m(p.clone(), Kind::Other("GptOssDecoderLayer")));
        v.push(m(format!("{p}.self_attn"), Kind::Other("GptOssAttention")));
        for a in AttnProj::ALL {
            v.push(m(format!("{p}.self_attn.{}", a.name()), Kind::Attention));
        }
        v.push(m(format!("{p}.mlp"), Kind::Other("GptOssMLP")));
        v.push(m(
            format!("{p}.mlp.router"),
            Kind::Other("GptOssTopKRouter"),
        ));
        v.push(m(format!("{p}.mlp.experts"), Kind::Other("GptOssExperts")));
        v.push(m(
            format!("{p}.input_layernorm"),
            Kind::Other("GptOssRMSNorm"),
        ));
        v.push(m(
            format!("{p}.post_attention_layernorm"),
            Kind::Other("GptOssRMSNorm"),
        ));
    }
    v.push(m("model.norm".into(), Kind::Other("GptOssRMSNorm")));
    v.push(m(
        "model.rotary_emb".into(),
        Kind::Other("GptOssRotaryEmbedding"),
    ));
    v.push(m("lm_head".into(), Kind::LmHead));
    v
}

/// The parameters of the base as `_inject_parameters` sees them (`<module>.<name>`, each module's own
/// parameters), with the expert weights this tool adapts marked.
pub(crate) fn base_parameters(layers: usize) -> Vec<(String, Option<(usize, ExpertProj)>)> {
    let mut v = vec![("model.embed_tokens.weight".to_string(), None)];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.self_attn.sinks"), None));
        for a in AttnProj::ALL {
            for w in ["weight", "bias"] {
                v.push((format!("{p}.self_attn.{}.{w}", a.name()), None));
            }
        }
        v.push((format!("{p}.mlp.router.weight"), None));
        v.push((format!("{p}.mlp.router.bias"), None));
        for e in ExpertProj::ALL {
            v.push((format!("{p}.mlp.experts.{}", e.name()), Some((l, e))));
            v.push((format!("{p}.mlp.experts.{}_bias", e.name()), None));
        }
        v.push((format!("{p}.input_layernorm.weight"), None));
        v.push((format!("{p}.post_attention_layernorm.weight"), None));
    }
    v.push(("model.norm.weight".to_string(), None));
    v.push(("lm_head.weight".to_string(), None));
    v
}

/// True for `model.layers.{l}.self_attn.{q,k,v,o}_proj`: what `"all-linear"` expands to.
fn is_attention_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("model.layers.") else {
        return false;
    };
    let Some((l, module)) = rest.split_once('.') else {
        return false;
    };
    !l.is_empty()
        && l.bytes().all(|b| b.is_ascii_digit())
        && (l == "0" || !l.starts_with('0'))
        && module
            .strip_prefix("self_attn.")
            .is_some_and(|p| AttnProj::ALL.iter().any(|a| a.name() == p))
}

fn patterns(cfg: &AdapterConfig) -> &[String] {
    match &cfg.layers_pattern {
        None => &[],
        Some(LayersPattern::One(s)) if s.is_empty() => &[],
        Some(p) => p.patterns(),
    }
}

/// PEFT's `check_target_module_exists` for the module at `path` (modules_to_save, which PEFT also
/// excludes, is refused when the config is read).
pub(crate) fn module_selection(cfg: &AdapterConfig, path: &str) -> Selection {
    let excluded = match &cfg.exclude_modules {
        None => false,
        // `if config.exclude_modules:` — an empty string or list excludes nothing
        Some(TargetModules::Regex(re)) => !re.is_empty() && pattern::target_regex_matches(re, path),
        Some(TargetModules::List(l)) => l.iter().any(|e| pattern::target_list_matches(e, path)),
    };
    if excluded {
        return Selection::Excluded;
    }
    let selected = match &cfg.target_modules {
        None => false,
        Some(t) if t.is_all_linear() => is_attention_path(path),
        Some(TargetModules::Regex(re)) => pattern::target_regex_matches(re, path),
        Some(TargetModules::List(l)) if l.iter().any(|t| t == path) => true,
        Some(TargetModules::List(l)) => {
            l.iter().any(|t| path.ends_with(&format!(".{t}")))
                && match &cfg.layers_to_transform {
                    Some(idx) if idx.is_active() => {
                        pattern::layer_index(path, patterns(cfg)).is_some_and(|i| idx.contains(i))
                    }
                    _ => true,
                }
        }
    };
    if selected {
        Selection::Selected
    } else {
        Selection::NotMatched
    }
}

fn config_err(path: &Path, key: &str, message: String) -> AdapterError {
    AdapterError::ConfigValue {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    }
}

/// Checks what the config selects in a base with `layers` layers: every `target_modules` entry (or the
/// regex) and every `target_parameters` entry must select something (PEFT skips entries that match
/// nothing without a word, leaving an adapter that silently lacks them), and everything selected must be
/// an attention projection or an expert weight. `cfg_path` names the config in messages.
pub(crate) fn check_against_base(
    cfg: &AdapterConfig,
    layers: usize,
    cfg_path: &Path,
) -> Result<(), AdapterError> {
    let modules = base_modules(layers);
    let selected: Vec<&BaseModule> = modules
        .iter()
        .filter(|m| module_selection(cfg, &m.path) == Selection::Selected)
        .collect();
    for m in &selected {
        let why = match m.kind {
            Kind::Attention => continue,
            Kind::LmHead | Kind::Embedding => format!(
                "PEFT can put a LoRA on `{}`, but this tool does not support it (only the attention \
                 q/k/v/o_proj and the experts' gate_up_proj/down_proj)",
                m.path
            ),
            Kind::Other("GptOssExperts") => format!(
                "`{}` is a GptOssExperts, which PEFT cannot wrap as a module (\"Target module ... is \
                 not supported\"); adapt its weights through target_parameters (gate_up_proj, down_proj)",
                m.path
            ),
            Kind::Other(class) => format!(
                "`{}` is a {class}, which PEFT cannot wrap (it supports nn.Linear, nn.Embedding and \
                 convolutions: \"Target module {class}() is not supported\")",
                m.path
            ),
        };
        return Err(config_err(cfg_path, "target_modules", why));
    }
    let base = format!("a base with {layers} layers");
    match &cfg.target_modules {
        None => {}
        Some(t) if t.is_all_linear() && selected.is_empty() => {
            let msg = format!(
                "\"all-linear\" selects no module of {base}: exclude_modules excludes every attention \
                 projection"
            );
            return Err(config_err(cfg_path, "target_modules", msg));
        }
        Some(t) if t.is_all_linear() => {}
        Some(TargetModules::Regex(re)) => {
            let hits: Vec<&BaseModule> = modules
                .iter()
                .filter(|m| pattern::target_regex_matches(re, &m.path))
                .collect();
            if hits.is_empty() {
                let msg = format!(
                    "the regex {re:?} matches no module path of {base} (it must match a whole path such \
                     as model.layers.0.self_attn.q_proj); PEFT would refuse to create this adapter"
                );
                return Err(config_err(cfg_path, "target_modules", msg));
            }
            if selected.is_empty() {
                let msg = format!(
                    "the regex {re:?} matches `{}`, but exclude_modules excludes every match",
                    hits[0].path
                );
                return Err(config_err(cfg_path, "target_modules", msg));
            }
        }
        Some(TargetModules::List(list)) => {
            for t in list {
                let hits: Vec<&BaseModule> = modules
                    .iter()
                    .filter(|m| pattern::target_list_matches(t, &m.path))
                    .collect();
                if hits.is_empty() {
                    let msg = format!(
                        "entry {t:?} matches no module of {base} (PEFT skips such an entry without a \
                         word; expected e.g. q_proj, self_attn.v_proj or model.layers.0.self_attn.o_proj)"
                    );
                    return Err(config_err(cfg_path, "target_modules", msg));
                }
                if !hits
                    .iter()
                    .any(|h| selected.iter().any(|s| s.path == h.path))
                {
                    let msg = format!(
                        "entry {t:?} matches `{}`{}, but exclude_modules / layers_to_transform / \
                         layers_pattern leave none of them selected: a no-op entry",
                        hits[0].path,
                        if hits.len() > 1 { " and others" } else { "" }
                    );
                    return Err(config_err(cfg_path, "target_modules", msg));
                }
            }
        }
    }
    let params = base_parameters(layers);
    let mut any_param = false;
    for t in cfg.target_parameters.iter().flatten() {
        let hits: Vec<&(String, Option<(usize, ExpertProj)>)> = params
            .iter()
            .filter(|(p, _)| pattern::target_list_matches(t, p))
            .collect();
        if hits.is_empty() {
            let msg = format!(
                "entry {t:?} selects no expert weight of {base} (expected e.g. \
                 layers.0.mlp.experts.gate_up_proj or mlp.experts.down_proj; PEFT skips such an entry \
                 without a word)"
            );
            return Err(config_err(cfg_path, "target_parameters", msg));
        }
        if let Some((p, _)) = hits.iter().find(|(_, e)| e.is_none()) {
            let msg = format!(
                "entry {t:?} selects the parameter `{p}`; PEFT would wrap it in a ParamWrapper, but this \
                 tool only adapts the experts' gate_up_proj and down_proj"
            );
            return Err(config_err(cfg_path, "target_parameters", msg));
        }
        any_param = true;
    }
    if selected.is_empty() && !any_param {
        let msg = if cfg.target_modules.is_none() && cfg.target_parameters.is_none() {
            "neither target_modules nor target_parameters is set; PEFT has no default targets for \
             gpt-oss and would refuse this config"
                .to_string()
        } else {
            format!("the config selects no module or parameter of {base}")
        };
        return Err(config_err(cfg_path, "target_modules", msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerIndexes;

    fn cfg(tm: TargetModules) -> AdapterConfig {
        let mut c = AdapterConfig::new_gpt_oss(2, 4.0, vec![], vec![]);
        c.target_modules = Some(tm);
        c.target_parameters = None;
        c
    }

    fn list(v: &[&str]) -> TargetModules {
        TargetModules::List(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn tree_is_transformers_named_modules() {
        let m = base_modules(2);
        assert_eq!(m.len(), 3 + 2 * 11 + 3);
        assert_eq!(m[0].path, "model");
        assert_eq!(m.last().unwrap().path, "lm_head");
        assert!(m.iter().any(|x| x.path == "model.layers.1.mlp.router"));
        let p = base_parameters(1);
        assert!(p.contains(&(
            "model.layers.0.mlp.experts.down_proj".into(),
            Some((0, ExpertProj::Down))
        )));
    }

    #[test]
    fn exact_paths_bypass_the_layer_filter() {
        let mut c = cfg(list(&["q_proj", "model.layers.1.self_attn.k_proj"]));
        c.layers_to_transform = Some(LayerIndexes::List(vec![0]));
        assert!(c.targets_module("model.layers.0.self_attn.q_proj"));
        assert!(!c.targets_module("model.layers.1.self_attn.q_proj"));
        assert!(
            c.targets_module("model.layers.1.self_attn.k_proj"),
            "exact path: no filter"
        );
        c.layers_to_transform = Some(LayerIndexes::List(vec![]));
        assert!(
            c.targets_module("model.layers.3.self_attn.q_proj"),
            "empty list: no filter"
        );
    }

    #[test]
    fn all_linear_and_exclude() {
        let mut c = cfg(TargetModules::Regex("ALL-linear".into()));
        assert!(c.targets_module("model.layers.7.self_attn.o_proj"));
        assert!(!c.targets_module("lm_head"));
        assert!(!c.targets_module("model.layers.7.mlp.router"));
        c.exclude_modules = Some(TargetModules::Regex(r".*\.7\..*".into()));
        assert!(!c.targets_module("model.layers.7.self_attn.o_proj"));
        assert!(c.targets_module("model.layers.17.self_attn.o_proj"));
        assert!(check_against_base(&c, 4, Path::new("c.json")).is_ok());
        c.exclude_modules = Some(list(&["self_attn"]));
        assert!(
            c.targets_module("model.layers.1.self_attn.q_proj"),
            "suffix of the path only"
        );
    }

    #[test]
    fn base_checks() {
        let p = Path::new("cfg.json");
        let err = |c: &AdapterConfig| check_against_base(c, 4, p).unwrap_err().to_string();
        assert!(err(&cfg(list(&["router"]))).contains("GptOssTopKRouter"));
        assert!(err(&cfg(list(&["lm_head"]))).contains("does not support"));
        assert!(err(&cfg(list(&["experts"]))).contains("target_parameters"));
        assert!(err(&cfg(list(&["q_proj", "qproj"]))).contains("\"qproj\" matches no module"));
        assert!(err(&cfg(TargetModules::Regex("q_proj".into()))).contains("matches no module path"));
        let mut c = cfg(list(&["q_proj"]));
        c.layers_to_transform = Some(LayerIndexes::One(9));
        assert!(err(&c).contains("no-op"));
        let mut c = cfg(list(&[]));
        c.target_parameters = Some(vec!["mlp.router.weight".into()]);
        assert!(err(&c).contains("`model.layers.0.mlp.router.weight`"));
        c.target_parameters = Some(vec!["gate_up_proj".into()]);
        assert!(check_against_base(&c, 4, p).is_ok());
        c.target_parameters = Some(vec![]);
        assert!(err(&c).contains("selects no module or parameter"));
    }
}
