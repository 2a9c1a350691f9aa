//! The grouped expert linear on CubeCL devices, forward and backward, with no loop over experts
//! on the host and no read of the row offsets:
//!
//! - `Wq` of all experts: `deploy_stacked` (QAT: `MXFP4(W_e + s·B_e·A_e)` of every expert in one
//!   launch) or the packed base itself (`stacked_base`, uploaded once); products
//!   `x·Wq_eᵀ` and `dy·Wq_e` by the grouped MXFP4 matmul kernel over the expert-sorted rows;
//! - the low-rank parts through a row mask `M [N, E·r]` (`M[i, j] = 1` when column `j` belongs to
//!   row `i`'s expert): with `XA = (x·Aᵀ)∘M` and `GB = (dy·B)∘M` (A `[E·r, in]`, B `[out, E·r]`
//!   stacked expert-major), `y += s·XA·Bᵀ` (plain LoRA), `dx += s·GB·A`, `dA = s·GBᵀ·x`,
//!   `dB = s·dyᵀ·XA` — each expert's rows meet only its own factors, so these are exactly the
//!   per-expert products of the reference (`ops::host_grouped_backward`), as dense matmuls;
//! - the frozen bias by a gather of each row's expert row.
//!
//! Dense bases (never built by the model for experts) take the per-expert reference path.

use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_cubecl::element::BoolElement;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};

use super::grouped_mxfp4::grouped_mxfp4_matmul;
use super::stacked::{deploy_stacked, stacked_base, StackedMxfp4};
use crate::mxfp4::CodecError;
use crate::ops::{
    grouped_forward, host_grouped_backward, BaseWeight, ExpertOffsets, GroupedBackward,
    GroupedGrads, GroupedLora, GroupedLoraLinearBackend, PackedWeight, Quantizer,
};

type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

/// The packed weights of all experts, or `None` when any base is dense.
fn packed<B: burn::tensor::backend::Backend>(
    bases: &[BaseWeight<B>],
) -> Option<Vec<Arc<dyn PackedWeight>>> {
    bases
        .iter()
        .map(|b| match b {
            BaseWeight::Packed(p) => Some(Arc::clone(p)),
            BaseWeight::Dense(_) => None,
        })
        .collect()
}

/// The weights the products use: `Q(W_e + s·B_e·A_e)` for MXFP4 QAT (`lora_merged`), else the
/// base (the low-rank part then goes through the mask).
fn weights<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    bases: &[Arc<dyn PackedWeight>],
    lora: Option<&GroupedLora<Cube<R, I, BT>>>,
    quant: Quantizer,
    device: &R::Device,
) -> Result<(StackedMxfp4<R>, bool), CodecError> {
    match quant {
        Quantizer::Mxfp4 => Ok((deploy_stacked::<R, I, BT>(bases, lora, device)?, true)),
        _ => Ok((stacked_base::<R>(bases, device)?, false)),
    }
}

/// `M [N, E·r]`: 1 where column `j` (expert `j / r`) is row `i`'s expert.
fn row_mask<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    offsets: &ExpertOffsets<Cube<R, I, BT>>,
    rank: usize,
    device: &R::Device,
) -> Tensor<Cube<R, I, BT>, 2> {
    let rows = offsets.rows();
    let cols = offsets.experts() * rank;
    let row = offsets.row_experts(device).reshape([rows, 1]);
    let col = Tensor::<Cube<R, I, BT>, 1, Int>::arange(0..cols as i64, device)
        .div_scalar(rank as i64)
        .reshape([1, cols]);
    row.expand([rows, cols])
        .equal(col.expand([rows, cols]))
        .float()
}

fn float<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    t: CubeTensor<R>,
) -> Tensor<Cube<R, I, BT>, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `x [N, k] ·` each row's expert's weight (`transpose`: `dy·W_e`, else `x·W_eᵀ`).
fn product<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, I, BT>, 2>,
    w: &StackedMxfp4<R>,
    offsets: &ExpertOffsets<Cube<R, I, BT>>,
    transpose: bool,
) -> Result<Tensor<Cube<R, I, BT>, 2>, CodecError> {
    let device = x.device();
    let offsets: CubeTensor<R> = offsets.to_device(&device).into_primitive();
    let x: CubeTensor<R> = x.into_primitive().tensor();
    Ok(float(grouped_mxfp4_matmul(&x, w, &offsets, transpose)?))
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> GroupedLoraLinearBackend for Cube<R, I, BT> {
    fn grouped_lora_linear(
        x: FloatTensor<Self>,
        bases: &[BaseWeight<Self>],
        bias: Option<&Tensor<Self, 2>>,
        lora: Option<&GroupedLora<Self>>,
        offsets: &ExpertOffsets<Self>,
        quant: Quantizer,
    ) -> Result<FloatTensor<Self>, CodecError> {
        let Some(packed) = packed(bases).filter(|_| quant != Quantizer::Bf16) else {
            return grouped_forward::<Self>(x, bases, bias, lora, &offsets.to_host(), quant);
        };
        let x = float::<R, I, BT>(x);
        let device = x.device();
        let (w, merged) = weights(&packed, lora, quant, &device)?;
        let mut y = product(x.clone(), &w, offsets, false)?;
        if let (Some(l), false) = (lora, merged) {
            let rank = l.a.dims()[0] / packed.len().max(1);
            let xa = x.matmul(l.a.clone().transpose()) * row_mask(offsets, rank, &device);
            y = y + xa.matmul(l.b.clone().transpose()).mul_scalar(l.scale);
        }
        if let Some(b) = bias {
            y = y + b.clone().select(0, offsets.row_experts(&device));
        }
        Ok(y.into_primitive().tensor())
    }

    fn grouped_lora_backward(g: GroupedBackward<'_, Self>) -> GroupedGrads<Self> {
        let packed = packed(g.bases).filter(|_| !g.deployed && g.quant != Quantizer::Bf16);
        let Some(packed) = packed else {
            return host_grouped_backward(g);
        };
        let device = g.dy.device();
        let [want_x, want_a, want_b] = g.want;
        let mask = g
            .lora
            .as_ref()
            .map(|_| row_mask(g.offsets, g.rank, &device));
        // the forward built the same weights from the same inputs without error
        let dx = want_x.then(|| {
            let (w, merged) = weights(&packed, g.lora.as_ref(), g.quant, &device)
                .expect("the forward deployed these weights");
            let mut dx = product(g.dy.clone(), &w, g.offsets, true)
                .expect("the forward ran this product's shapes");
            if let (Some(l), Some(m), false) = (&g.lora, &mask, merged) {
                let gb = g.dy.clone().matmul(l.b.clone()) * m.clone();
                dx = dx + gb.matmul(l.a.clone()).mul_scalar(l.scale);
            }
            dx
        });
        let (da, db) = match (&g.lora, &g.x, &mask) {
            (Some(l), Some(x), Some(m)) => {
                let da = want_a.then(|| {
                    let gb = g.dy.clone().matmul(l.b.clone()) * m.clone();
                    gb.transpose().matmul(x.clone()).mul_scalar(l.scale)
                });
                let db = want_b.then(|| {
                    let xa = x.clone().matmul(l.a.clone().transpose()) * m.clone();
                    g.dy.clone().transpose().matmul(xa).mul_scalar(l.scale)
                });
                (da, db)
            }
            _ => (None, None),
        };
        GroupedGrads { dx, da, db }
    }
}
