//! LoRA deltas on plain slices: `ΔW = s·B·A` for attention (`[out, in]`, nn.Linear orientation) and, per
//! expert, in the packed orientation `[out, in]` (rows are output features; MXFP4 blocks of 32 run along in).
//!
//! The fast path calls the `gemm` crate with strides that pick expert `e`'s rank-r slices straight out of the
//! stacked A (rows `e·r..e·r+r`) and B (columns `j·E + e`), so nothing is copied. `gemm` accumulates
//! `Σ_j B·A` in f32 and then adds `s·acc` to `w`, the order of `w + s·(B @ A)` in PyTorch. [`reference`]
//! holds the scalar definition the fast path is tested against.

use gemm::{gemm, Parallelism};

use crate::adapter::{AttentionLora, ExpertLora};

/// `s·B·A` as `[out, in]` row-major (nn.Linear orientation; `W` is `[out, in]`).
pub fn attention_delta(l: &AttentionLora) -> Vec<f32> {
    let mut w = vec![0.0f32; l.out_features * l.in_features];
    add_attention_delta(l, &mut w);
    w
}

/// `w += s·B·A`, `w` being `[out, in]` row-major.
///
/// # Panics
/// When `w` or the factors do not have the sizes `l` states (a caller bug: an adapter's accessors always
/// give consistent views).
pub fn add_attention_delta(l: &AttentionLora, w: &mut [f32]) {
    let (o, i, r) = (l.out_features, l.in_features, l.r);
    assert_eq!(
        w.len(),
        o * i,
        "add_attention_delta: w has {} values, want {o}x{i}",
        w.len()
    );
    assert_eq!(
        l.a.len(),
        r * i,
        "add_attention_delta: A has {} values, want {r}x{i}",
        l.a.len()
    );
    assert_eq!(
        l.b.len(),
        o * r,
        "add_attention_delta: B has {} values, want {o}x{r}",
        l.b.len()
    );
    // SAFETY: dst is o×i (row stride i), lhs = B is o×r (row stride r), rhs = A is r×i (row stride i);
    // the asserts above prove every index in range, and dst does not alias the inputs (&mut vs &).
    unsafe {
        gemm(
            o,
            i,
            r,
            w.as_mut_ptr(),
            1,
            i as isize,
            true,
            l.b.as_ptr(),
            1,
            r as isize,
            l.a.as_ptr(),
            1,
            i as isize,
            1.0,
            l.scale,
            false,
            false,
            false,
            parallelism(o * i * r),
        );
    }
}

/// Expert `e`'s delta in the packed orientation `[out, in]` row-major:
/// `ΔWᵀ[e][o, i] = s · Σ_j B[o, j·E+e] · A[e·r+j, i]`.
pub fn expert_delta_packed(l: &ExpertLora, e: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; l.out_features * l.in_features];
    add_expert_delta_packed(l, e, &mut w);
    w
}

/// `w += ΔWᵀ[e]`, `w` being expert `e`'s `[out, in]` row-major weight (packed orientation).
///
/// # Panics
/// When `e >= l.experts` or the sizes disagree with `l` (a caller bug).
pub fn add_expert_delta_packed(l: &ExpertLora, e: usize, w: &mut [f32]) {
    let (o, i, r, n) = (l.out_features, l.in_features, l.r, l.experts);
    assert!(e < n, "add_expert_delta_packed: expert {e} of {n}");
    assert_eq!(
        w.len(),
        o * i,
        "add_expert_delta_packed: w has {} values, want {o}x{i}",
        w.len()
    );
    assert_eq!(
        l.a.len(),
        r * n * i,
        "add_expert_delta_packed: A has {} values, want {}x{i}",
        l.a.len(),
        r * n
    );
    assert_eq!(
        l.b.len(),
        o * r * n,
        "add_expert_delta_packed: B has {} values, want {o}x{}",
        l.b.len(),
        r * n
    );
    // SAFETY: lhs = B[:, j·E+e] for j < r: element (row o, col j) at e + o·(r·E) + j·E, the largest being
    // e + (o-1)·r·E + (r-1)·E < o·r·E = B.len() since e < E. rhs = A rows e·r..e·r+r: element (j, i) at
    // (e·r+j)·in + i < r·E·in = A.len(). dst is o×i row-major, len checked; no aliasing (&mut vs &).
    unsafe {
        gemm(
            o,
            i,
            r,
            w.as_mut_ptr(),
            1,
            i as isize,
            true,
            l.b.as_ptr().add(e),
            n as isize,
            (r * n) as isize,
            l.a.as_ptr().add(e * r * i),
            1,
            i as isize,
            1.0,
            l.scale,
            false,
            false,
            false,
            parallelism(o * i * r),
        );
    }
}

/// Threads only pay for themselves on real-sized matrices.
fn parallelism(work: usize) -> Parallelism {
    if work >= 1 << 20 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// Scalar definitions of the deltas (f32, sum over rank in order, then scaled): the fast path's reference.
pub mod reference {
    use crate::adapter::{AttentionLora, ExpertLora};

    /// Scalar `w += s·B·A`, `[out, in]` row-major.
    pub fn add_attention_delta(l: &AttentionLora, w: &mut [f32]) {
        let (i_n, r) = (l.in_features, l.r);
        for o in 0..l.out_features {
            for i in 0..i_n {
                let mut acc = 0.0f32;
                for j in 0..r {
                    acc += l.b[o * r + j] * l.a[j * i_n + i];
                }
                w[o * i_n + i] += l.scale * acc;
            }
        }
    }

    /// Scalar `w += ΔWᵀ[e]`, `[out, in]` row-major.
    pub fn add_expert_delta_packed(l: &ExpertLora, e: usize, w: &mut [f32]) {
        let (i_n, r, n) = (l.in_features, l.r, l.experts);
        for o in 0..l.out_features {
            for i in 0..i_n {
                let mut acc = 0.0f32;
                for j in 0..r {
                    acc += l.b[o * r * n + j * n + e] * l.a[(e * r + j) * i_n + i];
                }
                w[o * i_n + i] += l.scale * acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn fast_matches_scalar_reference() {
        // r != E, and rows/cols not multiples of gemm's register tiles
        let (o, i, r, n) = (130, 200, 3, 5);
        let (a, b) = (rnd(r * n * i, 1), rnd(o * r * n, 2));
        let l = ExpertLora {
            a: &a,
            b: &b,
            r,
            experts: n,
            in_features: i,
            out_features: o,
            scale: 0.7,
        };
        for e in [0, 3, 4] {
            let base = rnd(o * i, 10 + e as u64);
            let (mut fast, mut slow) = (base.clone(), base);
            add_expert_delta_packed(&l, e, &mut fast);
            reference::add_expert_delta_packed(&l, e, &mut slow);
            for (x, y) in fast.iter().zip(&slow) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
        let (a, b) = (rnd(r * i, 3), rnd(o * r, 4));
        let l = AttentionLora {
            a: &a,
            b: &b,
            r,
            in_features: i,
            out_features: o,
            scale: 2.0,
        };
        let (mut fast, mut slow) = (vec![0.5; o * i], vec![0.5; o * i]);
        add_attention_delta(&l, &mut fast);
        reference::add_attention_delta(&l, &mut slow);
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
