//! The grouped MXFP4 expert matmul (`kernels::gpu::grouped_mxfp4`) on the device backend of the
//! build (`device_support`: `vulkan`, Mesa's lavapipe without a GPU, or `cuda`) against the CPU:
//! each expert's packed bytes decoded by the CPU codec (`kernels::mxfp4::dequantize`) and both
//! products (`x·W_eᵀ`, `dy·W_e`) summed in f64. Every case runs on both stacked layouts: the
//! frozen base (`stacked_base`, scale bytes packed 4 per word) and the deployed weights
//! (`deploy_stacked` with a zero LoRA, one scale word per block, whose read-back bytes are the
//! reference), with i32 offsets (burn's Int dtype).
//!
//! Tolerance: max |gpu − ref| ≤ 1e-5 · (1 + max |ref|) (f32 sums of at most 256 terms). The
//! decode itself is checked exactly with one-hot rows: every nibble under the scale bytes
//! 0..=252 (0 and 1 give subnormals, exact where the device keeps f32 denormals, as lavapipe
//! does), and the nibbles 0, ±0.5 under 253..=255 (larger values are ±Inf there, which a
//! one-hot product turns into NaN).
#![cfg(any(feature = "vulkan", feature = "cuda"))]

#[path = "device_support/mod.rs"]
mod device_support;

#[path = "ops_support/mod.rs"]
mod support;

use std::sync::Arc;

use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_cubecl::tensor::CubeTensor;
use cubecl::Runtime;
use device_support::{device, B, R};
use kernels::gpu::grouped_mxfp4::grouped_mxfp4_matmul;
use kernels::gpu::stacked::{deploy_stacked, stacked_base, ScaleLayout, StackedMxfp4};
use kernels::mxfp4::{self, CodecError};
use kernels::ops::{GroupedLora, OwnedPacked, PackedWeight};
use support::Lcg;

/// Stacked experts on the device and their weights (`[out, in]` each) decoded by the CPU.
struct Experts {
    out: usize,
    inp: usize,
    w: Vec<Vec<f32>>,
    stack: StackedMxfp4<R>,
}

/// The packed experts `[out, in]` of nibbles drawn from `nibbles` and scale bytes from
/// `scale_bytes`.
fn packed(
    e: usize,
    [out, inp]: [usize; 2],
    nibbles: &[u8],
    scale_bytes: &[u8],
    seed: u64,
) -> Vec<Arc<dyn PackedWeight>> {
    let mut rng = Lcg::new(seed);
    let n_blocks = out * inp / mxfp4::BLOCK;
    let mut byte = |n: usize| -> u8 { ((rng.next_unit() + 1.0) * 0.5 * n as f64) as u8 };
    (0..e)
        .map(|_| {
            let blocks: Vec<u8> = (0..n_blocks * 16)
                .map(|_| {
                    let lo = nibbles[byte(nibbles.len()) as usize];
                    lo | (nibbles[byte(nibbles.len()) as usize] << 4)
                })
                .collect();
            let scales: Vec<u8> = (0..n_blocks)
                .map(|_| scale_bytes[byte(scale_bytes.len()) as usize])
                .collect();
            let w: Arc<dyn PackedWeight> =
                Arc::new(OwnedPacked::new([out, inp], blocks, scales).unwrap());
            w
        })
        .collect()
}

/// A zero LoRA of rank 2 (random A, B = 0) for `E` experts `[out, in]`.
fn zero_lora(e: usize, [out, inp]: [usize; 2]) -> GroupedLora<B> {
    let a = Lcg::new(9).uniform(e * 2 * inp);
    GroupedLora {
        a: Tensor::from_data(TensorData::new(a, [e * 2, inp]), &device()),
        b: Tensor::zeros([out, e * 2], &device()),
        scale: 2.0,
    }
}

/// The experts as a stack of `layout`: the base, or the base deployed with a zero LoRA; the
/// reference weights are the stack's bytes decoded by the CPU.
fn stack(bases: &[Arc<dyn PackedWeight>], layout: ScaleLayout) -> Experts {
    let stack = match layout {
        ScaleLayout::Packed => stacked_base::<R>(bases, &device()).unwrap(),
        ScaleLayout::Word => {
            let lora = zero_lora(bases.len(), bases[0].shape());
            deploy_stacked(bases, Some(&lora), &device()).unwrap()
        }
    };
    assert_eq!(stack.layout, layout);
    let [out, inp] = bases[0].shape();
    let w = (0..bases.len())
        .map(|e| {
            let (b, s) = stack.bytes(e);
            if layout == ScaleLayout::Packed {
                assert_eq!(bases[e].packed_bytes().unwrap(), (&b[..], &s[..]));
            }
            let mut w = vec![0f32; out * inp];
            mxfp4::dequantize(&b, &s, &mut w).unwrap();
            w
        })
        .collect();
    Experts { out, inp, w, stack }
}

/// `E` experts of random codes (every nibble) with scale bytes drawn from `scale_bytes`, in
/// both layouts.
fn experts(e: usize, out: usize, inp: usize, scale_bytes: &[u8], seed: u64) -> [Experts; 2] {
    let nibbles: Vec<u8> = (0..16).collect();
    let bases = packed(e, [out, inp], &nibbles, scale_bytes, seed);
    [ScaleLayout::Packed, ScaleLayout::Word].map(|layout| stack(&bases, layout))
}

fn f32_tensor(values: &[f32], shape: [usize; 2]) -> CubeTensor<R> {
    let client = R::client(&device());
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let handle = client.create_from_slice(&bytes);
    CubeTensor::new_contiguous(client, device(), Shape::new(shape), handle, DType::F32)
}

/// Offsets as a device tensor of `dtype` (i32, burn's Int dtype here, or u32).
fn offsets_as(offsets: &[u32], dtype: DType) -> CubeTensor<R> {
    let client = R::client(&device());
    let bytes: Vec<u8> = offsets.iter().flat_map(|v| v.to_le_bytes()).collect();
    let handle = client.create_from_slice(&bytes);
    let shape = Shape::new([offsets.len()]);
    CubeTensor::new_contiguous(client, device(), shape, handle, dtype)
}

fn offsets_tensor(offsets: &[u32]) -> CubeTensor<R> {
    offsets_as(offsets, DType::I32)
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
        &ex.stack,
        &offsets_tensor(&offsets),
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

/// Both products of one case within the tolerance, on both layouts.
fn check(e: usize, out: usize, inp: usize, counts: &[usize], seed: u64) {
    assert_eq!(counts.len(), e);
    let scale_bytes: Vec<u8> = (120..=134).collect();
    let n: usize = counts.iter().sum();
    for ex in experts(e, out, inp, &scale_bytes, seed) {
        let layout = ex.stack.layout;
        let mut rng = Lcg::new(seed ^ 0x5eed);
        for transpose in [false, true] {
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
                "E={e} out={out} in={inp} N={n} {layout:?} transpose={transpose}: max err \
                 {err:.3e} (max |ref| {max_ref:.3e}, tol {tol:.3e})"
            );
            assert!(
                err <= tol,
                "max err {err} > tol {tol} ({layout:?}, transpose {transpose})"
            );
        }
    }
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
    let both = |bases: &[Arc<dyn PackedWeight>]| {
        [ScaleLayout::Packed, ScaleLayout::Word].map(|layout| stack(bases, layout))
    };
    let scales: Vec<u8> = (0..=252).collect();
    let all: Vec<u8> = (0..16).collect();
    for ex in both(&packed(2, [40, 64], &all, &scales, 4)) {
        one_hot_exact(&ex);
    }
    // subnormal weights (scale bytes 0 and 1): exact where the device keeps f32 denormals
    // (lavapipe does; Vulkan leaves it to the driver, and no checkpoint has these scales)
    let [low, low_deployed] = both(&packed(2, [40, 64], &all, &[0, 1, 2], 6));
    assert!(low.w.iter().flatten().any(|v| v.is_subnormal()));
    one_hot_exact(&low);
    one_hot_exact(&low_deployed);
    // and 0.5 · 2^128 (scale byte 255); the base only (its larger values are Inf, which the
    // deploy turns into NaN blocks)
    let top = stack(
        &packed(2, [40, 64], &[0, 1, 8, 9], &[253, 254, 255], 5),
        ScaleLayout::Packed,
    );
    assert!(top.w.iter().flatten().any(|v| v.abs() == 2f32.powi(127)));
    one_hot_exact(&top);
}

/// A deployed block whose merged values overflow (the CPU refuses it) is NaN in the grouped
/// product (its scale word carries the NaN flag), and only there.
#[test]
fn nan_block_reaches_the_product() {
    let (e, out, inp) = (2, 2, 64);
    let bases = packed(e, [out, inp], &[2, 3], &[127], 7);
    // expert 1: B[0, :] = MAX, A = 4: row 0 of W_1 overflows
    let mut b = vec![0f32; out * e];
    b[1] = f32::MAX;
    let lora = GroupedLora::<B> {
        a: Tensor::from_data(TensorData::new(vec![4f32; e * inp], [e, inp]), &device()),
        b: Tensor::from_data(TensorData::new(b, [out, e]), &device()),
        scale: 1.0,
    };
    let stack = deploy_stacked(&bases, Some(&lora), &device()).unwrap();
    assert_eq!(stack.bytes(1).1[..2], [255, 255]);
    let x = f32_tensor(&vec![1f32; 2 * inp], [2, inp]);
    let y = grouped_mxfp4_matmul(&x, &stack, &offsets_tensor(&[0, 1, 2]), false).unwrap();
    let y = host(&y);
    // row 0 (expert 0) finite; row 1 (expert 1): column 0 NaN, column 1 finite
    assert!(y[0].is_finite() && y[1].is_finite(), "{y:?}");
    assert!(y[2].is_nan() && y[3].is_finite(), "{y:?}");
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
    let [mut ex, _] = experts(e, out, inp, &[127], 5);
    let x = f32_tensor(&[0.0; 4 * 64], [4, 64]);
    let good = offsets_tensor(&[0, 1, 3, 4]);
    assert!(grouped_mxfp4_matmul(&x, &ex.stack, &good, false).is_ok());
    // u32 offsets are accepted too
    let unsigned = offsets_as(&[0, 1, 3, 4], DType::U32);
    assert!(grouped_mxfp4_matmul(&x, &ex.stack, &unsigned, false).is_ok());
    let length = |r: Result<CubeTensor<R>, CodecError>| {
        assert!(matches!(r, Err(CodecError::Length { .. })), "{:?}", r.err());
    };
    let w = &ex.stack;
    // offsets of length E, not E + 1
    length(grouped_mxfp4_matmul(
        &x,
        w,
        &offsets_tensor(&[0, 1, 4]),
        false,
    ));
    // x columns != in (forward) and != out (transpose)
    let narrow = f32_tensor(&[0.0; 4 * 32], [4, 32]);
    length(grouped_mxfp4_matmul(&narrow, w, &good, false));
    length(grouped_mxfp4_matmul(&x, w, &good, true));
    // offsets neither i32 nor u32
    let client = R::client(&device());
    let handle = client.create_from_slice(&[0; 16]);
    let shape = Shape::new([4]);
    let f = CubeTensor::new_contiguous(client, device(), shape, handle, DType::F32);
    length(grouped_mxfp4_matmul(&x, w, &f, false));
    // buffers sized for another expert count
    ex.stack.experts = 4;
    let five = offsets_tensor(&[0, 1, 2, 3, 4]);
    length(grouped_mxfp4_matmul(&x, &ex.stack, &five, false));
    ex.stack.experts = e;
    // in not a multiple of 32
    ex.stack.inp = 63;
    length(grouped_mxfp4_matmul(&x, &ex.stack, &good, false));
    // stacks of experts whose shapes disagree, or of no expert
    let mut bases = packed(2, [out, inp], &[0], &[127], 1);
    bases.extend(packed(1, [out, 32], &[0], &[127], 1));
    length(stacked_base::<R>(&bases, &device()).map(|_| x.clone()));
    length(stacked_base::<R>(&[], &device()).map(|_| x.clone()));
}
