//! LoRA factors as trainable parameters, named by their PEFT keys.

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use kernels::ops::Lora;

/// One LoRA pair (`lora_A`, `lora_B`) of an adapted module; the only trainable parameters.
///
/// For an attention projection `A [r, in]`, `B [out, r]`; for the experts of a layer the PEFT
/// stacking: `A [r·E, in]` expert-major, `B [out, r·E]` rank-major.
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

    /// Rank `r` of a single (non-stacked) pair, from `A`'s rows.
    pub fn rows_of_a(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// The whole pair as the op's `Lora` (attention).
    pub fn as_lora(&self) -> Lora<B> {
        Lora {
            a: self.lora_a.val(),
            b: self.lora_b.val(),
            scale: self.scale,
        }
    }

    /// Expert `e`'s rank-`r` LoRA out of the PEFT stacking: `A_e` = rows `e·r..(e+1)·r` of `A`,
    /// `B_e[:, j] = B[:, j·E + e]`.
    pub fn expert(&self, e: usize, experts: usize) -> Lora<B> {
        let [rows, _] = self.lora_a.dims();
        let r = rows / experts;
        let [out, _] = self.lora_b.dims();
        Lora {
            a: self.lora_a.val().narrow(0, e * r, r),
            b: self
                .lora_b
                .val()
                .reshape([out, r, experts])
                .narrow(2, e, 1)
                .reshape([out, r]),
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
