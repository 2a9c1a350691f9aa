//! Single-threaded fast kernels, bit-identical to [`super::reference`]. Vectorized block bodies,
//! compiled per CPU feature level (AVX-512, AVX2+FMA, portable) and chosen once at run time.
//! Callers that are already parallel (e.g. one task per expert) call these directly; the
//! top-level functions of [`super`] split the work over rayon and call these.

use super::dispatch::{kernels, Kernels};
use super::error::{check_packed_lengths, check_quantize_lengths, check_same_lengths};
use super::error::{first_non_finite, CodecError};
use super::BLOCK;

/// Name of the kernel set chosen for this CPU ("avx512", "avx2" or "portable").
pub fn selected_level() -> &'static str {
    kernels().name
}

/// Quantizes `x` into `blocks`/`scales` (see [`super::quantize`]), single-threaded.
pub fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), CodecError> {
    quantize_with(kernels(), x, blocks, scales)
}

/// Decodes `blocks`/`scales` into `out` (see [`super::dequantize`]), single-threaded.
pub fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    dequantize_with(kernels(), blocks, scales, out)
}

/// `dequantize(quantize(x))` into `out`, fused, single-threaded.
pub fn fake_quantize(x: &[f32], out: &mut [f32]) -> Result<(), CodecError> {
    fake_quantize_with(kernels(), x, out)
}

/// `x = dequantize(quantize(x))`, fused, single-threaded. On a NaN/Inf error the blocks before
/// the offending one are already quantized; it and the rest are untouched.
pub fn fake_quantize_in_place(x: &mut [f32]) -> Result<(), CodecError> {
    fake_quantize_in_place_with(kernels(), x)
}

/// The error for block `g`, known to hold a NaN/Inf.
fn block_error(x: &[f32], g: usize) -> CodecError {
    let start = g * BLOCK;
    let block = x.get(start..start + BLOCK).unwrap_or(&[]);
    first_non_finite(block, start).unwrap_or(CodecError::NonFinite {
        index: start,
        value: f32::NAN,
    })
}

pub(super) fn quantize_with(
    k: &Kernels,
    x: &[f32],
    blocks: &mut [u8],
    scales: &mut [u8],
) -> Result<(), CodecError> {
    check_quantize_lengths(x.len(), blocks.len(), scales.len())?;
    (k.quantize)(x, blocks, scales).map_err(|g| block_error(x, g))
}

pub(super) fn dequantize_with(
    k: &Kernels,
    blocks: &[u8],
    scales: &[u8],
    out: &mut [f32],
) -> Result<(), CodecError> {
    check_packed_lengths(out.len(), blocks.len(), scales.len())?;
    (k.dequantize)(blocks, scales, out);
    Ok(())
}

pub(super) fn fake_quantize_with(
    k: &Kernels,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), CodecError> {
    check_same_lengths(x.len(), out.len())?;
    (k.fake_quantize)(x, out).map_err(|g| block_error(x, g))
}

pub(super) fn fake_quantize_in_place_with(k: &Kernels, x: &mut [f32]) -> Result<(), CodecError> {
    check_same_lengths(x.len(), x.len())?;
    (k.fake_quantize_in_place)(x).map_err(|g| block_error(x, g))
}
