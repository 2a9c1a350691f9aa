//! The chunked cross-entropy on `Autodiff<B, C>`: forward through the inner backend, one node
//! with parents `[h, weight]` and a backward that recomputes the logits chunk by chunk. Kept from
//! forward to backward: `h` (checkpointed), a handle on `weight`, the targets and the two row
//! statistics — never the `[N, V]` logits or probabilities.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{IndexingUpdateOp, Tensor};

use super::autodiff::{unwrap, wrap};
use super::chunked_ce::{chunks, target_tensor, ChunkedCeBackend, RowStats};

/// The gradients of `loss = mean_i nll_i` scaled by the upstream `dloss` (`[1]`): `dh [N, H]`
/// when `need_h`, `dW [V, H]` when `need_w`. Per chunk: `G = exp((h_c·Wᵀ − max) − log_sum)`,
/// `G[i, target_i] −= 1`, `dh_c = (dloss/N)·G·W`, `dW += Gᵀ·h_c` (scaled once at the end).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunked_backward<B: Backend>(
    h: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    targets: &[i64],
    stats: &RowStats<B>,
    dloss: Tensor<B, 1>,
    chunk: usize,
    need_h: bool,
    need_w: bool,
) -> (Option<Tensor<B, 2>>, Option<Tensor<B, 2>>) {
    let [n, _] = h.dims();
    let device = h.device();
    let t = target_tensor::<B>(targets, &device);
    let coef = dloss.div_scalar(n as f64).reshape([1, 1]);
    let wt = weight.clone().transpose();
    let (max, log_sum) = (
        stats.max.clone().reshape([n, 1]),
        stats.log_sum.clone().reshape([n, 1]),
    );
    let mut dh_parts = Vec::new();
    let mut dw: Option<Tensor<B, 2>> = None;
    for (start, len) in chunks(n, chunk) {
        let h_c = h.clone().narrow(0, start, len);
        let logits = h_c.clone().matmul(wt.clone());
        let p = ((logits - max.clone().narrow(0, start, len))
            - log_sum.clone().narrow(0, start, len))
        .exp();
        let minus_one = Tensor::<B, 2>::full([len, 1], -1.0, &device);
        let g = p.scatter(
            1,
            t.clone().narrow(0, start, len),
            minus_one,
            IndexingUpdateOp::Add,
        );
        if need_h {
            dh_parts.push(g.clone().matmul(weight.clone()) * coef.clone());
        }
        if need_w {
            let part = g.transpose().matmul(h_c);
            dw = Some(match dw {
                Some(acc) => acc + part,
                None => part,
            });
        }
    }
    let dh = need_h.then(|| Tensor::cat(dh_parts, 0));
    (dh, dw.map(|dw| dw * coef))
}

/// What the backward needs: the checkpointed `h`, the weight, the targets, the row statistics,
/// the chunk size.
#[derive(Debug, Clone)]
struct ChunkedCeState<B: Backend> {
    h: NodeId,
    weight: FloatTensor<B>,
    targets: Vec<i64>,
    stats: RowStats<B>,
    chunk: usize,
}

/// Backward of the chunked cross-entropy, parents `[h, weight]`.
#[derive(Debug)]
struct ChunkedCeBackward;

impl<B: Backend> Backward<B, 2> for ChunkedCeBackward {
    type State = ChunkedCeState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let st = ops.state;
        let h = wrap::<B>(checkpointer.retrieve_node_output::<FloatTensor<B>>(st.h));
        let dloss = Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(
            grads.consume::<B>(&ops.node),
        ));
        let [h_node, w_node] = ops.parents;
        let (dh, dw) = chunked_backward(
            &h,
            &wrap::<B>(st.weight),
            &st.targets,
            &st.stats,
            dloss,
            st.chunk,
            h_node.is_some(),
            w_node.is_some(),
        );
        if let (Some(node), Some(dh)) = (h_node, dh) {
            grads.register::<B>(node.id, unwrap(dh));
        }
        if let (Some(node), Some(dw)) = (w_node, dw) {
            grads.register::<B>(node.id, unwrap(dw));
        }
    }
}

impl<B: ChunkedCeBackend, C: CheckpointStrategy> ChunkedCeBackend for Autodiff<B, C> {
    fn chunked_ce_forward(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[i64],
        chunk: usize,
    ) -> (FloatTensor<Self>, RowStats<Self>) {
        let (loss, stats) = B::chunked_ce_forward(
            h.primitive.clone(),
            weight.primitive.clone(),
            targets,
            chunk,
        );
        let outer = RowStats {
            max: Tensor::from_inner(stats.max.clone()),
            log_sum: Tensor::from_inner(stats.log_sum.clone()),
        };
        let prep = ChunkedCeBackward
            .prepare::<C>([h.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful();
        let loss = match prep {
            OpsKind::Tracked(mut prep) => {
                let state = ChunkedCeState {
                    h: prep.checkpoint(&h),
                    weight: weight.primitive,
                    targets: targets.to_vec(),
                    stats,
                    chunk,
                };
                prep.finish(state, loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (loss, outer)
    }
}
