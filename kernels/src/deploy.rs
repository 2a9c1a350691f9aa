//! The deployed weight, in one place: `Q(W + Σ sᵢ·Bᵢ·Aᵢ)` as the bytes a serving engine loads.
//!
//! The QAT forward and backward decode their `Wq` from these bytes ([`Deployed::decode_into`]),
//! `merge-export` writes them, `verify` recomputes and compares them: what is trained is what is
//! served, by construction. The merge is [`add_lora_delta`] (one fixed f32 arithmetic, adapters
//! added in the order given), the quantizer the exact codec:
//! - experts (`Quantizer::Mxfp4`): MXFP4 blocks and E8M0 scales, blocks of 32 along `in`;
//! - attention (`Quantizer::Bf16`): one round-to-nearest-even to bf16;
//! - `Quantizer::None`: the merged f32 values themselves (plain LoRA, nothing to deploy).
//!
//! A merged value that is NaN/Inf (or a finite one that rounds to ±Inf in bf16) is refused with
//! its flat index.

use crate::bf16;
use crate::mxfp4::{self, CodecError};
use crate::ops::{add_lora_delta, Quantizer};

/// One adapter's factors of one `[out, in]` weight on the host: `A [r, in]` and `B [out, r]`
/// row-major, `ΔW = scale · B · A`.
#[derive(Debug, Clone, Copy)]
pub struct HostLora<'a> {
    /// `A`, `[rank, in]`.
    pub a: &'a [f32],
    /// `B`, `[out, rank]`.
    pub b: &'a [f32],
    /// `r`.
    pub rank: usize,
    /// `s`.
    pub scale: f32,
}

/// The deployed form of one weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// Packed MXFP4: `blocks` (`out·in/2` bytes, the checkpoint's `[out, in/32, 16]`) and
    /// `scales` (`out·in/32` E8M0 bytes).
    Mxfp4 {
        /// E2M1 nibbles, element `2j` in the low nibble of byte `j`.
        blocks: Vec<u8>,
        /// E8M0 block scales.
        scales: Vec<u8>,
    },
    /// BF16 little-endian bytes, `out·in·2`.
    Bf16(Vec<u8>),
    /// No quantizer: the merged values stay as they are (in the caller's buffer).
    Unquantized,
}

/// Merges `loras` into `w` (the base `W` decoded to f32, row-major `[out, in]`; afterwards
/// `W + Σ sᵢ·Bᵢ·Aᵢ`) and quantizes the result with `quant` into its deployed bytes.
pub fn deploy(
    w: &mut [f32],
    shape: [usize; 2],
    loras: &[HostLora<'_>],
    quant: Quantizer,
) -> Result<Deployed, CodecError> {
    for l in loras {
        add_lora_delta(w, shape, l.a, l.b, l.rank, l.scale)?;
    }
    match quant {
        Quantizer::None => Ok(Deployed::Unquantized),
        Quantizer::Mxfp4 => {
            let mut blocks = vec![0u8; w.len() / 2];
            let mut scales = vec![0u8; w.len() / mxfp4::BLOCK];
            mxfp4::quantize(w, &mut blocks, &mut scales)?;
            Ok(Deployed::Mxfp4 { blocks, scales })
        }
        Quantizer::Bf16 => {
            let mut bytes = vec![0u8; w.len() * 2];
            bf16::encode_le(w, &mut bytes)?;
            // a NaN/Inf input, or a finite value beyond the bf16 range that rounded to Inf
            let (pairs, _) = bytes.as_chunks::<2>();
            if let Some(index) = pairs
                .iter()
                .position(|p| u16::from_le_bytes(*p) & 0x7f80 == 0x7f80)
            {
                return Err(CodecError::NonFinite {
                    index,
                    value: w[index],
                });
            }
            Ok(Deployed::Bf16(bytes))
        }
    }
}

impl Deployed {
    /// Decodes the deployed bytes into `out` (`out·in` values): the weight the serving engine
    /// computes with. `Unquantized` leaves `out` as it is (the merged values).
    pub fn decode_into(&self, out: &mut [f32]) -> Result<(), CodecError> {
        match self {
            Self::Mxfp4 { blocks, scales } => mxfp4::dequantize(blocks, scales, out),
            Self::Bf16(bytes) => bf16::decode_le(bytes, out),
            Self::Unquantized => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora<'a>(a: &'a [f32], b: &'a [f32], rank: usize, scale: f32) -> HostLora<'a> {
        HostLora { a, b, rank, scale }
    }

    /// bf16 of `W + s·B·A` by hand on a 2×2 weight (rank 1), and the decode of the bytes.
    #[test]
    fn bf16_merge_by_hand() {
        let mut w = vec![1.0f32, 2.0, 3.0, 4.0];
        let (a, b) = ([1.0f32, 0.5], [2.0f32, -1.0]);
        let d = deploy(&mut w, [2, 2], &[lora(&a, &b, 1, 0.5)], Quantizer::Bf16).unwrap();
        assert_eq!(w, [2.0, 2.5, 2.5, 3.75]);
        let mut back = vec![0f32; 4];
        d.decode_into(&mut back).unwrap();
        assert_eq!(back, [2.0, 2.5, 2.5, 3.75]);
    }

    /// Two adapters are added in the order given (the same as merging them one after the other).
    #[test]
    fn adapters_add_in_order() {
        let base: Vec<f32> = (0..64).map(|i| i as f32 / 7.0 - 4.0).collect();
        let a1: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let b1 = [0.3f32, -0.2];
        let a2: Vec<f32> = (0..32).map(|i| (i as f32 * 0.11).cos()).collect();
        let b2 = [-0.7f32, 0.9];
        let mut both = base.clone();
        let d = deploy(
            &mut both,
            [2, 32],
            &[lora(&a1, &b1, 1, 2.0), lora(&a2, &b2, 1, 0.5)],
            Quantizer::Mxfp4,
        )
        .unwrap();
        let mut seq = base.clone();
        add_lora_delta(&mut seq, [2, 32], &a1, &b1, 1, 2.0).unwrap();
        add_lora_delta(&mut seq, [2, 32], &a2, &b2, 1, 0.5).unwrap();
        assert_eq!(both, seq);
        let mut blocks = vec![0u8; 32];
        let mut scales = vec![0u8; 2];
        mxfp4::quantize(&seq, &mut blocks, &mut scales).unwrap();
        assert_eq!(d, Deployed::Mxfp4 { blocks, scales });
    }

    /// A merged value beyond the bf16 range (rounds to Inf) and a NaN are refused with their index.
    #[test]
    fn non_finite_is_refused() {
        let mut w = vec![0.0f32, f32::MAX];
        let err = deploy(&mut w, [1, 2], &[], Quantizer::Bf16).unwrap_err();
        assert!(
            matches!(err, CodecError::NonFinite { index: 1, .. }),
            "{err:?}"
        );
        let mut w = vec![0.0f32; 32];
        w[5] = f32::NAN;
        let err = deploy(&mut w, [1, 32], &[], Quantizer::Mxfp4).unwrap_err();
        assert!(
            matches!(err, CodecError::NonFinite { index: 5, .. }),
            "{err:?}"
        );
    }
}
