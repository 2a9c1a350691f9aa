//! PEFT's adapter format, checked against adapters PEFT 0.21 itself wrote for the tiny gpt-oss
//! (fixtures/peft/<case>/, from scripts/gen_peft_format_fixtures.py): every case's coverage (module
//! set, ranks, alphas, scalings, tensor keys) equals what PEFT created and reloads (expected.json);
//! then each refusal, each validate error and each serving warning on variants of those cases.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use adapters::{
    AdapterConfig, AdapterError, AttnProj, BaseDims, CoverageStatus, ExpertProj, LoraAdapter, Site,
    TargetModules, CONFIG_FILE, WEIGHTS_FILE,
};
use serde_json::{json, Map, Value};

const DIMS: BaseDims = BaseDims {
    layers: 4,
    hidden: 64,
    intermediate: 96,
    heads: 6,
    kv_heads: 2,
    head_dim: 16,
    experts: 8,
};

const CASES: [&str; 16] = [
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

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(case(name).join("expected.json")).unwrap()).unwrap()
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_tensors(dir: &Path) -> Tensors {
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

fn write_tensors(dir: &Path, ts: Tensors) {
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
fn variant(
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

fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
    move |c| drop(c.insert(key.into(), v))
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

fn load_err(dir: &Path) -> (AdapterError, String) {
    let e = LoraAdapter::load(dir).unwrap_err();
    let s = e.to_string();
    (e, s)
}

fn validate_err(dir: &Path) -> (AdapterError, String) {
    let e = LoraAdapter::load(dir).unwrap().validate(&DIMS).unwrap_err();
    let s = e.to_string();
    (e, s)
}

fn attn_proj(name: &str) -> AttnProj {
    AttnProj::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap()
}

fn site_of(path: &str) -> Site {
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

#[test]
fn every_case_is_read_as_peft_reads_it() {
    let on_disk: BTreeSet<String> = fs::read_dir(case(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk, CASES.iter().map(|s| s.to_string()).collect());
    for name in CASES {
        let want = expected(name);
        if want.get("peft_load_error").is_some() {
            continue; // patterns_peft_sorted, below
        }
        let ad = LoraAdapter::load(&case(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        ad.validate(&DIMS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cov = ad.coverage(&DIMS);
        assert!(cov.is_consistent(), "{name}: {cov:?}");
        let got: BTreeSet<(String, usize, String, String, String, String)> = cov
            .adapted()
            .map(|e| {
                (
                    e.path.clone(),
                    e.r,
                    format!("{:?}", e.alpha),
                    format!("{:?}", e.scaling),
                    e.key_a.clone(),
                    e.key_b.clone(),
                )
            })
            .collect();
        let tensors = read_tensors(&case(name));
        let data = |k: &str| &tensors.iter().find(|t| t.0 == k).unwrap().2;
        let mut wanted = BTreeSet::new();
        for m in want["modules"].as_array().unwrap() {
            let path = m["path"].as_str().unwrap().to_string();
            let (ka, kb) = (m["key_a"].as_str().unwrap(), m["key_b"].as_str().unwrap());
            wanted.insert((
                path.clone(),
                m["r"].as_u64().unwrap() as usize,
                format!("{:?}", m["alpha"].as_f64().unwrap()),
                // Python's repr, parsed exactly (serde_json's default float parsing may round)
                format!(
                    "{:?}",
                    m["scaling_repr"].as_str().unwrap().parse::<f64>().unwrap()
                ),
                ka.to_string(),
                kb.to_string(),
            ));
            // the accessors hand out the factors of the keys PEFT wrote for this module
            match site_of(&path) {
                Site::Attention { layer, proj } => {
                    assert_eq!(m["kind"], "module", "{name} {path}");
                    assert!(ad.config().targets_module(&path), "{name} {path}");
                    let a = ad.attention(layer, proj).unwrap();
                    assert_eq!((a.a, a.b), (&data(ka)[..], &data(kb)[..]), "{name} {path}");
                    let s: f64 = m["scaling_repr"].as_str().unwrap().parse().unwrap();
                    assert_eq!(a.scale, s as f32, "{name} {path}");
                }
                Site::Experts { layer, proj } => {
                    assert_eq!(m["kind"], "parameter", "{name} {path}");
                    assert!(ad.config().targets_expert(layer, proj), "{name} {path}");
                    let e = ad.experts(layer, proj).unwrap();
                    assert_eq!((e.a, e.b), (&data(ka)[..], &data(kb)[..]), "{name} {path}");
                    assert_eq!(e.experts, 8);
                }
            }
        }
        assert_eq!(got, wanted, "{name}");
        // every other attention module is untargeted, as PEFT left it
        for l in 0..DIMS.layers {
            for p in AttnProj::ALL {
                let path = adapters::attention_module(l, p);
                let adapted = wanted.iter().any(|w| w.0 == path);
                assert_eq!(ad.config().targets_module(&path), adapted, "{name} {path}");
            }
        }
    }
}

#[test]
fn all_linear_string_any_case() {
    let ad = LoraAdapter::load(&case("all_linear_string")).unwrap();
    let tm = ad.config().target_modules.clone().unwrap();
    assert_eq!(tm, TargetModules::Regex("ALL-Linear".into()));
    assert!(tm.is_all_linear());
    assert!(!ad.config().targets_module("lm_head"));
    assert!(!ad.config().targets_module("model.layers.0.mlp.router"));
    assert_eq!(ad.coverage(&DIMS).adapted().count(), 16);
}

/// PEFT takes the first matching pattern key in the file's order; its save sorts keys, after which
/// PEFT itself cannot load the adapter back (expected.json of patterns_peft_sorted holds its error).
#[test]
fn pattern_keys_in_file_order() {
    let ad = LoraAdapter::load(&case("patterns_order")).unwrap();
    let c = ad.config();
    assert_eq!(
        c.rank_pattern,
        [
            ("self_attn.q_proj".to_string(), 3),
            (r"layers\.0\..*".to_string(), 5)
        ]
    );
    assert_eq!(
        c.alpha_pattern,
        [
            ("q_proj".to_string(), 16.0),
            ("model.layers.0.self_attn.q_proj".to_string(), 1.0)
        ]
    );
    let warn = ad.serving_warnings().join("\n");
    has(
        &warn,
        &[
            "order decides",
            "model.layers.0.self_attn.q_proj",
            "rank 3",
            "rank 5",
            "no longer loads",
        ],
    );
    // this tool saves as PEFT does (sorted keys): the copy no longer loads, as PEFT's does not
    let tmp = tempfile::tempdir().unwrap();
    ad.save(&tmp.path().join("copy"), false).unwrap();
    let (e, msg) = load_err(&tmp.path().join("copy"));
    assert!(matches!(e, AdapterError::Shape { .. }), "{msg}");

    let peft = expected("patterns_peft_sorted")["peft_load_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(peft.contains("size mismatch"), "{peft}");
    let (e, msg) = load_err(&case("patterns_peft_sorted"));
    assert!(matches!(e, AdapterError::Shape { .. }), "{msg}");
    has(
        &msg,
        &[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "[5, 64]",
            "[3, 64]",
        ],
    );
}

#[test]
fn refused_variants_name_file_and_key() {
    let unsupported: Vec<(&str, &'static str, Value, &[&str])> = vec![
        ("all_linear", "use_dora", json!(true), &["DoRA"]),
        ("all_linear", "lora_bias", json!(true), &["bias"]),
        (
            "all_linear",
            "modules_to_save",
            json!(["lm_head"]),
            &["modules"],
        ),
        (
            "experts_single",
            "lora_dropout",
            json!(0.1),
            &["ParamWrapper", "factor out x"],
        ),
        ("all_linear", "use_qalora", json!(true), &["QA-LoRA"]),
        (
            "all_linear",
            "kasa_config",
            json!({"diag": true}),
            &["KaSA"],
        ),
        (
            "all_linear",
            "monteclora_config",
            json!({"n": 2}),
            &["MonteCLoRA"],
        ),
        (
            "all_linear",
            "arrow_config",
            json!({"top_k": 2}),
            &["Arrow"],
        ),
        (
            "all_linear",
            "velora_config",
            json!({"num_groups": 2}),
            &["VeLoRA"],
        ),
        (
            "all_linear",
            "alora_invocation_tokens",
            json!([1, 2]),
            &["activated"],
        ),
        (
            "all_linear",
            "use_bdlora",
            json!({"nblocks": 2}),
            &["block-diagonal"],
        ),
        (
            "all_linear",
            "trainable_token_indices",
            json!([3]),
            &["tokens"],
        ),
        (
            "all_linear",
            "layer_replication",
            json!([[0, 2]]),
            &["architecture"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("pissa_niter_4"),
            &["modified base"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("olora"),
            &["modified base"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("corda"),
            &["modified base"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("loftq"),
            &["modified base"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("lora_ga"),
            &["modified base"],
        ),
        (
            "all_linear",
            "init_lora_weights",
            json!("kaiming"),
            &["does not know"],
        ),
    ];
    for (name, key, val, why) in unsupported {
        let dir = variant(name, set(key, val.clone()), |_| {});
        let (e, msg) = load_err(dir.path());
        assert!(
            matches!(e, AdapterError::Unsupported { .. }),
            "{key}={val}: {msg}"
        );
        has(&msg, &[CONFIG_FILE, key, "not supported"]);
        has(&msg, why);
    }
    // initialisations that leave the base alone, and dropout on attention only, are fine
    for v in [
        json!(false),
        json!("gaussian"),
        json!("eva"),
        json!("orthogonal"),
        json!("mica"),
    ] {
        let dir = variant("experts_both", set("init_lora_weights", v), |_| {});
        LoraAdapter::load(dir.path())
            .unwrap()
            .validate(&DIMS)
            .unwrap();
    }
    let dir = variant(
        "list_paths_suffixes",
        set("lora_dropout", json!(0.1)),
        |_| {},
    );
    LoraAdapter::load(dir.path())
        .unwrap()
        .validate(&DIMS)
        .unwrap();

    // PEFT's own config rules, and regexes this tool cannot evaluate
    let config_values: Vec<(&str, &'static str, Value, &str, &str)> = vec![
        (
            "regex",
            "layers_to_transform",
            json!([1]),
            "layers_to_transform",
            "is a string",
        ),
        (
            "all_linear_string",
            "layers_pattern",
            json!("layers"),
            "layers_pattern",
            "is a string",
        ),
        (
            "list_paths_suffixes",
            "layers_pattern",
            json!("layers"),
            "layers_pattern",
            "needs layers_to_transform",
        ),
        (
            "regex",
            "target_modules",
            json!(r"(?!lm_head).*q_proj"),
            "target_modules",
            "cannot evaluate",
        ),
        (
            "exclude_regex",
            "exclude_modules",
            json!(r"(a)\1"),
            "exclude_modules",
            "cannot evaluate",
        ),
        (
            "layers_int",
            "layers_to_transform",
            json!(-1),
            "layers_to_transform",
            "layer index",
        ),
    ];
    for (name, key, val, named, why) in config_values {
        let dir = variant(name, set(key, val.clone()), |_| {});
        let (e, msg) = load_err(dir.path());
        assert!(
            matches!(e, AdapterError::ConfigValue { .. }),
            "{key}={val}: {msg}"
        );
        has(&msg, &[CONFIG_FILE, named, why]);
    }
}

#[test]
fn tensors_on_other_modules_are_refused() {
    let cases: [(&str, &str, Vec<usize>, &str); 4] = [
        (
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.lm_head.lora_B.weight",
            vec![1, 64],
            "`lm_head` (the output head)",
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.model.embed_tokens.lora_embedding_B",
            vec![1, 384],
            "embedding LoRA on `model.embed_tokens`",
        ),
        (
            "base_model.model.model.layers.1.mlp.router.lora_A.weight",
            "base_model.model.model.layers.1.mlp.router.lora_B.weight",
            vec![1, 64],
            "`model.layers.1.mlp.router` (the MoE router)",
        ),
        (
            "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector",
            "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector2",
            vec![96, 1],
            "DoRA magnitude",
        ),
    ];
    for (a, b, shape, what) in cases {
        let n: usize = shape.iter().product();
        let dir = variant(
            "all_linear",
            |_| {},
            |t| {
                t.push((a.to_string(), shape.clone(), vec![0.5; n]));
                t.push((b.to_string(), shape.clone(), vec![0.5; n]));
            },
        );
        let (e, msg) = load_err(dir.path());
        assert!(matches!(e, AdapterError::UnknownKey { .. }), "{msg}");
        has(
            &msg,
            &[WEIGHTS_FILE, what, "is not supported", "only the attention"],
        );
    }
}

#[test]
fn validate_refuses_no_op_and_unsupported_targets() {
    let edit_list = |name: &str, key: &'static str, extra: &str| {
        let extra = extra.to_string();
        variant(
            name,
            move |c| {
                c.get_mut(key)
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(Value::from(extra))
            },
            |_| {},
        )
    };
    let cases: Vec<(tempfile::TempDir, &str, &[&str])> = vec![
        (
            edit_list("list_paths_suffixes", "target_modules", "qkv_proj"),
            "target_modules",
            &["\"qkv_proj\" matches no module"],
        ),
        (
            edit_list(
                "experts_single",
                "target_parameters",
                "layers.7.mlp.experts.down_proj",
            ),
            "target_parameters",
            &["\"layers.7.mlp.experts.down_proj\" selects no expert weight"],
        ),
        (
            edit_list("experts_both", "target_parameters", "down_proj_bias"),
            "target_parameters",
            &["`model.layers.0.mlp.experts.down_proj_bias`"],
        ),
        (
            edit_list(
                "exclude_list",
                "target_modules",
                "layers.0.self_attn.q_proj",
            ),
            "target_modules",
            &["no-op entry"],
        ),
        (
            edit_list("layers_int", "target_modules", "layers.0.self_attn.o_proj"),
            "target_modules",
            &["\"layers.0.self_attn.o_proj\"", "no-op"],
        ),
        (
            edit_list("list_paths_suffixes", "target_modules", "router"),
            "target_modules",
            &["GptOssTopKRouter", "cannot wrap"],
        ),
        (
            edit_list("list_paths_suffixes", "target_modules", "mlp.experts"),
            "target_modules",
            &["GptOssExperts", "target_parameters"],
        ),
        (
            edit_list("list_paths_suffixes", "target_modules", "lm_head"),
            "target_modules",
            &["`lm_head`", "does not support"],
        ),
        (
            variant(
                "regex",
                set(
                    "target_modules",
                    json!(r".*layers\.[13]\.self_attention\..*"),
                ),
                |_| {},
            ),
            "target_modules",
            &["matches no module path"],
        ),
        (
            variant("exclude_regex", set("exclude_modules", json!(".*")), |_| {}),
            "target_modules",
            &["excludes every match"],
        ),
    ];
    for (dir, key, parts) in cases {
        let (e, msg) = validate_err(dir.path());
        assert!(matches!(e, AdapterError::ConfigValue { .. }), "{msg}");
        has(
            &msg,
            &[&dir.path().join(CONFIG_FILE).display().to_string(), key],
        );
        has(&msg, parts);
    }
    // layers_to_transform leaving q_proj only in layer 1 of 4 is fine; a 1-layer base has no layer 1
    let ad = LoraAdapter::load(&case("layers_int")).unwrap();
    let err = ad.validate(&BaseDims { layers: 1, ..DIMS }).unwrap_err();
    assert!(
        matches!(
            err,
            AdapterError::LayerOutOfRange {
                layer: 1,
                layers: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn validate_refuses_missing_and_untargeted_tensors() {
    let drop_keys =
        |prefix: &'static str| move |t: &mut Tensors| t.retain(|(k, _, _)| !k.starts_with(prefix));
    // a targeted attention module without tensors
    let dir = variant(
        "list_paths_suffixes",
        |_| {},
        drop_keys("base_model.model.model.layers.2.self_attn.v_proj."),
    );
    let (e, msg) = validate_err(dir.path());
    assert!(matches!(e, AdapterError::MissingTensors { .. }), "{msg}");
    has(
        &msg,
        &[
            WEIGHTS_FILE,
            "layers.2.self_attn.v_proj.lora_A.weight",
            "is absent",
            "target_modules selects `model.layers.2.self_attn.v_proj`",
        ],
    );
    let ad = LoraAdapter::load(dir.path()).unwrap();
    let cov = ad.coverage(&DIMS);
    let e = cov
        .get(Site::Attention {
            layer: 2,
            proj: AttnProj::V,
        })
        .unwrap();
    assert_eq!((e.status, e.r), (CoverageStatus::TargetedWithoutTensors, 2));
    assert_eq!(cov.adapted().count(), 9);

    // a targeted expert weight without tensors (gate_up, nested under experts.base_layer)
    let dir = variant(
        "experts_both",
        |_| {},
        drop_keys("base_model.model.model.layers.3.mlp.experts.base_layer."),
    );
    let (e, msg) = validate_err(dir.path());
    assert!(matches!(e, AdapterError::MissingTensors { .. }), "{msg}");
    has(
        &msg,
        &[
            "layers.3.mlp.experts.base_layer.lora_A.weight",
            "target_parameters selects `model.layers.3.mlp.experts.gate_up_proj`",
        ],
    );

    // tensors of an attention module layers_to_transform leaves out
    let dir = variant(
        "layers_int",
        |_| {},
        |t| {
            let extra: Tensors = t
                .iter()
                .filter(|(k, _, _)| k.contains(".layers.1.self_attn.q_proj."))
                .map(|(k, s, d)| (k.replace(".layers.1.", ".layers.0."), s.clone(), d.clone()))
                .collect();
            t.extend(extra);
        },
    );
    let (e, msg) = validate_err(dir.path());
    assert!(matches!(e, AdapterError::Untargeted { .. }), "{msg}");
    has(
        &msg,
        &[
            WEIGHTS_FILE,
            "layers.0.self_attn.q_proj.lora_A.weight",
            "does not target",
            "layers_to_transform / layers_pattern leave its layer out",
            "vLLM would apply it",
        ],
    );
    let cov = LoraAdapter::load(dir.path()).unwrap().coverage(&DIMS);
    let e = cov
        .get(Site::Attention {
            layer: 0,
            proj: AttnProj::Q,
        })
        .unwrap();
    assert_eq!(
        (e.status, e.r, e.scaling),
        (CoverageStatus::UntargetedTensors, 2, 2.0)
    );

    // expert tensors of a layer target_parameters no longer selects: told apart by shape
    let dir = variant(
        "experts_single",
        |c| drop(c["target_parameters"].as_array_mut().unwrap().pop()),
        |_| {},
    );
    let (e, msg) = validate_err(dir.path());
    assert!(matches!(e, AdapterError::Untargeted { .. }), "{msg}");
    has(
        &msg,
        &[
            "layers.3.mlp.experts.lora_A.weight",
            "`model.layers.3.mlp.experts.down_proj`",
            "target_parameters selects no expert weight",
        ],
    );
    let cov = LoraAdapter::load(dir.path()).unwrap().coverage(&DIMS);
    let e = cov
        .get(Site::Experts {
            layer: 3,
            proj: ExpertProj::Down,
        })
        .unwrap();
    assert_eq!((e.status, e.r), (CoverageStatus::UntargetedTensors, 1));

    // ... and when their shapes fit neither expert weight
    let dir = variant(
        "experts_single",
        |c| drop(c["target_parameters"].as_array_mut().unwrap().pop()),
        |t| {
            for (k, s, d) in t.iter_mut() {
                if k.ends_with("layers.3.mlp.experts.lora_A.weight") {
                    *s = vec![8, 50];
                    d.truncate(400);
                }
            }
        },
    );
    let (_, msg) = validate_err(dir.path());
    has(
        &msg,
        &[
            "layers.3.mlp.experts.lora_A.weight",
            "fit neither gate_up_proj (in 64, out 192) nor down_proj (in 96, out 64)",
        ],
    );
    let cov = LoraAdapter::load(dir.path()).unwrap().coverage(&DIMS);
    assert_eq!(
        cov.unattributed,
        ["base_model.model.model.layers.3.mlp.experts.lora_A.weight"]
    );
}

/// One expert weight targeted in a layer: `mlp.experts.lora_*` holds it whichever it is; the
/// base's shapes must agree with what target_parameters says.
#[test]
fn single_expert_weight_attributed_and_checked_by_shape() {
    let ad = LoraAdapter::load(&case("experts_single")).unwrap();
    assert_eq!(ad.experts(0, ExpertProj::GateUp).unwrap().out_features, 192);
    assert_eq!(ad.experts(1, ExpertProj::Down).unwrap().out_features, 64);
    assert!(ad.experts(0, ExpertProj::Down).is_none());
    let dir = variant(
        "experts_single",
        |c| {
            c["target_parameters"][0] = Value::from("layers.0.mlp.experts.down_proj");
        },
        |_| {},
    );
    let (e, msg) = validate_err(dir.path());
    assert!(
        matches!(e, AdapterError::ExpertMismatch { layer: 0, .. }),
        "{msg}"
    );
    has(
        &msg,
        &[
            WEIGHTS_FILE,
            "base_model.model.model.layers.0.mlp.experts.lora_A.weight",
            "target_parameters selects down_proj of layer 0",
            "lora_A [8, 64] and lora_B [192, 8]",
            "shapes of its gate_up_proj",
        ],
    );
}

#[test]
fn serving_warnings_for_vllm() {
    assert!(LoraAdapter::load(&case("all_linear"))
        .unwrap()
        .serving_warnings()
        .is_empty());
    assert!(LoraAdapter::load(&case("layers_list_pattern"))
        .unwrap()
        .serving_warnings()
        .is_empty());

    let w = LoraAdapter::load(&case("experts_single"))
        .unwrap()
        .serving_warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    has(
        &w[0],
        &[
            "gate_up_proj without down_proj in layer(s) [0, 2]",
            "vllm/lora/model_manager.py",
            "cannot serve",
        ],
    );
    has(
        &w[1],
        &["down_proj without gate_up_proj in layer(s) [1, 3]"],
    );
    // down only in every layer
    let w = LoraAdapter::load(&case("layers_list_patterns"))
        .unwrap()
        .serving_warnings();
    has(
        &w.join("\n"),
        &["down_proj without gate_up_proj in layer(s) [0, 1, 2, 3]"],
    );

    // vLLM scales every module by lora_alpha/r: down_proj's alpha_pattern 3 gives 3.0, vLLM 2.0
    let w = LoraAdapter::load(&case("experts_both"))
        .unwrap()
        .serving_warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    has(
        &w[0],
        &[
            "3 module(s)",
            "lora_alpha/r = 2",
            "vllm/lora/peft_helper.py",
        ],
    );
    // rsLoRA itself is fine in vLLM; its patterns are not
    let w = LoraAdapter::load(&case("rslora"))
        .unwrap()
        .serving_warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    has(&w[0], &["lora_alpha/sqrt r = 3", "ignores both patterns"]);

    // a rank vLLM cannot hold
    let r = 513;
    let cfg = AdapterConfig::new_gpt_oss(r, 16.0, vec!["layers.0.self_attn.q_proj".into()], vec![]);
    let ad = LoraAdapter::from_parts(
        cfg,
        [
            (
                adapters::attention_key(0, AttnProj::Q, adapters::Factor::A),
                vec![r, 64],
                vec![0.0; r * 64],
            ),
            (
                adapters::attention_key(0, AttnProj::Q, adapters::Factor::B),
                vec![96, r],
                vec![0.0; 96 * r],
            ),
        ],
    )
    .unwrap();
    ad.validate(&DIMS).unwrap();
    let w = ad.serving_warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    has(
        &w[0],
        &[
            "rank 513",
            "model.layers.0.self_attn.q_proj",
            "exceeds 512",
            "vllm/config/lora.py",
        ],
    );
}
