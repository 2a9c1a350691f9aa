//! Replacing the values of an adapted model's LoRA factors with tensors keyed by their PEFT names
//! (where the trainer keeps them: on the devices, when the optimizer runs there), without a trip
//! through the host.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::causal_lm::GptOssForCausalLM;
use super::expert_lora::ExpertLora;
use super::lora::LoraPair;

/// `values[key]`, checked to have `shape`, on `device`.
fn take<B: Backend>(
    values: &BTreeMap<String, Tensor<B, 2>>,
    key: &str,
    shape: [usize; 2],
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let t = values
        .get(key)
        .with_context(|| format!("{key}: no value given for this LoRA factor"))?;
    if t.dims() != shape {
        bail!(
            "{key}: value of shape {:?}, the factor is {shape:?}",
            t.dims()
        );
    }
    Ok(t.clone().to_device(device))
}

impl<B: Backend> GptOssForCausalLM<B> {
    /// Every LoRA factor replaced by `values[PEFT key]` (stacked like PEFT's tensors, as
    /// [`lora_tensors`](Self::lora_tensors) gives them), moved to its layer's device, as fresh
    /// trainable parameters. Every factor must be given, in its shape; extra keys are refused.
    pub fn with_lora_values(mut self, values: &BTreeMap<String, Tensor<B, 2>>) -> Result<Self> {
        let mut used = 0usize;
        for layer in self.model.layers.iter_mut() {
            let device = layer.device();
            let a = &mut layer.self_attn;
            for module in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                let Some(old) = module.lora.take() else {
                    continue;
                };
                let (ka, kb) = (old.key_a(), old.key_b());
                let la = take(values, &ka, old.lora_a.dims(), &device)?;
                let lb = take(values, &kb, old.lora_b.dims(), &device)?;
                module.lora = Some(LoraPair::new(la, lb, old.scale, old.key));
                used += 2;
            }
            let e = &mut layer.mlp.experts;
            for module in [&mut e.gate_up_proj, &mut e.down_proj] {
                let Some(old) = module.lora.take() else {
                    continue;
                };
                let experts = old.experts();
                let [r, inp] = old.lora_a[0].dims();
                let [out, _] = old.lora_b[0].dims();
                let la = take(values, &old.key_a(), [r * experts, inp], &device)?;
                let lb = take(values, &old.key_b(), [out, r * experts], &device)?;
                module.lora = Some(ExpertLora::from_tensors(
                    la, lb, experts, old.scale, old.key,
                ));
                used += 2;
            }
        }
        if used != values.len() {
            let known: Vec<String> = self.lora_tensors().into_iter().map(|(k, _)| k).collect();
            let extra = values
                .keys()
                .find(|k| !known.contains(k))
                .map_or("?", String::as_str);
            bail!("{extra}: not a LoRA factor of this model");
        }
        Ok(self)
    }
}
