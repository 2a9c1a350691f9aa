//! The tiled kernel of the grouped MXFP4 matmul: `C[i, :] = A[i, :] · B_e` for the rows `i` of
//! expert `e`, with `B_e = W_eᵀ` (forward) or `W_e` (`transpose`, the input gradient), `W_e` read
//! as MXFP4 codes and decoded into shared memory tile by tile.
//!
//! Grid: x over row-tile slots (an upper bound, `ceil(N/TM) + E`; consecutive cubes share a
//! weight tile), y over column tiles of `C` (`TN` wide). A cube walks the device offsets to find which expert's `TM` rows its slot
//! is (the slots of expert `e` follow those of `e − 1`, `ceil(rows_e / TM)` each) and exits when
//! it has none. Each of its `UNITS` units accumulates `RM × RN` outputs in registers, strided by
//! 16 rows and columns, over shared tiles of `A` (`TM × TK`) and of the decoded `B` (`TK × TN`).

use cubecl::prelude::*;

/// Rows of `C` per cube.
pub(super) const TM: usize = 64;
/// Columns of `C` per cube.
pub(super) const TN: usize = 64;
/// Reduction depth of one shared tile (one MXFP4 block in the forward product).
pub(super) const TK: usize = 32;
/// Units per cube (a 16 × 16 grid of units).
pub(super) const UNITS: usize = 256;
/// Rows per unit (`TM / 16`).
const RM: usize = 4;
/// Columns per unit (`TN / 16`).
const RN: usize = 4;
/// Row stride of the `A` tile in shared memory (padded against bank conflicts).
const XS: usize = TK + 1;

/// The value of element `j` (0..32) of MXFP4 block `block`: the E2M1 value of its nibble times
/// `2^(scale − 127)`, both built from bits, so the value is exact (the CPU codec's `DECODE`,
/// including `2^128` for the scale byte 255: `v·2^127·2`, +Inf where it overflows). The scale
/// byte is byte `block % 4` of word `block / 4` (`packed`) or the low byte of word `block`,
/// where a word above 255 (the deploy's NaN block) makes the value NaN.
#[cube]
fn decode(
    codes: &Array<u32>,
    scales: &Array<u32>,
    block: usize,
    j: usize,
    #[comptime] packed: bool,
) -> f32 {
    let word = codes[block * 4 + j / 8];
    let nib = (word >> (((j % 8) * 4) as u32)) & 0xFu32;
    // the scale word: the byte alone (packed) or the byte with the NaN flag above it (word)
    let sw = if comptime!(packed) {
        (scales[block / 4] >> (((block % 4) * 8) as u32)) & 0xFFu32
    } else {
        scales[block]
    };
    let s = sw & 0xFFu32;
    let m = nib & 7u32;
    // codes 2..7: 2^((m >> 1) − 1) · (1 + (m & 1)/2); code 1: 0.5; code 0: 0
    let normal = ((126u32 + (m >> 1u32)) << 23u32) | ((m & 1u32) << 22u32);
    let mag = select(m >= 2u32, normal, select(m == 1u32, 0x3F00_0000u32, 0u32));
    let fp4 = f32::reinterpret(mag | ((nib & 8u32) << 28u32));
    // 2^(s − 127): the exponent field s (s = 0: the subnormal 2^-127; s = 255: 2^127, then ·2)
    let pow = select(s == 0u32, 0x0040_0000u32, min(s, 254u32) << 23u32);
    let mut v = fp4 * f32::reinterpret(pow);
    if s == 255u32 {
        v *= 2.0;
    }
    if sw > 0xFFu32 {
        v = f32::reinterpret(0x7FC0_0000u32);
    }
    v
}

/// `c [rows, ncols] = a [rows, kred] · B_e` per expert (see the module doc). `offsets`: `E + 1`
/// row offsets (non-negative i32 or u32, read as u32); `codes` (4 words per block) and `scales`
/// (4 bytes per word with `packed_scales`, else one word per block, the byte in the low 8 bits)
/// hold the `E` weights `[out, inp]` expert-major. `kred`/`ncols` are `inp`/`out`
/// (forward) or `out`/`inp` (`transpose`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn grouped_mxfp4_kernel(
    a: &Array<f32>,
    codes: &Array<u32>,
    scales: &Array<u32>,
    offsets: &Array<u32>,
    c: &mut Array<f32>,
    rows: u32,
    experts: u32,
    out: u32,
    inp: u32,
    kred: u32,
    ncols: u32,
    #[comptime] transpose: bool,
    #[comptime] packed_scales: bool,
) {
    let rows = rows as usize;
    let kred = kred as usize;
    let ncols = ncols as usize;
    let unit = UNIT_POS as usize;
    let tx = unit % 16;
    let ty = unit / 16;

    // this cube's expert and rows [row0, row_end), from the device offsets
    let slot = CUBE_POS_X as usize;
    let mut seen = 0usize;
    let mut expert = 0usize;
    let mut row0 = 0usize;
    let mut row_end = 0usize;
    for e in 0..experts as usize {
        let lo = offsets[e] as usize;
        let hi = min(offsets[e + 1] as usize, rows);
        if hi > lo {
            let tiles = (hi - lo).div_ceil(TM);
            if slot >= seen && slot < seen + tiles {
                expert = e;
                row0 = lo + (slot - seen) * TM;
                row_end = hi;
            }
            seen += tiles;
        }
    }
    if row_end <= row0 {
        terminate!();
    }
    let n0 = CUBE_POS_Y as usize * TN;
    let per_row = inp as usize / 32;
    let wbase = expert * out as usize * per_row;

    let mut xs = SharedMemory::<f32>::new(TM * XS);
    let mut ws = SharedMemory::<f32>::new(TK * TN);
    let mut acc = Array::<f32>::new(RM * RN);
    #[unroll]
    for t in 0..RM * RN {
        acc[t] = 0.0;
    }
    let mut av = Array::<f32>::new(RM);
    let mut bv = Array::<f32>::new(RN);

    let steps = kred.div_ceil(TK);
    for step in 0..steps {
        let k0 = step * TK;
        // the A tile, row-major along k (coalesced reads), zero outside the expert's rows
        #[unroll]
        for t in 0..TM * TK / UNITS {
            let idx = unit + t * UNITS;
            let r = idx / TK;
            let kk = idx % TK;
            let row = row0 + r;
            let k = k0 + kk;
            let mut v = 0.0f32;
            if row < row_end && k < kred {
                v = a[row * kred + k];
            }
            xs[r * XS + kk] = v;
        }
        // the decoded B tile `ws[kk][nn] = B(k0 + kk, n0 + nn)`: W[n, k] (forward, one block
        // per column) or W[k, n] (transpose); consecutive units walk along W's `in` axis
        #[unroll]
        for t in 0..TK * TN / UNITS {
            let idx = unit + t * UNITS;
            let mut kk = idx % TK;
            let mut nn = idx / TK;
            if comptime!(transpose) {
                kk = idx / TN;
                nn = idx % TN;
            }
            let k = k0 + kk;
            let n = n0 + nn;
            let mut o = n;
            let mut i = k;
            if comptime!(transpose) {
                o = k;
                i = n;
            }
            let mut v = 0.0f32;
            if k < kred && n < ncols {
                v = decode(
                    codes,
                    scales,
                    wbase + o * per_row + i / 32,
                    i % 32,
                    packed_scales,
                );
            }
            ws[kk * TN + nn] = v;
        }
        sync_cube();
        for kk in 0..TK {
            #[unroll]
            for i in 0..RM {
                av[i] = xs[(ty + i * 16) * XS + kk];
            }
            #[unroll]
            for j in 0..RN {
                bv[j] = ws[kk * TN + tx + j * 16];
            }
            #[unroll]
            for i in 0..RM {
                #[unroll]
                for j in 0..RN {
                    acc[i * RN + j] += av[i] * bv[j];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for i in 0..RM {
        let row = row0 + ty + i * 16;
        if row < row_end {
            #[unroll]
            for j in 0..RN {
                let col = n0 + tx + j * 16;
                if col < ncols {
                    c[row * ncols + col] = acc[i * RN + j];
                }
            }
        }
    }
}
