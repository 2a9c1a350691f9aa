//! The LoRA-QAT linear on `Autodiff<B, C>`: forward through the inner backend, custom
//! straight-through backward. Memory kept from forward to backward: `x` (when A or B need a
//! gradient), A, B and a handle on the frozen base; `Wq` is recomputed in backward, and only
//! when `x` needs a gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::deploy_backend::DeployBackend;
use super::linear::LoraLinearBackend;
use super::quant::apply_weight_transposed;
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::mxfp4::CodecError;

/// A float primitive as a rank-2 tensor.
pub(super) fn wrap<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A rank-2 tensor as its float primitive.
pub(super) fn unwrap<B: Backend>(t: Tensor<B, 2>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `dy · Wq` in backward ([`apply_weight_transposed`]), from the same inputs the forward already
/// quantized successfully.
pub(super) fn grad_input<B: DeployBackend>(
    dy: Tensor<B, 2>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Tensor<B, 2> {
    // The forward built Wq from these very tensors (immutable) with the same deterministic code
    // and returned its error instead of an output, so a failure here is an invariant violation.
    apply_weight_transposed(dy, base, lora, quant)
        .expect("Wq was quantized successfully in forward from the same inputs")
}

/// Backward of `y = x · Q(W)ᵀ` (no LoRA): only `dx = dy · Q(W)`.
#[derive(Debug)]
struct BaseLinearBackward;

impl<B: LoraLinearBackend> Backward<B, 1> for BaseLinearBackward {
    type State = (BaseWeight<B>, Quantizer);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (base, quant) = ops.state;
        let dy = wrap::<B>(grads.consume::<B>(&ops.node));
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, unwrap(grad_input(dy, &base, None, quant)));
        }
    }
}

/// `dA = s·(dy·B)ᵀ·x` (`[r, in]`), the `[n, r]` product formed and scaled first so every
/// product stays rank-sized.
pub(super) fn grad_a<B: Backend>(
    dy: Tensor<B, 2>,
    x: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f32,
) -> Tensor<B, 2> {
    dy.matmul(b).mul_scalar(scale).transpose().matmul(x)
}

/// `dB = s·dyᵀ·(x·Aᵀ)` (`[out, r]`), the `[n, r]` product formed and scaled first.
pub(super) fn grad_b<B: Backend>(
    dy: Tensor<B, 2>,
    x: Tensor<B, 2>,
    a: Tensor<B, 2>,
    scale: f32,
) -> Tensor<B, 2> {
    dy.transpose()
        .matmul(x.matmul(a.transpose()).mul_scalar(scale))
}

/// What the LoRA backward needs: checkpointed x/A/B (only those a gradient needs), the base, Q, s.
#[derive(Debug, Clone)]
struct LoraState<B: LoraLinearBackend> {
    x: Option<NodeId>,
    a: Option<NodeId>,
    b: Option<NodeId>,
    base: BaseWeight<B>,
    quant: Quantizer,
    scale: f32,
    rank: usize,
}

/// Backward of `y = x · Q(W + s·B·A)ᵀ`, parents `[x, A, B]`:
/// `dx = dy·Wq`, `dA = s·(dy·B)ᵀ·x`, `dB = s·dyᵀ·(x·Aᵀ)`.
#[derive(Debug)]
struct LoraLinearBackward;

impl<B: LoraLinearBackend> Backward<B, 3> for LoraLinearBackward {
    type State = LoraState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let st = ops.state;
        let mut fetch = |id: Option<NodeId>| {
            id.map(|id| wrap::<B>(checkpointer.retrieve_node_output::<FloatTensor<B>>(id)))
        };
        let (x, a, b) = (fetch(st.x), fetch(st.a), fetch(st.b));
        let dy = wrap::<B>(grads.consume::<B>(&ops.node));
        let [x_node, a_node, b_node] = ops.parents;
        if dy.dims()[0] == 0 {
            // no tokens: every gradient is zero (and no Wq is built, as in forward)
            let device = dy.device();
            let [out, inp] = st.base.shape();
            let rank = st.rank;
            let zeros = |shape: [usize; 2]| unwrap(Tensor::<B, 2>::zeros(shape, &device));
            for (node, shape) in [
                (x_node, [0, inp]),
                (a_node, [rank, inp]),
                (b_node, [out, rank]),
            ] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, zeros(shape));
                }
            }
            return;
        }

        if let (Some(node), Some(a), Some(b)) = (x_node, &a, &b) {
            let lora = Lora {
                a: a.clone(),
                b: b.clone(),
                scale: st.scale,
            };
            let dx = grad_input(dy.clone(), &st.base, Some(&lora), st.quant);
            grads.register::<B>(node.id, unwrap(dx));
        }
        if let (Some(node), Some(x), Some(b)) = (a_node, &x, b) {
            grads.register::<B>(node.id, unwrap(grad_a(dy.clone(), x.clone(), b, st.scale)));
        }
        if let (Some(node), Some(x), Some(a)) = (b_node, x, a) {
            grads.register::<B>(node.id, unwrap(grad_b(dy, x, a, st.scale)));
        }
    }
}

impl<B: LoraLinearBackend, C: CheckpointStrategy> LoraLinearBackend for Autodiff<B, C> {
    fn lora_linear(
        x: FloatTensor<Self>,
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        let base_inner = base.inner();
        let Some(lora) = lora else {
            let y = B::lora_linear(x.primitive.clone(), &base_inner, None, quant)?;
            let prep = BaseLinearBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful();
            return Ok(match prep {
                OpsKind::Tracked(prep) => prep.finish((base_inner, quant), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            });
        };

        let a = lora.a.clone().into_primitive().tensor();
        let b = lora.b.clone().into_primitive().tensor();
        let y = B::lora_linear(x.primitive.clone(), &base_inner, Some(&lora.inner()), quant)?;
        let (x_tracked, a_tracked, b_tracked) = (x.is_tracked(), a.is_tracked(), b.is_tracked());
        let prep = LoraLinearBackward
            .prepare::<C>([x.node.clone(), a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful();
        Ok(match prep {
            OpsKind::Tracked(mut prep) => {
                let state = LoraState {
                    x: (a_tracked || b_tracked).then(|| prep.checkpoint(&x)),
                    a: (x_tracked || b_tracked).then(|| prep.checkpoint(&a)),
                    b: (x_tracked || a_tracked).then(|| prep.checkpoint(&b)),
                    base: base_inner,
                    quant,
                    scale: lora.scale,
                    rank: lora.a.dims()[0],
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}
