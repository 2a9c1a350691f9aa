//! The codec's constants as the device kernels read them, all taken from the CPU codec's own
//! tables and functions (one definition of every number): decode values, code thresholds, and
//! the block-exponent bounds.

use std::sync::OnceLock;

use crate::mxfp4::tables::{block_exponent_from_bits, DECODE, THRESHOLDS};

/// Largest finite f32 bit pattern (positive).
const MAX_FINITE: u32 = 0x7F7F_FFFF;

/// `decode[scale·16 + nibble]`: the value of an E2M1 nibble under an E8M0 scale byte.
pub(crate) fn decode() -> Vec<f32> {
    DECODE.iter().flatten().copied().collect()
}

/// `thresholds[(e + 127)·8 + k]`: an element of magnitude bits `a` has code `Σ_k [a > t_k]`.
pub(crate) fn thresholds() -> Vec<u32> {
    THRESHOLDS.iter().flatten().copied().collect()
}

/// `exp_upper[i]` (i = 0..254): the largest positive finite bit pattern whose block exponent is
/// at most `i - 127`. The block exponent of a non-zero `amax` is `-127 + #{i : amax > exp_upper[i]}`
/// (it never decreases as `amax` grows), which the kernels find by binary search. Computed from
/// [`block_exponent_from_bits`] itself, by bisection.
pub(crate) fn exp_upper() -> &'static [u32] {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..254)
            .map(|i| {
                let e = i - 127;
                // largest bits in [1, MAX_FINITE] with exponent <= e (0 if none)
                let (mut lo, mut hi) = (0u32, MAX_FINITE);
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if block_exponent_from_bits(mid) <= e {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                lo
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds reproduce the codec's block exponent on every exponent boundary and around it.
    #[test]
    fn bounds_give_the_block_exponent() {
        let upper = exp_upper();
        let exponent = |bits: u32| -127 + upper.iter().filter(|&&t| bits > t).count() as i32;
        let mut probes: Vec<u32> = upper
            .iter()
            .flat_map(|&t| [t.saturating_sub(1), t, t.saturating_add(1)])
            .collect();
        probes.extend((1..MAX_FINITE).step_by(7_777_777));
        probes.push(MAX_FINITE);
        for bits in probes
            .into_iter()
            .filter(|&b| (1..=MAX_FINITE).contains(&b))
        {
            assert_eq!(
                exponent(bits),
                block_exponent_from_bits(bits),
                "bits {bits:#x}"
            );
        }
    }
}
