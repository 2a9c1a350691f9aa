//! The backward of the grouped LoRA-QAT linear on a plain backend, per expert on host offsets
//! (the CPU path and the reference of the device ones): `dx_e = dy_e·Wq_e`,
//! `dA_e = s·(dy_e·B_e)ᵀ·x_e`, `dB_e = s·dy_eᵀ·(x_e·A_eᵀ)`, zeros for experts without rows.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::autodiff::{grad_a, grad_b, grad_input};
use super::deploy_backend::DeployBackend;
use super::grouped::{expert_rows, GroupedLora};
use super::offsets::ExpertOffsets;
use super::weight::{BaseWeight, Quantizer};

/// What the grouped backward gets from the autodiff node.
pub struct GroupedBackward<'a, B: Backend> {
    /// `[N, out]`, the output gradient.
    pub dy: Tensor<B, 2>,
    /// `[N, in]`, the input (present when `dA` or `dB` is wanted).
    pub x: Option<Tensor<B, 2>>,
    /// The stacked factors (absent for a frozen projection).
    pub lora: Option<GroupedLora<B>>,
    /// LoRA rank (0 without LoRA).
    pub rank: usize,
    /// Per expert, the frozen base, or (`deployed`) the deployed `Q(W_e + s·B_e·A_e)` itself.
    pub bases: &'a [BaseWeight<B>],
    /// `bases` already hold the deployed weights: `dx = dy·bases_e` with no LoRA and no quantizer.
    pub deployed: bool,
    /// The rows of each expert.
    pub offsets: &'a ExpertOffsets<B>,
    /// The quantizer of the forward.
    pub quant: Quantizer,
    /// Which gradients to compute: `[dx, dA, dB]`.
    pub want: [bool; 3],
}

/// The gradients asked for (`None` where not wanted or not computable).
pub struct GroupedGrads<B: Backend> {
    /// `[N, in]`.
    pub dx: Option<Tensor<B, 2>>,
    /// `[E·r, in]`, expert-major rows.
    pub da: Option<Tensor<B, 2>>,
    /// `[out, E·r]`, expert-major columns.
    pub db: Option<Tensor<B, 2>>,
}

/// `dx = cat_e(dy_e · Wq_e)` (`[0, in]` when there are no rows).
pub(crate) fn grad_x<B: DeployBackend>(
    dy: &Tensor<B, 2>,
    bases: &[BaseWeight<B>],
    lora: Option<&GroupedLora<B>>,
    rank: usize,
    offsets: &[usize],
    quant: Quantizer,
) -> Tensor<B, 2> {
    let device = dy.device();
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
    cat_or_zeros(parts, 0, [0, inp], &device)
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

/// The per-expert backward on host offsets (device offsets are read back).
pub fn host_grouped_backward<B: DeployBackend>(g: GroupedBackward<'_, B>) -> GroupedGrads<B> {
    let offsets = g.offsets.to_host();
    let device = g.dy.device();
    let [out, inp] = g.bases.first().map_or([0, 0], |b| b.shape());
    let rank = g.rank;
    let [want_x, want_a, want_b] = g.want;
    let dx = want_x.then(|| match (g.deployed, &g.lora) {
        (true, _) | (false, None) => {
            let quant = if g.deployed { Quantizer::None } else { g.quant };
            grad_x(&g.dy, g.bases, None, 0, &offsets, quant)
        }
        (false, Some(l)) => grad_x(&g.dy, g.bases, Some(l), rank, &offsets, g.quant),
    });
    let ranges: Vec<_> = offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let (dy, x) = (&g.dy, g.x.as_ref());
    let da = match (want_a, x, &g.lora) {
        (true, Some(x), Some(l)) => {
            let parts = ranges.iter().enumerate().map(|(e, &(start, len))| {
                if len == 0 {
                    return Tensor::zeros([rank, inp], &device);
                }
                let (dy_e, x_e) = (
                    dy.clone().narrow(0, start, len),
                    x.clone().narrow(0, start, len),
                );
                grad_a(dy_e, x_e, l.b.clone().narrow(1, e * rank, rank), l.scale)
            });
            Some(cat_or_zeros(parts.collect(), 0, [0, inp], &device))
        }
        _ => None,
    };
    let db = match (want_b, x, &g.lora) {
        (true, Some(x), Some(l)) => {
            let parts = ranges.iter().enumerate().map(|(e, &(start, len))| {
                if len == 0 {
                    return Tensor::zeros([out, rank], &device);
                }
                let (dy_e, x_e) = (
                    dy.clone().narrow(0, start, len),
                    x.clone().narrow(0, start, len),
                );
                grad_b(dy_e, x_e, l.a.clone().narrow(0, e * rank, rank), l.scale)
            });
            Some(cat_or_zeros(parts.collect(), 1, [out, 0], &device))
        }
        _ => None,
    };
    GroupedGrads { dx, da, db }
}
