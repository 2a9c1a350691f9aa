//! The training loss without logits (`loss_at`: final hidden rows through the frozen head in
//! chunks) vs the loss from full logits (`forward_with_loss_at`), on the tiny fixture with its
//! PEFT adapter under QAT (MXFP4): loss within 1e-6 relative, every LoRA gradient within 1e-5
//! relative L2, for the default chunking, a small chunk and packed position ids.

mod model_support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use lora_qat::model::{ForwardMode, GptOssForCausalLM, GradPath, PositionIds, QuantMode};
use model_support::*;

type Ad = Autodiff<Flex>;

const MODE: ForwardMode = ForwardMode {
    quant: QuantMode::Mxfp4,
    path: GradPath::CustomOp,
};

/// (loss, counted tokens, LoRA gradients in `lora_grads` order).
type Measured = (f32, usize, Vec<(String, Vec<f32>)>);

fn measure(model: &GptOssForCausalLM<Ad>, loss: Tensor<Ad, 1>, tokens: usize) -> Measured {
    let value = loss.clone().into_scalar();
    let grads = loss.backward();
    assert!(model.lm_head.weight.val().grad(&grads).is_none());
    let lora = model
        .lora_grads(&grads)
        .into_iter()
        .map(|(key, g)| {
            let g = g.unwrap_or_else(|| panic!("no gradient for {key}"));
            (key, g.into_data().to_vec::<f32>().unwrap())
        })
        .collect();
    (value, tokens, lora)
}

/// Through the full logits (`forward_with_loss_at`), the reference.
fn via_logits(model: &GptOssForCausalLM<Ad>, positions: &PositionIds) -> Measured {
    let dev = Default::default();
    let g = Golden::load();
    let (ids, batch, seq) = g.ids("input_ids");
    let (labels, _, _) = g.ids("labels");
    let ids = model.input_ids(ids, batch, seq, &dev).unwrap();
    let out = model
        .forward_with_loss_at(ids, positions, labels, MODE)
        .unwrap();
    measure(model, out.loss.loss, out.loss.tokens)
}

/// Through `loss_at` (`chunk: None`) or `loss_at_chunked`.
fn via_hidden(
    model: &GptOssForCausalLM<Ad>,
    positions: &PositionIds,
    chunk: Option<usize>,
) -> Measured {
    let dev = Default::default();
    let g = Golden::load();
    let (ids, batch, seq) = g.ids("input_ids");
    let (labels, _, _) = g.ids("labels");
    let ids = model.input_ids(ids, batch, seq, &dev).unwrap();
    let out = match chunk {
        None => model.loss_at(ids, positions, labels, MODE),
        Some(c) => model.loss_at_chunked(ids, positions, labels, MODE, c),
    }
    .unwrap();
    measure(model, out.loss, out.tokens)
}

fn assert_same(got: &Measured, want: &Measured, what: &str) {
    let rel = ((got.0 - want.0) / want.0).abs();
    assert!(
        rel <= 1e-6,
        "{what}: loss {} vs {} (rel {rel:e})",
        got.0,
        want.0
    );
    assert_eq!(got.1, want.1, "{what}: counted tokens");
    assert_eq!(got.2.len(), want.2.len());
    assert!(!got.2.is_empty());
    for ((key, g), (want_key, w)) in got.2.iter().zip(&want.2) {
        assert_eq!(key, want_key);
        let err = rel_l2(g, w);
        assert!(err <= 1e-5, "{what}: {key}: relative L2 {err:e}");
    }
}

#[test]
fn loss_at_equals_the_logits_loss_and_its_lora_gradients() {
    let dev = Default::default();
    let model = model::<Ad>(true, &dev);
    let g = Golden::load();
    let (_, batch, seq) = g.ids("input_ids");
    let positions = PositionIds::contiguous(batch, seq);
    let want = via_logits(&model, &positions);
    let golden = g.f32("loss_qat")[0];
    assert!(((want.0 - golden) / golden).abs() <= LOSS_REL_TOL);
    assert_same(
        &via_hidden(&model, &positions, None),
        &want,
        "default chunk",
    );
    assert_same(&via_hidden(&model, &positions, Some(5)), &want, "chunk 5");
}

#[test]
fn loss_at_follows_packed_position_ids() {
    let dev = Default::default();
    let model = model::<Ad>(true, &dev);
    let g = Golden::load();
    let (_, batch, seq) = g.ids("input_ids");
    // every row packs three examples (the labels are the golden ones: only equality matters)
    let third = seq / 3;
    let row = packed_positions(&[third, third, seq - 2 * third]);
    let values: Vec<i64> = (0..batch).flat_map(|_| row.iter().copied()).collect();
    let positions = PositionIds::from_i64(&values, batch, seq).unwrap();
    let want = via_logits(&model, &positions);
    assert_same(&via_hidden(&model, &positions, Some(3)), &want, "packed");
}

#[test]
fn loss_at_checks_labels_and_positions() {
    let dev = Default::default();
    let model = model::<Flex>(true, &dev);
    let g = Golden::load();
    let (ids, batch, seq) = g.ids("input_ids");
    let positions = PositionIds::contiguous(batch, seq);
    let ids = model.input_ids(ids, batch, seq, &dev).unwrap();
    let loss = |labels: &[i64], positions: &PositionIds| {
        model
            .loss_at(ids.clone(), positions, labels, MODE)
            .unwrap_err()
            .to_string()
    };
    let e = loss(&vec![-100; batch * seq], &positions);
    assert!(e.contains("no label is counted"), "{e}");
    let mut bad = vec![-100; batch * seq];
    bad[1] = model.vocab_size() as i64;
    let e = loss(&bad, &positions);
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = loss(&bad[1..], &positions);
    assert!(e.contains("labels hold"), "{e}");
    let (labels, _, _) = g.ids("labels");
    let e = loss(labels, &PositionIds::contiguous(batch, seq + 1));
    assert!(e.contains("position_ids are"), "{e}");
    let e = model
        .loss_at_chunked(ids, &positions, labels, MODE, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chunk size"), "{e}");
}
