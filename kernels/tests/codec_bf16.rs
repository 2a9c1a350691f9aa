//! BF16 codec: round-to-nearest-even (against `half` and hand-worked ties), LE byte layout.

mod codec_util;

use codec_util::Rng;
use kernels::bf16::{decode_le, encode_le, round_slice_in_place, round_to_bf16};
use kernels::mxfp4::CodecError;

#[test]
fn ties_go_to_even() {
    // bf16 keeps the top 16 bits; the dropped half is 0x8000 exactly on a tie.
    let cases: [(u32, u32); 8] = [
        (0x3F80_8000, 0x3F80_0000), // 1 + 2^-8: tie, kept bit even -> down
        (0x3F81_8000, 0x3F82_0000), // tie, kept bit odd -> up
        (0x3F80_8001, 0x3F81_0000), // just above the tie -> up
        (0x3F80_7FFF, 0x3F80_0000), // just below -> down
        (0xBF81_8000, 0xBF82_0000), // negative tie, odd -> away (magnitude up)
        (0x7F7F_FFFF, 0x7F80_0000), // f32::MAX rounds to +Inf
        (0x0000_8000, 0x0000_0000), // subnormal tie, even -> 0
        (0x0001_8000, 0x0002_0000), // subnormal tie, odd -> up
    ];
    for (input, want) in cases {
        let got = round_to_bf16(f32::from_bits(input)).to_bits();
        assert_eq!(got, want, "round_to_bf16({input:#010x})");
    }
    assert!(round_to_bf16(f32::NAN).is_nan());
    assert_eq!(round_to_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert_eq!(round_to_bf16(-0.0).to_bits(), 0x8000_0000);
}

/// Independent RNE to bf16 on bits (finite inputs).
fn rne_bits(bits: u32) -> u32 {
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7FFF + lsb)) & 0xFFFF_0000
}

#[test]
fn matches_half_and_bit_rne_on_random_bits() {
    let mut rng = Rng::new(7);
    let mut xs: Vec<f32> = (0..1 << 18)
        .map(|_| f32::from_bits(rng.next_u32()))
        .collect();
    let want: Vec<f32> = xs
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    for (&x, &w) in xs.iter().zip(&want) {
        let got = round_to_bf16(x);
        if x.is_nan() {
            assert!(got.is_nan());
            continue;
        }
        assert_eq!(got.to_bits(), w.to_bits(), "{x:e}");
        assert_eq!(got.to_bits(), rne_bits(x.to_bits()), "{x:e} vs bit RNE");
    }
    round_slice_in_place(&mut xs); // large: parallel path
    for (x, w) in xs.iter().zip(&want) {
        assert!(x.to_bits() == w.to_bits() || (x.is_nan() && w.is_nan()));
    }
    let mut small: Vec<f32> = want.iter().take(100).map(|v| v * 1.001).collect();
    let small_want: Vec<u32> = small.iter().map(|&v| round_to_bf16(v).to_bits()).collect();
    round_slice_in_place(&mut small); // small: serial path
    let small: Vec<u32> = small.iter().map(|v| v.to_bits()).collect();
    assert_eq!(small, small_want);
}

#[test]
fn encode_decode_roundtrip() {
    let mut rng = Rng::new(8);
    let xs: Vec<f32> = (0..4096).map(|_| rng.normal() as f32 * 3.0).collect();
    let mut bytes = vec![0u8; 2 * xs.len()];
    encode_le(&xs, &mut bytes).expect("encode");
    for (x, b) in xs.iter().zip(bytes.chunks_exact(2)) {
        assert_eq!(
            u16::from_le_bytes([b[0], b[1]]),
            half::bf16::from_f32(*x).to_bits()
        );
    }
    let mut back = vec![0.0f32; xs.len()];
    decode_le(&bytes, &mut back).expect("decode");
    for (x, y) in xs.iter().zip(&back) {
        assert_eq!(y.to_bits(), round_to_bf16(*x).to_bits());
    }
    // every bf16 bit pattern decodes exactly and re-encodes to itself (NaNs stay NaN)
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let mut vals = vec![0.0f32; 1 << 16];
    decode_le(&all, &mut vals).expect("decode all");
    let mut again = vec![0u8; all.len()];
    encode_le(&vals, &mut again).expect("encode all");
    for h in 0..=u16::MAX as usize {
        let v = vals[h];
        assert_eq!(v.to_bits(), (h as u32) << 16);
        if !v.is_nan() {
            assert_eq!(&again[2 * h..2 * h + 2], &all[2 * h..2 * h + 2]);
        }
    }
    // known bytes: 1.0 = 0x3F80, -2.0 = 0xC000
    let mut one = [0.0f32; 2];
    decode_le(&[0x80, 0x3F, 0x00, 0xC0], &mut one).expect("decode");
    assert_eq!(one, [1.0, -2.0]);
}

#[test]
fn bad_lengths_are_errors() {
    let mut out = [0.0f32; 2];
    assert!(matches!(
        decode_le(&[0; 3], &mut out),
        Err(CodecError::Length {
            expected: 4,
            got: 3,
            ..
        })
    ));
    let mut bytes = [0u8; 5];
    assert!(matches!(
        encode_le(&[1.0, 2.0], &mut bytes),
        Err(CodecError::Length {
            expected: 4,
            got: 5,
            ..
        })
    ));
}
