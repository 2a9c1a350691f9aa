//! A non-finite merged weight under a quantizer is a `CodecError::NonFinite` (never a panic,
//! never a NaN output), on Flex and Autodiff<Flex>, for both paths; mismatched shapes are a
//! `CodecError::Length`.

mod ops_support;

use std::ops::Range;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::mxfp4::CodecError;
use kernels::ops::{
    lora_linear, lora_linear_reference, BaseWeight, Lora, LoraLinearBackend, OwnedPacked, Quantizer,
};
use ops_support::{tensor2, Lcg};

const N: usize = 3;
const IN: usize = 64;
const OUT: usize = 8;
const R: usize = 2;

type Result2<B> = Result<Tensor<B, 2>, CodecError>;

/// Both paths on `B`, with the given base and LoRA B factor.
fn both<B: LoraLinearBackend>(
    base: &BaseWeight<B>,
    lora_b: Option<&[f32]>,
    quant: Quantizer,
) -> [Result2<B>; 2] {
    let device: B::Device = Default::default();
    let mut rng = Lcg::new(3);
    let x = tensor2::<B>(&rng.uniform(N * IN), [N, IN], &device);
    let lora = lora_b.map(|b| Lora {
        a: tensor2::<B>(&rng.uniform(R * IN), [R, IN], &device),
        b: tensor2::<B>(b, [OUT, R], &device),
        scale: 2.0,
    });
    [
        lora_linear(x.clone(), base, None, lora.as_ref(), quant),
        lora_linear_reference(x, base, None, lora.as_ref(), quant),
    ]
}

fn dense_with<B: Backend>(index: usize, value: f32) -> BaseWeight<B> {
    let mut w = Lcg::new(1).uniform(OUT * IN);
    w[index] = value;
    BaseWeight::Dense(tensor2::<B>(&w, [OUT, IN], &Default::default()))
}

fn assert_non_finite<B: Backend>(results: [Result2<B>; 2], index: Range<usize>, what: &str) {
    for (path, result) in ["custom", "reference"].iter().zip(results) {
        match result {
            Err(CodecError::NonFinite { index: got, value }) => {
                assert!(
                    index.contains(&got),
                    "{what} {path}: index {got} not in {index:?}"
                );
                assert!(!value.is_finite(), "{what} {path}: value {value}");
            }
            Err(other) => panic!("{what} {path}: wrong error {other}"),
            Ok(y) => panic!("{what} {path}: no error, output {:?}", y.dims()),
        }
    }
}

fn check_backend<B: LoraLinearBackend>() {
    let index = 5 * IN + 17;
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for quant in [Quantizer::Mxfp4, Quantizer::Bf16] {
            let base = dense_with::<B>(index, value);
            let at = index..index + 1;
            assert_non_finite(both(&base, None, quant), at.clone(), "dense, no LoRA");
            let b = vec![0.25f32; OUT * R];
            assert_non_finite(both(&base, Some(&b), quant), at, "dense + LoRA");
        }
    }
    // a finite base whose LoRA update overflows f32
    let mut b = vec![0.0f32; OUT * R];
    b[6 * R] = f32::MAX;
    let base = dense_with::<B>(0, 1.0);
    let results = both(&base, Some(&b), Quantizer::Mxfp4);
    for (path, result) in ["custom", "reference"].iter().zip(results) {
        match result {
            Err(CodecError::NonFinite { index, .. }) => assert_eq!(index / IN, 6, "{path}"),
            other => panic!("{path}: expected NonFinite in row 6, got {other:?}"),
        }
    }
    // a packed base whose scale byte 255 decodes to Inf
    let p = OwnedPacked::quantize([OUT, IN], &Lcg::new(2).uniform(OUT * IN)).expect("finite");
    let mut scales = p.scales().to_vec();
    scales[3] = 255;
    let p = OwnedPacked::new([OUT, IN], p.blocks().to_vec(), scales).expect("lengths");
    let base = BaseWeight::<B>::Packed(Arc::new(p));
    // block 3 (elements 96..128) decodes to non-finite values (which ones is the codec's call)
    assert_non_finite(
        both(&base, None, Quantizer::Mxfp4),
        96..128,
        "packed, scale 255",
    );
}

#[test]
fn non_finite_weights_are_errors_on_flex() {
    check_backend::<Flex>();
}

#[test]
fn non_finite_weights_are_errors_on_autodiff() {
    check_backend::<Autodiff<Flex>>();
}

#[test]
fn mismatched_shapes_are_length_errors() {
    let device = Default::default();
    let base = dense_with::<Flex>(0, 1.0);
    let x = Tensor::<Flex, 2>::zeros([N, IN + 1], &device);
    let err = lora_linear(x, &base, None, None, Quantizer::None).unwrap_err();
    assert!(matches!(err, CodecError::Length { expected: IN, got, .. } if got == IN + 1));
    let x = Tensor::<Flex, 2>::zeros([N, IN], &device);
    let bias = Tensor::<Flex, 1>::zeros([OUT + 2], &device);
    let err = lora_linear_reference(x.clone(), &base, Some(bias), None, Quantizer::None);
    assert!(matches!(err, Err(CodecError::Length { expected: OUT, .. })));
    let lora = Lora {
        a: Tensor::<Flex, 2>::zeros([R, IN], &device),
        b: Tensor::<Flex, 2>::zeros([OUT, R + 1], &device),
        scale: 1.0,
    };
    let err = lora_linear(x, &base, None, Some(&lora), Quantizer::Mxfp4);
    assert!(matches!(err, Err(CodecError::Length { expected: R, .. })));
}
