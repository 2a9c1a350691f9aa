//! Flash attention on host slices (f32, rayon): forward by (batch·head, query block) with an
//! online softmax over blocks of keys; backward recomputes `P = exp(s − lse)` block by block,
//! `dq` by query blocks and `dk`/`dv` by (batch·kv head, key block) over the query heads of the
//! group, so nothing is accumulated across threads. Keys a block cannot see are never visited.
//! Memory beyond inputs and outputs: one `f32` per query row (`D`) and per-block scratch.

use rayon::prelude::*;

use super::{AttentionDims, AttentionMask};

/// Query rows per block.
const BQ: usize = 32;
/// Keys per block.
const BK: usize = 64;

/// `Σ a·b` in eight lanes (vectorizes).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a·x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The key ranges of `rows` queries from `start` in batch row `b`, and their union `[lo, hi)`.
fn ranges(
    mask: &AttentionMask,
    seq: usize,
    b: usize,
    start: usize,
    rows: usize,
) -> (Vec<(usize, usize)>, usize, usize) {
    let r: Vec<_> = (start..start + rows)
        .map(|q| mask.key_range(seq, b, q))
        .collect();
    let lo = r.iter().map(|x| x.0).min().unwrap_or(0);
    let hi = r.iter().map(|x| x.1).max().unwrap_or(0);
    (r, lo, hi)
}

/// `(out [batch, heads, seq, d], lse [batch, heads, seq])`.
pub(super) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sinks: &[f32],
    dims: AttentionDims,
    mask: &AttentionMask,
) -> (Vec<f32>, Vec<f32>) {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim: d,
    } = dims;
    let (scale, group) = (dims.scale(), dims.group());
    let mut out = vec![0f32; batch * heads * seq * d];
    let mut lse = vec![0f32; batch * heads * seq];
    out.par_chunks_mut(seq * d)
        .zip(lse.par_chunks_mut(seq))
        .enumerate()
        .for_each(|(bh, (out_bh, lse_bh))| {
            let (b, h) = (bh / heads, bh % heads);
            let kv = (b * kv_heads + h / group) * seq * d;
            let (k, v) = (&k[kv..kv + seq * d], &v[kv..kv + seq * d]);
            let q = &q[bh * seq * d..(bh + 1) * seq * d];
            out_bh
                .par_chunks_mut(BQ * d)
                .zip(lse_bh.par_chunks_mut(BQ))
                .enumerate()
                .for_each(|(qb, (out_b, lse_b))| {
                    let (start, rows) = (qb * BQ, lse_b.len());
                    let (r, lo, hi) = ranges(mask, seq, b, start, rows);
                    // the sink opens every row: m = sink, l = exp(sink − m) = 1, acc = 0
                    let mut m = vec![sinks[h]; rows];
                    let mut l = vec![1f32; rows];
                    let mut qs = q[start * d..(start + rows) * d].to_vec();
                    qs.iter_mut().for_each(|x| *x *= scale);
                    let mut s = [0f32; BK];
                    for k0 in (lo..hi).step_by(BK) {
                        let k1 = (k0 + BK).min(hi);
                        for (i, &(rlo, rhi)) in r.iter().enumerate() {
                            let (j0, j1) = (rlo.max(k0), rhi.min(k1));
                            if j0 >= j1 {
                                continue;
                            }
                            let qi = &qs[i * d..(i + 1) * d];
                            let mut mx = m[i];
                            for j in j0..j1 {
                                s[j - j0] = dot(qi, &k[j * d..(j + 1) * d]);
                                mx = mx.max(s[j - j0]);
                            }
                            let acc = &mut out_b[i * d..(i + 1) * d];
                            if mx > m[i] {
                                let alpha = (m[i] - mx).exp();
                                l[i] *= alpha;
                                acc.iter_mut().for_each(|x| *x *= alpha);
                                m[i] = mx;
                            }
                            for j in j0..j1 {
                                let p = (s[j - j0] - mx).exp();
                                l[i] += p;
                                axpy(acc, p, &v[j * d..(j + 1) * d]);
                            }
                        }
                    }
                    for i in 0..rows {
                        let inv = 1.0 / l[i];
                        out_b[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= inv);
                        lse_b[i] = m[i] + l[i].ln();
                    }
                });
        });
    (out, lse)
}

/// What backward needs from forward and the output gradient (all `[batch, heads, seq, …]`).
pub(super) struct Saved<'a> {
    /// the forward output
    pub out: &'a [f32],
    /// the forward log-sum-exp per row
    pub lse: &'a [f32],
    /// the gradient of the output
    pub grad_out: &'a [f32],
}

/// `(dq, dk, dv)`.
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    saved: Saved<'_>,
    dims: AttentionDims,
    mask: &AttentionMask,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim: d,
    } = dims;
    let (scale, group) = (dims.scale(), dims.group());
    let Saved { out, lse, grad_out } = saved;
    // D_i = dO_i · O_i
    let delta: Vec<f32> = grad_out
        .par_chunks(d)
        .zip(out.par_chunks(d))
        .map(|(g, o)| dot(g, o))
        .collect();
    let row = |r: usize| r * d..(r + 1) * d;

    let mut dq = vec![0f32; batch * heads * seq * d];
    dq.par_chunks_mut(seq * d)
        .enumerate()
        .for_each(|(bh, dq_bh)| {
            let (b, h) = (bh / heads, bh % heads);
            let kv = (b * kv_heads + h / group) * seq * d;
            let (k, v) = (&k[kv..kv + seq * d], &v[kv..kv + seq * d]);
            let base = bh * seq;
            dq_bh
                .par_chunks_mut(BQ * d)
                .enumerate()
                .for_each(|(qb, dq_b)| {
                    let (start, rows) = (qb * BQ, dq_b.len() / d);
                    let (r, lo, hi) = ranges(mask, seq, b, start, rows);
                    for k0 in (lo..hi).step_by(BK) {
                        let k1 = (k0 + BK).min(hi);
                        for (i, &(rlo, rhi)) in r.iter().enumerate() {
                            let gi = base + start + i;
                            let (qi, doi) = (&q[row(gi)], &grad_out[row(gi)]);
                            for j in rlo.max(k0)..rhi.min(k1) {
                                let kj = &k[row(j)];
                                let p = (scale * dot(qi, kj) - lse[gi]).exp();
                                let ds = p * (dot(doi, &v[row(j)]) - delta[gi]);
                                axpy(&mut dq_b[i * d..(i + 1) * d], ds, kj);
                            }
                        }
                    }
                    dq_b.iter_mut().for_each(|x| *x *= scale);
                });
        });

    let mut dk = vec![0f32; batch * kv_heads * seq * d];
    let mut dv = vec![0f32; batch * kv_heads * seq * d];
    dk.par_chunks_mut(seq * d)
        .zip(dv.par_chunks_mut(seq * d))
        .enumerate()
        .for_each(|(bg, (dk_bg, dv_bg))| {
            let (b, g) = (bg / kv_heads, bg % kv_heads);
            let kv = bg * seq * d;
            let (k, v) = (&k[kv..kv + seq * d], &v[kv..kv + seq * d]);
            dk_bg
                .par_chunks_mut(BK * d)
                .zip(dv_bg.par_chunks_mut(BK * d))
                .enumerate()
                .for_each(|(kb, (dk_b, dv_b))| {
                    let (j0, j1) = (kb * BK, kb * BK + dk_b.len() / d);
                    // queries that can see a key of [j0, j1): at or after j0, before j1 - 1 + w
                    let q_hi = mask.window.map_or(seq, |w| (j1 - 1 + w).min(seq));
                    for h in g * group..(g + 1) * group {
                        let base = (b * heads + h) * seq;
                        for i in j0..q_hi {
                            let (rlo, rhi) = mask.key_range(seq, b, i);
                            let (lo, hi) = (rlo.max(j0), rhi.min(j1));
                            if lo >= hi {
                                continue;
                            }
                            let gi = base + i;
                            let (qi, doi) = (&q[row(gi)], &grad_out[row(gi)]);
                            for j in lo..hi {
                                let p = (scale * dot(qi, &k[row(j)]) - lse[gi]).exp();
                                let ds = p * (dot(doi, &v[row(j)]) - delta[gi]);
                                let jj = j - j0;
                                axpy(&mut dv_b[jj * d..(jj + 1) * d], p, doi);
                                axpy(&mut dk_b[jj * d..(jj + 1) * d], ds, qi);
                            }
                        }
                    }
                    dk_b.iter_mut().for_each(|x| *x *= scale);
                });
        });
    (dq, dk, dv)
}
