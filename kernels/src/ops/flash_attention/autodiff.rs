//! Flash attention on `Autodiff<B, C>`: forward through the inner backend, one node with parents
//! `[q, k, v]` whose backward runs the inner backend's flash backward. Kept from forward to
//! backward: `q`, `k`, `v` (checkpointed), the output, the per-row log-sum-exp, the sinks and
//! the mask — never the probabilities.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::{AttentionGrads, AttentionInputs, AttentionMask, FlashAttentionBackend};

/// What the backward needs.
#[derive(Debug, Clone)]
struct FlashState<B: FlashAttentionBackend> {
    q: NodeId,
    k: NodeId,
    v: NodeId,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    sinks: FloatTensor<B>,
    mask: AttentionMask,
}

/// Backward of flash attention, parents `[q, k, v]` (the sinks are frozen).
#[derive(Debug)]
struct FlashBackward;

impl<B: FlashAttentionBackend> Backward<B, 3> for FlashBackward {
    type State = FlashState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let st = ops.state;
        let inputs = AttentionInputs {
            q: checkpointer.retrieve_node_output::<FloatTensor<B>>(st.q),
            k: checkpointer.retrieve_node_output::<FloatTensor<B>>(st.k),
            v: checkpointer.retrieve_node_output::<FloatTensor<B>>(st.v),
            sinks: st.sinks,
        };
        let grad_out = grads.consume::<B>(&ops.node);
        let g = B::flash_attention_backward(inputs, st.out, st.lse, grad_out, &st.mask);
        let [q_node, k_node, v_node] = ops.parents;
        for (node, grad) in [(q_node, g.dq), (k_node, g.dk), (v_node, g.dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FlashAttentionBackend, C: CheckpointStrategy> FlashAttentionBackend for Autodiff<B, C> {
    fn flash_attention_forward(
        inputs: AttentionInputs<Self>,
        mask: &AttentionMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let AttentionInputs { q, k, v, sinks } = inputs;
        let inner = AttentionInputs {
            q: q.primitive.clone(),
            k: k.primitive.clone(),
            v: v.primitive.clone(),
            sinks: sinks.primitive.clone(),
        };
        let (out, lse) = B::flash_attention_forward(inner, mask);
        let lse_outer = Self::from_inner(lse.clone());
        let prep = FlashBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful();
        let out = match prep {
            OpsKind::Tracked(mut prep) => {
                let state = FlashState {
                    q: prep.checkpoint(&q),
                    k: prep.checkpoint(&k),
                    v: prep.checkpoint(&v),
                    out: out.clone(),
                    lse,
                    sinks: sinks.primitive,
                    mask: mask.clone(),
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, lse_outer)
    }

    fn flash_attention_backward(
        inputs: AttentionInputs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        mask: &AttentionMask,
    ) -> AttentionGrads<Self> {
        let inner = AttentionInputs {
            q: inputs.q.primitive,
            k: inputs.k.primitive,
            v: inputs.v.primitive,
            sinks: inputs.sinks.primitive,
        };
        let g = B::flash_attention_backward(
            inner,
            out.primitive,
            lse.primitive,
            grad_out.primitive,
            mask,
        );
        AttentionGrads {
            dq: Self::from_inner(g.dq),
            dk: Self::from_inner(g.dk),
            dv: Self::from_inner(g.dv),
        }
    }
}
