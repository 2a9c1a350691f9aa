//! The chunked cross-entropy vs the plain-burn reference (full logits + log_softmax) and vs an f64
//! computation over slices: loss within 1e-6 relative, d(h) (and d(W) when tracked) within 1e-5
//! relative L2, for every chunk size (1, a divisor-free 7, exactly N, more than N), with a row
//! whose target is its argmax and rows with logits at ±80.

mod ops_support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use kernels::ops::{
    chunked_cross_entropy, chunked_forward, cross_entropy_reference, default_chunk_rows,
    CrossEntropyError,
};
use ops_support::{rel_l2, tensor2, values, Lcg};

type Ad = Autodiff<Flex>;

const N: usize = 37;
const H: usize = 24;
const V: usize = 1000;
const CHUNKS: [usize; 4] = [1, 7, 37, 100];

/// `h [N, H]`, `W [V, H]`, targets; rows 1 and 2 scaled so their largest |logit| is 80.
struct Case {
    h: Vec<f32>,
    w: Vec<f32>,
    targets: Vec<i64>,
}

/// Logits of row `i` in f64.
fn logits_f64(h: &[f32], w: &[f32], i: usize) -> Vec<f64> {
    (0..V)
        .map(|v| {
            (0..H)
                .map(|k| f64::from(h[i * H + k]) * f64::from(w[v * H + k]))
                .sum()
        })
        .collect()
}

fn arg(logits: &[f64], better: fn(f64, f64) -> bool) -> i64 {
    let mut best = 0;
    for (v, &x) in logits.iter().enumerate() {
        if better(x, logits[best]) {
            best = v;
        }
    }
    best as i64
}

impl Case {
    fn new(seed: u64) -> Self {
        let mut rng = Lcg::new(seed);
        let mut h: Vec<f32> = rng.uniform(N * H).iter().map(|x| 2.0 * x).collect();
        let w = rng.uniform(V * H);
        for i in [1, 2] {
            let peak = logits_f64(&h, &w, i)
                .iter()
                .fold(0.0f64, |m, x| m.max(x.abs()));
            for x in &mut h[i * H..(i + 1) * H] {
                *x = (f64::from(*x) * 80.0 / peak) as f32;
            }
        }
        let mut targets: Vec<i64> = (0..N)
            .map(|_| ((rng.next_unit() + 1.0) / 2.0 * V as f64) as i64 % V as i64)
            .collect();
        targets[0] = arg(&logits_f64(&h, &w, 0), |a, b| a > b);
        targets[1] = arg(&logits_f64(&h, &w, 1), |a, b| a > b);
        targets[2] = arg(&logits_f64(&h, &w, 2), |a, b| a < b);
        Self { h, w, targets }
    }

    /// (loss, dh) in f64 over slices.
    fn exact(&self) -> (f64, Vec<f64>) {
        let mut loss = 0.0;
        let mut dh = vec![0.0; N * H];
        for i in 0..N {
            let logits = logits_f64(&self.h, &self.w, i);
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let t = self.targets[i] as usize;
            loss += lse - logits[t];
            for (v, x) in logits.iter().enumerate() {
                let g = (x - lse).exp() - if v == t { 1.0 } else { 0.0 };
                for k in 0..H {
                    dh[i * H + k] += g * f64::from(self.w[v * H + k]) / N as f64;
                }
            }
        }
        (loss / N as f64, dh)
    }
}

/// (loss, dh, dW) of the chunked op (`Some(chunk)`) or the reference (`None`) under autodiff,
/// with `upstream · loss` as the root.
fn run(
    case: &Case,
    chunk: Option<usize>,
    h_tracked: bool,
    w_tracked: bool,
    upstream: f32,
) -> (f32, Option<Vec<f32>>, Option<Vec<f32>>) {
    let dev = Default::default();
    let h = tensor2::<Ad>(&case.h, [N, H], &dev).set_require_grad(h_tracked);
    let w = tensor2::<Ad>(&case.w, [V, H], &dev).set_require_grad(w_tracked);
    let loss = match chunk {
        Some(c) => chunked_cross_entropy(h.clone(), w.clone(), &case.targets, c),
        None => cross_entropy_reference(h.clone(), w.clone(), &case.targets),
    }
    .expect("valid inputs");
    let value = loss.clone().into_scalar();
    let grads = loss.mul_scalar(upstream).backward();
    let dh = h.grad(&grads).map(values);
    let dw = w.grad(&grads).map(values);
    (value, dh, dw)
}

fn rel(a: f32, b: f32) -> f64 {
    ((f64::from(a) - f64::from(b)) / f64::from(b)).abs()
}

#[test]
fn loss_and_dh_match_the_reference_for_every_chunk() {
    let case = Case::new(1);
    let (exact_loss, exact_dh) = case.exact();
    let (ref_loss, ref_dh, ref_dw) = run(&case, None, true, false, 1.0);
    let ref_dh = ref_dh.expect("reference dh");
    assert!(ref_dw.is_none());
    assert!(ref_loss.is_finite() && ref_dh.iter().all(|x| x.is_finite()));
    assert!((f64::from(ref_loss) - exact_loss).abs() / exact_loss < 1e-6);
    for chunk in CHUNKS {
        let (loss, dh, dw) = run(&case, Some(chunk), true, false, 1.0);
        let dh = dh.expect("dh");
        assert!(dw.is_none(), "the frozen weight gets no gradient");
        let r = rel(loss, ref_loss);
        assert!(
            r <= 1e-6,
            "chunk {chunk}: loss {loss} vs {ref_loss} (rel {r:e})"
        );
        let r = (f64::from(loss) - exact_loss).abs() / exact_loss;
        assert!(r <= 1e-6, "chunk {chunk}: loss {loss} vs f64 {exact_loss}");
        let ref64: Vec<f64> = ref_dh.iter().map(|&x| f64::from(x)).collect();
        let e = rel_l2(&dh, &ref64);
        assert!(e <= 1e-5, "chunk {chunk}: dh rel L2 {e:e} vs reference");
        let e = rel_l2(&dh, &exact_dh);
        assert!(e <= 1e-5, "chunk {chunk}: dh rel L2 {e:e} vs f64");
    }
}

#[test]
fn a_tracked_weight_gets_the_reference_gradient() {
    let case = Case::new(2);
    for h_tracked in [true, false] {
        let (ref_loss, ref_dh, ref_dw) = run(&case, None, h_tracked, true, 1.0);
        let ref_dw: Vec<f64> = ref_dw
            .expect("reference dW")
            .iter()
            .map(|&x| x.into())
            .collect();
        for chunk in CHUNKS {
            let (loss, dh, dw) = run(&case, Some(chunk), h_tracked, true, 1.0);
            assert!(rel(loss, ref_loss) <= 1e-6);
            assert_eq!(dh.is_some(), h_tracked);
            assert_eq!(ref_dh.is_some(), h_tracked);
            let e = rel_l2(&dw.expect("dW"), &ref_dw);
            assert!(
                e <= 1e-5,
                "chunk {chunk}, h_tracked {h_tracked}: dW rel L2 {e:e}"
            );
        }
    }
}

#[test]
fn the_upstream_gradient_scales_dh() {
    let case = Case::new(3);
    let (_, ref_dh, _) = run(&case, None, true, false, -2.5);
    let ref_dh: Vec<f64> = ref_dh.unwrap().iter().map(|&x| x.into()).collect();
    let (_, dh, _) = run(&case, Some(7), true, false, -2.5);
    let e = rel_l2(&dh.unwrap(), &ref_dh);
    assert!(e <= 1e-5, "dh rel L2 {e:e}");
}

#[test]
fn extreme_logits_by_hand() {
    // logits rows: [80, -80, 0, 0] -> target 0 (certain), [0, 0, 0, 80] -> target 3 (certain),
    // [-80, 80, 0, 0] -> target 0: nll = 160 + ln(1 + 2e-80 + e-160) = 160 in f32.
    let dev = Default::default();
    let w = tensor2::<Ad>(&[80.0, 0.0, -80.0, 0.0, 0.0, 0.0, 0.0, 80.0], [4, 2], &dev);
    let h_vals = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
    for chunk in [1, 2, 3] {
        let h = tensor2::<Ad>(&h_vals, [3, 2], &dev).require_grad();
        let loss = chunked_cross_entropy(h.clone(), w.clone(), &[0, 3, 0], chunk).unwrap();
        let value = loss.clone().into_scalar();
        assert!((value - 160.0 / 3.0).abs() <= 4e-6, "{value}");
        let dh = values(h.grad(&loss.backward()).unwrap());
        // certain rows: p is exactly one-hot up to e-80 terms; the third: (W1 - W0)/3
        assert!(dh[..4].iter().all(|x| x.abs() < 1e-30), "{dh:?}");
        assert!(
            (dh[4] + 160.0 / 3.0).abs() <= 4e-6 && dh[5].abs() < 1e-30,
            "{dh:?}"
        );
    }
}

#[test]
fn the_plain_backend_forward_equals_autodiff_and_keeps_row_statistics() {
    let case = Case::new(4);
    let dev = Default::default();
    let h = tensor2::<Flex>(&case.h, [N, H], &dev);
    let w = tensor2::<Flex>(&case.w, [V, H], &dev);
    let plain = chunked_cross_entropy(h.clone(), w.clone(), &case.targets, 7)
        .unwrap()
        .into_scalar();
    let (ad, _, _) = run(&case, Some(7), true, false, 1.0);
    assert_eq!(plain.to_bits(), ad.to_bits());
    let (_, stats) = chunked_forward(h, w, &case.targets, 7);
    let lse = values(stats.lse());
    for (i, got) in lse.iter().enumerate() {
        let logits = logits_f64(&case.h, &case.w, i);
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let want = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        assert!(
            (f64::from(*got) - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {i}"
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Default::default();
    let h = Tensor::<Flex, 2>::zeros([3, 4], &dev);
    let w = Tensor::<Flex, 2>::zeros([5, 4], &dev);
    let ce = |h: &Tensor<Flex, 2>, w: &Tensor<Flex, 2>, t: &[i64], c| {
        chunked_cross_entropy(h.clone(), w.clone(), t, c).unwrap_err()
    };
    assert_eq!(
        ce(&h, &w, &[0, 5, 1], 2),
        CrossEntropyError::Target {
            row: 1,
            target: 5,
            vocab: 5
        }
    );
    assert!(matches!(
        ce(&h, &w, &[0, -1, 1], 2),
        CrossEntropyError::Target { row: 1, .. }
    ));
    assert!(matches!(
        ce(&h, &w, &[0, 1], 2),
        CrossEntropyError::Shape {
            expected: 3,
            got: 2,
            ..
        }
    ));
    let w3 = Tensor::<Flex, 2>::zeros([5, 3], &dev);
    assert!(matches!(
        ce(&h, &w3, &[0, 1, 2], 2),
        CrossEntropyError::Shape { .. }
    ));
    assert_eq!(ce(&h, &w, &[0, 1, 2], 0), CrossEntropyError::ZeroChunk);
    let empty = Tensor::<Flex, 2>::zeros([0, 4], &dev);
    assert_eq!(ce(&empty, &w, &[], 1), CrossEntropyError::Empty);
    assert!(cross_entropy_reference(h, w, &[0, 9, 1]).is_err());
    // uniform logits: loss = ln 5 exactly in the limit
    let h = Tensor::<Flex, 2>::zeros([3, 4], &dev);
    let w = Tensor::<Flex, 2>::zeros([5, 4], &dev);
    let loss = chunked_cross_entropy(h, w, &[0, 4, 2], 2)
        .unwrap()
        .into_scalar();
    assert!((loss - 5f32.ln()).abs() < 1e-6, "{loss}");
}

#[test]
fn default_chunk_keeps_logits_within_64_mib() {
    assert_eq!(default_chunk_rows(201_088), 83);
    assert!(default_chunk_rows(201_088) * 201_088 * 4 <= 64 << 20);
    assert_eq!(default_chunk_rows(1000), 16_777);
    assert_eq!(default_chunk_rows(0), 16 << 20);
    assert_eq!(default_chunk_rows(1 << 30), 1);
}
