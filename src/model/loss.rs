//! Causal LM loss as transformers' `ForCausalLMLoss`: `logits[:, :-1]` predict `labels[:, 1:]`,
//! label `-100` is ignored, mean cross-entropy over the counted tokens.
//!
//! Two paths: [`causal_lm_loss`] from full logits (plain burn ops, the reference: under autodiff it
//! keeps `[batch, seq, vocab]` intermediates) and [`chunked_causal_lm_loss`] from the final hidden
//! states through the frozen head, chunk by chunk (`kernels::ops::chunked_cross_entropy`), which
//! never forms the full logits.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kernels::ops::{chunked_cross_entropy, ChunkedCeBackend};

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

/// [`shifted_targets`], erroring when no token is counted (the mean would be NaN).
pub fn counted_targets(
    labels: &[i64],
    batch: usize,
    seq: usize,
    vocab: usize,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let (rows, targets) = shifted_targets(labels, batch, seq, vocab)?;
    anyhow::ensure!(
        !rows.is_empty(),
        "no label is counted (all are -100 after the shift): the mean loss is undefined"
    );
    Ok((rows, targets))
}

/// Mean cross-entropy of `logits [batch, seq, vocab]` against `labels` (`[batch · seq]`, row-major,
/// unshifted: the shift happens here). Errors if no token is counted (the mean would be NaN).
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> anyhow::Result<LossOutput<B>> {
    let [batch, seq, vocab] = logits.dims();
    let (rows, targets) = counted_targets(labels, batch, seq, vocab)?;
    let tokens = rows.len();
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

/// The same loss as [`causal_lm_loss`]`(hidden · head_weightᵀ, labels)` from the final hidden
/// states `hidden [batch, seq, H]` and the frozen head `head_weight [vocab, H]`, with `chunk`
/// rows of logits at a time (`kernels::ops::default_chunk_rows` keeps them within 64 MiB).
pub fn chunked_causal_lm_loss<B: ChunkedCeBackend>(
    hidden: Tensor<B, 3>,
    head_weight: Tensor<B, 2>,
    labels: &[i64],
    chunk: usize,
) -> anyhow::Result<LossOutput<B>> {
    let [batch, seq, _] = hidden.dims();
    let [vocab, _] = head_weight.dims();
    let (rows, targets) = counted_targets(labels, batch, seq, vocab)?;
    counted_rows_loss(hidden, head_weight, rows, &targets, chunk)
}

/// The chunked loss of the counted rows of [`counted_targets`]: rows `rows` (flat `b·seq + t`) of
/// `hidden [batch, seq, H]` against `targets`, through `head_weight [vocab, H]`.
pub fn counted_rows_loss<B: ChunkedCeBackend>(
    hidden: Tensor<B, 3>,
    head_weight: Tensor<B, 2>,
    rows: Vec<i64>,
    targets: &[i64],
    chunk: usize,
) -> anyhow::Result<LossOutput<B>> {
    let [batch, seq, width] = hidden.dims();
    let tokens = rows.len();
    let device = hidden.device();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [tokens]), &device);
    let h = hidden.reshape([batch * seq, width]).select(0, rows);
    let loss = chunked_cross_entropy(h, head_weight, targets, chunk)?;
    Ok(LossOutput { loss, tokens })
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

    #[test]
    fn chunked_loss_equals_the_logits_loss() {
        type Ad = burn::backend::Autodiff<Flex>;
        let dev = Default::default();
        let (batch, seq, width, vocab) = (2, 5, 6, 11);
        let wave =
            |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin() * 3.0).collect() };
        let hidden = wave(batch * seq * width, 0.37);
        let head = Tensor::<Ad, 2>::from_data(
            TensorData::new(wave(vocab * width, 0.91), [vocab, width]),
            &dev,
        );
        let labels = [-100, 3, 4, -100, 10, 7, 0, -100, 2, 5];
        let h = || {
            Tensor::<Ad, 3>::from_data(TensorData::new(hidden.clone(), [batch, seq, width]), &dev)
                .require_grad()
        };
        let grad = |h: &Tensor<Ad, 3>, loss: Tensor<Ad, 1>| {
            let g = h.grad(&loss.backward()).unwrap();
            g.into_data().to_vec::<f32>().unwrap()
        };
        let h_ref = h();
        let logits = h_ref
            .clone()
            .reshape([batch * seq, width])
            .matmul(head.clone().transpose())
            .reshape([batch, seq, vocab]);
        let want = causal_lm_loss(logits, &labels).unwrap();
        assert_eq!(want.tokens, 6);
        let want_loss = want.loss.clone().into_scalar();
        let want_grad = grad(&h_ref, want.loss);
        for chunk in [1, 4, 100] {
            let h_got = h();
            let got = chunked_causal_lm_loss(h_got.clone(), head.clone(), &labels, chunk).unwrap();
            assert_eq!(got.tokens, 6);
            let loss = got.loss.clone().into_scalar();
            assert!(
                ((loss - want_loss) / want_loss).abs() <= 1e-6,
                "{loss} vs {want_loss}"
            );
            let g = grad(&h_got, got.loss);
            let num: f32 = g.iter().zip(&want_grad).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f32 = want_grad.iter().map(|b| b * b).sum();
            assert!((num / den).sqrt() <= 1e-5, "chunk {chunk}");
            // the ignored rows (and the last column) get exactly zero
            for (i, row) in g.chunks(width).enumerate() {
                let (b, t) = (i / seq, i % seq);
                if t + 1 == seq || labels[b * seq + t + 1] == IGNORE_INDEX {
                    assert!(row.iter().all(|&x| x == 0.0), "row {i}");
                }
            }
        }
        let err = chunked_causal_lm_loss(h(), head.clone(), &[-100; 10], 2).unwrap_err();
        assert!(err.to_string().contains("no label is counted"), "{err}");
        assert!(chunked_causal_lm_loss(h(), head, &labels[..9], 2).is_err());
    }
}
