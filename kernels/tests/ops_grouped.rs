//! The grouped LoRA-QAT linear (all experts of a projection in one op) against per-expert
//! `lora_linear` calls on the rows of each expert: forward with and without a frozen per-expert
//! bias (Flex and Autodiff<Flex>, rel L2 <= 1e-6) and gradients dx/dA/dB under Autodiff<Flex> (rel L2 <= 1e-5), for every quantizer,
//! dense and packed bases, with and without LoRA, with empty experts and with no rows at all.

mod ops_support;

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::mxfp4::CodecError;
use kernels::ops::{
    grouped_lora_linear, grouped_lora_linear_frozen_bias, lora_linear, BaseWeight, ExpertOffsets,
    GroupedLora, Lora, LoraLinearBackend, OwnedPacked, Quantizer,
};
use ops_support::{rel_l2, tensor2, values, widen, Lcg};

type Ad = Autodiff<Flex>;

const IN: usize = 64;
const OUT: usize = 48;
const R: usize = 3;
const SCALE: f32 = 0.75;

/// One grouped problem: per-expert row counts, weights, factors, input and output cotangent.
struct Problem {
    counts: Vec<usize>,
    offsets: Vec<usize>,
    w: Vec<Vec<f32>>,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    bias: Vec<f32>,
    x: Vec<f32>,
    g: Vec<f32>,
}

impl Problem {
    fn new(counts: &[usize], seed: u64) -> Self {
        let mut rng = Lcg::new(seed);
        let experts = counts.len();
        let n: usize = counts.iter().sum();
        let mut offsets = vec![0];
        for c in counts {
            offsets.push(offsets.last().unwrap() + c);
        }
        let w = (0..experts).map(|_| rng.uniform(OUT * IN)).collect();
        let a = (0..experts)
            .map(|_| rng.uniform(R * IN).iter().map(|v| v * 0.1).collect())
            .collect();
        let b = (0..experts)
            .map(|_| rng.uniform(OUT * R).iter().map(|v| v * 0.1).collect())
            .collect();
        Self {
            counts: counts.to_vec(),
            offsets,
            w,
            a,
            b,
            bias: rng.uniform(experts * OUT),
            x: rng.uniform(n * IN),
            g: rng.uniform(n * OUT),
        }
    }

    fn n(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    fn bases<B: Backend>(&self, packed: bool, device: &B::Device) -> Vec<BaseWeight<B>> {
        self.w
            .iter()
            .map(|w| {
                if packed {
                    BaseWeight::Packed(Arc::new(OwnedPacked::quantize([OUT, IN], w).unwrap()))
                } else {
                    BaseWeight::Dense(tensor2(w, [OUT, IN], device))
                }
            })
            .collect()
    }

    /// Per expert `(A_e, B_e)` leaves, tracked when `B` is an autodiff backend.
    fn factors<B: Backend>(&self, device: &B::Device) -> Vec<(Tensor<B, 2>, Tensor<B, 2>)> {
        self.a
            .iter()
            .zip(&self.b)
            .map(|(a, b)| {
                (
                    tensor2::<B>(a, [R, IN], device).require_grad(),
                    tensor2::<B>(b, [OUT, R], device).require_grad(),
                )
            })
            .collect()
    }

    /// The stacked (expert-major) factors as leaves.
    fn grouped<B: Backend>(&self, device: &B::Device) -> GroupedLora<B> {
        let a: Vec<f32> = self.a.concat();
        let mut b = vec![0f32; OUT * R * self.counts.len()];
        for (e, be) in self.b.iter().enumerate() {
            for o in 0..OUT {
                for j in 0..R {
                    b[o * R * self.counts.len() + e * R + j] = be[o * R + j];
                }
            }
        }
        GroupedLora {
            a: tensor2::<B>(&a, [R * self.counts.len(), IN], device).require_grad(),
            b: tensor2::<B>(&b, [OUT, R * self.counts.len()], device).require_grad(),
            scale: SCALE,
        }
    }
}

/// `y` of the per-expert path: `lora_linear` on each expert's rows, concatenated.
fn per_expert<B: LoraLinearBackend>(
    x: &Tensor<B, 2>,
    bases: &[BaseWeight<B>],
    bias: Option<&Tensor<B, 2>>,
    factors: Option<&[(Tensor<B, 2>, Tensor<B, 2>)]>,
    offsets: &[usize],
    quant: Quantizer,
) -> Tensor<B, 2> {
    let mut parts = Vec::new();
    for (e, base) in bases.iter().enumerate() {
        let (start, len) = (offsets[e], offsets[e + 1] - offsets[e]);
        if len == 0 {
            continue;
        }
        let lora = factors.map(|f| Lora {
            a: f[e].0.clone(),
            b: f[e].1.clone(),
            scale: SCALE,
        });
        let xe = x.clone().narrow(0, start, len);
        let be = bias.map(|b| b.clone().narrow(0, e, 1).reshape([OUT]));
        parts.push(lora_linear(xe, base, be, lora.as_ref(), quant).unwrap());
    }
    if parts.is_empty() {
        Tensor::zeros([0, OUT], &x.device())
    } else {
        Tensor::cat(parts, 0)
    }
}

const QUANTS: [Quantizer; 3] = [Quantizer::None, Quantizer::Bf16, Quantizer::Mxfp4];
const LAYOUTS: [&[usize]; 4] = [&[5, 0, 7, 3], &[0, 4, 0, 0], &[0, 0, 0], &[9]];

fn forward_matches<B: LoraLinearBackend>() {
    let device = Default::default();
    for (k, counts) in LAYOUTS.iter().enumerate() {
        let p = Problem::new(counts, 10 + k as u64);
        for quant in QUANTS {
            for packed in [false, true] {
                for (with_lora, with_bias) in [(false, false), (true, false), (true, true)] {
                    let bases = p.bases::<B>(packed, &device);
                    let bias = tensor2::<B>(&p.bias, [counts.len(), OUT], &device);
                    let bias = with_bias.then_some(&bias);
                    let x = tensor2::<B>(&p.x, [p.n(), IN], &device);
                    let factors = p.factors::<B>(&device);
                    let grouped = p.grouped::<B>(&device);
                    let want = per_expert(
                        &x,
                        &bases,
                        bias,
                        with_lora.then_some(factors.as_slice()),
                        &p.offsets,
                        quant,
                    );
                    let lora = with_lora.then_some(&grouped);
                    let got = if with_bias {
                        grouped_lora_linear_frozen_bias(
                            x,
                            &bases,
                            bias,
                            lora,
                            &host(&p.offsets),
                            quant,
                        )
                    } else {
                        grouped_lora_linear(x, &bases, lora, &host(&p.offsets), quant)
                    }
                    .unwrap();
                    let label = format!(
                        "{counts:?} {quant:?} packed={packed} lora={with_lora} bias={with_bias}"
                    );
                    assert_eq!(got.dims(), [p.n(), OUT], "{label}");
                    let err = rel_l2(&values(got), &widen(&values(want)));
                    assert!(err <= 1e-6, "forward rel L2 {err:e}: {label}");
                }
            }
        }
    }
}

/// Host offsets as the grouped op takes them.
fn host<B: burn::tensor::backend::Backend>(offsets: &[usize]) -> ExpertOffsets<B> {
    ExpertOffsets::Host(offsets.to_vec())
}

#[test]
fn forward_equals_per_expert_lora_linear_on_flex() {
    forward_matches::<Flex>();
}

#[test]
fn forward_equals_per_expert_lora_linear_on_autodiff() {
    forward_matches::<Ad>();
}

/// The per-expert gradients stacked like the grouped factors (zeros for experts without a
/// gradient): `(dx, dA [E·r, in], dB [out, E·r])`.
fn per_expert_grads(p: &Problem, packed: bool, quant: Quantizer) -> [Vec<f32>; 3] {
    let device = Default::default();
    let bases = p.bases::<Ad>(packed, &device);
    let x = tensor2::<Ad>(&p.x, [p.n(), IN], &device).require_grad();
    let factors = p.factors::<Ad>(&device);
    let y = per_expert(&x, &bases, None, Some(&factors), &p.offsets, quant);
    let grads = (y * tensor2::<Ad>(&p.g, [p.n(), OUT], &device))
        .sum()
        .backward();
    let experts = p.counts.len();
    let mut da = Vec::new();
    let mut db = vec![0f32; OUT * R * experts];
    for (e, (a, b)) in factors.iter().enumerate() {
        da.extend(a.grad(&grads).map_or(vec![0.0; R * IN], values));
        let be = b.grad(&grads).map_or(vec![0.0; OUT * R], values);
        for o in 0..OUT {
            for j in 0..R {
                db[o * R * experts + e * R + j] = be[o * R + j];
            }
        }
    }
    let dx = x.grad(&grads).map_or(vec![], values);
    [dx, da, db]
}

#[test]
fn gradients_equal_per_expert_lora_linear() {
    let device = Default::default();
    for (k, counts) in LAYOUTS.iter().enumerate() {
        let p = Problem::new(counts, 20 + k as u64);
        for quant in QUANTS {
            for packed in [false, true] {
                let want = per_expert_grads(&p, packed, quant);
                let bases = p.bases::<Ad>(packed, &device);
                let x = tensor2::<Ad>(&p.x, [p.n(), IN], &device).require_grad();
                let lora = p.grouped::<Ad>(&device);
                let y =
                    grouped_lora_linear(x.clone(), &bases, Some(&lora), &host(&p.offsets), quant)
                        .unwrap();
                let grads = (y * tensor2::<Ad>(&p.g, [p.n(), OUT], &device))
                    .sum()
                    .backward();
                let got = [
                    x.grad(&grads).map(values),
                    lora.a.grad(&grads).map(values),
                    lora.b.grad(&grads).map(values),
                ];
                for ((name, got), want) in ["dx", "dA", "dB"].iter().zip(got).zip(want) {
                    let label = format!("{name} {counts:?} {quant:?} packed={packed}");
                    if p.n() == 0 && *name == "dx" {
                        assert!(got.is_none_or(|g| g.is_empty()), "{label}");
                        continue;
                    }
                    let got = got.unwrap_or_else(|| panic!("{label}: missing gradient"));
                    assert_eq!(got.len(), want.len(), "{label}");
                    if want.iter().all(|v| *v == 0.0) {
                        assert!(got.iter().all(|v| *v == 0.0), "{label}: not zero");
                    } else {
                        let err = rel_l2(&got, &widen(&want));
                        assert!(err <= 1e-5, "{label}: rel L2 {err:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn dx_without_lora_equals_per_expert() {
    let device = Default::default();
    let p = Problem::new(&[3, 0, 6], 30);
    for quant in QUANTS {
        let bases = p.bases::<Ad>(true, &device);
        let g = tensor2::<Ad>(&p.g, [p.n(), OUT], &device);
        let x = tensor2::<Ad>(&p.x, [p.n(), IN], &device).require_grad();
        let y = per_expert(&x, &bases, None, None, &p.offsets, quant);
        let want = values(x.grad(&(y * g.clone()).sum().backward()).unwrap());
        let x = tensor2::<Ad>(&p.x, [p.n(), IN], &device).require_grad();
        let y = grouped_lora_linear(x.clone(), &bases, None, &host(&p.offsets), quant).unwrap();
        let got = values(x.grad(&(y * g).sum().backward()).unwrap());
        let err = rel_l2(&got, &widen(&want));
        assert!(err <= 1e-5, "{quant:?}: rel L2 {err:e}");
    }
}

#[test]
fn inconsistent_offsets_and_shapes_are_errors() {
    let device = Default::default();
    let p = Problem::new(&[2, 3], 40);
    let bases = p.bases::<Flex>(false, &device);
    let x = || tensor2::<Flex>(&p.x, [5, IN], &device);
    let lora = p.grouped::<Flex>(&device);
    let run = |offsets: &[usize], lora: Option<&GroupedLora<Flex>>| {
        grouped_lora_linear(x(), &bases, lora, &host(offsets), Quantizer::Mxfp4)
    };
    for bad in [
        &[0, 2][..],
        &[0, 2, 4],
        &[1, 2, 5],
        &[0, 3, 2, 5],
        &[0, 4, 3],
    ] {
        assert!(
            matches!(run(bad, None), Err(CodecError::Length { .. })),
            "{bad:?}"
        );
    }
    assert!(run(&[0, 2, 5], Some(&lora)).is_ok());
    let short = GroupedLora {
        a: lora.a.clone().narrow(0, 0, R),
        ..lora.clone()
    };
    assert!(matches!(
        run(&[0, 2, 5], Some(&short)),
        Err(CodecError::Length { .. })
    ));
    let bias = tensor2::<Flex>(&p.bias[..OUT], [1, OUT], &device);
    assert!(matches!(
        grouped_lora_linear_frozen_bias(
            x(),
            &bases,
            Some(&bias),
            None,
            &host(&[0, 2, 5]),
            Quantizer::None
        ),
        Err(CodecError::Length { .. })
    ));
    let wide = tensor2::<Flex>(&p.x[..5 * 32], [5, 32], &device);
    assert!(matches!(
        grouped_lora_linear(wide, &bases, None, &host(&[0, 2, 5]), Quantizer::None),
        Err(CodecError::Length { .. })
    ));
}
