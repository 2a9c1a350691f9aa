//! `W += s·B·A` on host slices with one fixed arithmetic, so that training (QAT forward) and
//! export compute bit-identical merged weights before the quantizer: for every element,
//! `d = Σ_k b[o,k]·a[k,i]` summed in f32 for k ascending from 0 (separate multiply and add, no
//! FMA), then `w[o,i] += s·d`.

use rayon::prelude::*;

use crate::mxfp4::CodecError;

/// Rows per rayon task are chosen so that a task covers about this many elements.
const TASK_ELEMENTS: usize = 1 << 16;

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), CodecError> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::Length {
            what,
            expected,
            got,
        })
    }
}

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
    check_len("merged weight (out * in)", out * inp, w.len())?;
    check_len("LoRA A (r * in)", rank * inp, a.len())?;
    check_len("LoRA B (out * r)", out * rank, b.len())?;
    if inp == 0 || rank == 0 {
        return Ok(());
    }
    let rows_per_task = (TASK_ELEMENTS / inp).max(1);
    w.par_chunks_mut(rows_per_task * inp)
        .zip(b.par_chunks(rows_per_task * rank))
        .for_each(|(w_rows, b_rows)| {
            let mut d = vec![0f32; inp];
            for (w_row, b_row) in w_rows.chunks_exact_mut(inp).zip(b_rows.chunks_exact(rank)) {
                d.fill(0.0);
                for (&bk, a_row) in b_row.iter().zip(a.chunks_exact(inp)) {
                    for (di, &ai) in d.iter_mut().zip(a_row) {
                        *di += bk * ai;
                    }
                }
                for (wi, &di) in w_row.iter_mut().zip(&d) {
                    *wi += scale * di;
                }
            }
        });
    Ok(())
}
