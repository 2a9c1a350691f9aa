//! The experts of one layer (`mlp.experts`): packed MXFP4 weights decoded per expert, biases,
//! optional per-expert LoRA (PEFT stacking), computed grouped by expert: with the custom op, all
//! experts of a projection run as one grouped op on the rows sorted by expert; the reference
//! path runs `lora_linear_reference` per expert on its gathered rows.

use std::sync::Arc;

use anyhow::Context;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor};
use kernels::ops::{grouped_lora_linear_frozen_bias, BaseWeight, LoraLinearBackend, PackedWeight};

use super::expert_lora::ExpertLora;
use super::grouping::ExpertGroups;
use super::mode::{ForwardMode, GradPath};
use super::router::Routing;
use super::swiglu::swiglu;

/// One projection (`gate_up_proj` or `down_proj`) of all experts of a layer.
#[derive(Module, Debug)]
pub struct ExpertProjection<B: Backend> {
    /// Per expert, the packed `[out, in]` weight (stays packed; decoded when used).
    pub packed: Vec<Arc<dyn PackedWeight>>,
    /// `[experts, out]`, frozen (`*_bias`).
    pub bias: Param<Tensor<B, 2>>,
    /// The per-expert adapter, when targeted.
    pub lora: Option<ExpertLora<B>>,
}

impl<B: Backend> ExpertProjection<B> {
    /// A frozen projection: one packed weight per expert, and the `[experts, out]` biases.
    pub fn new(packed: Vec<Arc<dyn PackedWeight>>, bias: Tensor<B, 2>) -> Self {
        Self {
            packed,
            bias: super::frozen(bias),
            lora: None,
        }
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.packed.len()
    }

    /// `[out, in]` of every expert (all equal; `[0, 0]` with no experts).
    pub fn shape(&self) -> [usize; 2] {
        self.packed.first().map_or([0, 0], |p| p.shape())
    }
}

impl<B: LoraLinearBackend> ExpertProjection<B> {
    /// Expert `e` on its tokens `x [n, in] -> [n, out]`.
    pub fn forward_expert(
        &self,
        x: Tensor<B, 2>,
        e: usize,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 2>> {
        let [_, out] = self.bias.dims();
        let base = BaseWeight::Packed(Arc::clone(&self.packed[e]));
        let bias = self.bias.val().narrow(0, e, 1).reshape([out]);
        let lora = self.lora.as_ref().map(|l| l.expert(e));
        let quant = mode.expert_quantizer(lora.is_some());
        mode.linear(x, &base, Some(bias), lora.as_ref(), quant)
            .with_context(|| match &self.lora {
                Some(l) => format!("expert {e} of {}", l.key),
                None => format!("expert {e}"),
            })
    }

    /// All experts on their rows: `x [N, in]` sorted by expert as in `groups` -> `[N, out]`
    /// through the grouped op (one autodiff node), plus each row's expert bias (frozen, added
    /// inside the op per expert block).
    pub fn forward_grouped(
        &self,
        x: Tensor<B, 2>,
        groups: &ExpertGroups<B>,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 2>> {
        let bases: Vec<BaseWeight<B>> = self
            .packed
            .iter()
            .map(|p| BaseWeight::Packed(Arc::clone(p)))
            .collect();
        let lora = self.lora.as_ref().map(ExpertLora::grouped);
        let quant = mode.expert_quantizer(lora.is_some());
        let bias = self.bias.val();
        grouped_lora_linear_frozen_bias(
            x,
            &bases,
            Some(&bias),
            lora.as_ref(),
            &groups.offsets,
            quant,
        )
        .with_context(|| match &self.lora {
            Some(l) => format!("experts of {}", l.key),
            None => "experts".to_string(),
        })
    }
}

/// `model.layers.{l}.mlp.experts`.
#[derive(Module, Debug)]
pub struct Experts<B: Backend> {
    /// `[2I, H]` per expert, rows interleaved gate/up.
    pub gate_up_proj: ExpertProjection<B>,
    /// `[H, I]` per expert.
    pub down_proj: ExpertProjection<B>,
    /// SwiGLU clamp (`swiglu_limit`, 7).
    pub limit: f32,
}

impl<B: LoraLinearBackend> Experts<B> {
    /// `x [tokens, hidden]` routed by `routing` -> `[tokens, hidden]`: each expert runs only on
    /// its tokens, outputs are weighted by the router scores and summed back per token.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        routing: Routing<B>,
        mode: ForwardMode,
    ) -> anyhow::Result<Tensor<B, 2>> {
        let [tokens, hidden] = x.dims();
        let [_, top_k] = routing.scores.dims();
        let groups = ExpertGroups::from_route(&routing.route);
        anyhow::ensure!(
            groups.offsets.experts() == self.gate_up_proj.experts(),
            "the routing is over {} experts, the layer has {}",
            groups.offsets.experts(),
            self.gate_up_proj.experts()
        );
        let scores = routing.scores.reshape([tokens * top_k]);
        let zeros = Tensor::<B, 2>::zeros([tokens, hidden], &x.device());
        if groups.rows() == 0 {
            return Ok(zeros);
        }
        if mode.path == GradPath::CustomOp {
            let xs = x.select(0, groups.order.clone());
            let h = self.gate_up_proj.forward_grouped(xs, &groups, mode)?;
            let y = self
                .down_proj
                .forward_grouped(swiglu(h, self.limit), &groups, mode)?;
            let w = scores.select(0, groups.slots.clone()).unsqueeze_dim::<2>(1);
            return Ok(zeros.select_assign(0, groups.order, y * w, IndexingUpdateOp::Add));
        }
        let per_expert = groups.groups();
        let mut outputs = Vec::with_capacity(per_expert.len());
        for g in &per_expert {
            let xe = x.clone().select(0, g.tokens.clone());
            let h = self.gate_up_proj.forward_expert(xe, g.expert, mode)?;
            let y = self
                .down_proj
                .forward_expert(swiglu(h, self.limit), g.expert, mode)?;
            let w = scores
                .clone()
                .select(0, g.slots.clone())
                .unsqueeze_dim::<2>(1);
            outputs.push(y * w);
        }
        Ok(zeros.select_assign(
            0,
            groups.order,
            Tensor::cat(outputs, 0),
            IndexingUpdateOp::Add,
        ))
    }
}
