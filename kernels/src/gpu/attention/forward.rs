//! The forward kernel: one unit per query row, one cube per (batch·head, block of query rows).
//! Each unit walks its visible keys `[lo, q]` once with an online softmax opened by the head's
//! sink (`m = sink`, `l = 1`, `acc = 0`), then writes `o = acc / l` and `lse = m + ln l`.
//! Accumulation is in f32 whatever the float type; nothing of size `seq²` exists.

use cubecl::prelude::*;

/// The first key visible from query `i` of batch row `b`: the later of its segment start and
/// (sliding) `i + 1 - window`.
#[cube]
pub(super) fn first_key(
    seg: &Tensor<u32>,
    b: usize,
    i: usize,
    seq: usize,
    window: u32,
    #[comptime] causal: bool,
) -> usize {
    let mut lo = seg[b * seq + i] as usize;
    if !causal {
        let w = window as usize;
        if i + 1 > w && i + 1 - w > lo {
            lo = i + 1 - w;
        }
    }
    lo
}

/// `out [batch, heads, seq, d]`, `lse [batch, heads, seq]` from `q`, `k`, `v`, `sinks`,
/// `seg [batch·seq]` (segment starts); all contiguous.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_forward<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    sinks: &Tensor<F>,
    seg: &Tensor<u32>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
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
    let mut acc = Array::<f32>::new(d);
    for c in 0..d {
        qi[c] = f32::cast_from(q[row + c]) * scale;
        acc[c] = 0.0;
    }
    let lo = first_key(seg, b, i, seq, window, causal);
    let mut m = f32::cast_from(sinks[h]);
    let mut l = 1.0f32;
    for j in lo..i + 1 {
        let kj = kv + j * d;
        let mut s = 0.0f32;
        for c in 0..d {
            s += qi[c] * f32::cast_from(k[kj + c]);
        }
        if s > m {
            let alpha = f32::exp(m - s);
            l = l * alpha + 1.0;
            for c in 0..d {
                acc[c] = acc[c] * alpha + f32::cast_from(v[kj + c]);
            }
            m = s;
        } else {
            let p = f32::exp(s - m);
            l += p;
            for c in 0..d {
                acc[c] += p * f32::cast_from(v[kj + c]);
            }
        }
    }
    let inv = 1.0 / l;
    for c in 0..d {
        out[row + c] = F::cast_from(acc[c] * inv);
    }
    lse[bh * seq + i] = F::cast_from(m + f32::ln(l));
}
