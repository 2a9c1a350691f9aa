//! The codec against golden vectors from the Python reference (`mxfp4_ref.py`), bit for bit:
//! `kernels/tests/data/mxfp4_golden.safetensors`, written by `scripts/gen_codec_golden.py`.

mod codec_util;

use codec_util::{assert_bits_eq, assert_bytes_eq};
use kernels::mxfp4::{self, fast, reference, CodecError};
use safetensors::{Dtype, SafeTensors};

const GOLDEN: &[u8] = include_bytes!("data/mxfp4_golden.safetensors");

fn bytes<'a>(st: &'a SafeTensors, name: &str) -> &'a [u8] {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    t.data()
}

fn floats(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let (words, _) = t.data().as_chunks::<4>();
    words.iter().map(|w| f32::from_le_bytes(*w)).collect()
}

/// The quantize cases in the golden file (names of `<case>.x`).
fn cases(st: &SafeTensors) -> Vec<String> {
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".x").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "golden cases: {names:?}");
    names
}

type Quantize = fn(&[f32], &mut [u8], &mut [u8]) -> Result<(), CodecError>;
type Dequantize = fn(&[u8], &[u8], &mut [f32]) -> Result<(), CodecError>;
type Fake = fn(&[f32], &mut [f32]) -> Result<(), CodecError>;
type FakeInPlace = fn(&mut [f32]) -> Result<(), CodecError>;

/// Checks one implementation (reference, fast or parallel) against every golden case.
fn check(name: &str, quantize: Quantize, dequantize: Dequantize, fake: Fake, inplace: FakeInPlace) {
    let st = SafeTensors::deserialize(GOLDEN).expect("golden file");
    for case in cases(&st) {
        let x = floats(&st, &format!("{case}.x"));
        let want_blocks = bytes(&st, &format!("{case}.blocks"));
        let want_scales = bytes(&st, &format!("{case}.scales"));
        let want_fake = floats(&st, &format!("{case}.fake"));
        let ctx = |f: &str| format!("{name} {f} {case}");

        let mut blocks = vec![0xAAu8; x.len() / 2];
        let mut scales = vec![0xAAu8; x.len() / 32];
        quantize(&x, &mut blocks, &mut scales).expect("quantize");
        assert_bytes_eq(&scales, want_scales, &ctx("quantize scales"));
        assert_bytes_eq(&blocks, want_blocks, &ctx("quantize blocks"));

        let mut out = vec![f32::NAN; x.len()];
        dequantize(want_blocks, want_scales, &mut out).expect("dequantize");
        assert_bits_eq(&out, &want_fake, &ctx("dequantize"));

        let mut out = vec![f32::NAN; x.len()];
        fake(&x, &mut out).expect("fake_quantize");
        assert_bits_eq(&out, &want_fake, &ctx("fake_quantize"));

        let mut y = x.clone();
        inplace(&mut y).expect("fake_quantize_in_place");
        assert_bits_eq(&y, &want_fake, &ctx("fake_quantize_in_place"));
    }
    let blocks = bytes(&st, "decode.blocks");
    let scales = bytes(&st, "decode.scales");
    let want = floats(&st, "decode.out");
    assert_eq!(scales.len(), 256);
    let mut out = vec![0.0f32; want.len()];
    dequantize(blocks, scales, &mut out).expect("dequantize");
    assert_bits_eq(
        &out,
        &want,
        &format!("{name} dequantize decode (all scale bytes)"),
    );
}

#[test]
fn reference_matches_golden() {
    check(
        "reference",
        reference::quantize,
        reference::dequantize,
        reference::fake_quantize,
        reference::fake_quantize_in_place,
    );
}

#[test]
fn fast_matches_golden() {
    check(
        "fast",
        fast::quantize,
        fast::dequantize,
        fast::fake_quantize,
        fast::fake_quantize_in_place,
    );
}

#[test]
fn parallel_matches_golden() {
    check(
        "parallel",
        mxfp4::quantize,
        mxfp4::dequantize,
        mxfp4::fake_quantize,
        mxfp4::fake_quantize_in_place,
    );
}

/// The golden file really exercises the edges (so the tests above can fail on them).
#[test]
fn golden_covers_edges() {
    let st = SafeTensors::deserialize(GOLDEN).expect("golden file");
    let mut all_scales = Vec::new();
    let mut infs = 0;
    for case in cases(&st) {
        all_scales.extend_from_slice(bytes(&st, &format!("{case}.scales")));
        infs += floats(&st, &format!("{case}.fake"))
            .iter()
            .filter(|v| v.is_infinite())
            .count();
    }
    assert!(all_scales.contains(&0), "scale clamp at -127");
    assert!(all_scales.contains(&253), "scale 126 (near f32::MAX)");
    assert!(all_scales.contains(&127));
    assert!(infs > 0, "decoded overflow to Inf near f32::MAX");
}
