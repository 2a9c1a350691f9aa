//! The oracle of the flash attention tests: the naive softmax with sinks in f64 loops on host
//! slices, row by row, forward and backward (the textbook gradients of
//! `o_i = Σ_j p_ij v_j`, `p_ij = exp(s_ij) / (Σ_visible exp(s_ik) + exp(sink_h))`).

use super::flash_attention::{AttentionDims, AttentionMask};

/// Host inputs of the reference: `q [batch, heads, seq, d]`, `k`, `v` `[batch, kv_heads, seq, d]`,
/// `sinks [heads]`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct HostAttention<'a> {
    /// queries (not scaled)
    pub q: &'a [f32],
    /// keys
    pub k: &'a [f32],
    /// values
    pub v: &'a [f32],
    /// sink logits
    pub sinks: &'a [f32],
    /// the dimensions of the slices
    pub dims: AttentionDims,
}

/// Gradients of the reference, f64: `dq [batch, heads, seq, d]`, `dk`, `dv` `[batch, kv_heads,
/// seq, d]`.
#[derive(Debug, Clone)]
pub struct HostGrads {
    /// gradient of q
    pub dq: Vec<f64>,
    /// gradient of k
    pub dk: Vec<f64>,
    /// gradient of v
    pub dv: Vec<f64>,
}

/// One query row: its visible keys and their probabilities.
fn row_probs(
    x: &HostAttention<'_>,
    mask: &AttentionMask,
    b: usize,
    h: usize,
    i: usize,
) -> Vec<(usize, f64)> {
    let AttentionDims {
        heads: nh,
        kv_heads,
        seq,
        head_dim: d,
        ..
    } = x.dims;
    let kvh = b * kv_heads + h / (nh / kv_heads);
    let qi = &x.q[((b * nh + h) * seq + i) * d..][..d];
    let scale = 1.0 / (d as f64).sqrt();
    let logits: Vec<(usize, f64)> = (0..seq)
        .filter(|&j| {
            let seg = mask.segment_starts.as_ref().map_or(0, |s| s[b * seq + i]);
            let win = mask.window.is_none_or(|w| i < j + w);
            j <= i && j >= seg && win
        })
        .map(|j| {
            let kj = &x.k[(kvh * seq + j) * d..][..d];
            let dot: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
            (j, dot * scale)
        })
        .collect();
    let sink = x.sinks[h] as f64;
    let m = logits.iter().map(|l| l.1).fold(sink, f64::max);
    let z = logits.iter().map(|l| (l.1 - m).exp()).sum::<f64>() + (sink - m).exp();
    logits
        .into_iter()
        .map(|(j, l)| (j, (l - m).exp() / z))
        .collect()
}

/// The attention output `[batch, heads, seq, d]` in f64.
pub fn flash_attention_reference(x: &HostAttention<'_>, mask: &AttentionMask) -> Vec<f64> {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim: d,
    } = x.dims;
    let mut out = vec![0f64; batch * heads * seq * d];
    for b in 0..batch {
        for h in 0..heads {
            let kvh = b * kv_heads + h / (heads / kv_heads);
            for i in 0..seq {
                let o = &mut out[((b * heads + h) * seq + i) * d..][..d];
                for (j, p) in row_probs(x, mask, b, h, i) {
                    for (o, v) in o.iter_mut().zip(&x.v[(kvh * seq + j) * d..][..d]) {
                        *o += p * *v as f64;
                    }
                }
            }
        }
    }
    out
}

/// The gradients of `Σ out∘grad_out` with respect to `q`, `k`, `v` (`grad_out [batch, heads,
/// seq, d]`): `dS_ij = p_ij (dO_i·v_j − Σ_k p_ik dO_i·v_k)`, `dq_i = scale Σ_j dS_ij k_j`,
/// `dk_j = scale Σ_i dS_ij q_i`, `dv_j = Σ_i p_ij dO_i` (sums over the heads of each kv group).
pub fn flash_attention_reference_grads(
    x: &HostAttention<'_>,
    grad_out: &[f32],
    mask: &AttentionMask,
) -> HostGrads {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim: d,
    } = x.dims;
    let scale = 1.0 / (d as f64).sqrt();
    let mut g = HostGrads {
        dq: vec![0f64; batch * heads * seq * d],
        dk: vec![0f64; batch * kv_heads * seq * d],
        dv: vec![0f64; batch * kv_heads * seq * d],
    };
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum() };
    for b in 0..batch {
        for h in 0..heads {
            let kvh = b * kv_heads + h / (heads / kv_heads);
            for i in 0..seq {
                let qrow = ((b * heads + h) * seq + i) * d;
                let (qi, doi) = (&x.q[qrow..][..d], &grad_out[qrow..][..d]);
                let probs = row_probs(x, mask, b, h, i);
                let dp: Vec<f64> = probs
                    .iter()
                    .map(|&(j, _)| dot(doi, &x.v[(kvh * seq + j) * d..][..d]))
                    .collect();
                let delta: f64 = probs.iter().zip(&dp).map(|((_, p), dp)| p * dp).sum();
                for (&(j, p), dp) in probs.iter().zip(&dp) {
                    let ds = p * (dp - delta);
                    let krow = (kvh * seq + j) * d;
                    for c in 0..d {
                        g.dq[qrow + c] += scale * ds * x.k[krow + c] as f64;
                        g.dk[krow + c] += scale * ds * qi[c] as f64;
                        g.dv[krow + c] += p * doi[c] as f64;
                    }
                }
            }
        }
    }
    g
}
