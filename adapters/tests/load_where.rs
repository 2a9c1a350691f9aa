//! `LoraAdapter::load_where` reads a subset of an adapter (one layer's tensors) with the same
//! values and indexing as the whole load.

use std::path::PathBuf;

use adapters::{AttnProj, ExpertProj, LoraAdapter};

#[test]
fn one_layer_loads_like_the_whole_adapter() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter");
    let all = LoraAdapter::load(&dir).unwrap();
    let one = LoraAdapter::load_where(&dir, |k| k.contains(".layers.3.")).unwrap();
    assert!(!one.is_empty() && one.len() < all.len());
    assert!(one.attention_modules().all(|(l, _)| l == 3));
    assert!(one.expert_modules().all(|(l, _)| l == 3));
    for p in AttnProj::ALL {
        let (a, b) = (all.attention(3, p).unwrap(), one.attention(3, p).unwrap());
        assert_eq!((a.a, a.b, a.r, a.scale), (b.a, b.b, b.r, b.scale));
        assert!(one.attention(0, p).is_none());
    }
    for p in [ExpertProj::GateUp, ExpertProj::Down] {
        let (a, b) = (all.experts(3, p).unwrap(), one.experts(3, p).unwrap());
        assert_eq!((a.a, a.b, a.r, a.experts), (b.a, b.b, b.r, b.experts));
    }
    let none = LoraAdapter::load_where(&dir, |_| false).unwrap();
    assert_eq!(none.len(), 0);
}
