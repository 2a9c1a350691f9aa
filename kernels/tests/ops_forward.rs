//! Forward of the LoRA-QAT linear: custom op == reference path == plain slices (naive loops +
//! the codec's scalar reference), on Flex and Autodiff<Flex>, for every quantizer, dense and
//! packed bases, with/without bias and LoRA, and with no tokens.

mod ops_support;

use burn::backend::{Autodiff, Flex};
use kernels::mxfp4::CodecError;
use kernels::ops::{
    add_lora_delta, lora_linear, lora_linear_reference, quantized_weight, LoraLinearBackend,
    Quantizer,
};
use ops_support::{all_cases, rel_l2, tensor2, values, widen, Case, Data, Lcg};

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

/// With arbitrary (off-grid) values and a non-power-of-two scale, the QAT weight the op uses is
/// bit for bit `Q(W + s·B·A)` with the documented merge arithmetic (k ascending, no FMA) and the
/// codec's scalar reference: what export computes is what training used.
#[test]
fn qat_weight_is_bitwise_the_slice_merge() {
    let device = Default::default();
    for quant in [Quantizer::Bf16, Quantizer::Mxfp4] {
        for packed in [false, true] {
            let case = Case {
                n: 1,
                inp: 96,
                out: 192,
                r: 8,
                scale: 0.7,
                packed,
                bias: false,
                lora: true,
                quant,
            };
            let mut data = Data::new(&case, 17);
            let mut rng = Lcg::new(23);
            data.a = rng.uniform(case.r * case.inp);
            data.b = rng.uniform(case.out * case.r);
            if !packed {
                data.w = rng.uniform(case.out * case.inp);
            }
            // the merge alone, bit for bit (Q would hide most 1-ulp differences)
            let mut merged = data.w.clone();
            add_lora_delta(
                &mut merged,
                [case.out, case.inp],
                &data.a,
                &data.b,
                case.r,
                0.7,
            )
            .expect("lengths");
            let plain = Data {
                x: Vec::new(),
                w: data.w.clone(),
                packed: None,
                a: data.a.clone(),
                b: data.b.clone(),
                bias: Vec::new(),
                g: Vec::new(),
            };
            let unquantized = plain.expected_wq(&Case {
                quant: Quantizer::None,
                ..case
            });
            let differ = merged
                .iter()
                .zip(&unquantized)
                .filter(|(g, w)| g.to_bits() != w.to_bits())
                .count();
            assert_eq!(differ, 0, "merge: {differ} elements differ: {case:?}");

            let base = data.base::<Flex>(&case, &device);
            let lora = data.lora::<Flex>(&case, &device);
            let wq = quantized_weight(&base, lora.as_ref(), quant, &device).expect("finite");
            let got: Vec<u32> = values(wq).iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = data
                .expected_wq(&case)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(differ, 0, "{differ} elements differ: {case:?}");
        }
    }
}

#[test]
fn add_lora_delta_checks_lengths() {
    let mut w = vec![0f32; 6];
    let err = add_lora_delta(&mut w, [2, 3], &[0.0; 5], &[0.0; 2], 2, 1.0).unwrap_err();
    assert!(matches!(
        err,
        CodecError::Length {
            expected: 6,
            got: 5,
            ..
        }
    ));
    add_lora_delta(&mut w, [2, 3], &[1.0, 2.0, 3.0], &[0.5, -1.0], 1, 2.0).expect("lengths");
    assert_eq!(w, [1.0, 2.0, 3.0, -2.0, -4.0, -6.0]);
}
