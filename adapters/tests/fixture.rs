//! The PEFT-written fixture adapter (tests/fixtures/tiny-gpt-oss/adapter): rank 4, alpha 8, q/k/v/o in all
//! 4 layers, experts (8 of them) in layers 0, 1 and 3. Base: H 64, I 96, 6 heads of 16, 2 KV heads.

use std::path::PathBuf;

use adapters::{AttnProj, BaseDims, ExpertProj, LoraAdapter};

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

#[test]
fn loads_with_expected_layout() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    assert_eq!(ad.len(), 4 * 8 + 3 * 4);
    assert_eq!(ad.source_dtypes(), ["F32"]);
    ad.validate(&DIMS).unwrap();
    let c = ad.config();
    assert_eq!((c.r, c.lora_alpha, c.peft_type.as_str()), (4, 8.0, "LORA"));
    for l in 0..4 {
        for (p, i, o) in [
            (AttnProj::Q, 64, 96),
            (AttnProj::K, 64, 32),
            (AttnProj::V, 64, 32),
            (AttnProj::O, 96, 64),
        ] {
            let a = ad.attention(l, p).unwrap();
            assert_eq!(
                (a.r, a.in_features, a.out_features, a.scale),
                (4, i, o, 2.0),
                "{l} {p:?}"
            );
            assert_eq!((a.a.len(), a.b.len()), (4 * i, o * 4));
        }
        for (p, i, o) in [(ExpertProj::GateUp, 64, 192), (ExpertProj::Down, 96, 64)] {
            let e = ad.experts(l, p);
            assert_eq!(e.is_some(), l != 2, "layer {l} {p:?}");
            if let Some(e) = e {
                assert_eq!(
                    (e.r, e.experts, e.in_features, e.out_features, e.scale),
                    (4, 8, i, o, 2.0)
                );
            }
        }
        assert!(ad
            .config()
            .targets_module(&adapters::attention_module(l, AttnProj::V)));
        assert_eq!(ad.config().targets_expert(l, ExpertProj::Down), l != 2);
    }
    assert!(ad.attention(4, AttnProj::Q).is_none());
    // the accessor hands out the bytes of the right key: gate_up of layer 0 is the nested wrapper
    let (_, _, data) = ad
        .tensors()
        .find(|(k, _, _)| {
            *k == "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight"
        })
        .unwrap();
    assert_eq!(ad.experts(0, ExpertProj::GateUp).unwrap().b, data);
    let keys: Vec<&str> = ad.tensors().map(|(k, _, _)| k).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "tensors() is in key order");
}

#[test]
fn from_parts_checks_consistency() {
    let ad = LoraAdapter::load(&fixture()).unwrap();
    let parts = || {
        ad.tensors()
            .map(|(k, s, d)| (k.to_string(), s.to_vec(), d.to_vec()))
            .collect::<Vec<_>>()
    };
    let rebuilt = LoraAdapter::from_parts(ad.config().clone(), parts()).unwrap();
    assert!(rebuilt.tensors().eq(ad.tensors()));
    let mut bad = parts();
    bad[0].2.pop();
    let msg = LoraAdapter::from_parts(ad.config().clone(), bad)
        .unwrap_err()
        .to_string();
    let first = ad.tensors().next().unwrap().0;
    assert!(
        msg.contains(adapters::IN_MEMORY) && msg.contains(first) && msg.contains("does not fit"),
        "{msg}"
    );
}

/// What training does: a fresh PEFT-style config, tensors named with the key builders, saved, reloaded.
#[test]
fn built_adapter_round_trips() {
    use adapters::{attention_key, expert_key, AdapterConfig, Factor};
    let (r, e) = (2, 8);
    let cfg = AdapterConfig::new_gpt_oss(
        r,
        16.0,
        vec![
            "layers.1.self_attn.q_proj".into(),
            "layers.1.self_attn.o_proj".into(),
        ],
        vec![
            "layers.1.mlp.experts.gate_up_proj".into(),
            "layers.1.mlp.experts.down_proj".into(),
        ],
    );
    let mut ts = Vec::new();
    for (p, i, o) in [(AttnProj::Q, 64, 96), (AttnProj::O, 96, 64)] {
        ts.push((
            attention_key(1, p, Factor::A),
            vec![r, i],
            vec![0.25; r * i],
        ));
        ts.push((
            attention_key(1, p, Factor::B),
            vec![o, r],
            vec![-0.5; o * r],
        ));
    }
    for (p, i, o) in [(ExpertProj::GateUp, 64, 192), (ExpertProj::Down, 96, 64)] {
        ts.push((
            expert_key(1, p, true, Factor::A),
            vec![r * e, i],
            vec![1.0; r * e * i],
        ));
        ts.push((
            expert_key(1, p, true, Factor::B),
            vec![o, r * e],
            vec![2.0; o * r * e],
        ));
    }
    let ad = LoraAdapter::from_parts(cfg, ts).unwrap();
    ad.validate(&DIMS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    ad.save(&tmp.path().join("out"), false).unwrap();
    let back = LoraAdapter::load(&tmp.path().join("out")).unwrap();
    back.validate(&DIMS).unwrap();
    assert_eq!(back.config(), ad.config());
    let gu = back.experts(1, ExpertProj::GateUp).unwrap();
    assert_eq!(
        (gu.in_features, gu.out_features, gu.experts, gu.scale),
        (64, 192, 8, 8.0)
    );
    assert!(back.attention(1, AttnProj::K).is_none());
    assert_eq!(back.attention(1, AttnProj::O).unwrap().b[0], -0.5);
}
