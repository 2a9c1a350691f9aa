//! Bad adapter directories are refused with messages naming the file and the key.

use std::fs;
use std::path::{Path, PathBuf};

use adapters::{AdapterError, BaseDims, LoraAdapter, CONFIG_FILE, WEIGHTS_FILE};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter")
}

const DIMS: BaseDims = BaseDims {
    layers: 4,
    hidden: 64,
    intermediate: 96,
    heads: 6,
    kv_heads: 2,
    head_dim: 16,
    experts: 8,
};

/// A copy of the fixture with its config edited by `edit_cfg` and its tensors by `edit_tensors`.
fn variant(
    edit_cfg: impl FnOnce(&mut serde_json::Map<String, Value>),
    edit_tensors: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: Value =
        serde_json::from_str(&fs::read_to_string(fixture().join(CONFIG_FILE)).unwrap()).unwrap();
    edit_cfg(cfg.as_object_mut().unwrap());
    fs::write(
        dir.path().join(CONFIG_FILE),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let bytes = fs::read(fixture().join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, v.shape().to_vec(), d)
        })
        .collect();
    edit_tensors(&mut ts);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = ts
        .into_iter()
        .map(|(k, s, d)| (k, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join(WEIGHTS_FILE)).unwrap();
    dir
}

fn load_err(dir: &Path) -> (AdapterError, String) {
    let e = LoraAdapter::load(dir).unwrap_err();
    let s = e.to_string();
    (e, s)
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

#[test]
fn missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::MissingFile { .. }));
    has(&msg, &["adapter_config.json", "missing"]);
    fs::copy(fixture().join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::MissingFile { .. }));
    has(&msg, &["adapter_model.safetensors"]);
}

#[test]
fn unsupported_options() {
    let cases: [(&str, Value); 7] = [
        ("use_dora", Value::Bool(true)),
        ("peft_type", Value::from("LOHA")),
        ("bias", Value::from("all")),
        ("fan_in_fan_out", Value::Bool(true)),
        ("lora_bias", Value::Bool(true)),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("layer_replication", serde_json::json!([[0, 2]])),
    ];
    for (key, val) in cases {
        let dir = variant(|c| drop(c.insert(key.into(), val.clone())), |_| {});
        let (e, msg) = load_err(dir.path());
        assert!(
            matches!(e, AdapterError::Unsupported { .. }),
            "{key}: {msg}"
        );
        has(&msg, &["adapter_config.json", key, "not supported"]);
    }
    let dir = variant(|c| drop(c.insert("r".into(), Value::from("four"))), |_| {});
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::ConfigValue { .. }));
    has(&msg, &["adapter_config.json", "`r`", "positive integer"]);
    let dir = variant(|_| {}, |_| {});
    fs::write(dir.path().join(CONFIG_FILE), "{\"peft_type\": \"LORA\",").unwrap();
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::Json { .. }));
    has(&msg, &["adapter_config.json"]);
}

#[test]
fn missing_lora_b() {
    let gone = "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight";
    let dir = variant(|_| {}, |t| t.retain(|(k, _, _)| k != gone));
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::MissingPartner { .. }));
    has(
        &msg,
        &[
            "adapter_model.safetensors",
            "layers.2.self_attn.v_proj.lora_A.weight",
            gone,
        ],
    );
}

#[test]
fn wrong_shapes_against_base() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    // a base with 3 KV heads: k/v out 48, not 32
    let err = ad
        .validate(&BaseDims {
            kv_heads: 3,
            ..DIMS
        })
        .unwrap_err()
        .to_string();
    has(
        &err,
        &[
            "adapter_model.safetensors",
            "layers.0.self_attn.k_proj.lora_B.weight",
            "[48, 4]",
            "[32, 4]",
        ],
    );
    // a base with 16 experts: stacks of r·E = 64 rows
    let err = ad
        .validate(&BaseDims {
            experts: 16,
            ..DIMS
        })
        .unwrap_err()
        .to_string();
    has(
        &err,
        &["layers.0.mlp.experts", "expected shape [64, ", "got [32, "],
    );
    // intermediate 128: gate_up out 256
    let err = ad
        .validate(&BaseDims {
            intermediate: 128,
            ..DIMS
        })
        .unwrap_err()
        .to_string();
    has(
        &err,
        &[
            "layers.0.mlp.experts.base_layer.lora_B.weight",
            "[256, 32]",
            "[192, 32]",
        ],
    );
    // a rank that disagrees with the config is refused at load
    let key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    let dir = variant(
        |_| {},
        |t| {
            for (k, s, d) in t.iter_mut() {
                if k == key {
                    *s = vec![2, 128];
                }
                let _ = d;
            }
        },
    );
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::Shape { .. }), "{msg}");
    has(&msg, &[key, "[4, 128]", "[2, 128]"]);
}

#[test]
fn rank_pattern_changes_expected_rank() {
    let dir = variant(
        |c| drop(c.insert("rank_pattern".into(), serde_json::json!({"k_proj": 2}))),
        |_| {},
    );
    let (_, msg) = load_err(dir.path());
    has(&msg, &["k_proj.lora_A.weight", "[2, 64]", "[4, 64]"]);
}

#[test]
fn non_finite_values() {
    let key = "base_model.model.model.layers.3.mlp.experts.lora_B.weight";
    let dir = variant(
        |_| {},
        |t| {
            for (k, _, d) in t.iter_mut() {
                if k == key {
                    d[17] = f32::NAN;
                }
            }
        },
    );
    let (e, msg) = load_err(dir.path());
    assert!(
        matches!(e, AdapterError::NonFinite { index: 17, .. }),
        "{msg}"
    );
    has(&msg, &["adapter_model.safetensors", key, "NaN", "17"]);
}

#[test]
fn layer_out_of_range() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    let err = ad.validate(&BaseDims { layers: 3, ..DIMS }).unwrap_err();
    assert!(
        matches!(
            err,
            AdapterError::LayerOutOfRange {
                layer: 3,
                layers: 3,
                ..
            }
        ),
        "{err}"
    );
    has(
        &err.to_string(),
        &[
            "adapter_model.safetensors",
            "layers.3.self_attn.q_proj.lora_A.weight",
            "layer 3",
        ],
    );
    // a target_parameters entry naming a layer the base lacks
    let dir = variant(
        |c| {
            c["target_parameters"]
                .as_array_mut()
                .unwrap()
                .push(Value::from("layers.9.mlp.experts.down_proj"))
        },
        |_| {},
    );
    let err = LoraAdapter::load(dir.path())
        .unwrap()
        .validate(&DIMS)
        .unwrap_err()
        .to_string();
    has(
        &err,
        &[
            "adapter_config.json",
            "target_parameters",
            "layers.9.mlp.experts.down_proj",
        ],
    );
    // a targeted expert weight whose tensors are absent
    let dir = variant(
        |c| {
            c["target_parameters"]
                .as_array_mut()
                .unwrap()
                .push(Value::from("layers.2.mlp.experts.down_proj"))
        },
        |_| {},
    );
    let err = LoraAdapter::load(dir.path())
        .unwrap()
        .validate(&DIMS)
        .unwrap_err()
        .to_string();
    has(
        &err,
        &[
            "base_model.model.model.layers.2.mlp.experts.lora_A.weight",
            "absent",
        ],
    );
}

#[test]
fn unknown_and_unattributable_keys() {
    let dir = variant(
        |_| {},
        |t| {
            t.push((
                "base_model.model.model.layers.0.mlp.router.lora_A.weight".into(),
                vec![4, 64],
                vec![0.0; 256],
            ));
            t.push((
                "base_model.model.model.layers.0.mlp.router.lora_B.weight".into(),
                vec![8, 4],
                vec![0.0; 32],
            ));
        },
    );
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::UnknownKey { .. }));
    has(
        &msg,
        &[
            "adapter_model.safetensors",
            "mlp.router.lora_A.weight",
            "not a gpt-oss LoRA key",
        ],
    );
    // expert tensors for a layer target_parameters does not select
    let dir = variant(
        |c| {
            drop(c.insert(
                "target_parameters".into(),
                serde_json::json!(["layers.0.mlp.experts.down_proj"]),
            ))
        },
        |_| {},
    );
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, AdapterError::UnknownKey { .. }), "{msg}");
    has(
        &msg,
        &[
            "layers.0.mlp.experts.base_layer.lora_A.weight",
            "both expert weights",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = variant(|_| {}, |_| {});
    let p = dir.path().join(WEIGHTS_FILE);
    let bytes = fs::read(&p).unwrap();
    for cut in [bytes.len() - 100, 4000, 5] {
        fs::write(&p, &bytes[..cut]).unwrap();
        let (e, msg) = load_err(dir.path());
        assert!(
            matches!(e, AdapterError::Safetensors { .. }),
            "cut {cut}: {msg}"
        );
        has(
            &msg,
            &[
                "adapter_model.safetensors",
                "not a readable safetensors file",
            ],
        );
    }
}
