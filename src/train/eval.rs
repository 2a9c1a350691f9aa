//! Eval losses: the mean cross-entropy over every counted token of the eval sequences, with the
//! deployed weights (MXFP4 experts, bf16 attention) and with the unquantized `W + ΔW`, so a QAT run
//! shows its quantization gap close.

use anyhow::Result;
use burn::tensor::ElementConversion;
use kernels::ops::LoraLinearBackend;

use super::batch::{collate, Batch};
use super::step::batch_loss;
use crate::data::Split;
use crate::model::{ForwardMode, GptOssForCausalLM, GradPath, QuantMode};

/// Token-weighted mean loss over `split` in `quant`.
pub fn eval_loss<B: LoraLinearBackend>(
    model: &GptOssForCausalLM<B>,
    split: &Split,
    batch_size: usize,
    pad_id: u32,
    quant: QuantMode,
) -> Result<f64> {
    let mode = ForwardMode {
        quant,
        path: GradPath::CustomOp,
    };
    let (mut sum, mut count) = (0f64, 0usize);
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let seqs: Vec<_> = chunk.iter().map(|&i| split.sequence(i)).collect();
        let batch: Batch = collate(&seqs, pad_id);
        let n = batch.counted();
        if n == 0 {
            continue;
        }
        let loss: f64 = batch_loss(model, &batch, mode)?.into_scalar().elem();
        sum += loss * n as f64;
        count += n;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}
