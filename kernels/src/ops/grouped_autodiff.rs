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

use super::autodiff::{unwrap, wrap};
use super::deploy_backend::DeployBackend;
use super::grouped::{rank_of, GroupedLora, GroupedLoraLinearBackend};
use super::grouped_backward::GroupedBackward;
use super::linear::LoraLinearBackend;
use super::offsets::ExpertOffsets;
use super::weight::{BaseWeight, Quantizer};
use crate::mxfp4::CodecError;

/// Backward of `y = x · Q(W_e)ᵀ` per expert (no LoRA): only `dx`.
#[derive(Debug)]
struct GroupedBaseBackward;

impl<B: LoraLinearBackend> Backward<B, 1> for GroupedBaseBackward {
    type State = (Vec<BaseWeight<B>>, ExpertOffsets<B>, Quantizer);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (bases, offsets, quant) = ops.state;
        let dy = wrap::<B>(grads.consume::<B>(&ops.node));
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            let g = B::grouped_lora_backward(GroupedBackward {
                dy,
                x: None,
                lora: None,
                rank: 0,
                bases: &bases,
                deployed: false,
                offsets: &offsets,
                quant,
                want: [true, false, false],
            });
            if let Some(dx) = g.dx {
                grads.register::<B>(node.id, unwrap(dx));
            }
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
    offsets: ExpertOffsets<B>,
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
        let lora = match (a, b) {
            (Some(a), Some(b)) => Some(GroupedLora {
                a,
                b,
                scale: st.scale,
            }),
            _ => None,
        };
        // dx needs the factors unless the forward kept the deployed weights; dA needs x and B,
        // dB needs x and A (what the forward checkpointed for each)
        let want = [
            x_node.is_some() && (st.deployed || lora.is_some()),
            a_node.is_some() && x.is_some() && lora.is_some(),
            b_node.is_some() && x.is_some() && lora.is_some(),
        ];
        let g = B::grouped_lora_backward(GroupedBackward {
            dy,
            x,
            lora,
            rank: st.rank,
            bases: &st.bases,
            deployed: st.deployed,
            offsets: &st.offsets,
            quant: st.quant,
            want,
        });
        for (node, grad) in [(x_node, g.dx), (a_node, g.da), (b_node, g.db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, unwrap(grad));
            }
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
    offsets: &ExpertOffsets<B>,
) -> Result<Option<Vec<BaseWeight<B>>>, CodecError> {
    // device offsets: the device rebuilds the deployed weights (one launch) instead
    let ExpertOffsets::Host(offsets) = offsets else {
        return Ok(None);
    };
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

impl<B: LoraLinearBackend, C: CheckpointStrategy> GroupedLoraLinearBackend for Autodiff<B, C> {
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &ExpertOffsets<Self>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        let offsets = &offsets.inner();
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
                OpsKind::Tracked(prep) => prep.finish((bases_inner, offsets.clone(), quant), y),
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
                    offsets: offsets.clone(),
                    quant,
                    scale: lora.scale,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}
