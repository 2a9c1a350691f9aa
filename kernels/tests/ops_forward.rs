//! Forward of the LoRA-QAT linear: custom op == reference path == plain slices (naive loops +
//! the codec's scalar reference), on Flex and Autodiff<Flex>, for every quantizer, dense and
//! packed bases, with/without bias and LoRA, and with no tokens.

#[path = "ops_support.rs"]
mod support;

use burn::backend::{Autodiff, Flex};
use kernels::ops::{lora_linear, lora_linear_reference, LoraLinearBackend, Quantizer};
use support::{all_cases, rel_l2, tensor2, values, widen, Case, Data};

/// Runs both paths on backend `B` and returns (custom, reference) outputs.
fn run<B: LoraLinearBackend>(case: &Case, data: &Data) -> (Vec<f32>, Vec<f32>) {
    let device: B::Device = Default::default();
    let base = data.base::<B>(case, &device);
    let lora = data.lora::<B>(case, &device);
    let x = tensor2::<B>(&data.x, [case.n, case.inp], &device);
    let custom = lora_linear(
        x.clone(),
        &base,
        data.bias::<B>(case, &device),
        lora.as_ref(),
        case.quant,
    )
    .expect("custom op");
    let reference = lora_linear_reference(
        x,
        &base,
        data.bias::<B>(case, &device),
        lora.as_ref(),
        case.quant,
    )
    .expect("reference");
    assert_eq!(custom.dims(), [case.n, case.out], "{case:?}");
    assert_eq!(reference.dims(), [case.n, case.out], "{case:?}");
    (values(custom), values(reference))
}

fn check_case<B: LoraLinearBackend>(case: &Case, seed: u64) {
    let data = Data::new(case, seed);
    let want = data.expected_y(case);
    let (custom, reference) = run::<B>(case, &data);
    let e_custom = rel_l2(&custom, &want);
    let e_ref = rel_l2(&reference, &want);
    let e_pair = rel_l2(&custom, &widen(&reference));
    assert!(e_custom <= 1e-5, "custom vs slices {e_custom:e}: {case:?}");
    assert!(e_ref <= 1e-5, "reference vs slices {e_ref:e}: {case:?}");
    assert!(e_pair <= 1e-6, "custom vs reference {e_pair:e}: {case:?}");
}

#[test]
fn forward_matches_slices_on_flex() {
    for inp in [64, 96] {
        for (i, case) in all_cases(7, inp).iter().enumerate() {
            check_case::<Flex>(case, 100 + i as u64);
        }
    }
}

#[test]
fn forward_matches_slices_on_autodiff() {
    for inp in [64, 96] {
        for (i, case) in all_cases(7, inp).iter().enumerate() {
            check_case::<Autodiff<Flex>>(case, 200 + i as u64);
        }
    }
}

#[test]
fn no_tokens_gives_an_empty_output() {
    for case in all_cases(0, 96) {
        let data = Data::new(&case, 7);
        let (custom, reference) = run::<Flex>(&case, &data);
        assert!(custom.is_empty() && reference.is_empty(), "{case:?}");
        let (custom, reference) = run::<Autodiff<Flex>>(&case, &data);
        assert!(custom.is_empty() && reference.is_empty(), "{case:?}");
    }
}

/// The quantizers really change the output (so the parity above is not vacuous): with LoRA,
/// bf16 and MXFP4 outputs differ from the unquantized one, MXFP4 by much more.
#[test]
fn quantizers_change_the_output() {
    let mut case = all_cases(7, 96)[0];
    case.lora = true;
    let outputs: Vec<Vec<f32>> = [Quantizer::None, Quantizer::Bf16, Quantizer::Mxfp4]
        .iter()
        .map(|&quant| {
            let case = Case { quant, ..case };
            run::<Flex>(&case, &Data::new(&case, 5)).0
        })
        .collect();
    let plain = widen(&outputs[0]);
    let e_bf16 = rel_l2(&outputs[1], &plain);
    let e_mxfp4 = rel_l2(&outputs[2], &plain);
    assert!(e_bf16 > 1e-4, "bf16 rounding had no effect: {e_bf16:e}");
    assert!(
        e_mxfp4 > 10.0 * e_bf16,
        "mxfp4 {e_mxfp4:e} vs bf16 {e_bf16:e}"
    );
}
