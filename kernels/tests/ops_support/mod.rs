//! Shared helpers of the ops tests (included with `#[path]`; as its own target it has no tests):
//! deterministic data on exact grids (so `W + s·B·A` is exact in f32 whatever the summation
//! order, and Q cannot flip between paths), and the plain-slice expected forward built from
//! naive loops and the codec's scalar reference.
#![allow(dead_code)]

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kernels::mxfp4::reference;
use kernels::ops::{BaseWeight, Lora, OwnedPacked, Quantizer};

/// A small deterministic generator (64-bit LCG) of values in [-1, 1).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    pub fn next_unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `len` values `k / denom` with `|k| <= denom` (exact in f32 for denom a power of two).
    pub fn grid(&mut self, len: usize, denom: f64) -> Vec<f32> {
        (0..len)
            .map(|_| ((self.next_unit() * denom).round() / denom) as f32)
            .collect()
    }

    /// `len` arbitrary values in [-1, 1).
    pub fn uniform(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_unit() as f32).collect()
    }
}

/// One configuration of the op.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub n: usize,
    pub inp: usize,
    pub out: usize,
    pub r: usize,
    pub scale: f32,
    pub packed: bool,
    pub bias: bool,
    pub lora: bool,
    pub quant: Quantizer,
}

/// Every combination the brief asks for, at the given `n` and `in`.
pub fn all_cases(n: usize, inp: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    for quant in [Quantizer::None, Quantizer::Bf16, Quantizer::Mxfp4] {
        for packed in [false, true] {
            for bias in [false, true] {
                for lora in [false, true] {
                    cases.push(Case {
                        n,
                        inp,
                        out: 192,
                        r: 4,
                        scale: 2.0,
                        packed,
                        bias,
                        lora,
                        quant,
                    });
                }
            }
        }
    }
    cases
}

/// The values of one case, row-major.
pub struct Data {
    pub x: Vec<f32>,
    /// the dense base as the op must see it (for packed: decoded by the scalar reference)
    pub w: Vec<f32>,
    pub packed: Option<Arc<OwnedPacked>>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub bias: Vec<f32>,
    /// the cotangent of y for gradient tests
    pub g: Vec<f32>,
}

impl Data {
    pub fn new(case: &Case, seed: u64) -> Self {
        let mut rng = Lcg::new(seed);
        let x = rng.uniform(case.n * case.inp);
        let raw = rng.grid(case.out * case.inp, 4096.0);
        let (w, packed) = if case.packed {
            let p = OwnedPacked::quantize([case.out, case.inp], &raw).expect("finite weight");
            let mut w = vec![0f32; raw.len()];
            reference::dequantize(p.blocks(), p.scales(), &mut w).expect("lengths");
            (w, Some(Arc::new(p)))
        } else {
            (raw, None)
        };
        Self {
            x,
            w,
            packed,
            a: rng.grid(case.r * case.inp, 16.0),
            b: rng.grid(case.out * case.r, 16.0),
            bias: rng.uniform(case.out),
            g: rng.uniform(case.n * case.out),
        }
    }

    pub fn base<B: Backend>(&self, case: &Case, device: &B::Device) -> BaseWeight<B> {
        match &self.packed {
            Some(p) => BaseWeight::Packed(p.clone()),
            None => BaseWeight::Dense(tensor2(&self.w, [case.out, case.inp], device)),
        }
    }

    pub fn lora<B: Backend>(&self, case: &Case, device: &B::Device) -> Option<Lora<B>> {
        case.lora.then(|| Lora {
            a: tensor2(&self.a, [case.r, case.inp], device),
            b: tensor2(&self.b, [case.out, case.r], device),
            scale: case.scale,
        })
    }

    pub fn bias<B: Backend>(&self, case: &Case, device: &B::Device) -> Option<Tensor<B, 1>> {
        case.bias
            .then(|| Tensor::from_data(TensorData::new(self.bias.clone(), [case.out]), device))
    }

    /// `Wq` from naive loops and the codec's scalar reference (bf16 through `half`).
    pub fn expected_wq(&self, case: &Case) -> Vec<f32> {
        let mut m = self.w.clone();
        if case.lora {
            for o in 0..case.out {
                for i in 0..case.inp {
                    let mut d = 0f32;
                    for k in 0..case.r {
                        d += self.b[o * case.r + k] * self.a[k * case.inp + i];
                    }
                    m[o * case.inp + i] += case.scale * d;
                }
            }
        }
        match case.quant {
            Quantizer::None => m,
            Quantizer::Bf16 => m
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect(),
            Quantizer::Mxfp4 => {
                let mut q = vec![0f32; m.len()];
                reference::fake_quantize(&m, &mut q).expect("finite merged weight");
                q
            }
        }
    }

    /// `y = x · Wqᵀ + bias` in f64 over slices.
    pub fn expected_y(&self, case: &Case) -> Vec<f64> {
        let wq = self.expected_wq(case);
        let mut y = vec![0f64; case.n * case.out];
        for t in 0..case.n {
            for o in 0..case.out {
                let mut acc = if case.bias {
                    f64::from(self.bias[o])
                } else {
                    0.0
                };
                for i in 0..case.inp {
                    acc += f64::from(self.x[t * case.inp + i]) * f64::from(wq[o * case.inp + i]);
                }
                y[t * case.out + o] = acc;
            }
        }
        y
    }
}

pub fn tensor2<B: Backend>(v: &[f32], shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

/// `|got - want| / |want|` in L2 (absolute L2 when `want` is zero).
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}
