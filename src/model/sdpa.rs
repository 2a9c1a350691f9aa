//! Scaled dot-product attention with per-head sinks, grouped-query heads and a causal or
//! sliding-window pattern.
//!
//! [`attention`] is what the model runs: the flash op of `kernels::ops::flash_attention` (one
//! backend op with its own backward, memory linear in `seq`, a CubeCL kernel on devices).
//! [`blocked_attention`] is the composite-op reference it is tested against (its gradients are
//! burn's autodiff of plain tensor ops): it works by query blocks, each only scoring the keys its
//! pattern can see (a band of `window` keys for sliding layers, the causal prefix otherwise), so work and
//! activation memory drop from `seq²` to about `seq·window` (sliding) or `seq²/2` (causal).
//!
//! Packed rows ([`PositionIds`] restarting at 0) confine each query to its segment on top of the
//! pattern: a block's key range then starts no earlier than the first segment start any row needs,
//! and a per-row mask `[batch, 1, rows, keys]` hides the keys before each query's segment.
//! Contiguous positions take exactly the unpacked computation (no segment mask is built).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kernels::ops::{flash_attention, AttentionError, AttentionMask, FlashAttentionBackend};

use super::mask::AttentionPattern;
use super::positions::PositionIds;

/// Query rows per block for causal layers (sliding layers use the window).
pub const CAUSAL_BLOCK: usize = 256;

/// The query blocks `[start, end)` and, for each, the key range `[lo, hi)` it can see.
pub fn blocks(pattern: AttentionPattern, seq: usize) -> Vec<(usize, usize, usize, usize)> {
    let size = match pattern {
        AttentionPattern::Causal => CAUSAL_BLOCK,
        AttentionPattern::Sliding { window } => window.max(1),
    };
    (0..seq)
        .step_by(size)
        .map(|start| {
            let end = (start + size).min(seq);
            let lo = match pattern {
                AttentionPattern::Causal => 0,
                AttentionPattern::Sliding { window } => (start + 1).saturating_sub(window),
            };
            (start, end, lo, end)
        })
        .collect()
}

/// [`blocks`] for packed rows: each block's key range starts no earlier than the smallest segment
/// start (over the batch rows) of the block's first query. Segment starts never decrease along a
/// row, so no query of the block sees a key before it.
pub fn segment_blocks(
    pattern: AttentionPattern,
    positions: &PositionIds,
) -> Vec<(usize, usize, usize, usize)> {
    blocks(pattern, positions.seq())
        .into_iter()
        .map(|(start, end, lo, hi)| (start, end, lo.max(positions.min_segment_start(start)), hi))
        .collect()
}

/// Additive `[batch, 1, rows, keys]` mask of one block hiding, per batch row, the keys before each
/// query's segment start (0 visible, -inf hidden); `None` when every query's segment starts at or
/// before the block's first key.
fn segment_mask<B: Backend>(
    positions: &PositionIds,
    (start, end, lo, hi): (usize, usize, usize, usize),
    device: &B::Device,
) -> Option<Tensor<B, 4>> {
    let batch = positions.batch();
    let (rows, keys) = (end - start, hi - lo);
    // per query: how many of the block's keys lie before its segment (exact in f32 below 2^24)
    let before: Vec<f32> = (0..batch)
        .flat_map(|b| (start..end).map(move |q| (b, q)))
        .map(|(b, q)| positions.segment_start(b, q).saturating_sub(lo) as f32)
        .collect();
    if before.iter().all(|&n| n == 0.0) {
        return None;
    }
    let shape = [batch, 1, rows, keys];
    let before = Tensor::<B, 4>::from_data(TensorData::new(before, [batch, 1, rows, 1]), device)
        .expand(shape);
    let key = Tensor::<B, 1, Int>::arange(0..keys as i64, device)
        .float()
        .reshape([1, 1, 1, keys])
        .expand(shape);
    Some(Tensor::zeros(shape, device).mask_fill(key.lower(before), f32::NEG_INFINITY))
}

/// Additive `[rows·keys]` mask of one block (0 visible, -inf hidden), `None` when all is visible.
fn block_mask(
    pattern: AttentionPattern,
    (start, end, lo, hi): (usize, usize, usize, usize),
) -> Option<Vec<f32>> {
    let mut any_hidden = false;
    let mut mask = Vec::with_capacity((end - start) * (hi - lo));
    for q in start..end {
        for k in lo..hi {
            let visible = pattern.visible(q, k);
            any_hidden |= !visible;
            mask.push(if visible { 0.0 } else { f32::NEG_INFINITY });
        }
    }
    any_hidden.then_some(mask)
}

/// The flash op's mask of `pattern` within the packed segments of `positions` (segment starts only
/// when some row is packed).
pub fn flash_mask(pattern: AttentionPattern, positions: &PositionIds) -> AttentionMask {
    let mask = match pattern {
        AttentionPattern::Causal => AttentionMask::causal(),
        AttentionPattern::Sliding { window } => AttentionMask::sliding(window),
    };
    if positions.is_contiguous() {
        return mask;
    }
    let (batch, seq) = (positions.batch(), positions.seq());
    let starts = (0..batch)
        .flat_map(|b| (0..seq).map(move |q| (b, q)))
        .map(|(b, q)| positions.segment_start(b, q))
        .collect();
    mask.with_segments(starts)
}

/// `q [batch, heads, seq, d]` (rotated, not yet scaled), `k`, `v` `[batch, kv_heads, seq, d]`,
/// `sinks [heads]` -> `[batch, heads, seq, d]`. Query head `i·rep + j` uses kv head `i`; the
/// softmax of each row runs over its visible keys (the pattern's, within the query's packed
/// segment of `positions`, `[batch, seq]`) plus the head's sink logit (dropped after).
///
/// Errors when the shapes do not fit one another or `positions`.
pub fn attention<B: FlashAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    sinks: Tensor<B, 1>,
    pattern: AttentionPattern,
    positions: &PositionIds,
) -> Result<Tensor<B, 4>, AttentionError> {
    let [batch, _, seq, _] = q.dims();
    if [positions.batch(), positions.seq()] != [batch, seq] {
        return Err(AttentionError::Shape {
            what: "q (vs the position ids)",
            expected: vec![positions.batch(), positions.seq()],
            got: vec![batch, seq],
        });
    }
    flash_attention(q, k, v, sinks, &flash_mask(pattern, positions))
}

/// The composite-op reference of [`attention`] (same arguments, same result up to rounding),
/// computed by query blocks through burn tensor ops.
pub fn blocked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    sinks: Tensor<B, 1>,
    pattern: AttentionPattern,
    positions: &PositionIds,
) -> Tensor<B, 4> {
    let [batch, heads, seq, d] = q.dims();
    assert_eq!(
        [positions.batch(), positions.seq()],
        [batch, seq],
        "position ids do not match the attention input"
    );
    let [_, kv, _, _] = k.dims();
    let rep = heads / kv;
    let device = q.device();
    let q = q.mul_scalar((d as f64).powf(-0.5));
    let sinks = sinks.reshape([1, heads, 1, 1]);
    let mut outputs = Vec::new();
    for block in segment_blocks(pattern, positions) {
        let (start, end, lo, hi) = block;
        let (rows, keys) = (end - start, hi - lo);
        let qb = q
            .clone()
            .narrow(2, start, rows)
            .reshape([batch, kv, rep * rows, d]);
        let kb = k.clone().narrow(2, lo, keys);
        let vb = v.clone().narrow(2, lo, keys);
        let mut scores = qb
            .matmul(kb.swap_dims(2, 3))
            .reshape([batch * heads, rows * keys]);
        if let Some(mask) = block_mask(pattern, block) {
            let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [1, rows * keys]), &device);
            scores = scores + mask;
        }
        let mut scores = scores.reshape([batch, heads, rows, keys]);
        if let Some(mask) = segment_mask(positions, block, &device) {
            scores = scores + mask;
        }
        // softmax over [scores, sink] without materializing the extra column
        let row_max = scores
            .clone()
            .max_dim(3)
            .max_pair(sinks.clone().expand([batch, heads, rows, 1]))
            .detach();
        let e = (scores - row_max.clone()).exp();
        let denom = e.clone().sum_dim(3) + (sinks.clone() - row_max).exp();
        let probs = (e / denom).reshape([batch, kv, rep * rows, keys]);
        outputs.push(probs.matmul(vb).reshape([batch, heads, rows, d]));
    }
    Tensor::cat(outputs, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    /// Position ids of rows packed from segments of the given lengths.
    fn packed(rows: &[&[usize]]) -> PositionIds {
        let seq: usize = rows[0].iter().sum();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|lengths| {
                assert_eq!(lengths.iter().sum::<usize>(), seq);
                lengths.iter().flat_map(|&n| 0..n as i64)
            })
            .collect();
        PositionIds::from_i64(&ids, rows.len(), seq).unwrap()
    }

    #[test]
    fn blocks_cover_the_visible_keys() {
        let b = blocks(AttentionPattern::Sliding { window: 4 }, 10);
        assert_eq!(b, vec![(0, 4, 0, 4), (4, 8, 1, 8), (8, 10, 5, 10)]);
        let b = blocks(AttentionPattern::Causal, 300);
        assert_eq!(b, vec![(0, 256, 0, 256), (256, 300, 0, 300)]);
        // contiguous positions change nothing; a segment start in every row moves the key range
        let c = PositionIds::contiguous(2, 300);
        assert_eq!(segment_blocks(AttentionPattern::Causal, &c), b);
        let p = packed(&[&[7, 100, 1, 150, 42], &[200, 3, 57, 40]]);
        let b = segment_blocks(AttentionPattern::Causal, &p);
        assert_eq!(b, vec![(0, 256, 0, 256), (256, 300, 108, 300)]);
        let b = segment_blocks(AttentionPattern::Sliding { window: 4 }, &packed(&[&[6, 4]]));
        assert_eq!(b, vec![(0, 4, 0, 4), (4, 8, 1, 8), (8, 10, 6, 10)]);
        // every visible (q, k) pair lies inside its block's key range
        let packs = [
            PositionIds::contiguous(1, 600),
            packed(&[&[300, 1, 99, 200], &[299, 301], &[600]]),
        ];
        for p in [
            AttentionPattern::Causal,
            AttentionPattern::Sliding { window: 3 },
        ] {
            for (s, e, lo, hi) in blocks(p, 600) {
                for q in s..e {
                    for k in 0..600 {
                        if p.visible(q, k) {
                            assert!((lo..hi).contains(&k), "{p:?} q {q} k {k}");
                        }
                    }
                }
            }
            for pos in &packs {
                for (s, e, lo, hi) in segment_blocks(p, pos) {
                    for b in 0..pos.batch() {
                        for q in s..e {
                            for k in 0..600 {
                                if p.visible_in_segment(q, k, pos.segment_start(b, q)) {
                                    assert!((lo..hi).contains(&k), "{p:?} row {b} q {q} k {k}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Straightforward per-row computation on host values (f64).
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        sinks: &[f32],
        dims: [usize; 5],
        p: AttentionPattern,
        positions: &PositionIds,
    ) -> Vec<f64> {
        let [b, h, kv, t, d] = dims;
        let rep = h / kv;
        let mut out = vec![0f64; b * h * t * d];
        for bi in 0..b {
            for hi in 0..h {
                let ki = hi / rep;
                for qi in 0..t {
                    let qrow = &q[((bi * h + hi) * t + qi) * d..][..d];
                    let mut logits = Vec::new();
                    for kj in 0..t {
                        if p.visible_in_segment(qi, kj, positions.segment_start(bi, qi)) {
                            let krow = &k[((bi * kv + ki) * t + kj) * d..][..d];
                            let dot: f64 = qrow
                                .iter()
                                .zip(krow)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            logits.push((kj, dot / (d as f64).sqrt()));
                        }
                    }
                    let m = logits.iter().map(|l| l.1).fold(sinks[hi] as f64, f64::max);
                    let z: f64 = logits.iter().map(|l| (l.1 - m).exp()).sum::<f64>()
                        + (sinks[hi] as f64 - m).exp();
                    for (kj, l) in logits {
                        let w = (l - m).exp() / z;
                        for c in 0..d {
                            out[((bi * h + hi) * t + qi) * d + c] +=
                                w * v[((bi * kv + ki) * t + kj) * d + c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_naive_per_row_computation() {
        let dev = Default::default();
        let (b, h, kv, t, d) = (2, 6, 2, 300, 8);
        let layouts = [
            PositionIds::contiguous(b, t),
            // segments shorter and longer than the window, across block boundaries, different
            // per row; every row has a segment start before the second causal block
            packed(&[&[7, 100, 1, 150, 42], &[200, 3, 57, 40]]),
            packed(&[&[300], &[2, 1, 1, 296]]),
        ];
        for p in [
            AttentionPattern::Causal,
            AttentionPattern::Sliding { window: 5 },
        ] {
            for positions in &layouts {
                let q =
                    Tensor::<Flex, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &dev);
                let k =
                    Tensor::<Flex, 4>::random([b, kv, t, d], Distribution::Normal(0.0, 1.0), &dev);
                let v =
                    Tensor::<Flex, 4>::random([b, kv, t, d], Distribution::Normal(0.0, 1.0), &dev);
                let s = Tensor::<Flex, 1>::random([h], Distribution::Normal(0.0, 1.0), &dev);
                let host = |x: &Tensor<Flex, 4>| x.to_data().to_vec::<f32>().unwrap();
                let want = naive(
                    &host(&q),
                    &host(&k),
                    &host(&v),
                    &s.to_data().to_vec::<f32>().unwrap(),
                    [b, h, kv, t, d],
                    p,
                    positions,
                );
                let blocked =
                    blocked_attention(q.clone(), k.clone(), v.clone(), s.clone(), p, positions);
                let flash = attention(q, k, v, s, p, positions).unwrap();
                for (name, got) in [("blocked", blocked), ("flash", flash)] {
                    let got = got.into_data().to_vec::<f32>().unwrap();
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (*g as f64 - w).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        err < 1e-5,
                        "{name} {p:?}, {:?}: max abs error {err}",
                        &positions.values()[..12]
                    );
                }
            }
        }
    }

    /// The gradients of `q`, `k`, `v` through the flash op equal those burn's autodiff takes
    /// through the composite blocked path, on packed rows with both patterns.
    #[test]
    fn flash_gradients_match_the_blocked_path() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let dev = Default::default();
        let (b, h, kv, t, d) = (2, 4, 2, 270, 8);
        let positions = packed(&[&[7, 100, 1, 120, 42], &[200, 3, 57, 10]]);
        for p in [
            AttentionPattern::Causal,
            AttentionPattern::Sliding { window: 6 },
        ] {
            let q = Tensor::<Flex, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<Flex, 4>::random([b, kv, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let v = Tensor::<Flex, 4>::random([b, kv, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let s = Tensor::<Flex, 1>::random([h], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<Flex, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let grads = |flash: bool| {
                let leaf =
                    |x: &Tensor<Flex, 4>| Tensor::<A, 4>::from_inner(x.clone()).require_grad();
                let (qa, ka, va) = (leaf(&q), leaf(&k), leaf(&v));
                let sa = Tensor::<A, 1>::from_inner(s.clone());
                let out = if flash {
                    attention(qa.clone(), ka.clone(), va.clone(), sa, p, &positions).unwrap()
                } else {
                    blocked_attention(qa.clone(), ka.clone(), va.clone(), sa, p, &positions)
                };
                let g = (out * Tensor::from_inner(w.clone())).sum().backward();
                [qa, ka, va].map(|x| x.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap())
            };
            let (flash, blocked) = (grads(true), grads(false));
            for (name, (f, r)) in ["q", "k", "v"].iter().zip(flash.iter().zip(&blocked)) {
                let num: f64 = f.iter().zip(r).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                let den: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum();
                let rel = (num / den).sqrt();
                assert!(rel < 1e-5, "{p:?} d{name}: relative L2 difference {rel}");
            }
        }
    }

    #[test]
    fn a_position_mismatch_is_an_error() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::zeros([1, 2, 5, 4], &dev);
        let s = Tensor::<Flex, 1>::zeros([2], &dev);
        let err = attention(
            x.clone(),
            x.clone(),
            x,
            s,
            AttentionPattern::Causal,
            &PositionIds::contiguous(1, 6),
        )
        .unwrap_err();
        assert!(err.to_string().contains("position ids"), "{err}");
    }
}
