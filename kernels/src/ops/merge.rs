//! `W += s·B·A` on host slices with one fixed arithmetic, so that training (QAT forward) and
//! export compute bit-identical merged weights before the quantizer: for every element,
//! `d = Σ_k b[o,k]·a[k,i]` summed in f32 for k ascending from 0 (separate multiply and add, no
//! FMA), then `w[o,i] += s·d`.

use rayon::prelude::*;

use crate::mxfp4::CodecError;

/// Rows per rayon task are chosen so that a task covers about this many elements.
const TASK_ELEMENTS: usize = 1 << 16;

/// Adds `scale · b · a` to the row-major `[out, in]` weight `w` (`a [r, in]`, `b [out, r]`,
/// row-major), with the arithmetic in the module doc. Multi-threaded over rows; the result
/// does not depend on the thread count. Errors on slice lengths that do not match the shapes.
pub fn add_lora_delta(
    w: &mut [f32],
    [out, inp]: [usize; 2],
    a: &[f32],
    b: &[f32],
    rank: usize,
    scale: f32,
) -> Result<(), CodecError> {
    CodecError::expect_len("merged weight (out * in)", out * inp, w.len())?;
    CodecError::expect_len("LoRA A (r * in)", rank * inp, a.len())?;
    CodecError::expect_len("LoRA B (out * r)", out * rank, b.len())?;
    if inp == 0 || rank == 0 {
        return Ok(());
    }
    let rows_per_task = (TASK_ELEMENTS / inp).max(1);
    let kernel = rows_kernel();
    w.par_chunks_mut(rows_per_task * inp)
        .zip(b.par_chunks(rows_per_task * rank))
        .for_each(|(w_rows, b_rows)| kernel(w_rows, b_rows, a, inp, scale));
    Ok(())
}

/// The rows kernel: for each row `o`, `d = Σ_k b[o,k]·a[k,:]` (k ascending), then `w[o,:] += s·d`.
type RowsKernel = fn(&mut [f32], &[f32], &[f32], usize, f32);

/// Columns of `in` per tile: the tile of `A` (`r × TILE` values) stays in L1 while every row of
/// the task is merged against it (without tiling each row would stream all of `A` from L2).
const TILE: usize = 256;
/// Columns summed together in registers.
const LANES: usize = 64;

/// The body shared by every instruction-set variant. Vectorizing along `in` and tiling `in` keep
/// each element's arithmetic unchanged (k ascending, separate multiply and add, then one
/// `w += s·d`; Rust never contracts a multiply and an add into an FMA), so all variants give the
/// bits of the scalar definition (`reference_rows` in the tests).
#[inline(always)]
fn rows_body(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    let rank = b_rows.len() / (w_rows.len() / inp).max(1);
    let mut start = 0;
    while start < inp {
        let end = (start + TILE).min(inp);
        for (w_row, b_row) in w_rows.chunks_exact_mut(inp).zip(b_rows.chunks_exact(rank)) {
            let mut i = start;
            // LANES columns at a time, their sums kept in registers across k
            while i + LANES <= end {
                let mut d = [0f32; LANES];
                for (&bk, a_row) in b_row.iter().zip(a.chunks_exact(inp)) {
                    let a_lanes: &[f32; LANES] =
                        a_row[i..i + LANES].try_into().expect("LANES values");
                    for (di, &ai) in d.iter_mut().zip(a_lanes) {
                        *di += bk * ai;
                    }
                }
                for (wi, &di) in w_row[i..i + LANES].iter_mut().zip(&d) {
                    *wi += scale * di;
                }
                i += LANES;
            }
            for (c, wi) in w_row.iter_mut().enumerate().take(end).skip(i) {
                let mut d = 0f32;
                for (&bk, a_row) in b_row.iter().zip(a.chunks_exact(inp)) {
                    d += bk * a_row[c];
                }
                *wi += scale * d;
            }
        }
        start = end;
    }
}

fn rows_portable(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    rows_body(w_rows, b_rows, a, inp, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512_tf(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    rows_body(w_rows, b_rows, a, inp, scale)
}

#[cfg(target_arch = "x86_64")]
fn rows_avx512(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    // SAFETY: only selected by `rows_kernel` after `is_x86_feature_detected!("avx512f")`.
    unsafe { rows_avx512_tf(w_rows, b_rows, a, inp, scale) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2_tf(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    rows_body(w_rows, b_rows, a, inp, scale)
}

#[cfg(target_arch = "x86_64")]
fn rows_avx2(w_rows: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize, scale: f32) {
    // SAFETY: only selected by `rows_kernel` after `is_x86_feature_detected!("avx2")`.
    unsafe { rows_avx2_tf(w_rows, b_rows, a, inp, scale) }
}

/// The widest variant this CPU runs, chosen once.
#[cfg(target_arch = "x86_64")]
fn rows_kernel() -> RowsKernel {
    static KERNEL: std::sync::OnceLock<RowsKernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            rows_avx512
        } else if is_x86_feature_detected!("avx2") {
            rows_avx2
        } else {
            rows_portable
        }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn rows_kernel() -> RowsKernel {
    rows_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant this CPU can run (for parity tests).
    fn rows_variants_for_tests() -> Vec<(&'static str, RowsKernel)> {
        let mut v: Vec<(&'static str, RowsKernel)> = vec![("portable", rows_portable)];
        v.extend(simd_variants());
        v
    }

    #[cfg(target_arch = "x86_64")]
    fn simd_variants() -> Vec<(&'static str, RowsKernel)> {
        let mut v: Vec<(&'static str, RowsKernel)> = Vec::new();
        if is_x86_feature_detected!("avx2") {
            v.push(("avx2", rows_avx2));
        }
        if is_x86_feature_detected!("avx512f") {
            v.push(("avx512f", rows_avx512));
        }
        v
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn simd_variants() -> Vec<(&'static str, RowsKernel)> {
        Vec::new()
    }

    /// The scalar definition: per element, `d = Σ_k b[o,k]·a[k,i]` (k ascending), `w += s·d`.
    fn reference_rows(w: &mut [f32], b: &[f32], a: &[f32], inp: usize, scale: f32) {
        let rank = b.len() / (w.len() / inp).max(1);
        for (o, w_row) in w.chunks_exact_mut(inp).enumerate() {
            for (i, wi) in w_row.iter_mut().enumerate() {
                let mut d = 0f32;
                for k in 0..rank {
                    d += b[o * rank + k] * a[k * inp + i];
                }
                *wi += scale * d;
            }
        }
    }

    /// Every instruction-set variant (and the multi-threaded entry point) gives the bits of the
    /// scalar definition (odd sizes spanning several tiles, r = 3).
    #[test]
    fn variants_agree_bit_for_bit() {
        let (out, inp, r) = (37, 600, 3);
        let gen = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed);
                    (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let (a, b, w0) = (gen(r * inp, 1), gen(out * r, 2), gen(out * inp, 3));
        let mut want = w0.clone();
        reference_rows(&mut want, &b, &a, inp, 0.7);
        let mut got = w0.clone();
        add_lora_delta(&mut got, [out, inp], &a, &b, r, 0.7).unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
        for (name, k) in rows_variants_for_tests() {
            let mut got = w0.clone();
            k(&mut got, &b, &a, inp, 0.7);
            let same = got
                .iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name} differs from the portable kernel");
        }
    }
}
