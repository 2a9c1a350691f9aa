//! Scalar, single-threaded reference codec, written line by line from the spec
//! (`mxfp4_ref.py`, DESIGN §2.1). Slow and obviously correct; the fast path is tested against it.

use super::error::{check_packed_lengths, check_quantize_lengths, check_same_lengths};
use super::error::{first_non_finite, CodecError};
use super::{BLOCK, BLOCK_BYTES, FP4_VALUES};

/// Boundaries between consecutive magnitude codes 0..7 of E2M1.
const BOUNDS: [f64; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];

/// 2^k as f64, exact for -1022 <= k <= 1023.
fn pow2_f64(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// ceil(log2(r)) for finite r >= 0, exactly from the bits (r == 0 gives -150, as the spec does).
pub fn ceil_log2_exact(r: f32) -> i32 {
    let bits = r.to_bits();
    let exp_field = ((bits >> 23) & 0xFF) as i32;
    let mant = bits & 0x7F_FFFF;
    if exp_field > 0 {
        exp_field - 127 + i32::from(mant != 0)
    } else {
        // subnormal: mant * 2^-149, floor(log2) = bit_length(mant) - 150
        let bit_length = (32 - mant.leading_zeros()) as i32;
        let pow2 = mant & mant.wrapping_sub(1) == 0;
        bit_length - 150 + i32::from(!pow2)
    }
}

/// The block exponent e (scale byte - 127) for a block whose max |x| is `amax`.
pub fn block_exponent(amax: f32) -> i32 {
    if amax == 0.0 {
        0
    } else {
        ceil_log2_exact(amax / 6.0).clamp(-127, 127)
    }
}

/// Magnitude code 0..7 of m >= 0: round to nearest, ties to the even code index, saturating.
fn magnitude_code(m: f64) -> u8 {
    // searchsorted(side="left"): number of bounds strictly below m
    let mut code = BOUNDS.iter().filter(|&&b| b < m).count();
    if code < BOUNDS.len() && m == BOUNDS[code] && code % 2 == 1 {
        code += 1;
    }
    code.min(7) as u8
}

/// The 4-bit code of one element given the block exponent.
fn nibble(x: f32, e: i32) -> u8 {
    let m = f64::from(x.abs()) * pow2_f64(-e); // exact in f64
    let code = magnitude_code(m);
    if x < 0.0 && code != 0 {
        code | 8
    } else {
        code
    }
}

/// Quantizes `x` (length a multiple of 32) to packed E2M1 `blocks` (x.len()/2 bytes) and E8M0
/// `scales` (x.len()/32 bytes). Errors on bad lengths or the first NaN/Inf.
pub fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), CodecError> {
    check_quantize_lengths(x.len(), blocks.len(), scales.len())?;
    if let Some(err) = first_non_finite(x, 0) {
        return Err(err);
    }
    let groups = x
        .chunks_exact(BLOCK)
        .zip(blocks.chunks_exact_mut(BLOCK_BYTES))
        .zip(scales.iter_mut());
    for ((xb, packed), scale) in groups {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let e = block_exponent(amax);
        *scale = (e + 127) as u8;
        for (j, byte) in packed.iter_mut().enumerate() {
            *byte = nibble(xb[2 * j], e) | (nibble(xb[2 * j + 1], e) << 4);
        }
    }
    Ok(())
}

/// One decoded value: `LUT[nibble] * 2^(scale - 127)`, computed in f64 and rounded to f32.
fn decode(nibble: u8, scale: u8) -> f32 {
    (f64::from(FP4_VALUES[usize::from(nibble)]) * pow2_f64(i32::from(scale) - 127)) as f32
}

/// Decodes packed `blocks` and `scales` into `out` (length 32 * scales.len()).
pub fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_packed_lengths(out.len(), blocks.len(), scales.len())?;
    let groups = out
        .chunks_exact_mut(BLOCK)
        .zip(blocks.chunks_exact(BLOCK_BYTES))
        .zip(scales);
    for ((ob, packed), &scale) in groups {
        for (j, &byte) in packed.iter().enumerate() {
            ob[2 * j] = decode(byte & 0x0F, scale);
            ob[2 * j + 1] = decode(byte >> 4, scale);
        }
    }
    Ok(())
}

/// `dequantize(quantize(x))` into `out` (same length as `x`).
pub fn fake_quantize(x: &[f32], out: &mut [f32]) -> Result<(), CodecError> {
    check_same_lengths(x.len(), out.len())?;
    let mut blocks = vec![0u8; x.len() / 2];
    let mut scales = vec![0u8; x.len() / BLOCK];
    quantize(x, &mut blocks, &mut scales)?;
    dequantize(&blocks, &scales, out)
}

/// `x = dequantize(quantize(x))`. On error `x` is left unchanged.
pub fn fake_quantize_in_place(x: &mut [f32]) -> Result<(), CodecError> {
    let input = x.to_vec();
    fake_quantize(&input, x)
}
