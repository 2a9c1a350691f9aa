//! PEFT's per-expert slicing (`ExpertLora::expert_a` / `expert_b`, the one place it is written)
//! against DESIGN §2.4's formula on the stacked tensors, written here independently in f64, on
//! random sizes (r != E), hand-computed cases and the fixture adapter.

use std::path::PathBuf;

use adapters::{ExpertLora, ExpertProj, LoraAdapter};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x2545_f491_4f6c_dd1d);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "index {i}: {g} vs {w}"
        );
    }
}

/// DESIGN §2.4: ΔW[e] (in×out) = s·Σ_j A[e·r+j, :]ᵀ ⊗ B[:, j·E+e]; returned transposed, [out, in].
fn naive_expert(l: &ExpertLora, e: usize) -> Vec<f64> {
    let (r, n, i_n, o_n, s) = (
        l.r,
        l.experts,
        l.in_features,
        l.out_features,
        l.scale as f64,
    );
    let mut dw = vec![0.0f64; i_n * o_n]; // [in, out]
    for j in 0..r {
        let arow = &l.a[(e * r + j) * i_n..(e * r + j + 1) * i_n];
        for (i, av) in arow.iter().enumerate() {
            for o in 0..o_n {
                dw[i * o_n + o] += s * *av as f64 * l.b[o * (r * n) + j * n + e] as f64;
            }
        }
    }
    let mut t = vec![0.0f64; o_n * i_n];
    for i in 0..i_n {
        for o in 0..o_n {
            t[o * i_n + i] = dw[i * o_n + o];
        }
    }
    t
}

/// `s·B_e·A_e` in f64 from the slices, `[out, in]`.
fn from_slices(l: &ExpertLora, e: usize) -> Vec<f32> {
    let (a, b, r) = (l.expert_a(e), l.expert_b(e), l.r);
    assert_eq!(a.len(), r * l.in_features);
    assert_eq!(b.len(), l.out_features * r);
    let mut out = vec![0f32; l.out_features * l.in_features];
    for o in 0..l.out_features {
        for i in 0..l.in_features {
            let d: f64 = (0..r)
                .map(|j| b[o * r + j] as f64 * a[j * l.in_features + i] as f64)
                .sum();
            out[o * l.in_features + i] = (l.scale as f64 * d) as f32;
        }
    }
    out
}

#[test]
fn expert_slices_match_the_stacked_formula() {
    for (r, n, i_n, o_n) in [(3, 5, 37, 29), (2, 7, 64, 192)] {
        let (a, b) = (rnd(r * n * i_n, 1), rnd(o_n * r * n, 2));
        let l = ExpertLora {
            a: &a,
            b: &b,
            r,
            experts: n,
            in_features: i_n,
            out_features: o_n,
            scale: 1.75,
        };
        for e in 0..n {
            close(&from_slices(&l, e), &naive_expert(&l, e));
        }
    }
}

#[test]
fn hand_computed_tiny_cases() {
    // E=2, r=1, in=2, out=1. A rows: e0 [1 2], e1 [3 4]. B [1, 2]: col e0 = 10, col e1 = 100.
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [10.0, 100.0]);
    let l = ExpertLora {
        a: &a,
        b: &b,
        r: 1,
        experts: 2,
        in_features: 2,
        out_features: 1,
        scale: 1.0,
    };
    assert_eq!(l.expert_a(1), [3.0, 4.0]);
    assert_eq!(l.expert_b(0), [10.0]);
    assert_eq!(l.expert_b(1), [100.0]);
    // E=2, r=2, in=1, out=1: B cols (j·E+e) [5 6 7 8]: B_0 = [5 7], B_1 = [6 8]
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]);
    let l = ExpertLora {
        a: &a,
        b: &b,
        r: 2,
        experts: 2,
        in_features: 1,
        out_features: 1,
        scale: 1.0,
    };
    assert_eq!(l.expert_a(0), [1.0, 2.0]);
    assert_eq!(l.expert_b(0), [5.0, 7.0]);
    assert_eq!(l.expert_b(1), [6.0, 8.0]);
    // e0: 5·1 + 7·2 = 19; e1: 6·3 + 8·4 = 50
    assert_eq!(from_slices(&l, 0), [19.0]);
    assert_eq!(from_slices(&l, 1), [50.0]);
}

#[test]
fn fixture_expert_slices_match_the_formula() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter");
    let ad = LoraAdapter::load(&dir).unwrap();
    for layer in [0, 3] {
        for p in [ExpertProj::GateUp, ExpertProj::Down] {
            let l = ad.experts(layer, p).unwrap();
            for e in 0..l.experts {
                close(&from_slices(&l, e), &naive_expert(&l, e));
            }
        }
    }
}
