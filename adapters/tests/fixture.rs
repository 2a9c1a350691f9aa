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
