//! The grouped LoRA-QAT linear on `Autodiff<B, C>`: forward through the inner backend, one node
//! with parents `[x, a, b]` (or `[x]` without LoRA) and a per-expert straight-through backward.
//! Kept from forward to backward: `x` (when `a` or `b` need a gradient), `a`, `b`, handles on
//! the frozen bases and the offsets; each `Wq_e` is recomputed in backward, one at a time, and
//! only when `x` needs a gradient.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use super::autodiff::{grad_a, grad_b, grad_input, unwrap, wrap};
use super::deploy_backend::DeployBackend;
use super::grouped::{expert_rows, rank_of, GroupedLora, GroupedLoraLinearBackend};
use super::linear::LoraLinearBackend;
use super::weight::{BaseWeight, Quantizer};
use crate::mxfp4::CodecError;

/// `dx = cat_e(dy_e · Wq_e)` (`[0, in]` when there are no rows).
fn grad_x<B: DeployBackend>(
    dy: &Tensor<B, 2>,
    bases: &[BaseWeight<B>],
    lora: Option<&GroupedLora<B>>,
    offsets: &[usize],
    quant: Quantizer,
) -> FloatTensor<B> {
    let device = dy.device();
    let rank = rank_of(lora, bases.len());
    let parts: Vec<_> = expert_rows(offsets)
        .map(|(e, start, len)| {
            let lora_e = lora.map(|l| l.expert(e, rank));
            grad_input(
                dy.clone().narrow(0, start, len),
                &bases[e],
                lora_e.as_ref(),
                quant,
            )
        })
        .collect();
    let inp = bases.first().map_or(0, |b| b.shape()[1]);
    unwrap(if parts.is_empty() {
        Tensor::zeros([0, inp], &device)
    } else {
        Tensor::cat(parts, 0)
    })
}

/// Backward of `y = x · Q(W_e)ᵀ` per expert (no LoRA): only `dx`.
#[derive(Debug)]
struct GroupedBaseBackward;

impl<B: LoraLinearBackend> Backward<B, 1> for GroupedBaseBackward {
    type State = (Vec<BaseWeight<B>>, Vec<usize>, Quantizer);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (bases, offsets, quant) = ops.state;
        let dy = wrap::<B>(grads.consume::<B>(&ops.node));
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, grad_x(&dy, &bases, None, &offsets, quant));
        }
    }
}

/// What the grouped LoRA backward needs: checkpointed x/a/b (only those a gradient needs),
/// the bases, the offsets, Q and s.
#[derive(Debug, Clone)]
struct GroupedState<B: Backend> {
    x: Option<NodeId>,
    a: Option<NodeId>,
    b: Option<NodeId>,
    /// The base weights, or (`deployed`) each expert's deployed `MXFP4(W + s·B·A)`, packed,
    /// built once in forward for `dx` in backward.
    bases: Vec<BaseWeight<B>>,
    deployed: bool,
    offsets: Vec<usize>,
    quant: Quantizer,
    scale: f32,
    rank: usize,
}

/// Backward of the grouped LoRA-QAT linear, parents `[x, a, b]`: per expert `e` with rows,
/// `dx_e = dy_e·Wq_e`, `dA_e = s·(dy_e·B_e)ᵀ·x_e`, `dB_e = s·dy_eᵀ·(x_e·A_eᵀ)`; zero
/// `dA_e`/`dB_e` for experts without rows.
#[derive(Debug)]
struct GroupedLoraBackward;

impl<B: LoraLinearBackend> Backward<B, 3> for GroupedLoraBackward {
    type State = GroupedState<B>;

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
        let device = dy.device();
        let [out, inp] = st.bases.first().map_or([0, 0], |b| b.shape());
        let (rank, s) = (st.rank, st.scale);
        let ranges: Vec<_> = st.offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect();

        if let (Some(node), true) = (&x_node, st.deployed) {
            // dx = dy · Wq_e, Wq_e decoded from the packed weights the forward computed with
            let dx = grad_x(&dy, &st.bases, None, &st.offsets, Quantizer::None);
            grads.register::<B>(node.id, dx);
        } else if let (Some(node), Some(a), Some(b)) = (x_node, &a, &b) {
            let lora = GroupedLora {
                a: a.clone(),
                b: b.clone(),
                scale: s,
            };
            let dx = grad_x(&dy, &st.bases, Some(&lora), &st.offsets, st.quant);
            grads.register::<B>(node.id, dx);
        }
        if let (Some(node), Some(x), Some(b)) = (a_node, &x, &b) {
            let parts = ranges.iter().enumerate().map(|(e, &(start, len))| {
                if len == 0 {
                    return Tensor::zeros([rank, inp], &device);
                }
                let (dy_e, x_e) = (
                    dy.clone().narrow(0, start, len),
                    x.clone().narrow(0, start, len),
                );
                grad_a(dy_e, x_e, b.clone().narrow(1, e * rank, rank), s)
            });
            let da = cat_or_zeros(parts.collect(), 0, [0, inp], &device);
            grads.register::<B>(node.id, unwrap(da));
        }
        if let (Some(node), Some(x), Some(a)) = (b_node, &x, &a) {
            let parts = ranges.iter().enumerate().map(|(e, &(start, len))| {
                if len == 0 {
                    return Tensor::zeros([out, rank], &device);
                }
                let (dy_e, x_e) = (
                    dy.clone().narrow(0, start, len),
                    x.clone().narrow(0, start, len),
                );
                grad_b(dy_e, x_e, a.clone().narrow(0, e * rank, rank), s)
            });
            let db = cat_or_zeros(parts.collect(), 1, [out, 0], &device);
            grads.register::<B>(node.id, unwrap(db));
        }
    }
}

/// Each expert's deployed `MXFP4(W_e + s·B_e·A_e)` as a packed base (experts without rows keep
/// their base: no row ever reads it); `None` when the backend rebuilds them instead
/// ([`DeployBackend::deployed_base`]).
fn deployed_bases<B: DeployBackend>(
    bases: &[BaseWeight<B>],
    lora: &GroupedLora<B>,
    rank: usize,
    offsets: &[usize],
) -> Result<Option<Vec<BaseWeight<B>>>, CodecError> {
    let mut out = Vec::with_capacity(bases.len());
    for (e, base) in bases.iter().enumerate() {
        if offsets[e + 1] == offsets[e] {
            out.push(base.clone());
            continue;
        }
        match B::deployed_base(base, Some(&lora.expert(e, rank)))? {
            Some(packed) => out.push(packed),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// `Tensor::cat(parts, dim)`, or zeros of `empty` when there are no parts (no experts).
fn cat_or_zeros<B: Backend>(
    parts: Vec<Tensor<B, 2>>,
    dim: usize,
    empty: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2> {
    if parts.is_empty() {
        Tensor::zeros(empty, device)
    } else {
        Tensor::cat(parts, dim)
    }
}

impl<B: LoraLinearBackend, C: CheckpointStrategy> GroupedLoraLinearBackend for Autodiff<B, C> {
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &[usize],
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        let bases_inner: Vec<_> = bases.iter().map(BaseWeight::inner).collect();
        // frozen: a constant of the op (dy passes through the add unchanged, no bias gradient)
        let bias_inner = bias.map(|b| b.clone().inner());
        let bias = bias_inner.as_ref();
        let Some(lora) = lora else {
            let y = B::grouped_lora_linear(
                x.primitive.clone(),
                &bases_inner,
                bias,
                None,
                offsets,
                quant,
            )?;
            let prep = GroupedBaseBackward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful();
            return Ok(match prep {
                OpsKind::Tracked(prep) => prep.finish((bases_inner, offsets.to_vec(), quant), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            });
        };

        let a = lora.a.clone().into_primitive().tensor();
        let b = lora.b.clone().into_primitive().tensor();
        let (x_tracked, a_tracked, b_tracked) = (x.is_tracked(), a.is_tracked(), b.is_tracked());
        // MXFP4 QAT with `dx` wanted: each expert's deployed weight is built once, kept packed,
        // used here and again in backward (instead of merging and quantizing a second time)
        let wants_deployed = quant == Quantizer::Mxfp4 && x_tracked && (a_tracked || b_tracked);
        let lora_inner = lora.inner();
        let rank = rank_of(Some(lora), bases.len());
        let packed = match wants_deployed {
            true => deployed_bases(&bases_inner, &lora_inner, rank, offsets)?,
            false => None,
        };
        let deployed = packed.is_some();
        let (bases_inner, y) = if let Some(packed) = packed {
            let y = B::grouped_lora_linear(
                x.primitive.clone(),
                &packed,
                bias,
                None,
                offsets,
                Quantizer::None,
            )?;
            (packed, y)
        } else {
            let y = B::grouped_lora_linear(
                x.primitive.clone(),
                &bases_inner,
                bias,
                Some(&lora_inner),
                offsets,
                quant,
            )?;
            (bases_inner, y)
        };
        let prep = GroupedLoraBackward
            .prepare::<C>([x.node.clone(), a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful();
        Ok(match prep {
            OpsKind::Tracked(mut prep) => {
                let state = GroupedState {
                    x: (a_tracked || b_tracked).then(|| prep.checkpoint(&x)),
                    a: (x_tracked || b_tracked).then(|| prep.checkpoint(&a)),
                    b: (x_tracked || a_tracked).then(|| prep.checkpoint(&b)),
                    rank: rank_of(Some(lora), bases.len()),
                    bases: bases_inner,
                    deployed,
                    offsets: offsets.to_vec(),
                    quant,
                    scale: lora.scale,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}
