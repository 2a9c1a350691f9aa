//! Delta math against formulas written here independently (f64, straight from DESIGN §2.4), a hand-computed
//! case, and the fixture's stacked expert layout.

use std::path::PathBuf;

use adapters::{
    add_attention_delta, add_expert_delta_packed, attention_delta, expert_delta_packed,
    AttentionLora, ExpertLora, ExpertProj, LoraAdapter,
};

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

#[test]
fn expert_delta_matches_naive_formula() {
    // r != E, odd sizes; the larger shape takes gemm's multithreaded path
    for (r, n, i_n, o_n) in [(3, 5, 37, 29), (2, 7, 64, 192), (4, 3, 300, 1100)] {
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
            close(&expert_delta_packed(&l, e), &naive_expert(&l, e));
            let base = rnd(o_n * i_n, 9);
            let mut w = base.clone();
            add_expert_delta_packed(&l, e, &mut w);
            let want: Vec<f64> = naive_expert(&l, e)
                .iter()
                .zip(&base)
                .map(|(d, w)| d + *w as f64)
                .collect();
            close(&w, &want);
        }
    }
}

#[test]
fn attention_delta_matches_naive_formula() {
    for (r, i_n, o_n) in [(1, 5, 3), (4, 64, 96), (16, 333, 1000)] {
        let (a, b) = (rnd(r * i_n, 3), rnd(o_n * r, 4));
        let l = AttentionLora {
            a: &a,
            b: &b,
            r,
            in_features: i_n,
            out_features: o_n,
            scale: 0.5,
        };
        let mut want = vec![0.0f64; o_n * i_n];
        for o in 0..o_n {
            for i in 0..i_n {
                for j in 0..r {
                    want[o * i_n + i] += 0.5 * b[o * r + j] as f64 * a[j * i_n + i] as f64;
                }
            }
        }
        close(&attention_delta(&l), &want);
        let mut w = vec![1.0f32; o_n * i_n];
        add_attention_delta(&l, &mut w);
        close(&w, &want.iter().map(|d| d + 1.0).collect::<Vec<_>>());
    }
}

#[test]
fn hand_computed_tiny_cases() {
    // attention: r=1, in=2, out=2, s=2: ΔW = 2·[1;2]·[3 4] = [[6 8];[12 16]]
    let l = AttentionLora {
        a: &[3.0, 4.0],
        b: &[1.0, 2.0],
        r: 1,
        in_features: 2,
        out_features: 2,
        scale: 2.0,
    };
    assert_eq!(attention_delta(&l), [6.0, 8.0, 12.0, 16.0]);
    // experts: E=2, r=1, in=2, out=1, s=1. A rows: e0 [1 2], e1 [3 4]. B [1, 2]: col e0 = 10, col e1 = 100.
    // ΔWᵀ[0] = 10·[1 2] = [10 20]; ΔWᵀ[1] = 100·[3 4] = [300 400]
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
    assert_eq!(expert_delta_packed(&l, 0), [10.0, 20.0]);
    assert_eq!(expert_delta_packed(&l, 1), [300.0, 400.0]);
    // E=2, r=2, in=1, out=1: A rows (e·r+j): [a00 a01 a10 a11] = [1 2 3 4]; B cols (j·E+e): [b00 b10 b01 b11]
    // = [5 6 7 8] meaning B[j=0,e=0]=5, B[j=0,e=1]=6, B[j=1,e=0]=7, B[j=1,e=1]=8.
    // e0: 5·1 + 7·2 = 19; e1: 6·3 + 8·4 = 50
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
    assert_eq!(expert_delta_packed(&l, 0), [19.0]);
    assert_eq!(expert_delta_packed(&l, 1), [50.0]);
}

#[test]
fn fixture_expert_views_match_formula() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter");
    let ad = LoraAdapter::load(&dir).unwrap();
    for layer in [0, 3] {
        for p in [ExpertProj::GateUp, ExpertProj::Down] {
            let l = ad.experts(layer, p).unwrap();
            for e in 0..l.experts {
                let want = naive_expert(&l, e);
                close(&expert_delta_packed(&l, e), &want);
            }
        }
    }
}
