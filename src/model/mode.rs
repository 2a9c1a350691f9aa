//! How the forward runs: the quantization mode (plain LoRA or QAT) and which gradient path the
//! LoRA-QAT linears take.

use burn::tensor::Tensor;
use kernels::mxfp4::CodecError;
use kernels::ops::{
    lora_linear, lora_linear_reference, BaseWeight, Lora, LoraLinearBackend, Quantizer,
};

/// What the adapted weights are in the forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    /// Plain LoRA (PEFT's forward): `W + s·B·A`, no rounding.
    None,
    /// QAT (DESIGN §2.5), the deployed weights: experts `MXFP4(W + ΔW)`, attention `bf16(W + s·B·A)`.
    #[default]
    Mxfp4,
}

impl std::str::FromStr for QuantMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "mxfp4" => Ok(Self::Mxfp4),
            other => anyhow::bail!("unknown quant mode `{other}` (expected `mxfp4` or `none`)"),
        }
    }
}

/// How gradients of the LoRA-QAT linears are computed (both straight-through; same forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradPath {
    /// `kernels::ops::lora_linear_reference`: plain burn ops, burn autodiff with the detach trick
    /// (forms the dense weight gradient).
    Reference,
    /// `kernels::ops::lora_linear`: the custom op with the low-rank backward.
    #[default]
    CustomOp,
}

/// The forward's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardMode {
    /// Plain LoRA or QAT.
    pub quant: QuantMode,
    /// Which linear implementation (matters for the backward only).
    pub path: GradPath,
}

impl ForwardMode {
    /// The quantizer of an attention projection (`bf16` under QAT when adapted).
    pub fn attention_quantizer(self, adapted: bool) -> Quantizer {
        match (self.quant, adapted) {
            (QuantMode::Mxfp4, true) => Quantizer::Bf16,
            _ => Quantizer::None,
        }
    }

    /// The quantizer of an expert projection (MXFP4 under QAT when adapted; a non-adapted packed
    /// expert is its exact dequantized base).
    pub fn expert_quantizer(self, adapted: bool) -> Quantizer {
        match (self.quant, adapted) {
            (QuantMode::Mxfp4, true) => Quantizer::Mxfp4,
            _ => Quantizer::None,
        }
    }

    /// `y = x · Q(W + s·B·A)ᵀ + bias` through the selected path.
    pub fn linear<B: LoraLinearBackend>(
        self,
        x: Tensor<B, 2>,
        base: &BaseWeight<B>,
        bias: Option<Tensor<B, 1>>,
        lora: Option<&Lora<B>>,
        quant: Quantizer,
    ) -> Result<Tensor<B, 2>, CodecError> {
        match self.path {
            GradPath::Reference => lora_linear_reference(x, base, bias, lora, quant),
            GradPath::CustomOp => lora_linear(x, base, bias, lora, quant),
        }
    }
}
