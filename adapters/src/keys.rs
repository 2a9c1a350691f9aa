//! PEFT's tensor key names for gpt-oss adapters, and the decoding of `target_parameters`.
//!
//! Keys are `base_model.model.<module path>.lora_{A,B}.weight`. Attention module paths are
//! `model.layers.{l}.self_attn.{q,k,v,o}_proj`. Expert LoRAs wrap the `experts` module: when both
//! expert weights of a layer are targeted, PEFT nests two wrappers and gate_up (wrapped first) is saved under
//! `model.layers.{l}.mlp.experts.base_layer.lora_*`, down under `model.layers.{l}.mlp.experts.lora_*`; when
//! only one is targeted it is under `model.layers.{l}.mlp.experts.lora_*`.

use crate::pattern::target_list_matches;

/// Prefix PEFT puts before every module path.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// An attention projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttnProj {
    /// query
    Q,
    /// key
    K,
    /// value
    V,
    /// output
    O,
}

impl AttnProj {
    /// All four, in q, k, v, o order.
    pub const ALL: [AttnProj; 4] = [AttnProj::Q, AttnProj::K, AttnProj::V, AttnProj::O];

    /// The module name: "q_proj", ...
    pub fn name(self) -> &'static str {
        match self {
            AttnProj::Q => "q_proj",
            AttnProj::K => "k_proj",
            AttnProj::V => "v_proj",
            AttnProj::O => "o_proj",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        AttnProj::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// An expert weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpertProj {
    /// `gate_up_proj` (in hidden, out 2·intermediate)
    GateUp,
    /// `down_proj` (in intermediate, out hidden)
    Down,
}

impl ExpertProj {
    /// Both, in the order PEFT wraps them.
    pub const ALL: [ExpertProj; 2] = [ExpertProj::GateUp, ExpertProj::Down];

    /// The parameter name: "gate_up_proj" / "down_proj".
    pub fn name(self) -> &'static str {
        match self {
            ExpertProj::GateUp => "gate_up_proj",
            ExpertProj::Down => "down_proj",
        }
    }
}

/// Which of the two LoRA factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Factor {
    /// `lora_A` (`[r, in]`)
    A,
    /// `lora_B` (`[out, r]`)
    B,
}

impl Factor {
    fn tag(self) -> &'static str {
        match self {
            Factor::A => "lora_A",
            Factor::B => "lora_B",
        }
    }

    /// The other factor.
    pub fn partner(self) -> Factor {
        match self {
            Factor::A => Factor::B,
            Factor::B => Factor::A,
        }
    }
}

/// Module path of an attention projection: `model.layers.{l}.self_attn.q_proj`.
pub fn attention_module(layer: usize, proj: AttnProj) -> String {
    format!("model.layers.{layer}.self_attn.{}", proj.name())
}

/// Parameter path of an expert weight, the name PEFT matches patterns against and the checkpoint's
/// (dequantized) tensor name: `model.layers.{l}.mlp.experts.gate_up_proj`.
pub fn expert_param(layer: usize, proj: ExpertProj) -> String {
    format!("model.layers.{layer}.mlp.experts.{}", proj.name())
}

/// Key of an attention factor: `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight`.
pub fn attention_key(layer: usize, proj: AttnProj, f: Factor) -> String {
    format!(
        "{PEFT_PREFIX}{}.{}.weight",
        attention_module(layer, proj),
        f.tag()
    )
}

/// Key of an expert factor; `nested` is true for the inner wrapper (`experts.base_layer`).
pub fn expert_wrapper_key(layer: usize, nested: bool, f: Factor) -> String {
    let inner = if nested { ".base_layer" } else { "" };
    format!(
        "{PEFT_PREFIX}model.layers.{layer}.mlp.experts{inner}.{}.weight",
        f.tag()
    )
}

/// Key of an expert factor for `proj`, given which expert weights of the layer are targeted.
pub fn expert_key(layer: usize, proj: ExpertProj, both_targeted: bool, f: Factor) -> String {
    expert_wrapper_key(layer, both_targeted && proj == ExpertProj::GateUp, f)
}

/// What a tensor key refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedKey {
    /// an attention projection factor
    Attention {
        layer: usize,
        proj: AttnProj,
        factor: Factor,
    },
    /// an expert wrapper factor (`nested`: under `experts.base_layer`)
    ExpertWrapper {
        layer: usize,
        nested: bool,
        factor: Factor,
    },
}

/// Parses a PEFT key; `None` for anything that is not a gpt-oss attention or expert LoRA factor.
pub fn parse_key(key: &str) -> Option<ParsedKey> {
    let rest = key
        .strip_prefix(PEFT_PREFIX)?
        .strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let (module, factor) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, Factor::A)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, Factor::B)
    };
    if let Some(p) = module.strip_prefix("self_attn.") {
        return AttnProj::from_name(p).map(|proj| ParsedKey::Attention {
            layer,
            proj,
            factor,
        });
    }
    match module {
        "mlp.experts" => Some(ParsedKey::ExpertWrapper {
            layer,
            nested: false,
            factor,
        }),
        "mlp.experts.base_layer" => Some(ParsedKey::ExpertWrapper {
            layer,
            nested: true,
            factor,
        }),
        _ => None,
    }
}

/// True when PEFT's `target_parameters` rule selects `proj` of `layer`: an entry equals the parameter path
/// `model.layers.{l}.mlp.experts.<name>` or is a `.`-separated suffix of it (so `layers.0.mlp.experts.gate_up_proj`,
/// `mlp.experts.down_proj` and `gate_up_proj` all work).
pub fn expert_targeted(targets: &[String], layer: usize, proj: ExpertProj) -> bool {
    let path = expert_param(layer, proj);
    targets.iter().any(|t| target_list_matches(t, &path))
}

/// Which expert weight the wrapper key of `layer` adapts, from the config's targets alone (PEFT's
/// nesting): both targeted, the nested `experts.base_layer` is gate_up and `experts` is down; one
/// targeted, `experts` is that one (for either weight: check it against the base's shapes). `Ok(None)`:
/// the layer has no targeted expert weight, so the tensors adapt something the config does not target
/// (`validate` refuses them, naming the weight the shapes point to).
pub(crate) fn attribute_expert(
    targets: &[String],
    layer: usize,
    nested: bool,
) -> Result<Option<ExpertProj>, String> {
    let gu = expert_targeted(targets, layer, ExpertProj::GateUp);
    let down = expert_targeted(targets, layer, ExpertProj::Down);
    if !gu && !down {
        return Ok(None);
    }
    expert_proj_of(targets, layer, nested).map(Some)
}

/// What an unsupported LoRA tensor key adapts, for the message refusing it.
pub(crate) fn describe_unsupported(key: &str) -> String {
    const SUPPORTED: &str = "only the attention q/k/v/o_proj and the experts' gate_up_proj/down_proj can \
         be adapted; not a gpt-oss LoRA key (expected base_model.model.model.layers.{l}.self_attn.{q,k,v,o}_proj \
         or ...mlp.experts[.base_layer], then .lora_A.weight / .lora_B.weight)";
    let Some(rest) = key.strip_prefix(PEFT_PREFIX) else {
        return format!("not under `{PEFT_PREFIX}`: {SUPPORTED}");
    };
    let markers = [
        (".lora_magnitude_vector", "a DoRA magnitude vector"),
        (".lora_embedding_A", "an embedding LoRA"),
        (".lora_embedding_B", "an embedding LoRA"),
        (".lora_A.bias", "a LoRA bias (lora_bias)"),
        (".lora_B.bias", "a LoRA bias (lora_bias)"),
        (".lora_A.weight", "a LoRA"),
        (".lora_B.weight", "a LoRA"),
        (".lora_A.", "a LoRA saved with its adapter name in the key"),
        (".lora_B.", "a LoRA saved with its adapter name in the key"),
        (
            ".modules_to_save.",
            "a fully trained module copy (modules_to_save)",
        ),
    ];
    let Some((module, what)) = markers
        .iter()
        .find_map(|(m, what)| rest.find(m).map(|i| (&rest[..i], *what)))
    else {
        return format!("not a LoRA factor: {SUPPORTED}");
    };
    let name = match module.rsplit('.').next().unwrap_or(module) {
        "lm_head" => "the output head",
        "embed_tokens" => "the token embedding",
        "router" => "the MoE router",
        "experts" => "the experts (under an unexpected name)",
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => "an attention projection",
        _ => "a module",
    };
    format!("{what} on `{module}` ({name}) is not supported: {SUPPORTED}")
}

/// Maps a wrapper key of `layer` to the expert weight it adapts, given the config's targets.
/// Errors (as a message) when the key cannot be attributed.
pub fn expert_proj_of(
    targets: &[String],
    layer: usize,
    nested: bool,
) -> Result<ExpertProj, String> {
    let gu = expert_targeted(targets, layer, ExpertProj::GateUp);
    let down = expert_targeted(targets, layer, ExpertProj::Down);
    match (gu, down, nested) {
        (true, true, true) => Ok(ExpertProj::GateUp),
        (true, true, false) => Ok(ExpertProj::Down),
        (true, false, false) => Ok(ExpertProj::GateUp),
        (false, true, false) => Ok(ExpertProj::Down),
        (false, false, _) => Err(format!(
            "target_parameters selects no expert weight of layer {layer}, so this expert LoRA cannot be attributed"
        )),
        (_, _, true) => Err(format!(
            "a nested (`base_layer`) expert LoRA needs both expert weights of layer {layer} in target_parameters"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_names() {
        for l in [0, 3, 35] {
            for p in AttnProj::ALL {
                for f in [Factor::A, Factor::B] {
                    let k = attention_key(l, p, f);
                    assert_eq!(
                        parse_key(&k),
                        Some(ParsedKey::Attention {
                            layer: l,
                            proj: p,
                            factor: f
                        })
                    );
                }
            }
            for nested in [false, true] {
                let k = expert_wrapper_key(l, nested, Factor::B);
                assert_eq!(
                    parse_key(&k),
                    Some(ParsedKey::ExpertWrapper {
                        layer: l,
                        nested,
                        factor: Factor::B
                    })
                );
            }
        }
        assert_eq!(
            attention_key(2, AttnProj::O, Factor::A),
            "base_model.model.model.layers.2.self_attn.o_proj.lora_A.weight"
        );
        for bad in [
            "base_model.model.model.layers.0.mlp.router.lora_A.weight",
            "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.lm_head.lora_A.weight",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn decode_targets() {
        let t: Vec<String> = [
            "layers.0.mlp.experts.gate_up_proj",
            "model.layers.0.mlp.experts.down_proj",
            "layers.1.mlp.experts.down_proj",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(expert_proj_of(&t, 0, true), Ok(ExpertProj::GateUp));
        assert_eq!(expert_proj_of(&t, 0, false), Ok(ExpertProj::Down));
        assert_eq!(expert_proj_of(&t, 1, false), Ok(ExpertProj::Down));
        assert!(expert_proj_of(&t, 1, true).is_err());
        assert!(expert_proj_of(&t, 2, false).is_err());
        assert!(
            !expert_targeted(&t, 10, ExpertProj::Down),
            "layers.1 must not select layer 10 or 11"
        );
        let all = vec![
            "gate_up_proj".to_string(),
            "mlp.experts.down_proj".to_string(),
        ];
        assert_eq!(expert_proj_of(&all, 17, true), Ok(ExpertProj::GateUp));
        assert_eq!(expert_proj_of(&all, 17, false), Ok(ExpertProj::Down));
        assert!(!expert_targeted(
            &["up_proj".to_string()],
            0,
            ExpertProj::GateUp
        ));
    }
}
