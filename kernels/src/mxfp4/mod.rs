//! Exact MXFP4 codec (OCP MX v1.0: E2M1 elements, E8M0 scale, blocks of 32), bit for bit the
//! spec in DESIGN §2.1 / `mxfp4_ref.py`: one quantizer for QAT training and for export.
//!
//! - [`reference`]: scalar, single-threaded, written from the spec;
//! - [`fast`]: single-threaded vectorized kernels (run-time CPU feature dispatch);
//! - the top-level functions split the work over rayon and call [`fast`].

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod error;
pub mod fast;
mod generic;
pub mod reference;
pub(crate) mod tables;

pub use error::CodecError;

use error::{check_packed_lengths, check_quantize_lengths, check_same_lengths};
use rayon::prelude::*;

/// Elements per block.
pub const BLOCK: usize = 32;
/// Packed bytes per block (two 4-bit codes per byte).
pub const BLOCK_BYTES: usize = 16;
/// The E2M1 decode table: nibble -> value (bit 3 is the sign).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Elements per rayon task (a multiple of 32): large enough to amortize scheduling.
const CHUNK: usize = 1 << 15;

/// Quantizes `x` (x.len() % 32 == 0) into `blocks` (x.len()/2 bytes, element 2j in the low
/// nibble of byte j) and `scales` (x.len()/32 E8M0 bytes). Multi-threaded (rayon).
/// Errors: bad lengths, or the first NaN/Inf (deterministic flat index).
pub fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), CodecError> {
    check_quantize_lengths(x.len(), blocks.len(), scales.len())?;
    x.par_chunks(CHUNK)
        .zip(blocks.par_chunks_mut(CHUNK / 2))
        .zip(scales.par_chunks_mut(CHUNK / BLOCK))
        .enumerate()
        .map(|(i, ((xc, bc), sc))| at_offset(fast::quantize(xc, bc, sc), i))
        .reduce(|| Ok(()), first_error)
}

/// Decodes `blocks`/`scales` into `out` (out.len() == 32 * scales.len()). Multi-threaded.
pub fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_packed_lengths(out.len(), blocks.len(), scales.len())?;
    out.par_chunks_mut(CHUNK)
        .zip(blocks.par_chunks(CHUNK / 2))
        .zip(scales.par_chunks(CHUNK / BLOCK))
        .try_for_each(|((oc, bc), sc)| fast::dequantize(bc, sc, oc))
}

/// `dequantize(quantize(x))` into `out`, fused (no packed intermediate). Multi-threaded.
pub fn fake_quantize(x: &[f32], out: &mut [f32]) -> Result<(), CodecError> {
    check_same_lengths(x.len(), out.len())?;
    x.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .enumerate()
        .map(|(i, (xc, oc))| at_offset(fast::fake_quantize(xc, oc), i))
        .reduce(|| Ok(()), first_error)
}

/// `x = dequantize(quantize(x))`, fused and multi-threaded. On a NaN/Inf error the contents
/// of `x` are unspecified (other blocks may already be quantized); the error is still the
/// first non-finite of the input.
pub fn fake_quantize_in_place(x: &mut [f32]) -> Result<(), CodecError> {
    check_same_lengths(x.len(), x.len())?;
    x.par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(i, xc)| at_offset(fast::fake_quantize_in_place(xc), i))
        .reduce(|| Ok(()), first_error)
}

/// Shifts a chunk-relative NonFinite index to a flat index (chunk `i` starts at `i * CHUNK`).
fn at_offset(result: Result<(), CodecError>, chunk: usize) -> Result<(), CodecError> {
    result.map_err(|err| match err {
        CodecError::NonFinite { index, value } => CodecError::NonFinite {
            index: index + chunk * CHUNK,
            value,
        },
        other => other,
    })
}

/// Every chunk runs to its own first error (no short-circuit), and the error with the lowest
/// flat index wins, so the result does not depend on scheduling.
fn first_error(a: Result<(), CodecError>, b: Result<(), CodecError>) -> Result<(), CodecError> {
    match (a, b) {
        (Ok(()), r) | (r, Ok(())) => r,
        (Err(ea), Err(eb)) => match (&ea, &eb) {
            (CodecError::NonFinite { index: ia, .. }, CodecError::NonFinite { index: ib, .. }) => {
                if ia <= ib {
                    Err(ea)
                } else {
                    Err(eb)
                }
            }
            (CodecError::NonFinite { .. }, _) => Err(eb),
            _ => Err(ea),
        },
    }
}

#[cfg(test)]
mod tests;
