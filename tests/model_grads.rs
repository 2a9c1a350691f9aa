//! QAT gradients of the loss w.r.t. every LoRA tensor vs the golden (PyTorch autograd with the
//! straight-through estimator), for both linear paths under `Autodiff<Flex>`.

mod model_support;

use burn::backend::{Autodiff, Flex};
use lora_qat::model::{ForwardMode, GradPath, QuantMode};
use model_support::*;

type Ad = Autodiff<Flex>;

fn check(path: GradPath) {
    let dev = Default::default();
    let golden = Golden::load();
    // the frozen matrices held as bf16 (what a CUDA device holds; the CPU holds f32): the golden
    // must still match, widening being exact
    let model = model_stored::<Ad>(true, &dev, burn::tensor::DType::BF16);
    let (ids, batch, seq) = golden.ids("input_ids");
    let (labels, _, _) = golden.ids("labels");
    let ids = model.input_ids(ids, batch, seq, &dev).unwrap();
    let mode = ForwardMode {
        quant: QuantMode::Mxfp4,
        path,
    };
    let out = model.forward_with_loss(ids, labels, mode).unwrap();
    let loss = out.loss.loss.clone().into_scalar();
    let want = golden.f32("loss_qat")[0];
    assert!(
        ((loss - want) / want).abs() <= LOSS_REL_TOL,
        "loss {loss} vs {want}"
    );
    let grads = out.loss.loss.backward();
    // the base stays frozen: no gradient is tracked for it
    let layer = &model.model.layers[0];
    assert!(layer.self_attn.q_proj.weight.val().grad(&grads).is_none());
    assert!(layer.mlp.router.weight.val().grad(&grads).is_none());
    assert!(model.lm_head.weight.val().grad(&grads).is_none());
    // the frozen matrices are held as bf16 here (and the loss and gradients above and below match
    // the golden: widening to f32 is exact)
    let bf16 = burn::tensor::DType::BF16;
    assert_eq!(layer.self_attn.q_proj.weight.val().dtype(), bf16);
    assert_eq!(layer.self_attn.o_proj.weight.val().dtype(), bf16);
    assert_eq!(model.lm_head.weight.val().dtype(), bf16);
    assert_eq!(model.model.embed_tokens.weight.val().dtype(), bf16);
    assert_eq!(
        layer.mlp.router.weight.val().dtype(),
        burn::tensor::DType::F32
    );
    let got = model.lora_grads(&grads);
    let expected = golden
        .f32s
        .keys()
        .filter(|k| k.starts_with("grad_qat."))
        .count();
    assert_eq!(got.len(), expected, "one gradient per golden LoRA tensor");
    for (key, grad) in got {
        let grad = grad.unwrap_or_else(|| panic!("{path:?}: no gradient for {key}"));
        let grad = grad.into_data().to_vec::<f32>().unwrap();
        let want = golden.f32(&format!("grad_qat.{key}"));
        let err = rel_l2(&grad, want);
        assert!(
            err <= GRAD_REL_TOL,
            "{path:?}: {key}: relative L2 error {err}"
        );
    }
}

#[test]
fn reference_path_gradients_match_the_golden() {
    check(GradPath::Reference);
}

#[test]
fn custom_op_gradients_match_the_golden() {
    check(GradPath::CustomOp);
}
