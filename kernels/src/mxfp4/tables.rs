//! Per-exponent constant tables, evaluated at compile time (so no run-time float rounding mode
//! or flush-to-zero setting can change them).

use super::FP4_VALUES;

/// Boundaries between consecutive E2M1 magnitude codes 0..7.
const BOUNDS: [f64; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];

/// 2^k as f64 (exact for the exponents used here).
const fn pow2_f64(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// `THRESHOLDS[e + 127][k]`: for a block exponent e, the magnitude code of an element with
/// absolute-value bits `a` (as u32) is `sum_k (a > THRESHOLDS[e + 127][k])`.
///
/// Threshold k is the f32 bit pattern of `BOUNDS[k] * 2^e` (always exact: a subnormal or normal
/// f32, or +Inf when it exceeds f32::MAX, which no finite |x| reaches, as in the spec). Positive
/// floats order like their bits. Ties go to the even code: bound k separates codes k and k+1, so
/// for odd k a tie must go up (`a >= t`, i.e. `a > t - 1`) and for even k down (`a > t`).
/// The 8th entry is u32::MAX (never exceeded) so rows are 8 wide.
pub(crate) static THRESHOLDS: [[u32; 8]; 255] = build_thresholds();

const fn build_thresholds() -> [[u32; 8]; 255] {
    let mut table = [[u32::MAX; 8]; 255];
    let mut i = 0;
    while i < 255 {
        let e = i as i32 - 127;
        let mut k = 0;
        while k < 7 {
            let t = ((BOUNDS[k] * pow2_f64(e)) as f32).to_bits();
            table[i][k] = if k % 2 == 1 { t - 1 } else { t };
            k += 1;
        }
        i += 1;
    }
    table
}

/// `DECODE[scale][nibble] = f32(FP4_VALUES[nibble] * 2^(scale - 127))`, as the spec computes it
/// (in f64, then rounded to f32: 6 * 2^128 becomes +Inf).
pub(crate) static DECODE: [[f32; 16]; 256] = build_decode();

const fn build_decode() -> [[f32; 16]; 256] {
    let mut table = [[0.0f32; 16]; 256];
    let mut s = 0;
    while s < 256 {
        let mut n = 0;
        while n < 16 {
            table[s][n] = (FP4_VALUES[n] as f64 * pow2_f64(s as i32 - 127)) as f32;
            n += 1;
        }
        s += 1;
    }
    table
}

/// Block exponent e (scale byte - 127) from the bits of the block's max |x| (finite).
#[inline(always)]
pub(crate) fn block_exponent_from_bits(amax_bits: u32) -> i32 {
    if amax_bits == 0 {
        return 0;
    }
    let r = f32::from_bits(amax_bits) / 6.0;
    let bits = r.to_bits();
    let exp_field = (bits >> 23) as i32;
    let mant = bits & 0x7F_FFFF;
    let e = if exp_field > 0 {
        exp_field - 127 + i32::from(mant != 0)
    } else {
        let bit_length = (32 - mant.leading_zeros()) as i32;
        bit_length - 150 + i32::from(mant & mant.wrapping_sub(1) != 0)
    };
    e.clamp(-127, 127)
}
