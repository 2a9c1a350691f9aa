//! PEFT's adapter format, checked against adapters PEFT 0.21 itself wrote for the tiny gpt-oss
//! (fixtures/peft/<case>/, from scripts/gen_peft_format_fixtures.py): every case's coverage (module
//! set, ranks, alphas, scalings, tensor keys) equals what PEFT created and reloads (expected.json);
//! pattern order, expert attribution by shape, serving warnings. Refusals: `peft_refusals.rs`.

mod peft_support;

use std::collections::BTreeSet;
use std::fs;

use adapters::{
    AdapterConfig, AdapterError, AttnProj, ExpertProj, LoraAdapter, Site, TargetModules,
    WEIGHTS_FILE,
};
use serde_json::Value;

use peft_support::*;

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
