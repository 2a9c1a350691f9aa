//! Forward parity of the burn gpt-oss with transformers (+ PEFT) on the tiny fixture: base,
//! plain LoRA (`QuantMode::None`) and the QAT forward (`QuantMode::Mxfp4`), both linear paths.

mod model_support;

use burn::backend::Flex;
use lora_qat::model::{ForwardMode, GradPath, QuantMode};
use model_support::*;

fn check(adapter: bool, quant: QuantMode, path: GradPath, logits_key: &str, loss_key: &str) {
    let dev = Default::default();
    let golden = Golden::load();
    let model = model::<Flex>(adapter, &dev);
    let (ids, batch, seq) = golden.ids("input_ids");
    let (labels, _, _) = golden.ids("labels");
    let ids = model.input_ids(ids, batch, seq, &dev).unwrap();
    let out = model
        .forward_with_loss(ids, labels, ForwardMode { quant, path })
        .unwrap();
    let logits = out.logits.into_data().to_vec::<f32>().unwrap();
    let diff = max_abs_diff(&logits, golden.f32(logits_key));
    assert!(diff <= LOGITS_TOL, "{logits_key}: max abs diff {diff}");
    let loss = out.loss.loss.into_scalar();
    let want = golden.f32(loss_key)[0];
    assert!(
        ((loss - want) / want).abs() <= LOSS_REL_TOL,
        "{loss_key}: {loss} vs {want}"
    );
}

#[test]
fn base_matches_transformers() {
    check(
        false,
        QuantMode::Mxfp4,
        GradPath::CustomOp,
        "logits_base",
        "loss_base",
    );
    check(
        false,
        QuantMode::None,
        GradPath::Reference,
        "logits_base",
        "loss_base",
    );
}

#[test]
fn plain_lora_matches_peft() {
    check(
        true,
        QuantMode::None,
        GradPath::CustomOp,
        "logits_lora",
        "loss_lora",
    );
    check(
        true,
        QuantMode::None,
        GradPath::Reference,
        "logits_lora",
        "loss_lora",
    );
}

#[test]
fn qat_forward_matches_the_golden() {
    check(
        true,
        QuantMode::Mxfp4,
        GradPath::CustomOp,
        "logits_qat",
        "loss_qat",
    );
    check(
        true,
        QuantMode::Mxfp4,
        GradPath::Reference,
        "logits_qat",
        "loss_qat",
    );
}
