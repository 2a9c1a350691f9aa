//! The LoRA of one expert projection of a layer (PEFT `target_parameters`): one rank-`r` pair per
//! expert, held as separate parameters so each expert's forward and backward touch only its own
//! factors (slicing one stacked parameter per expert would zero-fill a stacked-size gradient per
//! expert in backward). The PEFT stacking is rebuilt on demand for keys, export and gradients.

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use kernels::ops::{GroupedLora, Lora};

/// Per-expert LoRA factors of `gate_up_proj` or `down_proj`; trainable.
#[derive(Module, Debug)]
pub struct ExpertLora<B: Backend> {
    /// `A_e [r, in]` per expert (rows `e·r..(e+1)·r` of PEFT's `lora_A`).
    pub lora_a: Vec<Param<Tensor<B, 2>>>,
    /// `B_e [out, r]` per expert (columns `j·E + e` of PEFT's `lora_B`).
    pub lora_b: Vec<Param<Tensor<B, 2>>>,
    /// `s = alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f32,
    /// PEFT key prefix, e.g. `base_model.model.model.layers.0.mlp.experts.base_layer`.
    pub key: String,
}

impl<B: Backend> ExpertLora<B> {
    /// Splits PEFT's stacked `A [r·E, in]` (expert-major) and `B [out, r·E]` (rank-major) of a
    /// host adapter into trainable per-expert pairs on `device` ([`Self::from_tensors`]).
    pub fn from_stacked(
        stacked: &adapters::ExpertLora<'_>,
        key: String,
        device: &B::Device,
    ) -> Self {
        let (r, e, inp, out) = (
            stacked.r,
            stacked.experts,
            stacked.in_features,
            stacked.out_features,
        );
        let a = Tensor::from_data(TensorData::new(stacked.a.to_vec(), [r * e, inp]), device);
        let b = Tensor::from_data(TensorData::new(stacked.b.to_vec(), [out, r * e]), device);
        Self::from_tensors(a, b, e, stacked.scale, key)
    }

    /// Splits stacked `A [r·E, in]` and `B [out, r·E]` (PEFT's layout, where they are) into
    /// trainable per-expert pairs: `A_e` = rows `e·r..(e+1)·r`, `B_e[o, j]` = `B[o, j·E + e]`.
    /// The inverse of [`stack_a`] / [`stack_b`].
    pub fn from_tensors(
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
        experts: usize,
        scale: f32,
        key: String,
    ) -> Self {
        let r = a.dims()[0] / experts.max(1);
        let out = b.dims()[0];
        let b = b.reshape([out, r, experts]);
        Self {
            lora_a: (0..experts)
                .map(|e| Param::from_tensor(a.clone().narrow(0, e * r, r)))
                .collect(),
            lora_b: (0..experts)
                .map(|e| Param::from_tensor(b.clone().narrow(2, e, 1).reshape([out, r])))
                .collect(),
            scale,
            key,
        }
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.lora_a.len()
    }

    /// Expert `e`'s pair for the op.
    pub fn expert(&self, e: usize) -> Lora<B> {
        Lora {
            a: self.lora_a[e].val(),
            b: self.lora_b[e].val(),
            scale: self.scale,
        }
    }

    /// All experts' factors for the grouped op, stacked expert-major (`A [E·r, in]`,
    /// `B [out, E·r]` with columns `e·r..(e+1)·r` = `B_e`, not PEFT's rank-major order). Built
    /// with `cat` per forward: its backward only narrows the gradient back to each expert.
    pub fn grouped(&self) -> GroupedLora<B> {
        GroupedLora {
            a: Tensor::cat(self.lora_a.iter().map(|p| p.val()).collect(), 0),
            b: Tensor::cat(self.lora_b.iter().map(|p| p.val()).collect(), 1),
            scale: self.scale,
        }
    }

    /// The PEFT key of the stacked `lora_A`.
    pub fn key_a(&self) -> String {
        format!("{}.lora_A.weight", self.key)
    }

    /// The PEFT key of the stacked `lora_B`.
    pub fn key_b(&self) -> String {
        format!("{}.lora_B.weight", self.key)
    }

    /// `(key, stacked tensor)` of A (`[r·E, in]`) then B (`[out, r·E]`).
    pub fn tensors(&self) -> [(String, Tensor<B, 2>); 2] {
        let a = self.lora_a.iter().map(|p| p.val()).collect();
        let b = self.lora_b.iter().map(|p| p.val()).collect();
        [(self.key_a(), stack_a(a)), (self.key_b(), stack_b(b))]
    }
}

/// `[r, in]` per expert -> `[r·E, in]` (expert-major rows).
pub fn stack_a<B: Backend>(per_expert: Vec<Tensor<B, 2>>) -> Tensor<B, 2> {
    Tensor::cat(per_expert, 0)
}

/// `[out, r]` per expert -> `[out, r·E]` with column `j·E + e` = expert `e`'s column `j`.
pub fn stack_b<B: Backend>(per_expert: Vec<Tensor<B, 2>>) -> Tensor<B, 2> {
    let experts = per_expert.len();
    let [out, r] = per_expert.first().map_or([0, 0], |t| t.dims());
    Tensor::stack::<3>(per_expert, 2).reshape([out, r * experts])
}

impl<B: AutodiffBackend> ExpertLora<B> {
    /// `(key, stacked gradient)` of A then B; experts that got no token contribute zeros.
    /// `None` when no expert got a gradient.
    pub fn grads(&self, grads: &B::Gradients) -> [(String, Option<Tensor<B::InnerBackend, 2>>); 2] {
        let collect = |params: &[Param<Tensor<B, 2>>]| -> Option<Vec<Tensor<B::InnerBackend, 2>>> {
            let per: Vec<_> = params.iter().map(|p| p.val().grad(grads)).collect();
            if per.iter().all(Option::is_none) {
                return None;
            }
            Some(
                per.into_iter()
                    .zip(params)
                    .map(|(g, p)| {
                        g.unwrap_or_else(|| Tensor::zeros(p.dims(), &p.val().inner().device()))
                    })
                    .collect(),
            )
        };
        [
            (self.key_a(), collect(&self.lora_a).map(stack_a)),
            (self.key_b(), collect(&self.lora_b).map(stack_b)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn split_and_stack_follow_the_peft_layout() {
        let dev = Default::default();
        let a: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..5 * 2 * 3).map(|v| 100.0 + v as f32).collect();
        let stacked = adapters::ExpertLora {
            a: &a,
            b: &b,
            r: 2,
            experts: 3,
            in_features: 4,
            out_features: 5,
            scale: 1.0,
        };
        let l = ExpertLora::<Flex>::from_stacked(&stacked, "k".into(), &dev);
        // A_e = rows e·r..(e+1)·r
        let a1 = l.expert(1).a.into_data().to_vec::<f32>().unwrap();
        assert_eq!(a1, (8..16).map(|v| v as f32).collect::<Vec<_>>());
        // B_e[o, j] = B[o, j·E + e]
        let b2 = l.expert(2).b.into_data().to_vec::<f32>().unwrap();
        let want: Vec<f32> = (0..5)
            .flat_map(|o| (0..2).map(move |j| 100.0 + (o * 6 + j * 3 + 2) as f32))
            .collect();
        assert_eq!(b2, want);
        let [(ka, sa), (kb, sb)] = l.tensors();
        assert_eq!(
            (ka.as_str(), kb.as_str()),
            ("k.lora_A.weight", "k.lora_B.weight")
        );
        assert_eq!(sa.into_data().to_vec::<f32>().unwrap(), a);
        assert_eq!(sb.into_data().to_vec::<f32>().unwrap(), b);
        // grouped: B's columns e·r..(e+1)·r are B_e
        let g = l.grouped();
        assert_eq!(g.a.into_data().to_vec::<f32>().unwrap(), a);
        let gb = g.b.narrow(1, 2 * 2, 2).into_data().to_vec::<f32>().unwrap();
        assert_eq!(gb, want);
    }
}
