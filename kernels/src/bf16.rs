//! BF16 codec: round-to-nearest-even f32 -> bf16 (as `half` does), and the little-endian byte
//! layout of safetensors BF16 tensors.

use crate::mxfp4::CodecError;
use half::bf16;
use rayon::prelude::*;

/// Slices at least this long are rounded in parallel.
const PARALLEL_MIN: usize = 1 << 16;

/// Rounds `x` to the nearest bf16 (ties to even; NaN stays NaN, ±Inf stay) and returns it as f32.
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// [`round_to_bf16`] on every element; parallel for large slices.
pub fn round_slice_in_place(x: &mut [f32]) {
    if x.len() >= PARALLEL_MIN {
        x.par_chunks_mut(PARALLEL_MIN / 4)
            .for_each(|c| c.iter_mut().for_each(|v| *v = round_to_bf16(*v)));
    } else {
        x.iter_mut().for_each(|v| *v = round_to_bf16(*v));
    }
}

/// Decodes safetensors BF16 little-endian bytes (2 per element) into f32 (exact).
pub fn decode_le(bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    if bytes.len() != 2 * out.len() {
        return Err(CodecError::Length {
            what: "bf16 bytes (2 per output element)",
            expected: 2 * out.len(),
            got: bytes.len(),
        });
    }
    let (pairs, _) = bytes.as_chunks::<2>();
    for (o, p) in out.iter_mut().zip(pairs) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes(*p)) << 16);
    }
    Ok(())
}

/// Encodes f32 to safetensors BF16 little-endian bytes (round to nearest even, as
/// [`round_to_bf16`]; NaN/Inf are encoded, not refused).
pub fn encode_le(x: &[f32], out: &mut [u8]) -> Result<(), CodecError> {
    if out.len() != 2 * x.len() {
        return Err(CodecError::Length {
            what: "bf16 bytes (2 per input element)",
            expected: 2 * x.len(),
            got: out.len(),
        });
    }
    let (pairs, _) = out.as_chunks_mut::<2>();
    for (p, &v) in pairs.iter_mut().zip(x) {
        *p = bf16::from_f32(v).to_bits().to_le_bytes();
    }
    Ok(())
}
