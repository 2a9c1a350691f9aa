//! Gradients of the custom op under Autodiff<Flex>: dx, dA, dB (and a tracked bias) equal those
//! of the reference path through burn's own autodiff (relative L2 <= 1e-5), for every case; and
//! for `Quantizer::None` they equal central finite differences in f64 over slices.

mod ops_support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use kernels::ops::{lora_linear, lora_linear_reference, BaseWeight, Lora, Quantizer};
use ops_support::{all_cases, rel_l2, tensor2, values, widen, Case, Data, Lcg};

type Ad = Autodiff<Flex>;

/// Gradients of `sum(y ⊙ g)`: (dx, dA, dB, dbias), `None` for untracked inputs.
type Grads = [Option<Vec<f32>>; 4];

fn grads(case: &Case, data: &Data, x_tracked: bool, custom: bool) -> Grads {
    let device = Default::default();
    let base = data.base::<Ad>(case, &device);
    let x = tensor2::<Ad>(&data.x, [case.n, case.inp], &device).set_require_grad(x_tracked);
    let lora = data.lora::<Ad>(case, &device).map(|l| Lora {
        a: l.a.require_grad(),
        b: l.b.require_grad(),
        scale: l.scale,
    });
    let bias = data.bias::<Ad>(case, &device).map(|b| b.require_grad());
    let f = if custom {
        lora_linear::<Ad>
    } else {
        lora_linear_reference::<Ad>
    };
    let y = f(x.clone(), &base, bias.clone(), lora.as_ref(), case.quant).expect("forward");
    let g = tensor2::<Ad>(&data.g, [case.n, case.out], &device);
    let gradients = (y * g).sum().backward();
    let grad2 = |t: &Tensor<Ad, 2>| t.grad(&gradients).map(values);
    [
        grad2(&x),
        lora.as_ref().and_then(|l| grad2(&l.a)),
        lora.as_ref().and_then(|l| grad2(&l.b)),
        bias.and_then(|b| b.grad(&gradients).map(values)),
    ]
}

fn check_case(case: &Case, seed: u64, x_tracked: bool) {
    let data = Data::new(case, seed);
    let custom = grads(case, &data, x_tracked, true);
    let reference = grads(case, &data, x_tracked, false);
    let expect_present = [x_tracked, case.lora, case.lora, case.bias];
    for (k, name) in ["dx", "dA", "dB", "dbias"].iter().enumerate() {
        match (&custom[k], &reference[k]) {
            (Some(c), Some(r)) => {
                let err = rel_l2(c, &widen(r));
                assert!(
                    err <= 1e-5,
                    "{name}: rel L2 {err:e}, {case:?} x_tracked={x_tracked}"
                );
            }
            (None, None) => assert!(!expect_present[k] || case.n == 0, "{name} missing"),
            (c, r) => panic!(
                "{name}: custom {:?} vs reference {:?}, {case:?}",
                c.is_some(),
                r.is_some()
            ),
        }
    }
}

#[test]
fn gradients_match_the_reference_path() {
    for inp in [64, 96] {
        for (i, case) in all_cases(7, inp).iter().enumerate() {
            check_case(case, 300 + i as u64, true);
        }
    }
}

#[test]
fn gradients_match_with_an_untracked_input() {
    for (i, case) in all_cases(7, 96).iter().enumerate() {
        check_case(case, 400 + i as u64, false);
    }
}

#[test]
fn gradients_with_no_tokens_are_zero() {
    for case in all_cases(0, 64).iter().filter(|c| c.lora) {
        let data = Data::new(case, 9);
        let custom = grads(case, &data, true, true);
        for (k, grad) in custom.iter().enumerate() {
            if let Some(grad) = grad {
                assert!(
                    grad.iter().all(|&v| v == 0.0),
                    "grad {k} not zero: {case:?}"
                );
            }
        }
        let [_, da, db, _] = custom;
        assert_eq!(da.map(|v| v.len()), Some(case.r * case.inp), "{case:?}");
        assert_eq!(db.map(|v| v.len()), Some(case.out * case.r), "{case:?}");
    }
}

/// `L = sum(g ⊙ (x · (W + s·B·A)ᵀ))` in f64 over slices (row-major, as in the op).
#[allow(clippy::too_many_arguments)]
fn loss_f64(
    [n, inp, out, r]: [usize; 4],
    s: f64,
    x: &[f64],
    w: &[f64],
    a: &[f64],
    b: &[f64],
    g: &[f64],
) -> f64 {
    let mut loss = 0.0;
    for o in 0..out {
        for i in 0..inp {
            let delta: f64 = (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum();
            let wq = w[o * inp + i] + s * delta;
            for t in 0..n {
                loss += g[t * out + o] * x[t * inp + i] * wq;
            }
        }
    }
    loss
}

#[test]
fn unquantized_gradients_match_finite_differences() {
    let dims @ [n, inp, out, r] = [3, 5, 4, 2];
    let s = 1.5f32;
    let mut rng = Lcg::new(11);
    let (x, w, a, b, g) = (
        rng.uniform(n * inp),
        rng.uniform(out * inp),
        rng.uniform(r * inp),
        rng.uniform(out * r),
        rng.uniform(n * out),
    );
    let device = Default::default();
    let xt = tensor2::<Ad>(&x, [n, inp], &device).require_grad();
    let lora = Lora {
        a: tensor2::<Ad>(&a, [r, inp], &device).require_grad(),
        b: tensor2::<Ad>(&b, [out, r], &device).require_grad(),
        scale: s,
    };
    let base = BaseWeight::Dense(tensor2::<Ad>(&w, [out, inp], &device));
    let y = lora_linear(xt.clone(), &base, None, Some(&lora), Quantizer::None).expect("forward");
    let gt = Tensor::<Ad, 2>::from_data(TensorData::new(g.clone(), [n, out]), &device);
    let gradients = (y * gt).sum().backward();
    let got = [&xt, &lora.a, &lora.b].map(|t| values(t.grad(&gradients).expect("tracked")));

    let mut params = [widen(&x), widen(&a), widen(&b)];
    let (w, g) = (widen(&w), widen(&g));
    let h = 1e-3;
    for (p, got) in got.iter().enumerate() {
        let mut fd = vec![0f64; params[p].len()];
        for (j, slot) in fd.iter_mut().enumerate() {
            let orig = params[p][j];
            let eval = |v: f64, params: &mut [Vec<f64>; 3]| {
                params[p][j] = v;
                let [x, a, b] = &*params;
                loss_f64(dims, f64::from(s), x, &w, a, b, &g)
            };
            let plus = eval(orig + h, &mut params);
            let minus = eval(orig - h, &mut params);
            params[p][j] = orig;
            *slot = (plus - minus) / (2.0 * h);
        }
        let err = rel_l2(got, &fd);
        assert!(
            err <= 1e-5,
            "param {p}: rel L2 vs finite differences {err:e}"
        );
    }
}
