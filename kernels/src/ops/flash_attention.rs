//! Flash-style attention with per-head sinks, grouped-query heads, a causal or sliding-window
//! pattern and packed segments, as a backend op with its own backward: the `[heads, seq, seq]`
//! scores are never formed, forward keeps one log-sum-exp per query row and backward recomputes
//! the probabilities block by block from it (memory linear in `seq`).
//!
//! Semantics (those of the model's `sdpa::attention`): `q [batch, heads, seq, d]` (rotated, not
//! yet scaled), `k`, `v` `[batch, kv_heads, seq, d]`, `sinks [heads]`; query head `h` uses kv head
//! `h / (heads / kv_heads)`; `s = d^-0.5 · q·k`; each row's softmax runs over its visible keys
//! ([`AttentionMask`]) plus the head's sink logit, whose column is dropped after.
//!
//! This file holds the mask, the checks, the backend trait, the public op and the `Flex` (CPU)
//! backend; `flash_attention/cpu.rs` the host kernels, `flash_attention/autodiff.rs` the backward
//! node, `crate::gpu::attention` the CubeCL kernels.

mod autodiff;
mod cpu;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

/// Bad inputs of [`flash_attention`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttentionError {
    /// A tensor whose shape does not fit the others.
    #[error("flash attention: bad shape of {what}: expected {expected:?}, got {got:?}")]
    Shape {
        /// which tensor (and rule) is wrong
        what: &'static str,
        /// the shape that would fit
        expected: Vec<usize>,
        /// the shape given
        got: Vec<usize>,
    },
    /// Query heads that do not split evenly over the kv heads.
    #[error("flash attention: {heads} query heads do not split evenly over {kv_heads} kv heads")]
    Groups {
        /// query heads
        heads: usize,
        /// kv heads
        kv_heads: usize,
    },
    /// A zero dimension (batch, heads, kv heads, seq or head dim).
    #[error("flash attention: empty input, dims {0:?} (batch, heads, kv_heads, seq, head_dim)")]
    Empty([usize; 5]),
    /// Segment starts that are not one per (batch row, query position).
    #[error("flash attention: {got} segment starts given, expected batch·seq = {expected}")]
    Segments {
        /// batch·seq
        expected: usize,
        /// the number given
        got: usize,
    },
}

/// Which keys each query sees: `k <= q`, `q - window < k` when `window` is set, and
/// `k >= segment_start(b, q)` when `segment_starts` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionMask {
    /// `None`: causal; `Some(w)`: key `k` is visible from query `q` iff `q - w < k <= q`.
    pub window: Option<usize>,
    /// Per batch row and query position (`[batch·seq]`, row-major), the column where the query's
    /// packed segment starts; `None` for contiguous rows (every start 0).
    pub segment_starts: Option<Vec<usize>>,
}

impl AttentionMask {
    /// Every key at or before the query.
    pub fn causal() -> Self {
        Self::default()
    }

    /// Keys `q - window < k <= q`.
    pub fn sliding(window: usize) -> Self {
        Self {
            window: Some(window),
            segment_starts: None,
        }
    }

    /// The same pattern confined to packed segments (`starts`: `[batch·seq]`, row-major).
    pub fn with_segments(self, starts: Vec<usize>) -> Self {
        Self {
            segment_starts: Some(starts),
            ..self
        }
    }

    /// The keys `[lo, hi)` visible from query `q` of batch row `b` (`lo >= hi` when none); the
    /// segment starts must be `[batch·seq]` (checked by [`AttentionDims::check`]).
    pub(crate) fn key_range(&self, seq: usize, b: usize, q: usize) -> (usize, usize) {
        let seg = self.segment_starts.as_ref().map_or(0, |s| s[b * seq + q]);
        let win = self.window.map_or(0, |w| (q + 1).saturating_sub(w));
        (seg.max(win), q + 1)
    }
}

/// The dimensions of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    /// batch rows
    pub batch: usize,
    /// query heads
    pub heads: usize,
    /// key/value heads (divides `heads`)
    pub kv_heads: usize,
    /// sequence length (queries and keys)
    pub seq: usize,
    /// head dimension
    pub head_dim: usize,
}

impl AttentionDims {
    /// Checks the shapes of `q`, `k`, `v`, `sinks` and the mask, and returns the dimensions.
    pub fn check(
        q: [usize; 4],
        k: [usize; 4],
        v: [usize; 4],
        sinks: [usize; 1],
        mask: &AttentionMask,
    ) -> Result<Self, AttentionError> {
        let [batch, heads, seq, head_dim] = q;
        let kv_heads = k[1];
        let dims = Self {
            batch,
            heads,
            kv_heads,
            seq,
            head_dim,
        };
        if [batch, heads, kv_heads, seq, head_dim].contains(&0) {
            return Err(AttentionError::Empty([
                batch, heads, kv_heads, seq, head_dim,
            ]));
        }
        let kv = [batch, kv_heads, seq, head_dim];
        for (what, got) in [("k (vs q)", k), ("v (vs k)", v)] {
            if got != kv {
                return Err(AttentionError::Shape {
                    what,
                    expected: kv.to_vec(),
                    got: got.to_vec(),
                });
            }
        }
        if heads % kv_heads != 0 {
            return Err(AttentionError::Groups { heads, kv_heads });
        }
        if sinks != [heads] {
            return Err(AttentionError::Shape {
                what: "sinks (one per query head)",
                expected: vec![heads],
                got: sinks.to_vec(),
            });
        }
        if let Some(starts) = &mask.segment_starts {
            if starts.len() != batch * seq {
                return Err(AttentionError::Segments {
                    expected: batch * seq,
                    got: starts.len(),
                });
            }
        }
        Ok(dims)
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The softmax scale `head_dim^-0.5`, as the model computes it.
    pub fn scale(&self) -> f32 {
        (self.head_dim as f64).powf(-0.5) as f32
    }
}

/// The tensors of one attention call: `q [batch, heads, seq, d]`, `k`, `v`
/// `[batch, kv_heads, seq, d]`, `sinks [heads]`.
#[derive(Debug, Clone)]
pub struct AttentionInputs<B: Backend> {
    /// queries (rotated, not scaled)
    pub q: FloatTensor<B>,
    /// keys
    pub k: FloatTensor<B>,
    /// values
    pub v: FloatTensor<B>,
    /// sink logits per query head
    pub sinks: FloatTensor<B>,
}

/// The gradients of the attention inputs (none for the frozen sinks).
#[derive(Debug, Clone)]
pub struct AttentionGrads<B: Backend> {
    /// `[batch, heads, seq, d]`
    pub dq: FloatTensor<B>,
    /// `[batch, kv_heads, seq, d]`, summed over the query heads of each group
    pub dk: FloatTensor<B>,
    /// `[batch, kv_heads, seq, d]`, summed over the query heads of each group
    pub dv: FloatTensor<B>,
}

/// A backend that runs flash attention as one op (inputs already checked by
/// [`AttentionDims::check`]).
///
/// `Autodiff<B, C>` records one node with parents `[q, k, v]` whose backward calls
/// [`flash_attention_backward`](FlashAttentionBackend::flash_attention_backward) of `B`.
pub trait FlashAttentionBackend: Backend {
    /// The output `[batch, heads, seq, d]` and the log-sum-exp of each row `[batch, heads, seq]`
    /// (`log(Σ_visible exp(s) + exp(sink))`; it carries no gradient).
    fn flash_attention_forward(
        inputs: AttentionInputs<Self>,
        mask: &AttentionMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `q`, `k`, `v` given the forward's output `out`, its `lse` and the
    /// output gradient `grad_out`: `D = Σ dO∘O`, `P = exp(s − lse)`, `dS = P∘(dO·Vᵀ − D)`,
    /// `dq = scale·dS·K`, `dk = scale·dSᵀ·Q`, `dv = Pᵀ·dO`.
    fn flash_attention_backward(
        inputs: AttentionInputs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        mask: &AttentionMask,
    ) -> AttentionGrads<Self>;
}

/// Attention of `q [batch, heads, seq, d]` (rotated, not yet scaled) over `k`, `v`
/// `[batch, kv_heads, seq, d]` with the per-head `sinks [heads]` and the `mask` -> `[batch,
/// heads, seq, d]`, without forming any `[seq, seq]` tensor.
///
/// Under `Autodiff` the gradients of `q`, `k` and `v` are exact (those of the naive softmax);
/// the sinks are frozen and get none.
///
/// Errors: [`AttentionError`] on mismatched shapes, a zero dimension, heads that do not split
/// over the kv heads, or segment starts that are not `batch·seq`.
pub fn flash_attention<B: FlashAttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    sinks: Tensor<B, 1>,
    mask: &AttentionMask,
) -> Result<Tensor<B, 4>, AttentionError> {
    AttentionDims::check(q.dims(), k.dims(), v.dims(), sinks.dims(), mask)?;
    let inputs = AttentionInputs {
        q: q.into_primitive().tensor(),
        k: k.into_primitive().tensor(),
        v: v.into_primitive().tensor(),
        sinks: sinks.into_primitive().tensor(),
    };
    let (out, _) = B::flash_attention_forward(inputs, mask);
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// A float primitive's values on the host as f32, with its shape.
fn host<B: Backend>(t: FloatTensor<B>) -> (Vec<f32>, Vec<usize>) {
    let data = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .convert::<f32>();
    let shape = data.shape.to_vec();
    let values = data
        .into_vec::<f32>()
        .expect("data converted to f32 reads back as f32");
    (values, shape)
}

/// Host values as a float primitive of `shape` on `device`.
fn device<B: Backend>(values: Vec<f32>, shape: &[usize], device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape.to_vec()), device)
}

/// The host inputs of one call and their dims.
struct HostInputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    sinks: Vec<f32>,
    dims: AttentionDims,
    q_shape: Vec<usize>,
    kv_shape: Vec<usize>,
}

fn host_inputs<B: Backend>(inputs: AttentionInputs<B>) -> HostInputs {
    let (q, q_shape) = host::<B>(inputs.q);
    let (k, kv_shape) = host::<B>(inputs.k);
    let (v, _) = host::<B>(inputs.v);
    let (sinks, _) = host::<B>(inputs.sinks);
    let dims = AttentionDims {
        batch: q_shape[0],
        heads: q_shape[1],
        kv_heads: kv_shape[1],
        seq: q_shape[2],
        head_dim: q_shape[3],
    };
    HostInputs {
        q,
        k,
        v,
        sinks,
        dims,
        q_shape,
        kv_shape,
    }
}

impl FlashAttentionBackend for burn::backend::Flex {
    fn flash_attention_forward(
        inputs: AttentionInputs<Self>,
        mask: &AttentionMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dev = Self::float_device(&inputs.q);
        let x = host_inputs::<Self>(inputs);
        let (out, lse) = cpu::forward(&x.q, &x.k, &x.v, &x.sinks, x.dims, mask);
        let lse_shape = &x.q_shape[..3];
        (
            device::<Self>(out, &x.q_shape, &dev),
            device::<Self>(lse, lse_shape, &dev),
        )
    }

    fn flash_attention_backward(
        inputs: AttentionInputs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        mask: &AttentionMask,
    ) -> AttentionGrads<Self> {
        let dev = Self::float_device(&inputs.q);
        let x = host_inputs::<Self>(inputs);
        let (out, _) = host::<Self>(out);
        let (lse, _) = host::<Self>(lse);
        let (grad_out, _) = host::<Self>(grad_out);
        let saved = cpu::Saved {
            out: &out,
            lse: &lse,
            grad_out: &grad_out,
        };
        let (dq, dk, dv) = cpu::backward(&x.q, &x.k, &x.v, saved, x.dims, mask);
        AttentionGrads {
            dq: device::<Self>(dq, &x.q_shape, &dev),
            dk: device::<Self>(dk, &x.kv_shape, &dev),
            dv: device::<Self>(dv, &x.kv_shape, &dev),
        }
    }
}
