//! Shared helpers of the PEFT-format tests: the fixture cases PEFT wrote (fixtures/peft/<case>/),
//! their expected coverage, and variants of them with an edited config or tensors.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use adapters::{
    AdapterConfig, AdapterError, AttnProj, BaseDims, CoverageStatus, ExpertProj, LoraAdapter, Site,
    TargetModules, CONFIG_FILE, WEIGHTS_FILE,
};
use serde_json::{json, Map, Value};

pub const DIMS: BaseDims = BaseDims {
    layers: 4,
    hidden: 64,
    intermediate: 96,
    heads: 6,
    kv_heads: 2,
    head_dim: 16,
    experts: 8,
};

pub const CASES: [&str; 16] = [
    "all_linear",
    "all_linear_string",
    "regex",
    "list_paths_suffixes",
    "layers_int",
    "layers_int_pattern",
    "layers_list_pattern",
    "layers_list_patterns",
    "layers_list",
    "exclude_list",
    "exclude_regex",
    "patterns_order",
    "patterns_peft_sorted",
    "rslora",
    "experts_single",
    "experts_both",
];

pub fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(name)
}

pub fn expected(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(case(name).join("expected.json")).unwrap()).unwrap()
}

pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn read_tensors(dir: &Path) -> Tensors {
    let bytes = fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Tensors = st
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let d = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, t.shape().to_vec(), d)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn write_tensors(dir: &Path, ts: Tensors) {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = ts
        .into_iter()
        .map(|(k, s, d)| (k, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(k, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (k.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(WEIGHTS_FILE)).unwrap();
}

/// A copy of case `name` with its config (as a JSON object; keys come out sorted) and tensors edited.
pub fn variant(
    name: &str,
    edit_cfg: impl FnOnce(&mut Map<String, Value>),
    edit_tensors: impl FnOnce(&mut Tensors),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(case(name).join(CONFIG_FILE)).unwrap();
    let mut cfg: Value = serde_json::from_str(&text).unwrap();
    edit_cfg(cfg.as_object_mut().unwrap());
    fs::write(
        dir.path().join(CONFIG_FILE),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let mut ts = read_tensors(&case(name));
    edit_tensors(&mut ts);
    write_tensors(dir.path(), ts);
    dir
}

pub fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
    move |c| drop(c.insert(key.into(), v))
}

pub fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

pub fn load_err(dir: &Path) -> (AdapterError, String) {
    let e = LoraAdapter::load(dir).unwrap_err();
    let s = e.to_string();
    (e, s)
}

pub fn validate_err(dir: &Path) -> (AdapterError, String) {
    let e = LoraAdapter::load(dir).unwrap().validate(&DIMS).unwrap_err();
    let s = e.to_string();
    (e, s)
}

pub fn attn_proj(name: &str) -> AttnProj {
    AttnProj::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap()
}

pub fn site_of(path: &str) -> Site {
    let rest = path.strip_prefix("model.layers.").unwrap();
    let (l, m) = rest.split_once('.').unwrap();
    let layer = l.parse().unwrap();
    match m {
        "mlp.experts.gate_up_proj" => Site::Experts {
            layer,
            proj: ExpertProj::GateUp,
        },
        "mlp.experts.down_proj" => Site::Experts {
            layer,
            proj: ExpertProj::Down,
        },
        m => Site::Attention {
            layer,
            proj: attn_proj(m.strip_prefix("self_attn.").unwrap()),
        },
    }
}
