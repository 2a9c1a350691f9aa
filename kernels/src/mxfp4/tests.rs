//! Every compiled kernel level this CPU can run (portable, AVX2, AVX-512), not only the one the
//! dispatcher picks, against the scalar reference, bit for bit.

use super::dispatch::available;
use super::fast::{
    dequantize_with, fake_quantize_in_place_with, fake_quantize_with, quantize_with,
};
use super::reference;

/// Deterministic finite test data: random bit patterns, bounds and ties at many exponents.
fn data(n: usize) -> Vec<f32> {
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let bounds = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0];
    (0..n)
        .map(|i| {
            let r = next();
            let block_e = ((i / 32) % 250) as i32 - 125;
            let v = match r % 4 {
                0 => f32::from_bits((r >> 32) as u32 & 0x7F7F_FFFF),
                1 => bounds[(r >> 8) as usize % 8] * (2.0f64).powi(block_e) as f32,
                2 => (bounds[(r >> 8) as usize % 8] * (2.0f64).powi(block_e) as f32).next_up(),
                _ => ((r >> 40) as f32 / (1u64 << 24) as f32) * (2.0f64).powi(block_e) as f32,
            };
            if r & (1 << 63) != 0 {
                -v
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn every_kernel_level_matches_reference() {
    let n = 32 * 4000;
    let x = data(n);
    let (mut rb, mut rs) = (vec![0u8; n / 2], vec![0u8; n / 32]);
    reference::quantize(&x, &mut rb, &mut rs).expect("reference");
    let mut rf = vec![0.0f32; n];
    reference::dequantize(&rb, &rs, &mut rf).expect("reference");
    let rf: Vec<u32> = rf.iter().map(|v| v.to_bits()).collect();
    let levels = available();
    assert!(!levels.is_empty());
    for k in levels {
        let (mut b, mut s) = (vec![0u8; n / 2], vec![0u8; n / 32]);
        quantize_with(k, &x, &mut b, &mut s).expect("quantize");
        assert!(s == rs && b == rb, "{} quantize", k.name);
        let mut out = vec![0.0f32; n];
        dequantize_with(k, &rb, &rs, &mut out).expect("dequantize");
        assert!(
            out.iter().map(|v| v.to_bits()).eq(rf.iter().copied()),
            "{} dequantize",
            k.name
        );
        let mut out = vec![0.0f32; n];
        fake_quantize_with(k, &x, &mut out).expect("fake");
        assert!(
            out.iter().map(|v| v.to_bits()).eq(rf.iter().copied()),
            "{} fake",
            k.name
        );
        let mut y = x.clone();
        fake_quantize_in_place_with(k, &mut y).expect("in place");
        assert!(
            y.iter().map(|v| v.to_bits()).eq(rf.iter().copied()),
            "{} in place",
            k.name
        );
        let mut bad = x.clone();
        bad[77] = f32::NAN;
        assert!(
            quantize_with(k, &bad, &mut b, &mut s).is_err(),
            "{} NaN",
            k.name
        );
    }
}

#[test]
fn block_exponent_matches_reference() {
    use super::tables::block_exponent_from_bits;
    let mut bits = 0u32;
    while bits < 0x7F80_0000 {
        let want = reference::block_exponent(f32::from_bits(bits));
        assert_eq!(block_exponent_from_bits(bits), want, "{bits:#010x}");
        bits += 0x1357;
    }
    for bits in [0u32, 1, 2, 3, 4, 5, 6, 7, 0x7F_FFFF, 0x80_0000, 0x7F7F_FFFF] {
        let want = reference::block_exponent(f32::from_bits(bits));
        assert_eq!(block_exponent_from_bits(bits), want, "{bits:#010x}");
    }
}
