//! Global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_(params, max_norm)` does it,
//! returning the pre-clip total norm (what the HF Trainer logs as `grad_norm`).
//!
//! torch: per-tensor 2-norms, the 2-norm of those, `clip_coef = max_norm / (total + 1e-6)`
//! clamped to 1, every gradient multiplied by it. We differ in one place, the accumulation:
//! torch's CPU `vector_norm` for f32 sums squares in f32 (16 or 8 fused multiply-add lanes by
//! the CPU's vector width, then the lanes, then a scalar tail), rounds each tensor's norm to f32
//! and takes the f32 norm of those; its result depends on the machine and drifts with tensor
//! size (about √(n/lanes) roundings). Here every square is summed in f64 (exact products) in
//! fixed 4096-element blocks (8 interleaved accumulators each) combined in a fixed order, and
//! the total is rounded to f32 once: the correctly rounded norm up to f64 error, the same bits
//! whatever the threads or the CPU. In the golden cases (up to a few hundred elements per
//! tensor) the total equals torch's bit for bit; the test allows 1 ulp. The coefficient and the
//! multiplication follow torch's f32 arithmetic exactly (`(1 / (total + f32(1e-6))) ·
//! f32(max_norm)`, Python's `float / tensor` being `reciprocal() * float`), so equal totals give
//! bit-identical clipped gradients.

use anyhow::{bail, Result};
use rayon::prelude::*;

/// Elements per block of the f64 sum of squares (the fixed summation order).
const BLOCK: usize = 4096;

/// Sum of squares of one block in f64: 8 interleaved accumulators (element i into lane i % 8,
/// for speed), combined pairwise in a fixed order.
fn block_sum_squares(b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = b.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f64::from(v) * f64::from(v);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Sum of squares of one tensor in f64: the block sums added in order.
fn sum_squares(x: &[f32]) -> f64 {
    if x.len() <= BLOCK {
        return block_sum_squares(x);
    }
    let partial: Vec<f64> = x.par_chunks(BLOCK).map(block_sum_squares).collect();
    partial.iter().sum()
}

/// The 2-norm of all gradients viewed as one vector (f64 accumulation, rounded once to f32).
/// Empty input gives 0, like torch. Non-finite values give a non-finite norm.
pub fn global_grad_norm(grads: &[&[f32]]) -> f32 {
    let per_tensor: Vec<f64> = grads.par_iter().map(|g| sum_squares(g)).collect();
    per_tensor.iter().sum::<f64>().sqrt() as f32
}

/// Clips the gradients in place to a global 2-norm of at most `max_norm` and returns the total
/// norm before clipping. A non-finite total is returned with the gradients left untouched (torch
/// would multiply them by NaN or 0): the caller stops training. `max_norm` must be > 0 (HF skips
/// clipping when `max_grad_norm` is 0; use [`global_grad_norm`] for the norm alone).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f64) -> Result<f32> {
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        bail!("max_grad_norm {max_norm}: must be finite and > 0 to clip");
    }
    let total = {
        let views: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
        global_grad_norm(&views)
    };
    if !total.is_finite() {
        return Ok(total);
    }
    let coef = clip_coef(total, max_norm);
    if coef != 1.0 {
        grads
            .par_iter_mut()
            .for_each(|g| g.iter_mut().for_each(|v| *v *= coef));
    }
    Ok(total)
}

/// torch's f32 `clamp(max_norm / (total + 1e-6), max=1)`.
pub fn clip_coef(total: f32, max_norm: f64) -> f32 {
    let coef = (1.0f32 / (total + 1e-6f32)) * max_norm as f32;
    coef.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_do_not_change_the_norm_of_exact_sums() {
        // Squares of small integers sum exactly in f64 whatever the blocking.
        let x: Vec<f32> = (0..10_000).map(|i| (i % 7) as f32).collect();
        let exact: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
        assert_eq!(sum_squares(&x), exact);
        assert_eq!(
            global_grad_norm(&[&x[..5000], &x[5000..]]),
            exact.sqrt() as f32
        );
        assert_eq!(global_grad_norm(&[]), 0.0);
    }

    #[test]
    fn below_max_norm_leaves_gradients_alone_and_nonfinite_is_reported() {
        let mut a = vec![0.3f32, -0.4];
        let total = clip_grad_norm(&mut [&mut a[..]], 1.0).unwrap();
        assert_eq!((total, a.as_slice()), (0.5, &[0.3f32, -0.4][..]));
        let mut b = [1.0f32, f32::NAN];
        assert!(clip_grad_norm(&mut [&mut b[..]], 1.0).unwrap().is_nan());
        assert_eq!(b[0], 1.0);
        assert!(clip_grad_norm(&mut [&mut a[..]], 0.0).is_err());
    }
}
