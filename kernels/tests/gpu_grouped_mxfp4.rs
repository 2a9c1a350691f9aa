//! The grouped MXFP4 expert matmul (`kernels::gpu::grouped_mxfp4`) on the `vulkan` backend
//! (Mesa's lavapipe without a GPU) against the CPU: each expert's packed bytes decoded by the
//! CPU codec (`kernels::mxfp4::dequantize`) and both products (`x·W_eᵀ`, `dy·W_e`) summed in f64.
//!
//! Tolerance: max |gpu − ref| ≤ 1e-5 · (1 + max |ref|) (f32 sums of at most 256 terms). The
//! decode itself is checked exactly with one-hot rows: every nibble under the scale bytes
//! 0..=252 (0 and 1 give subnormals, exact where the device keeps f32 denormals, as lavapipe
//! does), and the nibbles 0, ±0.5 under 253..=255 (larger values are ±Inf there, which a
//! one-hot product turns into NaN).
#![cfg(feature = "vulkan")]

#[path = "ops_support/mod.rs"]
mod support;

use burn::backend::wgpu::{WgpuDevice, WgpuRuntime};
use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::server::Handle;
use cubecl::Runtime;
use kernels::gpu::grouped_mxfp4::{grouped_mxfp4_matmul, upload_stacked};
use kernels::mxfp4::{self, CodecError};
use support::Lcg;

type R = WgpuRuntime;

/// Packed experts, their decoded weights (`[out, in]` each) and the stacked device buffers.
struct Experts {
    out: usize,
    inp: usize,
    w: Vec<Vec<f32>>,
    codes: Handle,
    scales: Handle,
}

fn device() -> WgpuDevice {
    WgpuDevice::default()
}

/// `E` experts of random codes (every nibble) with scale bytes drawn from `scale_bytes`.
fn experts(e: usize, out: usize, inp: usize, scale_bytes: &[u8], seed: u64) -> Experts {
    let nibbles: Vec<u8> = (0..16).collect();
    experts_from(e, [out, inp], &nibbles, scale_bytes, seed)
}

/// `E` experts `[out, in]` of nibbles drawn from `nibbles` and scale bytes from `scale_bytes`.
fn experts_from(
    e: usize,
    [out, inp]: [usize; 2],
    nibbles: &[u8],
    scale_bytes: &[u8],
    seed: u64,
) -> Experts {
    let mut rng = Lcg::new(seed);
    let n_blocks = out * inp / mxfp4::BLOCK;
    let mut byte = |n: usize| -> u8 { ((rng.next_unit() + 1.0) * 0.5 * n as f64) as u8 };
    let blocks: Vec<Vec<u8>> = (0..e)
        .map(|_| {
            (0..n_blocks * 16)
                .map(|_| {
                    let lo = nibbles[byte(nibbles.len()) as usize];
                    lo | (nibbles[byte(nibbles.len()) as usize] << 4)
                })
                .collect()
        })
        .collect();
    let scales: Vec<Vec<u8>> = (0..e)
        .map(|_| {
            (0..n_blocks)
                .map(|_| scale_bytes[byte(scale_bytes.len()) as usize])
                .collect()
        })
        .collect();
    let w: Vec<Vec<f32>> = blocks
        .iter()
        .zip(&scales)
        .map(|(b, s)| {
            let mut w = vec![0f32; out * inp];
            mxfp4::dequantize(b, s, &mut w).unwrap();
            w
        })
        .collect();
    let b: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    let s: Vec<&[u8]> = scales.iter().map(Vec::as_slice).collect();
    let (codes, scales) = upload_stacked::<R>(&R::client(&device()), &b, &s).unwrap();
    Experts {
        out,
        inp,
        w,
        codes,
        scales,
    }
}

fn f32_tensor(values: &[f32], shape: [usize; 2]) -> CubeTensor<R> {
    let client = R::client(&device());
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let handle = client.create_from_slice(&bytes);
    CubeTensor::new_contiguous(client, device(), Shape::new(shape), handle, DType::F32)
}

fn offsets_tensor(offsets: &[u32]) -> CubeTensor<R> {
    let client = R::client(&device());
    let bytes: Vec<u8> = offsets.iter().flat_map(|v| v.to_le_bytes()).collect();
    let handle = client.create_from_slice(&bytes);
    let shape = Shape::new([offsets.len()]);
    CubeTensor::new_contiguous(client, device(), shape, handle, DType::U32)
}

fn host(t: &CubeTensor<R>) -> Vec<f32> {
    let bytes = t.client.read_one_unchecked(t.handle.clone());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Row offsets from per-expert row counts.
fn offsets_of(counts: &[usize]) -> Vec<u32> {
    std::iter::once(0)
        .chain(counts.iter().scan(0, |acc, &c| {
            *acc += c;
            Some(*acc as u32)
        }))
        .collect()
}

/// The device product of `a [N, kred]` and the host reference in f64, as f32.
fn products(ex: &Experts, a: &[f32], counts: &[usize], transpose: bool) -> (Vec<f32>, Vec<f64>) {
    let (kred, ncols) = if transpose {
        (ex.out, ex.inp)
    } else {
        (ex.inp, ex.out)
    };
    let n: usize = counts.iter().sum();
    let offsets = offsets_of(counts);
    let y = grouped_mxfp4_matmul(
        &f32_tensor(a, [n, kred]),
        &ex.codes,
        &ex.scales,
        &offsets_tensor(&offsets),
        counts.len(),
        ex.out,
        ex.inp,
        transpose,
    )
    .unwrap();
    assert_eq!(y.meta.shape().to_vec(), vec![n, ncols]);
    let mut reference = vec![0f64; n * ncols];
    for (e, w) in ex.w.iter().enumerate() {
        for i in offsets[e] as usize..offsets[e + 1] as usize {
            for c in 0..ncols {
                reference[i * ncols + c] = (0..kred)
                    .map(|k| {
                        let wv = if transpose {
                            w[k * ex.inp + c]
                        } else {
                            w[c * ex.inp + k]
                        };
                        f64::from(a[i * kred + k]) * f64::from(wv)
                    })
                    .sum();
            }
        }
    }
    (host(&y), reference)
}

/// Both products of one case within the tolerance; returns the max errors (forward, transpose).
fn check(e: usize, out: usize, inp: usize, counts: &[usize], seed: u64) -> [f64; 2] {
    assert_eq!(counts.len(), e);
    let scale_bytes: Vec<u8> = (120..=134).collect();
    let ex = experts(e, out, inp, &scale_bytes, seed);
    let n: usize = counts.iter().sum();
    let mut rng = Lcg::new(seed ^ 0x5eed);
    [false, true].map(|transpose| {
        let kred = if transpose { out } else { inp };
        let a = rng.uniform(n * kred);
        let (got, reference) = products(&ex, &a, counts, transpose);
        let max_ref = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&reference)
            .fold(0f64, |m, (g, r)| m.max((f64::from(*g) - r).abs()));
        let tol = 1e-5 * (1.0 + max_ref);
        println!(
            "E={e} out={out} in={inp} N={n} transpose={transpose}: max err {err:.3e} \
             (max |ref| {max_ref:.3e}, tol {tol:.3e})"
        );
        assert!(
            err <= tol,
            "max err {err} > tol {tol} (transpose {transpose})"
        );
        err
    })
}

/// Ragged offsets: empty experts first, in the middle and last; an expert with fewer rows than
/// a tile; N, out and in not multiples of the tiles (in a multiple of 32).
#[test]
fn ragged_small() {
    check(5, 70, 96, &[0, 10, 0, 67, 0], 1);
}

/// More experts, rows around the tile size, out past two tiles.
#[test]
fn larger() {
    check(8, 130, 256, &[0, 1, 64, 65, 0, 100, 3, 67], 2);
}

/// One expert holding every row, a single output column.
#[test]
fn last_expert_only() {
    check(3, 1, 32, &[0, 0, 5], 3);
}

/// One-hot rows pick single weights: the decode is exact for every nibble and the scale bytes
/// 0..=252, and for the nibbles 0, ±0.5 under 253..=255 (the values that stay finite; a one-hot
/// product turns an Inf weight into NaN), `y[i, o] = W_e[o, i]` and `dx[i, :] = W_e[i, :]`.
#[test]
fn decode_is_exact() {
    let scales: Vec<u8> = (0..=252).collect();
    let all: Vec<u8> = (0..16).collect();
    one_hot_exact(&experts_from(2, [40, 64], &all, &scales, 4));
    let low = experts_from(2, [40, 64], &all, &[0, 1, 2], 6);
    // subnormal weights (scale bytes 0 and 1): exact where the device keeps f32 denormals
    // (lavapipe does; Vulkan leaves it to the driver, and no checkpoint has these scales)
    assert!(low.w.iter().flatten().any(|v| v.is_subnormal()));
    one_hot_exact(&low);
    let top = experts_from(2, [40, 64], &[0, 1, 8, 9], &[253, 254, 255], 5);
    // and 0.5 · 2^128 (scale byte 255)
    assert!(top.w.iter().flatten().any(|v| v.abs() == 2f32.powi(127)));
    one_hot_exact(&top);
}

/// Both products with one-hot rows equal the CPU-decoded weights exactly.
fn one_hot_exact(ex: &Experts) {
    let (e, out, inp) = (ex.w.len(), ex.out, ex.inp);
    for transpose in [false, true] {
        let (kred, ncols) = if transpose { (out, inp) } else { (inp, out) };
        let counts = vec![kred; e];
        let n = e * kred;
        let mut a = vec![0f32; n * kred];
        for i in 0..n {
            a[i * kred + i % kred] = 1.0;
        }
        let (got, _) = products(ex, &a, &counts, transpose);
        for i in 0..n {
            let w = &ex.w[i / kred];
            let k = i % kred;
            for c in 0..ncols {
                let want = if transpose {
                    w[k * inp + c]
                } else {
                    w[c * inp + k]
                };
                assert_eq!(
                    got[i * ncols + c],
                    want,
                    "row {i} col {c} transpose {transpose}"
                );
            }
        }
    }
}

/// Bad shapes are errors, not panics.
#[test]
fn bad_shapes_are_errors() {
    let (e, out, inp) = (3, 8, 64);
    let ex = experts(e, out, inp, &[127], 5);
    let x = f32_tensor(&[0.0; 4 * 64], [4, 64]);
    let good = offsets_tensor(&[0, 1, 3, 4]);
    let call = |x: &CubeTensor<R>, offsets: &CubeTensor<R>, e: usize, inp: usize, t: bool| {
        grouped_mxfp4_matmul(x, &ex.codes, &ex.scales, offsets, e, out, inp, t)
    };
    assert!(call(&x, &good, e, inp, false).is_ok());
    let length = |r: Result<CubeTensor<R>, CodecError>| {
        assert!(matches!(r, Err(CodecError::Length { .. })), "{:?}", r.err());
    };
    // offsets of length E, not E + 1
    length(call(&x, &offsets_tensor(&[0, 1, 4]), e, inp, false));
    // x columns != in (forward) and != out (transpose)
    length(call(
        &f32_tensor(&[0.0; 4 * 32], [4, 32]),
        &good,
        e,
        inp,
        false,
    ));
    length(call(&x, &good, e, inp, true));
    // buffers sized for another expert count
    length(call(&x, &offsets_tensor(&[0, 1, 2, 3, 4]), 4, inp, false));
    // in not a multiple of 32
    length(call(&x, &good, e, 63, false));
    // offsets not u32
    let client = R::client(&device());
    let handle = client.create_from_slice(&[0; 16]);
    let f = CubeTensor::new_contiguous(
        client.clone(),
        device(),
        Shape::new([4]),
        handle,
        DType::F32,
    );
    length(call(&x, &f, e, inp, false));
    // upload: expert byte counts that disagree
    length(
        upload_stacked::<R>(&client, &[&[0; 16], &[0; 32]], &[&[127], &[127]]).map(|_| x.clone()),
    );
}
