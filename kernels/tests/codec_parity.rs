//! fast (single thread) and parallel vs the scalar reference on large random and adversarial
//! data generated here, several seeds, all four functions, bit for bit.

mod codec_util;

use codec_util::{adversarial, assert_bits_eq, assert_bytes_eq, random_normal, Rng};
use kernels::mxfp4::{self, fast, reference};

/// Not a multiple of the parallel chunk size, so the last rayon task is partial.
const N: usize = (1 << 17) + 32 * 37;

fn check_all(x: &[f32], what: &str) {
    let n = x.len();
    let mut rb = vec![0u8; n / 2];
    let mut rs = vec![0u8; n / 32];
    reference::quantize(x, &mut rb, &mut rs).expect("reference quantize");
    let mut rf = vec![0.0f32; n];
    reference::dequantize(&rb, &rs, &mut rf).expect("reference dequantize");

    let (mut fb, mut fs) = (vec![0u8; n / 2], vec![0u8; n / 32]);
    fast::quantize(x, &mut fb, &mut fs).expect("fast quantize");
    assert_bytes_eq(&fs, &rs, &format!("{what}: fast scales"));
    assert_bytes_eq(&fb, &rb, &format!("{what}: fast blocks"));
    let (mut pb, mut ps) = (vec![0u8; n / 2], vec![0u8; n / 32]);
    mxfp4::quantize(x, &mut pb, &mut ps).expect("parallel quantize");
    assert_bytes_eq(&ps, &rs, &format!("{what}: parallel scales"));
    assert_bytes_eq(&pb, &rb, &format!("{what}: parallel blocks"));

    let mut out = vec![f32::NAN; n];
    fast::dequantize(&rb, &rs, &mut out).expect("fast dequantize");
    assert_bits_eq(&out, &rf, &format!("{what}: fast dequantize"));
    let mut out = vec![f32::NAN; n];
    mxfp4::dequantize(&rb, &rs, &mut out).expect("parallel dequantize");
    assert_bits_eq(&out, &rf, &format!("{what}: parallel dequantize"));

    let mut want = vec![0.0f32; n];
    reference::fake_quantize(x, &mut want).expect("reference fake_quantize");
    assert_bits_eq(
        &want,
        &rf,
        &format!("{what}: reference fake == dequantize(quantize)"),
    );
    let mut out = vec![f32::NAN; n];
    fast::fake_quantize(x, &mut out).expect("fast fake_quantize");
    assert_bits_eq(&out, &want, &format!("{what}: fast fake_quantize"));
    let mut out = vec![f32::NAN; n];
    mxfp4::fake_quantize(x, &mut out).expect("parallel fake_quantize");
    assert_bits_eq(&out, &want, &format!("{what}: parallel fake_quantize"));

    let mut y = x.to_vec();
    reference::fake_quantize_in_place(&mut y).expect("reference in place");
    assert_bits_eq(
        &y,
        &want,
        &format!("{what}: reference fake_quantize_in_place"),
    );
    let mut y = x.to_vec();
    fast::fake_quantize_in_place(&mut y).expect("fast in place");
    assert_bits_eq(&y, &want, &format!("{what}: fast fake_quantize_in_place"));
    let mut y = x.to_vec();
    mxfp4::fake_quantize_in_place(&mut y).expect("parallel in place");
    assert_bits_eq(
        &y,
        &want,
        &format!("{what}: parallel fake_quantize_in_place"),
    );
}

#[test]
fn random_normal_matches_reference() {
    for seed in [1u64, 2, 3] {
        let x = random_normal(&mut Rng::new(seed), N);
        check_all(&x, &format!("random normal seed {seed}"));
    }
}

#[test]
fn adversarial_matches_reference() {
    for seed in [11u64, 12, 13, 14] {
        let x = adversarial(&mut Rng::new(seed), N);
        check_all(&x, &format!("adversarial seed {seed}"));
    }
}

#[test]
fn arbitrary_packed_bytes_decode_like_reference() {
    let mut rng = Rng::new(99);
    let groups = 4096;
    let blocks: Vec<u8> = (0..groups * 16).map(|_| rng.next_u32() as u8).collect();
    let scales: Vec<u8> = (0..groups).map(|g| g as u8).collect();
    let mut want = vec![0.0f32; groups * 32];
    reference::dequantize(&blocks, &scales, &mut want).expect("reference");
    let mut out = vec![f32::NAN; groups * 32];
    fast::dequantize(&blocks, &scales, &mut out).expect("fast");
    assert_bits_eq(&out, &want, "fast dequantize of arbitrary bytes");
    let mut out = vec![f32::NAN; groups * 32];
    mxfp4::dequantize(&blocks, &scales, &mut out).expect("parallel");
    assert_bits_eq(&out, &want, "parallel dequantize of arbitrary bytes");
}

#[test]
fn empty_input_is_fine() {
    let x: [f32; 0] = [];
    assert!(mxfp4::quantize(&x, &mut [], &mut []).is_ok());
    assert!(fast::fake_quantize(&x, &mut []).is_ok());
    assert!(reference::dequantize(&[], &[], &mut []).is_ok());
}
