//! The portable, branch-free block bodies of the fast path. They are `#[inline(always)]` so that
//! each `#[target_feature]` wrapper in `dispatch` compiles its own vectorized copy of them.
//!
//! Exactness: the element codes are chosen by comparing the u32 bits of |x| with per-exponent
//! thresholds `bound * 2^e` (see `tables::THRESHOLDS`); for non-negative floats the bit order is
//! the numeric order, so this is the spec's exact comparison of `|x| * 2^-e` with the bounds,
//! without computing any product. Decoded values come from `tables::DECODE`, which is the spec's
//! f64 product rounded to f32.

use super::tables::{block_exponent_from_bits, DECODE, THRESHOLDS};
use super::{BLOCK, BLOCK_BYTES};

const ABS: u32 = 0x7FFF_FFFF;
const SIGN: u32 = 0x8000_0000;
/// |x| bits at or above this are Inf or NaN.
const NON_FINITE: u32 = 0x7F80_0000;

/// Max |x| bits of a block (NaN/Inf compare above `NON_FINITE`).
#[inline(always)]
fn amax_bits(x: &[f32; BLOCK]) -> u32 {
    let mut amax = 0u32;
    for v in x {
        amax = amax.max(v.to_bits() & ABS);
    }
    amax
}

/// Thresholds row for block exponent e.
#[inline(always)]
fn thresholds(e: i32) -> &'static [u32; 8] {
    &THRESHOLDS[(e + 127) as usize]
}

/// Nibble (sign in bit 3, sign only with a non-zero code) of one element.
#[inline(always)]
fn nibble(bits: u32, t: &[u32; 8]) -> u32 {
    let a = bits & ABS;
    let mut code = 0u32;
    for &tk in &t[..7] {
        code += u32::from(a > tk);
    }
    let neg = (bits >> 31) & u32::from(a > t[0]);
    code | (neg << 3)
}

/// Quantizes one block; `None` when it holds a NaN/Inf (nothing written then).
#[inline(always)]
pub(super) fn quantize_block(x: &[f32; BLOCK], packed: &mut [u8; BLOCK_BYTES]) -> Option<u8> {
    let amax = amax_bits(x);
    if amax >= NON_FINITE {
        return None;
    }
    let e = block_exponent_from_bits(amax);
    let t = thresholds(e);
    let mut nib = [0u32; BLOCK];
    for (n, v) in nib.iter_mut().zip(x) {
        *n = nibble(v.to_bits(), t);
    }
    for (j, byte) in packed.iter_mut().enumerate() {
        *byte = (nib[2 * j] | (nib[2 * j + 1] << 4)) as u8;
    }
    Some((e + 127) as u8)
}

/// Fake-quantizes one block into `out`; `false` when it holds a NaN/Inf (nothing written then).
#[inline(always)]
pub(super) fn fake_quantize_block(x: &[f32; BLOCK], out: &mut [f32; BLOCK]) -> bool {
    let amax = amax_bits(x);
    if amax >= NON_FINITE {
        return false;
    }
    let e = block_exponent_from_bits(amax);
    let t = thresholds(e);
    let row = &DECODE[(e + 127) as usize];
    let mut grid = [0u32; 8];
    for (g, v) in grid.iter_mut().zip(row) {
        *g = v.to_bits();
    }
    let mut vals = [0u32; BLOCK];
    for (o, v) in vals.iter_mut().zip(x) {
        let bits = v.to_bits();
        let a = bits & ABS;
        let mut mag = 0u32;
        for k in 0..7 {
            mag = if a > t[k] { grid[k + 1] } else { mag };
        }
        let sign = if a > t[0] { bits & SIGN } else { 0 };
        *o = mag | sign;
    }
    for (o, v) in out.iter_mut().zip(vals) {
        *o = f32::from_bits(v);
    }
    true
}

/// Decodes one block.
#[inline(always)]
pub(super) fn dequantize_block(packed: &[u8; BLOCK_BYTES], scale: u8, out: &mut [f32; BLOCK]) {
    let row = &DECODE[usize::from(scale)];
    for (j, &byte) in packed.iter().enumerate() {
        out[2 * j] = row[usize::from(byte & 0x0F)];
        out[2 * j + 1] = row[usize::from(byte >> 4)];
    }
}

/// Quantizes whole blocks; `Err(g)` names the first block holding a NaN/Inf.
#[inline(always)]
pub(super) fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks::<BLOCK>();
    let (bs, _) = blocks.as_chunks_mut::<BLOCK_BYTES>();
    for (g, ((xb, pb), s)) in xs.iter().zip(bs).zip(scales).enumerate() {
        *s = quantize_block(xb, pb).ok_or(g)?;
    }
    Ok(())
}

/// Decodes whole blocks.
#[inline(always)]
pub(super) fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    let (bs, _) = blocks.as_chunks::<BLOCK_BYTES>();
    let (os, _) = out.as_chunks_mut::<BLOCK>();
    for ((pb, &s), ob) in bs.iter().zip(scales).zip(os) {
        dequantize_block(pb, s, ob);
    }
}

/// Fake-quantizes whole blocks; `Err(g)` names the first block holding a NaN/Inf.
#[inline(always)]
pub(super) fn fake_quantize(x: &[f32], out: &mut [f32]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks::<BLOCK>();
    let (os, _) = out.as_chunks_mut::<BLOCK>();
    for (g, (xb, ob)) in xs.iter().zip(os).enumerate() {
        if !fake_quantize_block(xb, ob) {
            return Err(g);
        }
    }
    Ok(())
}

/// Fake-quantizes whole blocks in place; `Err(g)` names the first block holding a NaN/Inf
/// (blocks before it are already done, it and those after are untouched).
#[inline(always)]
pub(super) fn fake_quantize_in_place(x: &mut [f32]) -> Result<(), usize> {
    let (xs, _) = x.as_chunks_mut::<BLOCK>();
    for (g, xb) in xs.iter_mut().enumerate() {
        let input = *xb;
        if !fake_quantize_block(&input, xb) {
            return Err(g);
        }
    }
    Ok(())
}
