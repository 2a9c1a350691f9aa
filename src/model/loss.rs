//! Causal LM loss as transformers' `ForCausalLMLoss`: `logits[:, :-1]` predict `labels[:, 1:]`,
//! label `-100` is ignored, mean cross-entropy over the counted tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The label value that is not counted.
pub const IGNORE_INDEX: i64 = -100;

/// The mean loss and how many tokens it averages.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// `[1]`: mean negative log-likelihood over the counted tokens.
    pub loss: Tensor<B, 1>,
    /// Number of counted (label != -100) predictions.
    pub tokens: usize,
}

/// The counted predictions after the shift: flat logit rows `b·seq + t` and their targets
/// `labels[b, t + 1]`.
pub fn shifted_targets(
    labels: &[i64],
    batch: usize,
    seq: usize,
    vocab: usize,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    anyhow::ensure!(
        labels.len() == batch * seq,
        "labels hold {} values, expected batch {batch} × seq {seq}",
        labels.len()
    );
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let label = labels[b * seq + t + 1];
            if label == IGNORE_INDEX {
                continue;
            }
            anyhow::ensure!(
                (0..vocab as i64).contains(&label),
                "label {label} at [{b}, {}] is outside the vocabulary (0..{vocab}) and is not -100",
                t + 1
            );
            rows.push((b * seq + t) as i64);
            targets.push(label);
        }
    }
    Ok((rows, targets))
}

/// Mean cross-entropy of `logits [batch, seq, vocab]` against `labels` (`[batch · seq]`, row-major,
/// unshifted: the shift happens here). Errors if no token is counted (the mean would be NaN).
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> anyhow::Result<LossOutput<B>> {
    let [batch, seq, vocab] = logits.dims();
    let (rows, targets) = shifted_targets(labels, batch, seq, vocab)?;
    let tokens = rows.len();
    anyhow::ensure!(
        tokens > 0,
        "no label is counted (all are -100 after the shift): the mean loss is undefined"
    );
    let device = logits.device();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [tokens]), &device);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [tokens, 1]), &device);
    let picked = logits.reshape([batch * seq, vocab]).select(0, rows);
    let nll = log_softmax(picked, 1).gather(1, targets).sum().neg();
    Ok(LossOutput {
        loss: nll.div_scalar(tokens as f64),
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn shift_and_ignore_by_hand() {
        let (rows, targets) = shifted_targets(&[5, -100, 1, 2, 0, -100], 2, 3, 8).unwrap();
        // batch 0: t=0 -> label -100 skipped, t=1 -> label 1; batch 1: t=0 -> 0, t=1 -> -100
        assert_eq!(rows, vec![1, 3]);
        assert_eq!(targets, vec![1, 0]);
        assert!(shifted_targets(&[0, 9], 1, 2, 8).is_err());
        assert!(shifted_targets(&[0, -5], 1, 2, 8).is_err());
    }

    #[test]
    fn loss_by_hand() {
        let dev = Default::default();
        // one sequence of 2 tokens, vocab 2: position 0 logits [0, ln 3] predict label 1
        let logits = Tensor::<Flex, 3>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 7.0, 7.0], [1, 2, 2]),
            &dev,
        );
        let out = causal_lm_loss(logits.clone(), &[0, 1]).unwrap();
        assert_eq!(out.tokens, 1);
        let loss = out.loss.into_scalar();
        assert!((loss - (4f32 / 3.0).ln()).abs() < 1e-6, "{loss}");
        assert!(causal_lm_loss(logits, &[0, -100]).is_err());
    }
}
