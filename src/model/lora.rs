//! LoRA factors as trainable parameters, named by their PEFT keys.

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use kernels::ops::Lora;

/// The LoRA pair (`lora_A [r, in]`, `lora_B [out, r]`) of an adapted attention projection;
/// trainable (experts: see [`ExpertLora`](super::expert_lora::ExpertLora)).
#[derive(Module, Debug)]
pub struct LoraPair<B: Backend> {
    /// `lora_A.weight`, trainable.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `lora_B.weight`, trainable.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `s = alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f32,
    /// PEFT key prefix, e.g. `base_model.model.model.layers.0.self_attn.q_proj`.
    pub key: String,
}

impl<B: Backend> LoraPair<B> {
    /// A trainable pair from its values.
    pub fn new(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f32, key: String) -> Self {
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale,
            key,
        }
    }

    /// The PEFT key of `lora_A`.
    pub fn key_a(&self) -> String {
        format!("{}.lora_A.weight", self.key)
    }

    /// The PEFT key of `lora_B`.
    pub fn key_b(&self) -> String {
        format!("{}.lora_B.weight", self.key)
    }

    /// The pair as the op's `Lora`.
    pub fn as_lora(&self) -> Lora<B> {
        Lora {
            a: self.lora_a.val(),
            b: self.lora_b.val(),
            scale: self.scale,
        }
    }

    /// `(key, tensor)` of A then B.
    pub fn tensors(&self) -> [(String, Tensor<B, 2>); 2] {
        [
            (self.key_a(), self.lora_a.val()),
            (self.key_b(), self.lora_b.val()),
        ]
    }
}

impl<B: AutodiffBackend> LoraPair<B> {
    /// `(key, gradient)` of A then B (`None` when the factor got no gradient).
    pub fn grads(&self, grads: &B::Gradients) -> [(String, Option<Tensor<B::InnerBackend, 2>>); 2] {
        [
            (self.key_a(), self.lora_a.val().grad(grads)),
            (self.key_b(), self.lora_b.val().grad(grads)),
        ]
    }
}
