//! Errors: NaN/+Inf/-Inf at various positions give NonFinite with the FIRST flat index (also
//! when the work is split over threads); bad lengths give Length.

mod codec_util;

use codec_util::{random_normal, Rng};
use kernels::mxfp4::{self, fast, reference, CodecError};

const N: usize = 3 * (1 << 15) + 32 * 5;

type Run = fn(&[f32]) -> Result<(), CodecError>;
type Quantize = fn(&[f32], &mut [u8], &mut [u8]) -> Result<(), CodecError>;

fn runners() -> Vec<(&'static str, Run)> {
    fn q(f: Quantize, x: &[f32]) -> Result<(), CodecError> {
        f(x, &mut vec![0; x.len() / 2], &mut vec![0; x.len() / 32])
    }
    fn fq(
        f: fn(&[f32], &mut [f32]) -> Result<(), CodecError>,
        x: &[f32],
    ) -> Result<(), CodecError> {
        f(x, &mut vec![0.0; x.len()])
    }
    fn ip(f: fn(&mut [f32]) -> Result<(), CodecError>, x: &[f32]) -> Result<(), CodecError> {
        f(&mut x.to_vec())
    }
    vec![
        ("reference quantize", |x| q(reference::quantize, x)),
        ("fast quantize", |x| q(fast::quantize, x)),
        ("parallel quantize", |x| q(mxfp4::quantize, x)),
        ("reference fake", |x| fq(reference::fake_quantize, x)),
        ("fast fake", |x| fq(fast::fake_quantize, x)),
        ("parallel fake", |x| fq(mxfp4::fake_quantize, x)),
        ("reference in place", |x| {
            ip(reference::fake_quantize_in_place, x)
        }),
        ("fast in place", |x| ip(fast::fake_quantize_in_place, x)),
        ("parallel in place", |x| {
            ip(mxfp4::fake_quantize_in_place, x)
        }),
    ]
}

fn expect_non_finite(got: Result<(), CodecError>, index: usize, value: f32, what: &str) {
    match got {
        Err(CodecError::NonFinite { index: i, value: v }) => {
            assert_eq!(i, index, "{what}: index");
            assert_eq!(v.to_bits(), value.to_bits(), "{what}: value");
        }
        other => panic!("{what}: expected NonFinite at {index}, got {other:?}"),
    }
}

#[test]
fn single_non_finite_reports_its_index() {
    let base = random_normal(&mut Rng::new(5), N);
    let positions = [
        0,
        1,
        31,
        32,
        33,
        1000,
        (1 << 15) - 1,
        1 << 15,
        (1 << 15) + 7,
        2 << 15,
        N - 1,
    ];
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for &p in &positions {
            let mut x = base.clone();
            x[p] = value;
            for (name, run) in runners() {
                expect_non_finite(run(&x), p, value, &format!("{name} {value} at {p}"));
            }
        }
    }
}

#[test]
fn first_of_several_wins_across_chunks() {
    let base = random_normal(&mut Rng::new(6), N);
    // one per parallel chunk (later chunks finish first sometimes), the first in chunk 1
    let cases: [&[(usize, f32)]; 3] = [
        &[
            (40_000, f32::NAN),
            (2 << 15, f32::INFINITY),
            (N - 1, f32::NEG_INFINITY),
        ],
        &[(5, f32::NEG_INFINITY), (6, f32::NAN), (1 << 15, f32::NAN)],
        &[
            (70_000, f32::INFINITY),
            (33_000, f32::NAN),
            (33_001, f32::INFINITY),
        ],
    ];
    for bad in cases {
        let mut x = base.clone();
        for &(p, v) in bad {
            x[p] = v;
        }
        let &(first, value) = bad.iter().min_by_key(|(p, _)| *p).expect("non-empty");
        for (name, run) in runners() {
            expect_non_finite(run(&x), first, value, &format!("{name} {bad:?}"));
        }
    }
}

#[test]
fn huge_values_fake_quantize_to_inf_without_error_in_place() {
    // f32::MAX fake-quantizes to +Inf (spec: 4 * 2^126 overflows); a later NaN must still be the
    // reported error of the in-place variant, not the Inf it wrote itself.
    let mut x = vec![1.0f32; 3 << 15];
    x[3] = f32::MAX;
    x[(2 << 15) + 9] = f32::NAN;
    for (name, run) in runners() {
        expect_non_finite(run(&x), (2 << 15) + 9, f32::NAN, name);
    }
    let mut y = x[..64].to_vec();
    fast::fake_quantize_in_place(&mut y).expect("finite");
    assert_eq!(y[3], f32::INFINITY);
}

#[test]
fn bad_lengths_are_errors() {
    let x = vec![1.0f32; 64];
    let len_err = |r: Result<(), CodecError>| matches!(r, Err(CodecError::Length { .. }));
    for q in [reference::quantize, fast::quantize, mxfp4::quantize] {
        assert!(
            len_err(q(&x[..40], &mut [0; 20], &mut [0; 1])),
            "not a multiple of 32"
        );
        assert!(
            len_err(q(&x, &mut [0; 31], &mut [0; 2])),
            "blocks too short"
        );
        assert!(len_err(q(&x, &mut [0; 33], &mut [0; 2])), "blocks too long");
        assert!(
            len_err(q(&x, &mut [0; 32], &mut [0; 1])),
            "scales too short"
        );
        assert!(q(&x, &mut [0; 32], &mut [0; 2]).is_ok());
    }
    for d in [reference::dequantize, fast::dequantize, mxfp4::dequantize] {
        assert!(
            len_err(d(&[0; 32], &[0; 2], &mut [0.0; 63])),
            "out not a multiple of 32"
        );
        assert!(len_err(d(&[0; 16], &[0; 2], &mut [0.0; 64])), "blocks");
        assert!(len_err(d(&[0; 32], &[0; 3], &mut [0.0; 64])), "scales");
        assert!(d(&[0; 32], &[0; 2], &mut [0.0; 64]).is_ok());
    }
    for f in [
        reference::fake_quantize,
        fast::fake_quantize,
        mxfp4::fake_quantize,
    ] {
        assert!(len_err(f(&x, &mut [0.0; 32])), "out shorter");
        assert!(len_err(f(&x[..33], &mut [0.0; 33])), "not a multiple of 32");
    }
    for f in [
        reference::fake_quantize_in_place,
        fast::fake_quantize_in_place,
        mxfp4::fake_quantize_in_place,
    ] {
        assert!(len_err(f(&mut [0.0; 48])), "not a multiple of 32");
    }
    assert_eq!(
        fast::quantize(&x, &mut [0; 31], &mut [0; 2]),
        Err(CodecError::Length {
            what: "packed blocks (bytes, elements / 2)",
            expected: 32,
            got: 31
        })
    );
}
