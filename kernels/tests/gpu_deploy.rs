//! The deployed-weight kernels on the device backend of the build (`device_support`: `vulkan`,
//! Mesa's lavapipe without a GPU, or `cuda`) against the CPU's deployed weight
//! (`kernels::deploy::deploy`, what `merge-export` writes): the MXFP4 codes, scale bytes and
//! decoded values, and the bf16 values, bit for bit.
#![cfg(any(feature = "vulkan", feature = "cuda"))]

#[path = "device_support/mod.rs"]
mod device_support;

#[path = "ops_support/mod.rs"]
mod support;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use device_support::{device, B, R};
use kernels::deploy::{deploy, Deployed, HostLora};
use kernels::gpu::deploy::{bf16_on_device, mxfp4_on_device};
use kernels::gpu::stacked::{deploy_stacked, stacked_base, ScaleLayout};
use kernels::mxfp4::CodecError;
use kernels::ops::{
    quantized_weight, BaseWeight, GroupedLora, Lora, OwnedPacked, PackedWeight, Quantizer,
};
use support::Lcg;

fn tensor(values: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &device())
}

fn host(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().expect("f32 data")
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// A packed expert from arbitrary values (as a checkpoint holds) and LoRA factors.
struct Case {
    shape: [usize; 2],
    packed: Arc<dyn PackedWeight>,
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

fn case(shape: [usize; 2], rank: usize, scale: f32, b_scale: f64, seed: u64) -> Case {
    let mut rng = Lcg::new(seed);
    let base: Vec<f32> = rng
        .uniform(shape[0] * shape[1])
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let packed: Arc<dyn PackedWeight> = Arc::new(OwnedPacked::quantize(shape, &base).unwrap());
    let a: Vec<f32> = rng.uniform(rank * shape[1]);
    let b: Vec<f32> = rng
        .uniform(shape[0] * rank)
        .iter()
        .map(|v| (f64::from(*v) * b_scale) as f32)
        .collect();
    Case {
        shape,
        packed,
        a,
        b,
        rank,
        scale,
    }
}

/// The CPU's deployed MXFP4 bytes and decoded values of a case.
fn cpu_mxfp4(c: &Case) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let mut w = vec![0f32; c.shape[0] * c.shape[1]];
    c.packed.dequantize_into(&mut w).unwrap();
    let lora = HostLora {
        a: &c.a,
        b: &c.b,
        rank: c.rank,
        scale: c.scale,
    };
    let loras: Vec<HostLora<'_>> = if c.rank > 0 { vec![lora] } else { vec![] };
    let deployed = deploy(&mut w, c.shape, &loras, Quantizer::Mxfp4).unwrap();
    deployed.decode_into(&mut w).unwrap();
    match deployed {
        Deployed::Mxfp4 { blocks, scales } => (blocks, scales, w),
        other => panic!("MXFP4 deploy gave {other:?}"),
    }
}

fn device_lora(c: &Case) -> Lora<B> {
    Lora {
        a: tensor(&c.a, [c.rank, c.shape[1]]),
        b: tensor(&c.b, [c.shape[0], c.rank]),
        scale: c.scale,
    }
}

fn assert_mxfp4_identical(c: &Case) {
    let (blocks, scales, values) = cpu_mxfp4(c);
    let lora = (c.rank > 0).then(|| device_lora(c));
    let gpu = mxfp4_on_device::<R, i32, u8>(&c.packed, lora.as_ref(), true, &device()).unwrap();
    let (gpu_blocks, gpu_scales) = gpu.bytes();
    assert_eq!(gpu_scales, scales, "scale bytes differ");
    let differing = blocks
        .iter()
        .zip(&gpu_blocks)
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} code bytes differ",
        blocks.len()
    );
    let wq: Tensor<B, 2> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(gpu.wq));
    assert_eq!(bits(&host(wq)), bits(&values), "decoded values differ");
}

/// Arbitrary (non-grid) factors at rank 8 and 16: every code and scale equals the CPU's.
#[test]
fn mxfp4_deploy_is_bit_identical() {
    assert_mxfp4_identical(&case([48, 128], 8, 2.0, 0.5, 1));
    assert_mxfp4_identical(&case([96, 288], 16, 0.125, 4.0, 2));
    // LoRA-sized deltas (small against the base), where rounding decides codes at the margins
    assert_mxfp4_identical(&case([64, 2880], 8, 2.0, 1e-3, 3));
}

/// PEFT's initial adapter (B = 0) deploys to exactly the base codes, and no LoRA decodes the
/// base through the same kernel.
#[test]
fn zero_b_and_no_lora_keep_the_base() {
    let mut c = case([32, 64], 4, 2.0, 0.0, 4);
    assert!(c.b.iter().all(|&v| v == 0.0));
    assert_mxfp4_identical(&c);
    let (blocks, scales) = c.packed.packed_bytes().unwrap();
    let (cpu_blocks, cpu_scales, _) = cpu_mxfp4(&c);
    assert_eq!((blocks, scales), (&cpu_blocks[..], &cpu_scales[..]));
    c.rank = 0;
    assert_mxfp4_identical(&c);
    // decode only (no quantizer): the base values
    let gpu = mxfp4_on_device::<R, i32, u8>(&c.packed, None, false, &device()).unwrap();
    let mut base = vec![0f32; 32 * 64];
    c.packed.dequantize_into(&mut base).unwrap();
    let wq: Tensor<B, 2> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(gpu.wq));
    assert_eq!(bits(&host(wq)), bits(&base));
}

/// The experts' factors stacked as `GroupedLora` holds them: `a [E·r, in]` (expert-major rows),
/// `b [out, E·r]` (expert-major columns).
fn grouped_lora(cases: &[Case]) -> GroupedLora<B> {
    let (e, [out, inp], rank) = (cases.len(), cases[0].shape, cases[0].rank);
    let a: Vec<f32> = cases.iter().flat_map(|c| c.a.iter().copied()).collect();
    let mut b = vec![0f32; out * e * rank];
    for (x, c) in cases.iter().enumerate() {
        for o in 0..out {
            for k in 0..rank {
                b[o * e * rank + x * rank + k] = c.b[o * rank + k];
            }
        }
    }
    GroupedLora {
        a: tensor(&a, [e * rank, inp]),
        b: tensor(&b, [out, e * rank]),
        scale: cases[0].scale,
    }
}

/// All experts of a projection in one launch: each expert's codes and scale bytes equal the
/// CPU's deploy of that expert with its own LoRA slice (one expert has B = 0), and without LoRA
/// the CPU's re-quantized base; the stacked base holds the checkpoint bytes, and the per-expert
/// deploy, reading it through the expert's block offset, stays bit-identical.
#[test]
fn deploy_stacked_is_bit_identical_per_expert() {
    let mut cases: Vec<Case> = (0..3u64)
        .map(|e| case([64, 96], 8, 2.0, if e == 1 { 0.0 } else { 0.5 }, 20 + e))
        .collect();
    let bases: Vec<Arc<dyn PackedWeight>> = cases.iter().map(|c| c.packed.clone()).collect();
    let lora = grouped_lora(&cases);
    let deployed = deploy_stacked(&bases, Some(&lora), &device()).unwrap();
    assert_eq!(deployed.layout, ScaleLayout::Word);
    assert_eq!((deployed.experts, deployed.out, deployed.inp), (3, 64, 96));
    for (e, c) in cases.iter().enumerate() {
        let (blocks, scales, _) = cpu_mxfp4(c);
        assert_eq!(deployed.bytes(e), (blocks, scales), "expert {e}");
    }
    let base = stacked_base::<R>(&bases, &device()).unwrap();
    assert_eq!(base.layout, ScaleLayout::Packed);
    for (e, c) in cases.iter_mut().enumerate() {
        let (blocks, scales) = c.packed.packed_bytes().unwrap();
        assert_eq!(base.bytes(e), (blocks.to_vec(), scales.to_vec()));
        assert_mxfp4_identical(c);
        c.rank = 0;
        assert_mxfp4_identical(c);
    }
    let plain = deploy_stacked::<R, i32, u8>(&bases, None, &device()).unwrap();
    for (e, c) in cases.iter().enumerate() {
        let (blocks, scales, _) = cpu_mxfp4(c);
        assert_eq!(plain.bytes(e), (blocks, scales), "expert {e} without LoRA");
    }
    assert_eq!(plain.bytes(3), (vec![], vec![]));
}

/// Experts whose scale bytes do not fill whole words (6 blocks each): the stacked base and the
/// per-expert deploy reading it at unaligned offsets; factors of the wrong shape are errors.
#[test]
fn stacked_odd_blocks_and_bad_factors() {
    let cases: Vec<Case> = (0..3u64)
        .map(|e| case([3, 64], 4, 0.5, 1.0, 30 + e))
        .collect();
    let bases: Vec<Arc<dyn PackedWeight>> = cases.iter().map(|c| c.packed.clone()).collect();
    let base = stacked_base::<R>(&bases, &device()).unwrap();
    let deployed = deploy_stacked(&bases, Some(&grouped_lora(&cases)), &device()).unwrap();
    for (e, c) in cases.iter().enumerate() {
        let (blocks, scales) = c.packed.packed_bytes().unwrap();
        assert_eq!(base.bytes(e), (blocks.to_vec(), scales.to_vec()));
        let (blocks, scales, _) = cpu_mxfp4(c);
        assert_eq!(deployed.bytes(e), (blocks, scales), "expert {e}");
        assert_mxfp4_identical(c);
    }
    let lora = grouped_lora(&cases[..2]);
    let r = deploy_stacked(&bases, Some(&lora), &device());
    assert!(matches!(r, Err(CodecError::Length { .. })), "{:?}", r.err());
}

/// A merged block with an Inf (the CPU refuses it) comes out NaN, and only that block.
#[test]
fn non_finite_block_is_nan() {
    let mut c = case([2, 64], 1, 1.0, 1.0, 5);
    c.b = vec![f32::MAX, 0.0];
    c.a = vec![4.0; 64];
    let lora = device_lora(&c);
    let gpu = mxfp4_on_device::<R, i32, u8>(&c.packed, Some(&lora), true, &device()).unwrap();
    let wq: Tensor<B, 2> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(gpu.wq));
    let values = host(wq);
    assert!(values[..64].iter().all(|v| v.is_nan()), "row 0 overflowed");
    assert!(
        values[64..].iter().all(|v| v.is_finite()),
        "row 1 is finite"
    );
}

/// `bf16(W + s·B·A)` of an attention-like weight, bit for bit, and through the backend's
/// `quantized_weight` (what the QAT linear calls).
#[test]
fn bf16_deploy_is_bit_identical() {
    let (out, inp, rank) = (64, 96, 8);
    let mut rng = Lcg::new(6);
    let w: Vec<f32> = rng
        .uniform(out * inp)
        .iter()
        .map(|v| half::bf16::from_f32(v * 0.1).to_f32())
        .collect();
    let mut w_signed_zero = w.clone();
    w_signed_zero[3] = -0.0;
    let a = rng.uniform(rank * inp);
    let b: Vec<f32> = rng.uniform(out * rank).iter().map(|v| v * 0.01).collect();
    for w in [w, w_signed_zero] {
        let mut cpu = w.clone();
        let lora = HostLora {
            a: &a,
            b: &b,
            rank,
            scale: 2.0,
        };
        let deployed = deploy(&mut cpu, [out, inp], &[lora], Quantizer::Bf16).unwrap();
        deployed.decode_into(&mut cpu).unwrap();
        let dense = tensor(&w, [out, inp]);
        let lora = Lora {
            a: tensor(&a, [rank, inp]),
            b: tensor(&b, [out, rank]),
            scale: 2.0,
        };
        let gpu = bf16_on_device(&dense, Some(&lora));
        let gpu: Tensor<B, 2> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(gpu));
        assert_eq!(bits(&host(gpu)), bits(&cpu));
        let via_op = quantized_weight(
            &BaseWeight::Dense(dense),
            Some(&lora),
            Quantizer::Bf16,
            &device(),
        )
        .unwrap();
        assert_eq!(bits(&host(via_op)), bits(&cpu));
    }
}
