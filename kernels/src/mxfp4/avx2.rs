//! AVX2 + FMA kernels (x86_64): the `generic` quantize bodies compiled for AVX2, and a decode
//! by `vpermps` from the 8 magnitudes of the scale's `DECODE` row with the sign OR-ed in.

use super::dispatch::Kernels;
use super::generic;
use super::tables::DECODE;
use super::{BLOCK, BLOCK_BYTES};
use std::arch::x86_64::*;

/// The AVX2 kernel set; only selected after `is_x86_feature_detected!` confirmed avx2 and fma
/// (see `dispatch::select`).
pub(super) const KERNELS: Kernels = Kernels {
    name: "avx2",
    quantize,
    dequantize,
    fake_quantize,
    fake_quantize_in_place,
};

#[target_feature(enable = "avx2,fma")]
fn quantize_tf(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), usize> {
    generic::quantize(x, blocks, scales)
}

#[target_feature(enable = "avx2,fma")]
fn fake_quantize_tf(x: &[f32], out: &mut [f32]) -> Result<(), usize> {
    generic::fake_quantize(x, out)
}

#[target_feature(enable = "avx2,fma")]
fn fake_quantize_in_place_tf(x: &mut [f32]) -> Result<(), usize> {
    generic::fake_quantize_in_place(x)
}

/// Decodes 8 nibbles (one per byte of the low 8 bytes of `nib`) with magnitudes `row`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn decode8(nib: __m128i, row: __m256) -> __m256 {
    let idx = _mm256_cvtepu8_epi32(nib);
    let mag = _mm256_permutevar8x32_ps(row, idx); // low 3 bits: magnitude code
    let sign = _mm256_slli_epi32::<28>(_mm256_and_si256(idx, _mm256_set1_epi32(8)));
    _mm256_or_ps(mag, _mm256_castsi256_ps(sign))
}

#[target_feature(enable = "avx2,fma")]
fn dequantize_tf(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    let (bs, _) = blocks.as_chunks::<BLOCK_BYTES>();
    let (os, _) = out.as_chunks_mut::<BLOCK>();
    let low = _mm_set1_epi8(0x0F);
    for ((pb, &s), ob) in bs.iter().zip(scales).zip(os) {
        // SAFETY: a DECODE row holds 16 f32 (the first 8 are the magnitudes); `pb` holds 16
        // bytes; `ob` 32 f32.
        unsafe {
            let row = _mm256_loadu_ps(DECODE[usize::from(s)].as_ptr());
            let bytes = _mm_loadu_si128(pb.as_ptr().cast());
            let lo = _mm_and_si128(bytes, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
            let n0 = _mm_unpacklo_epi8(lo, hi); // nibbles of elements 0..16
            let n1 = _mm_unpackhi_epi8(lo, hi); // 16..32
            let o = ob.as_mut_ptr();
            _mm256_storeu_ps(o, decode8(n0, row));
            _mm256_storeu_ps(o.add(8), decode8(_mm_srli_si128::<8>(n0), row));
            _mm256_storeu_ps(o.add(16), decode8(n1, row));
            _mm256_storeu_ps(o.add(24), decode8(_mm_srli_si128::<8>(n1), row));
        }
    }
}

// SAFETY (the four wrappers): `KERNELS` is only selected when the CPU has avx2 and fma.
fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), usize> {
    unsafe { quantize_tf(x, blocks, scales) }
}
fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    unsafe { dequantize_tf(blocks, scales, out) }
}
fn fake_quantize(x: &[f32], out: &mut [f32]) -> Result<(), usize> {
    unsafe { fake_quantize_tf(x, out) }
}
fn fake_quantize_in_place(x: &mut [f32]) -> Result<(), usize> {
    unsafe { fake_quantize_in_place_tf(x) }
}
