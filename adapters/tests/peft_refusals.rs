//! What the adapters crate refuses, on variants of the adapters PEFT wrote (fixtures/peft/): each
//! unsupported variant at load, LoRA tensors on modules other than attention and experts, and each
//! validate error against a base (no-op targets, missing and untargeted tensors), naming file and key.

mod peft_support;

use adapters::{
    AdapterError, AttnProj, BaseDims, CoverageStatus, ExpertProj, LoraAdapter, Site, CONFIG_FILE,
    WEIGHTS_FILE,
};
use serde_json::{json, Value};

use peft_support::*;

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
