//! Mean cross-entropy through a frozen output head without the full logits: `h [N, H]` (row `i`
//! predicts `targets[i]`), `W [V, H]`, `loss = mean_i(lse_i − (h_i·Wᵀ)[targets[i]])`, computed
//! `chunk` rows at a time so at most `[chunk, V]` logits exist at once. Only two floats per row
//! (the row max and `log Σ exp(logits − max)`) are kept for backward, which recomputes each
//! chunk's logits (`chunked_ce_autodiff.rs`). This file holds the checks, the trait, the forward
//! of plain backends and the plain-burn reference.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

/// Logits per chunk of the default chunking (16 Mi f32 = 64 MiB).
pub const DEFAULT_CHUNK_LOGITS: usize = 16 << 20;

/// Rows per chunk so one chunk's f32 logits stay within [`DEFAULT_CHUNK_LOGITS`] (at least 1).
pub fn default_chunk_rows(vocab: usize) -> usize {
    (DEFAULT_CHUNK_LOGITS / vocab.max(1)).max(1)
}

/// Bad inputs of the cross-entropy ops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossEntropyError {
    /// A dimension that does not fit the others.
    #[error("cross-entropy: bad {what}: expected {expected}, got {got}")]
    Shape {
        /// which dimension (and rule) is wrong
        what: &'static str,
        /// the size that would fit
        expected: usize,
        /// the size given
        got: usize,
    },
    /// No rows: the mean is undefined.
    #[error("cross-entropy over zero rows: the mean loss is undefined")]
    Empty,
    /// A chunk of zero rows.
    #[error("cross-entropy: the chunk size must be at least 1 row")]
    ZeroChunk,
    /// A target outside `0..vocab`.
    #[error("cross-entropy: target {target} of row {row} is outside the vocabulary (0..{vocab})")]
    Target {
        /// the row of `h`
        row: usize,
        /// its target
        target: i64,
        /// the vocabulary size
        vocab: usize,
    },
}

/// Checks `h [N, H]`, `weight [V, H]`, one target in `0..V` per row, `N > 0`.
pub(crate) fn check_inputs(
    h: [usize; 2],
    weight: [usize; 2],
    targets: &[i64],
) -> Result<(), CrossEntropyError> {
    let ([n, hidden], [vocab, w_hidden]) = (h, weight);
    if w_hidden != hidden {
        return Err(CrossEntropyError::Shape {
            what: "head width (columns of W must equal the columns of h)",
            expected: hidden,
            got: w_hidden,
        });
    }
    if targets.len() != n {
        return Err(CrossEntropyError::Shape {
            what: "number of targets (one per row of h)",
            expected: n,
            got: targets.len(),
        });
    }
    if n == 0 {
        return Err(CrossEntropyError::Empty);
    }
    match targets
        .iter()
        .position(|&t| !(0..vocab as i64).contains(&t))
    {
        Some(row) => Err(CrossEntropyError::Target {
            row,
            target: targets[row],
            vocab,
        }),
        None => Ok(()),
    }
}

/// `(start, len)` of each chunk of `chunk` rows over `n` rows (a zero chunk counts as 1).
pub(crate) fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..n).step_by(chunk).map(move |s| (s, chunk.min(n - s)))
}

/// `targets` as an Int tensor `[N, 1]` (the index shape of `gather`/`scatter` along dim 1).
pub(crate) fn target_tensor<B: Backend>(targets: &[i64], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(targets.to_vec(), [targets.len(), 1]),
        device,
    )
}

/// Per-row statistics of the logits, kept from forward to backward: `max [N]` and
/// `log_sum [N] = log Σ_v exp(logits_v − max)` (so `lse = max + log_sum`). They are kept apart so
/// `p = exp((logits − max) − log_sum)` is exactly 1 where one logit dominates.
#[derive(Debug, Clone)]
pub struct RowStats<B: Backend> {
    /// Row maxima of the logits.
    pub max: Tensor<B, 1>,
    /// `log Σ exp(logits − max)` per row.
    pub log_sum: Tensor<B, 1>,
}

impl<B: Backend> RowStats<B> {
    /// `lse` per row, `[N]`.
    pub fn lse(&self) -> Tensor<B, 1> {
        self.max.clone() + self.log_sum.clone()
    }
}

/// A backend that runs the chunked cross-entropy as one op (inputs already checked).
///
/// Plain backends run the forward only; `Autodiff<B, C>` records one node with parents
/// `[h, weight]` whose backward recomputes each chunk's logits: `G = softmax − onehot(target)`,
/// `dh = (g/N)·G·W`, and `dW = (g/N)·Σ Gᵀ·h` only when the weight is tracked (the frozen head
/// of the model is not). No `[N, V]` tensor is formed in either direction.
pub trait ChunkedCeBackend: Backend {
    /// `h [N, H]`, `weight [V, H]` -> the mean loss `[1]` and the row statistics (which carry no
    /// gradient), `chunk` rows of logits at a time.
    fn chunked_ce_forward(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[i64],
        chunk: usize,
    ) -> (FloatTensor<Self>, RowStats<Self>);
}

/// The forward of a plain (non-autodiff) backend, in burn tensor ops on the device of `h`: per
/// chunk `logits = h_c·Wᵀ`, `m = max`, `s = log Σ exp(logits − m)`, `nll = (m − logit[target]) + s`;
/// loss = sum(nll) / N.
pub fn chunked_forward<B: Backend>(
    h: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[i64],
    chunk: usize,
) -> (Tensor<B, 1>, RowStats<B>) {
    let [n, _] = h.dims();
    let device = h.device();
    let t = target_tensor::<B>(targets, &device);
    let wt = weight.transpose();
    let (mut nll, mut max, mut log_sum) = (Vec::new(), Vec::new(), Vec::new());
    for (start, len) in chunks(n, chunk) {
        let logits = h.clone().narrow(0, start, len).matmul(wt.clone());
        let picked = logits.clone().gather(1, t.clone().narrow(0, start, len));
        let m = logits.clone().max_dim(1);
        // `logits` is no longer shared here, so the subtraction and exp may run in place
        let s = (logits - m.clone()).exp().sum_dim(1).log();
        nll.push((m.clone() - picked) + s.clone());
        max.push(m);
        log_sum.push(s);
    }
    let flat = |parts: Vec<Tensor<B, 2>>| Tensor::cat(parts, 0).reshape([n]);
    let loss = flat(nll).sum().div_scalar(n as f64);
    let stats = RowStats {
        max: flat(max),
        log_sum: flat(log_sum),
    };
    (loss, stats)
}

/// [`chunked_forward`] on primitives.
pub fn forward_primitives<B: Backend>(
    h: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: &[i64],
    chunk: usize,
) -> (FloatTensor<B>, RowStats<B>) {
    let wrap = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t));
    let (loss, stats) = chunked_forward(wrap(h), wrap(weight), targets, chunk);
    (loss.into_primitive().tensor(), stats)
}

impl ChunkedCeBackend for burn::backend::Flex {
    fn chunked_ce_forward(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[i64],
        chunk: usize,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        forward_primitives::<Self>(h, weight, targets, chunk)
    }
}

/// Mean cross-entropy `mean_i(lse(h_i·Wᵀ) − (h_i·Wᵀ)[targets[i]])`, `h [N, H]`, `weight [V, H]`,
/// `chunk` rows of logits at a time ([`default_chunk_rows`] keeps them within 64 MiB).
///
/// Under `Autodiff` the gradients of `h` (and of `weight` when it is tracked) equal those of
/// [`cross_entropy_reference`] through burn's autodiff; memory kept for backward is `h`, a handle
/// on `weight` and two floats per row.
///
/// Errors: [`CrossEntropyError`] on mismatched shapes, no rows, a zero chunk or a target outside
/// `0..V`.
pub fn chunked_cross_entropy<B: ChunkedCeBackend>(
    h: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[i64],
    chunk: usize,
) -> Result<Tensor<B, 1>, CrossEntropyError> {
    check_inputs(h.dims(), weight.dims(), targets)?;
    if chunk == 0 {
        return Err(CrossEntropyError::ZeroChunk);
    }
    let (loss, _) = B::chunked_ce_forward(
        h.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        targets,
        chunk,
    );
    Ok(Tensor::from_primitive(TensorPrimitive::Float(loss)))
}

/// The reference in plain burn ops: full logits `h·Wᵀ [N, V]`, `log_softmax`, gather, mean.
/// Under autodiff burn keeps the `[N, V]` intermediates: the parity target of
/// [`chunked_cross_entropy`], not for real vocabularies.
pub fn cross_entropy_reference<B: Backend>(
    h: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[i64],
) -> Result<Tensor<B, 1>, CrossEntropyError> {
    check_inputs(h.dims(), weight.dims(), targets)?;
    let t = target_tensor::<B>(targets, &h.device());
    let logits = h.matmul(weight.transpose());
    let nll = log_softmax(logits, 1).gather(1, t).sum().neg();
    Ok(nll.div_scalar(targets.len() as f64))
}
