//! An attention projection (`q_proj`, `k_proj`, `v_proj`, `o_proj`): frozen `weight [out, in]`
//! and `bias [out]`, optionally adapted by a LoRA pair, computed by the LoRA-QAT linear.

use anyhow::Context;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::ops::{BaseWeight, LoraLinearBackend};

use super::lora::LoraPair;
use super::mode::ForwardMode;

/// `nn.Linear`-shaped projection with an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[out, in]`, frozen (bf16, or bf16 values held in f32 where the device has no bf16).
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`, frozen.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The adapter, when this module is targeted.
    pub lora: Option<LoraPair<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// A frozen projection without adapter.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: super::frozen(weight),
            bias: bias.map(super::frozen),
            lora: None,
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// The weight in f32 (widened when stored as bf16).
    pub fn weight_f32(&self) -> Tensor<B, 2> {
        super::storage::as_f32(self.weight.val())
    }
}

impl<B: LoraLinearBackend> LoraLinear<B> {
    /// `x [n, in] -> [n, out]`: `x · Q(W + s·B·A)ᵀ + b`, Q = bf16 under QAT when adapted.
    pub fn forward(&self, x: Tensor<B, 2>, mode: ForwardMode) -> anyhow::Result<Tensor<B, 2>> {
        let base = BaseWeight::Dense(self.weight_f32());
        let lora = self.lora.as_ref().map(LoraPair::as_lora);
        let quant = mode.attention_quantizer(lora.is_some());
        mode.linear(
            x,
            &base,
            self.bias.as_ref().map(|b| b.val()),
            lora.as_ref(),
            quant,
        )
        .with_context(|| match &self.lora {
            Some(l) => format!("LoRA-QAT linear of {}", l.key),
            None => "attention projection".to_string(),
        })
    }
}
