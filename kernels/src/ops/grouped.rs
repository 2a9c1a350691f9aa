//! The LoRA-QAT linear of all experts of one projection as one op: `x [N, in]` with its rows
//! sorted by expert, expert `e` owning rows `offsets[e]..offsets[e+1]`, `y_i = x_i · Wq_eᵀ`
//! with `Wq_e = Q(W_e + s·B_e·A_e)`. This file holds the types, the checks and the forward of
//! plain backends; the Autodiff implementation (one node, straight-through backward) lives in
//! `grouped_autodiff.rs`.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::deploy_backend::DeployBackend;
use super::grouped_backward::{host_grouped_backward, GroupedBackward, GroupedGrads};
use super::linear::LoraLinearBackend;
use super::offsets::ExpertOffsets;
use super::quant::apply_weight;
use super::weight::{BaseWeight, Lora, Quantizer};
use crate::mxfp4::CodecError;

/// The LoRA factors of all experts of one projection, stacked expert-major: `a [E·r, in]` (rows
/// `e·r..(e+1)·r` are `A_e`), `b [out, E·r]` (columns `e·r..(e+1)·r` are `B_e`). Note that `b`'s
/// column order differs from PEFT's rank-major `lora_B`.
#[derive(Clone, Debug)]
pub struct GroupedLora<B: Backend> {
    /// `[E·r, in]`, expert-major rows.
    pub a: Tensor<B, 2>,
    /// `[out, E·r]`, expert-major columns.
    pub b: Tensor<B, 2>,
    /// `s`, shared by every expert.
    pub scale: f32,
}

impl<B: Backend> GroupedLora<B> {
    /// Expert `e`'s pair (`rank` rows of `a`, `rank` columns of `b`).
    pub fn expert(&self, e: usize, rank: usize) -> Lora<B> {
        Lora {
            a: self.a.clone().narrow(0, e * rank, rank),
            b: self.b.clone().narrow(1, e * rank, rank),
            scale: self.scale,
        }
    }
}

impl<B: AutodiffBackend> GroupedLora<B> {
    /// The same factors on the inner (non-autodiff) backend.
    pub fn inner(&self) -> GroupedLora<B::InnerBackend> {
        GroupedLora {
            a: self.a.clone().inner(),
            b: self.b.clone().inner(),
            scale: self.scale,
        }
    }
}

/// A backend that runs [`grouped_lora_linear`] as one op (no bias; shapes already checked).
///
/// Plain backends run the forward and, for `Autodiff<B, C>`'s node (parents `[x, a, b]`), the
/// backward: per expert `dx_e = dy_e·Wq_e` (Wq_e recomputed from the packed base, not kept),
/// `dA_e = s·(dy_e·B_e)ᵀ·x_e`, `dB_e = s·dy_eᵀ·(x_e·A_eᵀ)`, zeros for experts without rows; no
/// `[out, in]` gradient is ever formed.
pub trait GroupedLoraLinearBackend: Backend {
    /// `x [N, in] -> [N, out]`, rows of expert `e` are `offsets[e]..offsets[e+1]`, plus row
    /// `e` of the frozen `bias [E, out]` when given (a constant: it gets no gradient).
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &ExpertOffsets<Self>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError>;

    /// The gradients the backward asks for (`want`: dx, dA, dB). The default runs per expert
    /// on host offsets (the reference); device backends override it.
    fn grouped_lora_backward(inputs: GroupedBackward<'_, Self>) -> GroupedGrads<Self>
    where
        Self: DeployBackend,
    {
        host_grouped_backward(inputs)
    }
}

/// Rows `offsets[e]..offsets[e+1]` per expert as `(expert, start, len)`, empty experts skipped.
pub(crate) fn expert_rows(offsets: &[usize]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    offsets
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] > w[0])
        .map(|(e, w)| (e, w[0], w[1] - w[0]))
}

/// The LoRA rank of a grouped adapter over `experts` experts (0 without LoRA).
pub(crate) fn rank_of<B: Backend>(lora: Option<&GroupedLora<B>>, experts: usize) -> usize {
    match lora {
        Some(l) if experts > 0 => l.a.dims()[0] / experts,
        _ => 0,
    }
}

/// The forward of a plain (non-autodiff) backend: per expert, its rows times `Wq_eᵀ` (built
/// with [`quantized_weight`]) plus `bias[e]` (added while the block is hot), concatenated.
pub fn grouped_forward<B: DeployBackend>(
    x: FloatTensor<B>,
    bases: &[BaseWeight<B>],
    bias: Option<&Tensor<B, 2>>,
    lora: Option<&GroupedLora<B>>,
    offsets: &[usize],
    quant: Quantizer,
) -> Result<FloatTensor<B>, CodecError> {
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let device = x.device();
    let out = bases.first().map_or(0, |b| b.shape()[0]);
    let rank = rank_of(lora, bases.len());
    let mut parts = Vec::with_capacity(bases.len());
    for (e, start, len) in expert_rows(offsets) {
        let lora_e = lora.map(|l| l.expert(e, rank));
        let y = apply_weight(
            x.clone().narrow(0, start, len),
            &bases[e],
            lora_e.as_ref(),
            quant,
        )?;
        parts.push(match bias {
            Some(b) => y + b.clone().narrow(0, e, 1),
            None => y,
        });
    }
    let y = if parts.is_empty() {
        Tensor::<B, 2>::zeros([0, out], &device)
    } else {
        Tensor::cat(parts, 0)
    };
    Ok(y.into_primitive().tensor())
}

impl GroupedLoraLinearBackend for burn::backend::Flex {
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &ExpertOffsets<Self>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        grouped_forward::<Self>(x, bases, bias, lora, &offsets.to_host(), quant)
    }
}

/// Checks `x [N, in]`, the bases (all `[out, in]`), the stacked factors and the offsets
/// (`E + 1` entries, `0`, non-decreasing, ending at `N`); the first mismatch as
/// [`CodecError::Length`].
fn check_grouped<B: Backend>(
    x_dims: [usize; 2],
    bases: &[BaseWeight<B>],
    bias: Option<&Tensor<B, 2>>,
    lora: Option<&GroupedLora<B>>,
    offsets: &ExpertOffsets<B>,
) -> Result<(), CodecError> {
    let experts = bases.len();
    if let ExpertOffsets::Host(offsets) = offsets {
        CodecError::expect_len("offsets entries (experts + 1)", experts + 1, offsets.len())?;
        CodecError::expect_len("offsets[0]", 0, offsets[0])?;
        for w in offsets.windows(2) {
            if w[1] < w[0] {
                return Err(CodecError::Length {
                    what: "offsets (must be non-decreasing)",
                    expected: w[0],
                    got: w[1],
                });
            }
        }
    }
    // device offsets are checked by the routing that made them (its error flag)
    CodecError::expect_len("offsets entries (experts + 1)", experts, offsets.experts())?;
    CodecError::expect_len("offsets[E] (rows of x)", x_dims[0], offsets.rows())?;
    let [out, inp] = bases.first().map_or([0, x_dims[1]], |b| b.shape());
    for b in bases {
        let [o, i] = b.shape();
        CodecError::expect_len("expert weight rows (`out` of expert 0)", out, o)?;
        CodecError::expect_len("expert weight columns (`in` of expert 0)", inp, i)?;
    }
    CodecError::expect_len("x columns (the expert weights' `in`)", inp, x_dims[1])?;
    if let Some(b) = bias {
        let [be, bo] = b.dims();
        CodecError::expect_len("grouped bias rows (experts)", experts, be)?;
        CodecError::expect_len("grouped bias columns (the weights' `out`)", out, bo)?;
    }
    if let Some(l) = lora {
        let [ar, a_in] = l.a.dims();
        let [b_out, br] = l.b.dims();
        let rank = rank_of(lora, experts);
        CodecError::expect_len("grouped LoRA A rows (experts · r)", experts * rank, ar)?;
        CodecError::expect_len("grouped LoRA A columns (the weights' `in`)", inp, a_in)?;
        CodecError::expect_len("grouped LoRA B rows (the weights' `out`)", out, b_out)?;
        CodecError::expect_len("grouped LoRA B columns (experts · r)", ar, br)?;
    }
    Ok(())
}

/// All experts of one projection in one op: `x [N, in]` with rows sorted by expert (expert `e`
/// owns rows `offsets[e]..offsets[e+1]`, `E + 1` offsets, empty experts allowed) ->
/// `[N, out]`, row `i` = `x_i · Wq_eᵀ`, `Wq_e = Q(W_e + s·B_e·A_e)`. No bias (add it per row).
///
/// Under `Autodiff` the gradients of `x`, `a`, `b` are the straight-through ones of per-expert
/// [`lora_linear`](super::lora_linear) calls, from one graph node.
///
/// Errors: [`CodecError::Length`] on inconsistent shapes or offsets, [`CodecError::NonFinite`]
/// when `quant` is `Bf16`/`Mxfp4` and a merged expert weight has a NaN/Inf (checked in forward).
pub fn grouped_lora_linear<B: LoraLinearBackend>(
    x: Tensor<B, 2>,
    bases: &[BaseWeight<B>],
    lora: Option<&GroupedLora<B>>,
    offsets: &ExpertOffsets<B>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    grouped_lora_linear_frozen_bias(x, bases, None, lora, offsets, quant)
}

/// [`grouped_lora_linear`] plus row `e` of a frozen `bias [E, out]` on the rows of expert `e`,
/// added inside the op per expert block (no `[N, out]` gather of the bias). The bias is a
/// constant of the op: it gets no gradient (pass a trainable bias through burn ops instead).
///
/// Errors: those of [`grouped_lora_linear`], and [`CodecError::Length`] for a bias that is not
/// `[E, out]`.
pub fn grouped_lora_linear_frozen_bias<B: LoraLinearBackend>(
    x: Tensor<B, 2>,
    bases: &[BaseWeight<B>],
    bias: Option<&Tensor<B, 2>>,
    lora: Option<&GroupedLora<B>>,
    offsets: &ExpertOffsets<B>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    check_grouped(x.dims(), bases, bias, lora, offsets)?;
    let x = x.into_primitive().tensor();
    let y = B::grouped_lora_linear(x, bases, bias, lora, offsets, quant)?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(y)))
}
