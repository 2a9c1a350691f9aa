//! The deployed weight as CubeCL kernels: `Q(W + s·B·A)` with the arithmetic of the CPU
//! (`ops::add_lora_delta`, `mxfp4::quantize`, `bf16::encode_le`), so the bits are the CPU's.
//!
//! How the bits are kept:
//! - the codec is integer work on bit patterns and host tables (decode values, the per-exponent
//!   code thresholds, the per-exponent upper bounds of a block's max |x|), all made on the host
//!   by the CPU codec's own tables; no float division or rounding mode is involved;
//! - the merge sums `d = Σ_k b[o,k]·a[k,i]` for k ascending from a zero, then `w + s·d`, like the
//!   CPU. GPU compilers may contract `x·y + z` into one fused multiply-add (SPIR-V without
//!   `NoContraction`, NVRTC's default `--fmad=true`), which rounds once instead of twice. Every
//!   product is therefore multiplied by `one`, a run-time 1.0 the compiler cannot fold: the
//!   product is rounded by its own multiply, and a contraction of `(p·one) + z` is
//!   `fma(p, 1, z) = round(p + z)`, the unfused sum. The sum starts at `zero`, a run-time 0.0, so
//!   `0 + p` is not folded to `p` (which would keep a `-0.0` the CPU turns into `+0.0`).
//! - a merged value that is NaN/Inf makes the block (MXFP4) or element (bf16) NaN: the CPU
//!   refuses it with an error; on the device the NaN reaches the loss, which the trainer refuses.

use cubecl::prelude::*;

/// Bits of a quiet NaN.
const NAN_BITS: u32 = 0x7FC0_0000;
/// The scale word of a block made NaN: the byte 255 (what the codes' bytes read back hold), and
/// bit 8, by which the grouped matmul decodes the block as NaN (a checkpoint's 255 is 2^128).
pub const NAN_BLOCK: u32 = 0x1FF;
/// Exponent bits of an f32 (all ones: Inf/NaN).
const EXP_MASK: u32 = 0x7F80_0000;

/// One unit per MXFP4 block of 32 along `in` of `experts` stacked `[out, in]` weights
/// (`n_blocks` = out·in/32 per expert; unit `blk` is block `blk % n_blocks` of expert
/// `e = blk / n_blocks`): decodes the packed base at block `base0 + blk` (`blocks`: 4
/// little-endian words per block, element 2j in the low nibble of byte j; `scales`: one E8M0
/// byte per block, 4 per word), adds `s·B_e·A_e` (`rank` r per expert, 0: none; `a [E·r, in]`
/// with `A_e` its rows `e·r..`, `b [out, E·r]` with `B_e` its columns `e·r..`: for one expert the
/// plain `[r, in]`/`[out, r]`), and with `quantize` replaces the merged values by their MXFP4
/// code's value, writing the codes (`codes`, 4 words per block, the checkpoint's byte order) and
/// the scale byte (`scales_out`, one word per block; [`NAN_BLOCK`] for a non-finite block).
/// With `write_dense` the values go to `wq` (f32, 32 per block); without, `wq` is not touched
/// (`quantize` must then be set).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn mxfp4_deploy_kernel(
    blocks: &Array<u32>,
    scales: &Array<u32>,
    a: &Array<f32>,
    b: &Array<f32>,
    decode: &Array<f32>,
    thresholds: &Array<u32>,
    exp_upper: &Array<u32>,
    wq: &mut Array<f32>,
    codes: &mut Array<u32>,
    scales_out: &mut Array<u32>,
    rank: u32,
    experts: u32,
    inp: u32,
    n_blocks: u32,
    base0: u32,
    scale: f32,
    one: f32,
    zero: f32,
    #[comptime] quantize: bool,
    #[comptime] write_dense: bool,
) {
    let blk = ABSOLUTE_POS;
    let n_blocks = n_blocks as usize;
    if blk >= experts as usize * n_blocks {
        terminate!();
    }
    let inp = inp as usize;
    let rank = rank as usize;
    let e = blk / n_blocks;
    let per_row = inp / 32;
    let row = (blk % n_blocks) / per_row;
    let col0 = (blk % per_row) * 32;
    // B_e: row stride E·r, columns from e·r; A_e: rows from e·r
    let b_row = row * (experts as usize * rank) + e * rank;
    let a_row = e * rank;
    let src = base0 as usize + blk;
    let sbyte = ((scales[src / 4] >> (((src % 4) * 8) as u32)) & 0xFFu32) as usize;
    let mut vals = Array::<f32>::new(32usize);
    let mut amax = 0u32;
    for j in 0..32usize {
        let word = blocks[src * 4 + j / 8];
        let nib = ((word >> (((j % 8) * 4) as u32)) & 0xFu32) as usize;
        let mut w = decode[sbyte * 16 + nib];
        if rank > 0 {
            let mut d = zero;
            for k in 0..rank {
                d += (b[b_row + k] * a[(a_row + k) * inp + col0 + j]) * one;
            }
            w += (scale * d) * one;
        }
        vals[j] = w;
        amax = max(amax, u32::reinterpret(w) & 0x7FFF_FFFFu32);
    }
    if comptime!(quantize) {
        if amax >= EXP_MASK {
            // a NaN/Inf in the block: the CPU refuses it; here the block becomes NaN
            for j in 0..32usize {
                vals[j] = f32::reinterpret(NAN_BITS);
            }
            for w in 0..4usize {
                codes[blk * 4 + w] = 0u32;
            }
            scales_out[blk] = NAN_BLOCK;
        } else {
            // the block exponent: how many per-exponent upper bounds amax exceeds (monotone)
            let mut e_idx = 127usize;
            if amax != 0 {
                let mut lo = 0usize;
                let mut hi = 254usize;
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if amax > exp_upper[mid] {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                e_idx = lo;
            }
            scales_out[blk] = e_idx as u32;
            let mut packed = 0u32;
            for j in 0..32usize {
                let bits = u32::reinterpret(vals[j]);
                let mag = bits & 0x7FFF_FFFFu32;
                let mut code = 0u32;
                for k in 0..7usize {
                    if mag > thresholds[e_idx * 8 + k] {
                        code += 1u32;
                    }
                }
                let mut nib = code;
                if (bits >> 31u32) == 1u32 && code != 0u32 {
                    nib = code | 8u32;
                }
                vals[j] = decode[e_idx * 16 + nib as usize];
                packed |= nib << (((j % 8) * 4) as u32);
                if j % 8 == 7 {
                    codes[blk * 4 + j / 8] = packed;
                    packed = 0;
                }
            }
        }
    }
    if comptime!(write_dense) {
        // block `blk` is row `row` of expert `e`, columns col0..col0 + 32: elements blk·32..
        for j in 0..32usize {
            wq[blk * 32 + j] = vals[j];
        }
    }
}

/// One unit per element of `w [out, in]` (f32 holding bf16 values): `bf16(W + s·B·A)` (round to
/// nearest even, as `half` does) as f32; NaN where the merged value is NaN/Inf or rounds to ±Inf.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn bf16_deploy_kernel(
    w: &Array<f32>,
    a: &Array<f32>,
    b: &Array<f32>,
    out: &mut Array<f32>,
    rank: u32,
    inp: u32,
    n: u32,
    scale: f32,
    one: f32,
    zero: f32,
) {
    let idx = ABSOLUTE_POS;
    if idx >= n as usize {
        terminate!();
    }
    let inp = inp as usize;
    let rank = rank as usize;
    let row = idx / inp;
    let col = idx % inp;
    let mut v = w[idx];
    if rank > 0 {
        let mut d = zero;
        for k in 0..rank {
            d += (b[row * rank + k] * a[k * inp + col]) * one;
        }
        v += (scale * d) * one;
    }
    let bits = u32::reinterpret(v);
    let mut result = 0x7FC0_0000u32;
    if (bits & EXP_MASK) != EXP_MASK {
        let rounded = (bits + 0x7FFFu32 + ((bits >> 16u32) & 1u32)) & 0xFFFF_0000u32;
        if (rounded & EXP_MASK) != EXP_MASK {
            result = rounded;
        }
    }
    out[idx] = f32::reinterpret(result);
}
