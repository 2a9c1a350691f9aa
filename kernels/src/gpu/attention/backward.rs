//! The backward kernels, both recomputing `p = exp(s − lse)` from the saved log-sum-exp:
//! `dq` with one unit per query row (its visible keys), `dk`/`dv` with one unit per key row
//! (every query head of its kv group, every query that sees it), so each output element has a
//! single writer and no atomics are needed. `delta [batch, heads, seq]` is `Σ dO∘O` per row.

use cubecl::prelude::*;

use super::forward::first_key;

/// `dq [batch, heads, seq, d] = scale · Σ_j p_ij (dO_i·v_j − D_i) k_j`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward_dq<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    seg: &Tensor<u32>,
    dq: &mut Tensor<F>,
    heads: u32,
    group: u32,
    seq: u32,
    window: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] causal: bool,
) {
    let seq = seq as usize;
    let i = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if i >= seq {
        terminate!();
    }
    let bh = CUBE_POS_Y as usize;
    let heads = heads as usize;
    let b = bh / heads;
    let h = bh % heads;
    let kv_heads = heads / group as usize;
    let kv = (b * kv_heads + h / group as usize) * seq * d;
    let row = (bh * seq + i) * d;

    let mut qi = Array::<f32>::new(d);
    let mut doi = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    for c in 0..d {
        qi[c] = f32::cast_from(q[row + c]) * scale;
        doi[c] = f32::cast_from(grad_out[row + c]);
        acc[c] = 0.0;
    }
    let lse_i = f32::cast_from(lse[bh * seq + i]);
    let delta_i = f32::cast_from(delta[bh * seq + i]);
    let lo = first_key(seg, b, i, seq, window, causal);
    for j in lo..i + 1 {
        let kj = kv + j * d;
        let mut s = 0.0f32;
        let mut dp = 0.0f32;
        for c in 0..d {
            s += qi[c] * f32::cast_from(k[kj + c]);
            dp += doi[c] * f32::cast_from(v[kj + c]);
        }
        let ds = f32::exp(s - lse_i) * (dp - delta_i);
        for c in 0..d {
            acc[c] += ds * f32::cast_from(k[kj + c]);
        }
    }
    for c in 0..d {
        dq[row + c] = F::cast_from(acc[c] * scale);
    }
}

/// `dk [batch, kv_heads, seq, d] = scale · Σ_h Σ_i p_ij (dO_i·v_j − D_i) q_i` and
/// `dv = Σ_h Σ_i p_ij dO_i` over the query heads `h` of the group and the queries `i` that see
/// key `j`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward_dkdv<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    seg: &Tensor<u32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    heads: u32,
    group: u32,
    seq: u32,
    window: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] causal: bool,
) {
    let seq = seq as usize;
    let j = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if j >= seq {
        terminate!();
    }
    let bg = CUBE_POS_Y as usize;
    let group = group as usize;
    let heads = heads as usize;
    let kv_heads = heads / group;
    let b = bg / kv_heads;
    let g = bg % kv_heads;
    let row = (bg * seq + j) * d;

    let mut kj = Array::<f32>::new(d);
    let mut vj = Array::<f32>::new(d);
    let mut dk_acc = Array::<f32>::new(d);
    let mut dv_acc = Array::<f32>::new(d);
    for c in 0..d {
        kj[c] = f32::cast_from(k[row + c]) * scale;
        vj[c] = f32::cast_from(v[row + c]);
        dk_acc[c] = 0.0;
        dv_acc[c] = 0.0;
    }
    // the queries that can see key j: j <= i < j + window (sliding), within their segment
    let mut hi = seq;
    if !causal {
        let w = window as usize;
        if j + w < seq {
            hi = j + w;
        }
    }
    for r in 0..group {
        let bh = b * heads + g * group + r;
        for i in j..hi {
            if seg[b * seq + i] as usize <= j {
                let qrow = (bh * seq + i) * d;
                let mut s = 0.0f32;
                let mut dp = 0.0f32;
                for c in 0..d {
                    s += f32::cast_from(q[qrow + c]) * kj[c];
                    dp += f32::cast_from(grad_out[qrow + c]) * vj[c];
                }
                let p = f32::exp(s - f32::cast_from(lse[bh * seq + i]));
                let ds = p * (dp - f32::cast_from(delta[bh * seq + i]));
                for c in 0..d {
                    dv_acc[c] += p * f32::cast_from(grad_out[qrow + c]);
                    dk_acc[c] += ds * f32::cast_from(q[qrow + c]);
                }
            }
        }
    }
    for c in 0..d {
        dk[row + c] = F::cast_from(dk_acc[c] * scale);
        dv[row + c] = F::cast_from(dv_acc[c]);
    }
}
