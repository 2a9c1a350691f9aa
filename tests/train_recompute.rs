//! Gradient checkpointing (`step_grads` with `checkpointing = true`: each decoder layer recomputed
//! in backward from its saved input) gives the gradients of the whole-graph backward: every LoRA
//! gradient within 1e-6 relative L2 and the same loss, on the tiny fixture with its PEFT adapter,
//! under QAT and plain LoRA, for two accumulated micro-batches (one with packed position ids).
//! (On Flex they are bit-identical: the recompute runs the very ops of the tracked forward.)

mod model_support;

use burn::backend::{Autodiff, Flex};
use lora_qat::model::{ForwardMode, GradPath, QuantMode};
use lora_qat::train::batch::Batch;
use lora_qat::train::pipeline::pipelined_grads;
use lora_qat::train::step::step_grads;
use model_support::*;

type Ad = Autodiff<Flex>;

fn batches() -> Vec<Batch> {
    let g = Golden::load();
    let (ids, batch, seq) = g.ids("input_ids");
    let (labels, _, _) = g.ids("labels");
    let plain = Batch {
        ids: ids.to_vec(),
        labels: labels.to_vec(),
        positions: (0..batch).flat_map(|_| 0..seq as i64).collect::<Vec<i64>>(),
        batch,
        seq,
    };
    // the same tokens as packed rows of two examples each (first token of each example not counted)
    let half = seq / 2;
    let packed_positions = (0..batch)
        .flat_map(|_| packed_positions(&[half, seq - half]))
        .collect();
    let mut packed_labels = labels.to_vec();
    for row in 0..batch {
        packed_labels[row * seq + half] = -100;
    }
    let packed = Batch {
        positions: packed_positions,
        labels: packed_labels,
        ..plain.clone()
    };
    vec![plain, packed]
}

fn check(quant: QuantMode) {
    let dev = Default::default();
    let model = model::<Ad>(true, &dev);
    let mode = ForwardMode {
        quant,
        path: GradPath::CustomOp,
    };
    let b = batches();
    let full = step_grads(&model, &b, mode, false).unwrap();
    let ckpt = step_grads(&model, &b, mode, true).unwrap();
    assert_eq!(full.counted, ckpt.counted);
    let rel = ((full.loss - ckpt.loss) / full.loss).abs();
    assert!(
        rel <= 1e-6,
        "{quant:?}: loss {} vs {}",
        full.loss,
        ckpt.loss
    );
    assert_eq!(
        full.grads.keys().collect::<Vec<_>>(),
        ckpt.grads.keys().collect::<Vec<_>>(),
        "{quant:?}: the same adapter tensors get gradients"
    );
    assert!(!full.grads.is_empty());
    for (name, want) in &full.grads {
        let got = &ckpt.grads[name];
        let err = rel_l2(got, want);
        assert!(
            err <= 1e-6,
            "{quant:?} {name}: relative L2 difference {err:e} between checkpointed and full backward"
        );
        assert!(want.iter().any(|v| *v != 0.0), "{name}: zero gradient");
    }
}

#[test]
fn checkpointed_gradients_equal_the_full_graph_under_qat() {
    check(QuantMode::Mxfp4);
}

#[test]
fn checkpointed_gradients_equal_the_full_graph_without_quantization() {
    check(QuantMode::None);
}

/// The pipelined stages (`train::pipeline`, layers 0..2 and 2..4 in their own threads) give the
/// sequential step's gradients and loss bit for bit, with and without recomputation; a bad
/// micro-batch stops every stage (no stage waits forever) with the failing stage's own error.
#[test]
fn pipelined_stages_equal_the_sequential_step_and_stop_together_on_errors() {
    let dev = Default::default();
    let model = model::<Ad>(true, &dev);
    let mode = ForwardMode {
        quant: QuantMode::Mxfp4,
        path: GradPath::CustomOp,
    };
    let b = batches();
    let refs: Vec<&Batch> = b.iter().collect();
    let total = b.iter().map(Batch::counted).sum();
    let ranges = [0..2, 2..4];
    for checkpointing in [false, true] {
        let seq = step_grads(&model, &b, mode, checkpointing).unwrap();
        let pipe = pipelined_grads(&model, &ranges, &refs, total, mode, checkpointing)
            .and_then(|g| g.into_host())
            .unwrap();
        assert_eq!(seq.loss.to_bits(), pipe.loss.to_bits(), "{checkpointing}");
        assert_eq!(seq.counted, pipe.counted);
        assert_eq!(seq.grads, pipe.grads, "checkpointing {checkpointing}");
    }

    // a token id outside the vocabulary fails in stage 0; a label outside it in the last stage's
    // head, after stage 0 has sent its activations and waits for their gradient
    let vocab = model.vocab_size() as i64;
    let mut bad_ids = b.clone();
    bad_ids[1].ids[3] = vocab + 5;
    let mut bad_labels = b.clone();
    bad_labels[1].labels[5] = vocab + 7;
    for (bad, stage, what) in [
        (bad_ids, 0, "outside the vocabulary"),
        (bad_labels, 1, "label"),
    ] {
        let refs: Vec<&Batch> = bad.iter().collect();
        let err = pipelined_grads(&model, &ranges, &refs, total, mode, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("pipeline stage {stage}")), "{err}");
        assert!(err.contains(what), "{err}");
    }
}
