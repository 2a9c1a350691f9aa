//! The grouped expert linear on the device backend of the build (`device_support`: `vulkan`,
//! Mesa's lavapipe without a GPU, or `cuda`) against the CPU (`Flex`, per expert on host
//! offsets): forward with the frozen bias, and the gradients of `x`, `A`, `B` under `Autodiff`,
//! for MXFP4 QAT and plain LoRA, with host offsets and with the offsets the device routing makes
//! (never read back), with empty experts.
//! Tolerance: rel L2 ≤ 1e-5 (forward) and ≤ 1e-4 (gradients): f32 sums in another order; for
//! QAT the deployed weights themselves are bit-identical (`gpu_deploy.rs`).
#![cfg(any(feature = "vulkan", feature = "cuda"))]

#[path = "device_support/mod.rs"]
mod device_support;

#[path = "ops_support/mod.rs"]
mod support;

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use device_support::{B as Gpu, NAME};
use kernels::ops::{
    grouped_lora_linear_frozen_bias, BaseWeight, ExpertOffsets, GroupedLora, OwnedPacked,
    PackedWeight, Quantizer, RoutingBackend,
};
use support::{rel_l2, values, widen, Lcg};

const IN: usize = 64;
const OUT: usize = 40;
const R: usize = 4;

struct Problem {
    offsets: Vec<usize>,
    packed: Vec<Arc<dyn PackedWeight>>,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Vec<f32>,
    x: Vec<f32>,
    g: Vec<f32>,
}

impl Problem {
    fn new(counts: &[usize], seed: u64) -> Self {
        let mut rng = Lcg::new(seed);
        let e = counts.len();
        let mut offsets = vec![0];
        for c in counts {
            offsets.push(offsets.last().unwrap() + c);
        }
        let n = *offsets.last().unwrap();
        let packed = (0..e)
            .map(|_| {
                let w = rng.uniform(OUT * IN);
                Arc::new(OwnedPacked::quantize([OUT, IN], &w).unwrap()) as Arc<dyn PackedWeight>
            })
            .collect();
        let small = |rng: &mut Lcg, len| rng.uniform(len).iter().map(|v| v * 0.1).collect();
        Self {
            offsets,
            packed,
            a: small(&mut rng, e * R * IN),
            b: small(&mut rng, OUT * e * R),
            bias: rng.uniform(e * OUT),
            x: rng.uniform(n * IN),
            g: rng.uniform(n * OUT),
        }
    }

    fn n(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    /// Output, dx, dA, dB on backend `B` with the offsets `offsets(device)`.
    fn run<B: kernels::ops::LoraLinearBackend>(
        &self,
        quant: Quantizer,
        offsets: impl Fn(&B::Device) -> ExpertOffsets<Autodiff<B>>,
    ) -> [Vec<f32>; 4] {
        let dev = Default::default();
        let t = |v: &[f32], s: [usize; 2]| {
            Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(v.to_vec(), s), &dev)
        };
        let e = self.packed.len();
        let bases: Vec<BaseWeight<Autodiff<B>>> = self
            .packed
            .iter()
            .map(|p| BaseWeight::Packed(Arc::clone(p)))
            .collect();
        let x = t(&self.x, [self.n(), IN]).require_grad();
        let lora = GroupedLora {
            a: t(&self.a, [e * R, IN]).require_grad(),
            b: t(&self.b, [OUT, e * R]).require_grad(),
            scale: 0.5,
        };
        let bias = t(&self.bias, [e, OUT]);
        let y = grouped_lora_linear_frozen_bias(
            x.clone(),
            &bases,
            Some(&bias),
            Some(&lora),
            &offsets(&dev),
            quant,
        )
        .unwrap();
        let grads = (y.clone() * t(&self.g, [self.n(), OUT])).sum().backward();
        [
            values(y),
            values(x.grad(&grads).unwrap()),
            values(lora.a.grad(&grads).unwrap()),
            values(lora.b.grad(&grads).unwrap()),
        ]
    }
}

/// Device offsets made by the device routing of one-hot logits that send `counts[e]` tokens to
/// expert `e` (top-1), so the op gets what the model gives it on a device.
fn routed<B: RoutingBackend>(counts: &[usize], device: &B::Device) -> ExpertOffsets<B> {
    let e = counts.len();
    let mut logits = Vec::new();
    for (expert, &c) in counts.iter().enumerate() {
        for _ in 0..c {
            logits.extend((0..e).map(|j| if j == expert { 1.0f32 } else { 0.0 }));
        }
    }
    let n = logits.len() / e;
    let t = Tensor::<B, 2>::from_data(TensorData::new(logits, [n, e]), device);
    let route = B::route(t, 1).unwrap();
    route.offsets
}

fn offsets_tensor<B: Backend>(o: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = o.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [o.len()]), device)
}

#[test]
fn grouped_linear_matches_the_cpu() {
    for (k, counts) in [&[3usize, 0, 70, 1, 0][..], &[0, 0, 9], &[33, 31]]
        .iter()
        .enumerate()
    {
        let p = Problem::new(counts, 7 + k as u64);
        for quant in [Quantizer::Mxfp4, Quantizer::None] {
            let want = p.run::<Flex>(quant, |_| ExpertOffsets::Host(p.offsets.clone()));
            let host = p.run::<Gpu>(quant, |_| ExpertOffsets::Host(p.offsets.clone()));
            let device = p.run::<Gpu>(quant, |dev| {
                let inner = routed::<Gpu>(counts, dev);
                match inner {
                    ExpertOffsets::Device { offsets, rows } => ExpertOffsets::Device {
                        offsets: Tensor::from_inner(offsets),
                        rows,
                    },
                    ExpertOffsets::Host(_) => panic!("the {NAME} backend routed on the host"),
                }
            });
            let uploaded = p.run::<Gpu>(quant, |dev| ExpertOffsets::Device {
                offsets: offsets_tensor(&p.offsets, dev),
                rows: p.n(),
            });
            for (label, got) in [("host", host), ("routed", device), ("uploaded", uploaded)] {
                for (i, name) in ["y", "dx", "dA", "dB"].iter().enumerate() {
                    let err = rel_l2(&got[i], &widen(&want[i]));
                    let tol = if i == 0 { 1e-5 } else { 1e-4 };
                    eprintln!("{counts:?} {quant:?} {label} {name}: rel L2 {err:e}");
                    assert!(
                        err <= tol,
                        "{counts:?} {quant:?} {label} {name}: rel L2 {err:e}"
                    );
                }
            }
        }
    }
}
