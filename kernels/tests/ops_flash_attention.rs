//! Flash attention on the CPU (`Flex`, and `Autodiff<Flex>` for the gradients) against the naive
//! f64 reference: causal, sliding window, GQA, packed segments, batch 2, seq not a multiple of the
//! blocks. Tolerances: forward 1e-5 abs; gradients 1e-4 relative to the largest reference value.
//! Plus the refusals of bad shapes.

#[path = "flash_support/mod.rs"]
mod flash_support;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use flash_support::{cases, forward, grads, max_abs, max_rel};
use kernels::ops::{
    flash_attention, flash_attention_reference, flash_attention_reference_grads, AttentionError,
    AttentionMask, HostAttention,
};

#[test]
fn forward_matches_the_reference() {
    let dev = Default::default();
    for c in cases() {
        let x = HostAttention {
            q: &c.q,
            k: &c.k,
            v: &c.v,
            sinks: &c.sinks,
            dims: c.dims,
        };
        let want = flash_attention_reference(&x, &c.mask);
        let err = max_abs(&forward::<Flex>(&c, &dev), &want);
        eprintln!("{}: forward max abs {err:.2e}", c.name);
        assert!(err < 1e-5, "{}: forward max abs error {err}", c.name);
    }
}

#[test]
fn gradients_match_the_reference() {
    let dev = Default::default();
    for c in cases() {
        let x = HostAttention {
            q: &c.q,
            k: &c.k,
            v: &c.v,
            sinks: &c.sinks,
            dims: c.dims,
        };
        let want = flash_attention_reference_grads(&x, &c.grad_out, &c.mask);
        let [out, dq, dk, dv] = grads::<Flex>(&c, &dev);
        let out_err = max_abs(&out, &flash_attention_reference(&x, &c.mask));
        assert!(
            out_err < 1e-5,
            "{}: autodiff forward error {out_err}",
            c.name
        );
        for (what, got, want) in [
            ("dq", dq, want.dq),
            ("dk", dk, want.dk),
            ("dv", dv, want.dv),
        ] {
            let err = max_rel(&got, &want);
            eprintln!("{}: {what} max rel {err:.2e}", c.name);
            assert!(err < 1e-4, "{}: {what} max relative error {err}", c.name);
        }
    }
}

fn zeros<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(vec![0f32; n], shape), &Default::default())
}

fn attempt(
    q: [usize; 4],
    k: [usize; 4],
    v: [usize; 4],
    sinks: usize,
    mask: &AttentionMask,
) -> Result<Tensor<Flex, 4>, AttentionError> {
    flash_attention(zeros(q), zeros(k), zeros(v), zeros([sinks]), mask)
}

#[test]
fn bad_shapes_are_refused() {
    let causal = AttentionMask::causal();
    let ok = attempt([1, 4, 5, 8], [1, 2, 5, 8], [1, 2, 5, 8], 4, &causal);
    assert_eq!(ok.unwrap().dims(), [1, 4, 5, 8]);
    let bad = [
        // k's head dim, seq and batch must match q's
        attempt([1, 4, 5, 8], [1, 2, 5, 4], [1, 2, 5, 4], 4, &causal),
        attempt([1, 4, 5, 8], [1, 2, 6, 8], [1, 2, 6, 8], 4, &causal),
        attempt([2, 4, 5, 8], [1, 2, 5, 8], [1, 2, 5, 8], 4, &causal),
        // v must match k
        attempt([1, 4, 5, 8], [1, 2, 5, 8], [1, 1, 5, 8], 4, &causal),
        // one sink per query head
        attempt([1, 4, 5, 8], [1, 2, 5, 8], [1, 2, 5, 8], 2, &causal),
    ];
    for r in bad {
        assert!(matches!(r, Err(AttentionError::Shape { .. })), "{r:?}");
    }
    let r = attempt([1, 6, 5, 8], [1, 4, 5, 8], [1, 4, 5, 8], 6, &causal);
    assert_eq!(
        r.unwrap_err(),
        AttentionError::Groups {
            heads: 6,
            kv_heads: 4
        }
    );
    let r = attempt([1, 4, 0, 8], [1, 2, 0, 8], [1, 2, 0, 8], 4, &causal);
    assert!(matches!(r, Err(AttentionError::Empty(_))), "{r:?}");
    let segs = AttentionMask::sliding(3).with_segments(vec![0; 4]);
    let r = attempt([1, 4, 5, 8], [1, 2, 5, 8], [1, 2, 5, 8], 4, &segs);
    let err = r.unwrap_err();
    assert_eq!(
        err,
        AttentionError::Segments {
            expected: 5,
            got: 4
        }
    );
    assert!(err.to_string().contains("segment starts"), "{err}");
}
