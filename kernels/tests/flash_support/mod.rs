//! Shared helpers of the flash attention tests (included with `#[path]`): deterministic inputs,
//! the test cases, runs of the op (forward, and backward through `Autodiff`) on any backend, and
//! error measures.
#![allow(dead_code)]

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kernels::ops::{flash_attention, AttentionDims, AttentionMask, FlashAttentionBackend};

/// Deterministic values in [-scale, scale) (64-bit LCG).
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

/// One test case: dims, mask and host inputs (q, k, v, sinks, the output gradient).
pub struct Case {
    pub name: &'static str,
    pub dims: AttentionDims,
    pub mask: AttentionMask,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub sinks: Vec<f32>,
    pub grad_out: Vec<f32>,
}

/// Segment starts of rows packed from segments of the given lengths (`[batch·seq]`).
pub fn packed(rows: &[&[usize]]) -> Vec<usize> {
    rows.iter()
        .flat_map(|lengths| {
            let mut start = 0;
            lengths.iter().flat_map(move |&n| {
                let s = start;
                start += n;
                std::iter::repeat_n(s, n)
            })
        })
        .collect()
}

fn case(name: &'static str, seed: u64, dims: [usize; 5], mask: AttentionMask) -> Case {
    let [batch, heads, kv_heads, seq, head_dim] = dims;
    let dims = AttentionDims {
        batch,
        heads,
        kv_heads,
        seq,
        head_dim,
    };
    let nq = batch * heads * seq * head_dim;
    let nk = batch * kv_heads * seq * head_dim;
    Case {
        name,
        dims,
        mask,
        // scores of a few units: peaked rows and sinks that matter
        q: values(seed, nq, 2.0),
        k: values(seed + 1, nk, 2.0),
        v: values(seed + 2, nk, 1.0),
        sinks: values(seed + 3, heads, 2.0),
        grad_out: values(seed + 4, nq, 1.0),
    }
}

/// The cases: causal, sliding window 4 of 37, GQA 6/2, packed segments (0, 5, 17 in row 0;
/// 0, 11, 30 in row 1), batch 2, d 16, seq 37 (not a multiple of any block), and one long
/// causal row crossing several blocks of keys and queries.
pub fn cases() -> Vec<Case> {
    let segs = packed(&[&[5, 12, 20], &[11, 19, 7]]);
    vec![
        case("causal", 1, [2, 6, 2, 37, 16], AttentionMask::causal()),
        case("sliding 4", 2, [2, 6, 2, 37, 16], AttentionMask::sliding(4)),
        case("mha causal", 3, [2, 4, 4, 37, 16], AttentionMask::causal()),
        case(
            "causal packed",
            4,
            [2, 6, 2, 37, 16],
            AttentionMask::causal().with_segments(segs.clone()),
        ),
        case(
            "sliding 4 packed",
            5,
            [2, 6, 2, 37, 16],
            AttentionMask::sliding(4).with_segments(segs),
        ),
        case(
            "sliding 50 of 37",
            6,
            [1, 2, 1, 37, 8],
            AttentionMask::sliding(50),
        ),
        case(
            "long causal",
            7,
            [1, 3, 1, 150, 16],
            AttentionMask::causal(),
        ),
        case(
            "long sliding 70",
            8,
            [1, 2, 2, 150, 16],
            AttentionMask::sliding(70),
        ),
    ]
}

fn tensor<B: Backend, const D: usize>(
    x: &[f32],
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(x.to_vec(), shape), dev)
}

fn shapes(d: AttentionDims) -> ([usize; 4], [usize; 4]) {
    (
        [d.batch, d.heads, d.seq, d.head_dim],
        [d.batch, d.kv_heads, d.seq, d.head_dim],
    )
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// The op's forward output on `B`.
pub fn forward<B: FlashAttentionBackend>(c: &Case, dev: &B::Device) -> Vec<f32> {
    let (qs, ks) = shapes(c.dims);
    let out = flash_attention(
        tensor::<B, 4>(&c.q, qs, dev),
        tensor::<B, 4>(&c.k, ks, dev),
        tensor::<B, 4>(&c.v, ks, dev),
        tensor::<B, 1>(&c.sinks, [c.dims.heads], dev),
        &c.mask,
    )
    .unwrap();
    host(out)
}

/// `(out, dq, dk, dv)` of the op on `Autodiff<B>`, the loss being `Σ out∘grad_out`.
pub fn grads<B: FlashAttentionBackend>(c: &Case, dev: &B::Device) -> [Vec<f32>; 4] {
    let (qs, ks) = shapes(c.dims);
    let q = tensor::<Autodiff<B>, 4>(&c.q, qs, dev).require_grad();
    let k = tensor::<Autodiff<B>, 4>(&c.k, ks, dev).require_grad();
    let v = tensor::<Autodiff<B>, 4>(&c.v, ks, dev).require_grad();
    let sinks = tensor::<Autodiff<B>, 1>(&c.sinks, [c.dims.heads], dev);
    let out = flash_attention(q.clone(), k.clone(), v.clone(), sinks, &c.mask).unwrap();
    let loss = (out.clone() * tensor::<Autodiff<B>, 4>(&c.grad_out, qs, dev)).sum();
    let g = loss.backward();
    let grad =
        |t: &Tensor<Autodiff<B>, 4>| host(t.grad(&g).expect("a tracked input has a gradient"));
    [host(out.inner()), grad(&q), grad(&k), grad(&v)]
}

/// Max abs difference.
pub fn max_abs(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// Max abs difference relative to the largest magnitude of `want`.
pub fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    let norm = want.iter().map(|w| w.abs()).fold(0.0, f64::max).max(1e-30);
    max_abs(got, want) / norm
}

/// f32 values as f64.
pub fn wide(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&x| x as f64).collect()
}
