//! The routing kernels on the device backend of the build (`device_support`: `vulkan`, Mesa's
//! lavapipe without a GPU, or `cuda`) against the host references (`kernels::ops::routing`): the
//! top-k choices and the grouping by expert must be equal, entry for entry, including ties,
//! signed zeros and experts that get no token; the device flag must be set by a NaN/Inf logit or
//! an expert id out of range, and only then.
#![cfg(any(feature = "vulkan", feature = "cuda"))]

#[path = "device_support/mod.rs"]
mod device_support;

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::Runtime;
use device_support::{device, R};
use kernels::gpu::routing::{
    check_flag, group_by_expert_on_device, routing_flag, top_k_on_device, EXPERT_OUT_OF_RANGE,
    NON_FINITE_LOGIT,
};
use kernels::ops::routing::{group_by_expert, top_k_rows, Grouping, RoutingError};

/// A small deterministic generator (64-bit LCG, high bits).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn upload(bytes: &[u8], shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    let dev = device();
    let client = R::client(&dev);
    // an empty tensor still gets one (unread) element of storage
    let handle = client.create_from_slice(if bytes.is_empty() { &[0; 4] } else { bytes });
    CubeTensor::new_contiguous(client, dev, Shape::from(shape), handle, dtype)
}

fn logits_tensor(values: &[f32], tokens: usize, experts: usize) -> CubeTensor<R> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    upload(&bytes, vec![tokens, experts], DType::F32)
}

fn indices_tensor(values: &[i64]) -> CubeTensor<R> {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as i32).to_le_bytes())
        .collect();
    upload(&bytes, vec![values.len()], DType::I32)
}

/// The `i32` entries of `t` (its shape's count; the buffer may be padded).
fn ints(t: &CubeTensor<R>) -> Vec<i64> {
    assert_eq!(t.dtype, DType::I32);
    let n = t.meta.shape().num_elements();
    let bytes = t.client.read_one_unchecked(t.handle.clone());
    bytes[..n * 4]
        .chunks_exact(4)
        .map(|w| i64::from(i32::from_le_bytes(w.try_into().unwrap())))
        .collect()
}

fn flag_bits(flag: &CubeTensor<R>) -> u32 {
    let bytes = flag.client.read_one_unchecked(flag.handle.clone());
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

fn device_grouping(indices: &CubeTensor<R>, top_k: usize, experts: usize) -> Grouping {
    let flag = routing_flag::<R>(&device());
    let g = group_by_expert_on_device(indices, top_k, experts, &flag).unwrap();
    check_flag(&flag).unwrap();
    Grouping {
        order: ints(&g.order),
        slots: ints(&g.slots),
        offsets: ints(&g.offsets).into_iter().map(|o| o as usize).collect(),
    }
}

/// Logits on a few levels (many ties), with `-0.0` beside `+0.0`; with `skew`, the lower half of
/// the experts is pushed far down so those experts get no token.
fn tied_logits(rng: &mut Rng, tokens: usize, experts: usize, skew: bool) -> Vec<f32> {
    (0..tokens * experts)
        .map(|i| {
            let level = rng.below(7);
            let v = match level {
                0 => -0.0,
                1 => 0.0,
                l => (l as f32 - 3.5) * 0.75,
            };
            if skew && (i % experts) < experts / 2 {
                v - 100.0
            } else {
                v
            }
        })
        .collect()
}

/// Finely spread logits (few ties).
fn spread_logits(rng: &mut Rng, tokens: usize, experts: usize) -> Vec<f32> {
    (0..tokens * experts)
        .map(|_| (rng.below(1 << 20) as f32 - 524_288.0) / 65_536.0)
        .collect()
}

/// Top-k and grouping on the device equal the references, from the host's indices and chained
/// on the device from the device's own top-k.
fn check_case(logits: &[f32], tokens: usize, experts: usize, k: usize) {
    let want = top_k_rows(logits, experts, k).unwrap();
    let flag = routing_flag::<R>(&device());
    let got = top_k_on_device(&logits_tensor(logits, tokens, experts), k, &flag).unwrap();
    assert_eq!(got.meta.shape().clone(), Shape::new([tokens, k]));
    assert_eq!(
        ints(&got),
        want,
        "top-k: tokens {tokens} experts {experts} k {k}"
    );
    assert_eq!(flag_bits(&flag), 0);
    let reference = group_by_expert(&want, k, experts).unwrap();
    let from_host = device_grouping(&indices_tensor(&want), k, experts);
    assert_eq!(
        from_host, reference,
        "grouping: tokens {tokens} experts {experts} k {k}"
    );
    let chained = device_grouping(&got, k, experts);
    assert_eq!(chained, reference);
}

#[test]
fn top_k_and_grouping_equal_the_references() {
    let mut rng = Rng(7);
    for &experts in &[5usize, 32, 128] {
        for k in 1..=4 {
            for &tokens in &[1usize, 3, 65, 200] {
                let tied = tied_logits(&mut rng, tokens, experts, false);
                check_case(&tied, tokens, experts, k);
                let spread = spread_logits(&mut rng, tokens, experts);
                check_case(&spread, tokens, experts, k);
            }
        }
    }
}

#[test]
fn experts_without_tokens_get_empty_ranges() {
    let mut rng = Rng(11);
    for &(tokens, experts, k) in &[(130usize, 32usize, 4usize), (97, 128, 2), (3, 128, 1)] {
        let logits = tied_logits(&mut rng, tokens, experts, true);
        check_case(&logits, tokens, experts, k);
        let want = top_k_rows(&logits, experts, k).unwrap();
        let g = group_by_expert(&want, k, experts).unwrap();
        assert!((0..experts / 2).all(|e| g.offsets[e + 1] == g.offsets[e]));
    }
    // all tokens on one expert, the others empty
    let idx: Vec<i64> = vec![3; 77];
    let g = device_grouping(&indices_tensor(&idx), 1, 5);
    assert_eq!(g, group_by_expert(&idx, 1, 5).unwrap());
    assert_eq!(g.offsets, vec![0, 0, 0, 0, 77, 77]);
}

#[test]
fn no_tokens_give_empty_outputs_and_zero_offsets() {
    let flag = routing_flag::<R>(&device());
    let got = top_k_on_device(&logits_tensor(&[], 0, 8), 2, &flag).unwrap();
    assert!(ints(&got).is_empty());
    let g = device_grouping(&indices_tensor(&[]), 2, 8);
    assert_eq!(g, group_by_expert(&[], 2, 8).unwrap());
    check_flag(&flag).unwrap();
}

#[test]
fn non_finite_logits_set_the_flag() {
    let mut rng = Rng(3);
    let (tokens, experts) = (70usize, 32usize);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut logits = spread_logits(&mut rng, tokens, experts);
        logits[67 * experts + 5] = bad;
        assert!(matches!(
            top_k_rows(&logits, experts, 4),
            Err(RoutingError::NonFinite {
                token: 67,
                expert: 5,
                ..
            })
        ));
        let flag = routing_flag::<R>(&device());
        top_k_on_device(&logits_tensor(&logits, tokens, experts), 4, &flag).unwrap();
        assert_eq!(flag_bits(&flag), NON_FINITE_LOGIT);
        assert_eq!(
            check_flag(&flag),
            Err(RoutingError::DeviceFlag {
                flags: NON_FINITE_LOGIT
            })
        );
        // the flag is never cleared: a clean layer after it leaves it set
        let clean = spread_logits(&mut rng, tokens, experts);
        top_k_on_device(&logits_tensor(&clean, tokens, experts), 4, &flag).unwrap();
        assert_eq!(flag_bits(&flag), NON_FINITE_LOGIT);
    }
}

#[test]
fn out_of_range_experts_set_the_flag() {
    for bad in [5i64, -1, 1000] {
        let mut idx: Vec<i64> = (0..131).map(|i| i % 5).collect();
        idx[100] = bad;
        assert!(matches!(
            group_by_expert(&idx, 1, 5),
            Err(RoutingError::ExpertOutOfRange { .. })
        ));
        let flag = routing_flag::<R>(&device());
        group_by_expert_on_device(&indices_tensor(&idx), 1, 5, &flag).unwrap();
        assert_eq!(flag_bits(&flag), EXPERT_OUT_OF_RANGE);
        assert!(check_flag(&flag).is_err());
    }
}

#[test]
fn bad_arguments_are_refused_on_the_host() {
    let flag = routing_flag::<R>(&device());
    let logits = logits_tensor(&[0.0; 8], 2, 4);
    for k in [0usize, 5] {
        assert_eq!(
            top_k_on_device(&logits, k, &flag).err(),
            Some(RoutingError::TopK { k, experts: 4 })
        );
    }
    let idx = indices_tensor(&[0, 1]);
    assert!(group_by_expert_on_device(&idx, 0, 4, &flag).is_err());
    // the indices as a flag: wrong dtype
    assert!(top_k_on_device(&logits, 1, &idx).is_err());
    // f32 indices
    assert!(group_by_expert_on_device(&logits, 1, 4, &flag).is_err());
    assert_eq!(flag_bits(&flag), 0);
}
