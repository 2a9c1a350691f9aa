//! AVX-512 kernels (x86_64): the same exact algorithm as `generic`, written with intrinsics.
//! Codes: binary search of |x| bits among the per-exponent thresholds (`vpermd` + unsigned
//! compares); sign only with a non-zero code; packing by a 64-bit shift and `vpmovqb`; decoding by `vpermps`
//! from the 16-entry `DECODE` row of the scale.

use super::dispatch::Kernels;
use super::tables::{block_exponent_from_bits, DECODE, THRESHOLDS};
use super::{BLOCK, BLOCK_BYTES};
use std::arch::x86_64::*;

/// The AVX-512 kernel set; only selected after `is_x86_feature_detected!` confirmed
/// avx512f, avx512bw, avx512vl and avx512dq (see `dispatch::select`).
pub(super) const KERNELS: Kernels = Kernels {
    name: "avx512",
    quantize,
    dequantize,
    fake_quantize,
    fake_quantize_in_place,
};

const ABS: i32 = 0x7FFF_FFFF;
const NON_FINITE: u32 = 0x7F80_0000;

/// Nibbles (code | sign << 3) of 16 elements given their bits and the thresholds row (in the
/// low 8 lanes). The code is the number of thresholds below |x| (they increase, the 8th is
/// u32::MAX), found by a 3-step binary search with `vpermd` selecting each lane's threshold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
fn nibbles(v: __m512i, t: __m512i) -> __m512i {
    let abs = _mm512_and_si512(v, _mm512_set1_epi32(ABS));
    let above = _mm512_cmpgt_epu32_mask(abs, _mm512_permutexvar_epi32(_mm512_set1_epi32(3), t));
    let mut code = _mm512_maskz_mov_epi32(above, _mm512_set1_epi32(4));
    let probe = _mm512_add_epi32(code, _mm512_set1_epi32(1));
    let above = _mm512_cmpgt_epu32_mask(abs, _mm512_permutexvar_epi32(probe, t));
    code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(2));
    let above = _mm512_cmpgt_epu32_mask(abs, _mm512_permutexvar_epi32(code, t));
    code = _mm512_mask_add_epi32(code, above, code, _mm512_set1_epi32(1));
    let negative = _mm512_movepi32_mask(v) & _mm512_test_epi32_mask(code, code);
    _mm512_mask_or_epi32(code, negative, code, _mm512_set1_epi32(8))
}

/// Loads a block; returns its two halves and its exponent, or `None` on NaN/Inf.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
fn load_block(x: &[f32; BLOCK]) -> Option<(__m512i, __m512i, i32)> {
    // SAFETY: `x` holds 32 f32, the two unaligned 64-byte loads stay inside it.
    let (v0, v1) = unsafe {
        (
            _mm512_loadu_si512(x.as_ptr().cast()),
            _mm512_loadu_si512(x.as_ptr().add(16).cast()),
        )
    };
    let abs = _mm512_set1_epi32(ABS);
    let m = _mm512_max_epu32(_mm512_and_si512(v0, abs), _mm512_and_si512(v1, abs));
    let amax = _mm512_reduce_max_epu32(m);
    if amax >= NON_FINITE {
        return None;
    }
    Some((v0, v1, block_exponent_from_bits(amax)))
}

/// The 8 thresholds of exponent e in the low 8 lanes (the high 8 are never indexed).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
fn thresholds(e: i32) -> __m512i {
    // SAFETY: a THRESHOLDS row holds 8 u32.
    let row = unsafe { _mm256_loadu_si256(THRESHOLDS[(e + 127) as usize].as_ptr().cast()) };
    _mm512_castsi256_si512(row)
}

/// The 16-entry decode row of exponent e (scale byte e + 127).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
fn decode_row(scale: u8) -> __m512 {
    // SAFETY: a DECODE row holds 16 f32.
    unsafe { _mm512_loadu_ps(DECODE[usize::from(scale)].as_ptr()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn quantize_tf(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks::<BLOCK>();
    let (bs, _) = blocks.as_chunks_mut::<BLOCK_BYTES>();
    for (g, ((xb, pb), s)) in xs.iter().zip(bs).zip(scales).enumerate() {
        let (v0, v1, e) = load_block(xb).ok_or(g)?;
        let t = thresholds(e);
        let (n0, n1) = (nibbles(v0, t), nibbles(v1, t));
        // u64 lane j holds nibbles 2j (bits 0..4) and 2j+1 (bits 32..36): fold, keep the low byte
        let p0 = _mm512_cvtepi64_epi8(_mm512_or_si512(n0, _mm512_srli_epi64::<28>(n0)));
        let p1 = _mm512_cvtepi64_epi8(_mm512_or_si512(n1, _mm512_srli_epi64::<28>(n1)));
        // SAFETY: `pb` holds 16 bytes.
        unsafe { _mm_storeu_si128(pb.as_mut_ptr().cast(), _mm_unpacklo_epi64(p0, p1)) };
        *s = (e + 127) as u8;
    }
    Ok(())
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn dequantize_tf(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    let (bs, _) = blocks.as_chunks::<BLOCK_BYTES>();
    let (os, _) = out.as_chunks_mut::<BLOCK>();
    for ((pb, &s), ob) in bs.iter().zip(scales).zip(os) {
        let row = decode_row(s);
        // SAFETY: `pb` holds 16 bytes, `ob` 32 f32.
        unsafe {
            let bytes = _mm_loadu_si128(pb.as_ptr().cast());
            // vpermps reads only the low 4 bits of each index: no masking needed
            let hi = _mm_srli_epi16::<4>(bytes);
            let i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, hi));
            let i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(bytes, hi));
            _mm512_storeu_ps(ob.as_mut_ptr(), _mm512_permutexvar_ps(i0, row));
            _mm512_storeu_ps(ob.as_mut_ptr().add(16), _mm512_permutexvar_ps(i1, row));
        }
    }
}

/// Fake-quantizes one block into `out` (which may be the input's own memory, read first).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
fn fake_block(xb: &[f32; BLOCK]) -> Option<(__m512, __m512)> {
    let (v0, v1, e) = load_block(xb)?;
    let t = thresholds(e);
    let row = decode_row((e + 127) as u8);
    Some((
        _mm512_permutexvar_ps(nibbles(v0, t), row),
        _mm512_permutexvar_ps(nibbles(v1, t), row),
    ))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn fake_quantize_tf(x: &[f32], out: &mut [f32]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks::<BLOCK>();
    let (os, _) = out.as_chunks_mut::<BLOCK>();
    for (g, (xb, ob)) in xs.iter().zip(os).enumerate() {
        let (y0, y1) = fake_block(xb).ok_or(g)?;
        // SAFETY: `ob` holds 32 f32.
        unsafe {
            _mm512_storeu_ps(ob.as_mut_ptr(), y0);
            _mm512_storeu_ps(ob.as_mut_ptr().add(16), y1);
        }
    }
    Ok(())
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn fake_quantize_in_place_tf(x: &mut [f32]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks_mut::<BLOCK>();
    for (g, xb) in xs.iter_mut().enumerate() {
        let (y0, y1) = fake_block(xb).ok_or(g)?;
        // SAFETY: `xb` holds 32 f32.
        unsafe {
            _mm512_storeu_ps(xb.as_mut_ptr(), y0);
            _mm512_storeu_ps(xb.as_mut_ptr().add(16), y1);
        }
    }
    Ok(())
}

// SAFETY (the four wrappers): `KERNELS` is only selected when the CPU has every feature the
// `_tf` functions enable.
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
