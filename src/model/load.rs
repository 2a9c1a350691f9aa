//! Building the model from a checkpoint (frozen dense tensors, experts left packed) and attaching
//! a PEFT adapter (trainable LoRA pairs).

use std::sync::Arc;

use anyhow::{ensure, Context};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kernels::ops::PackedWeight;

use adapters::{AttnProj, BaseDims, Factor, LoraAdapter};

use super::attention::Attention;
use super::causal_lm::{GptOssForCausalLM, GptOssModel};
use super::embedding::{Embedding, LmHead};
use super::expert_lora::ExpertLora;
use super::experts::{ExpertProjection, Experts};
use super::layer::DecoderLayer;
use super::linear::LoraLinear;
use super::lora::LoraPair;
use super::mask::AttentionPattern;
use super::mlp::Mlp;
use super::packed::CheckpointExpert;
use super::placement::LayerPlacement;
use super::rms_norm::RmsNorm;
use super::rope::YarnParams;
use super::router::Router;
use super::storage::bf16_tensor;
use crate::checkpoint::{names, Checkpoint, ExpertProj, GptOssConfig, LayerType};

/// A BF16 checkpoint tensor decoded to f32 on `device`, with its rank checked.
fn dense<B: Backend, const D: usize>(
    ckpt: &Checkpoint,
    name: &str,
    device: &B::Device,
) -> anyhow::Result<Tensor<B, D>> {
    let shape = ckpt.tensor(name)?.shape.to_vec();
    ensure!(
        shape.len() == D,
        "{}: tensor `{name}` has shape {shape:?}, expected rank {D}",
        ckpt.dir().display()
    );
    let values = ckpt.bf16_to_f32(name)?;
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A BF16 checkpoint matrix held as `dtype`: BF16 as stored ([`super::storage`]), anything else
/// decoded to f32 ([`dense`], the one f32 path), with its rank checked.
fn stored_dense<B: Backend>(
    ckpt: &Checkpoint,
    name: &str,
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> anyhow::Result<Tensor<B, 2>> {
    if dtype != burn::tensor::DType::BF16 {
        return dense(ckpt, name, device);
    }
    let shape = ckpt.tensor(name)?.shape.to_vec();
    let [rows, cols] = shape[..] else {
        anyhow::bail!(
            "{}: tensor `{name}` has shape {shape:?}, expected rank 2",
            ckpt.dir().display()
        );
    };
    Ok(bf16_tensor(ckpt.bf16_values(name)?, [rows, cols], device))
}

/// The model's rotary parameters from the checkpoint config.
pub fn yarn_params(c: &GptOssConfig) -> YarnParams {
    c.rope.clone()
}

/// The base dimensions an adapter is validated against.
pub fn base_dims(c: &GptOssConfig) -> BaseDims {
    BaseDims {
        layers: c.num_hidden_layers,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        experts: c.num_local_experts,
    }
}

fn attention<B: Backend>(
    ckpt: &Checkpoint,
    l: usize,
    device: &B::Device,
    matrices: burn::tensor::DType,
) -> anyhow::Result<Attention<B>> {
    let c = ckpt.config();
    let proj = |p: &str| -> anyhow::Result<LoraLinear<B>> {
        Ok(LoraLinear::new(
            stored_dense(ckpt, &names::attn_weight(l, p), device, matrices)?,
            Some(dense(ckpt, &names::attn_bias(l, p), device)?),
        ))
    };
    let pattern = match c.layer_type(l) {
        LayerType::SlidingAttention => AttentionPattern::Sliding {
            window: c.sliding_window,
        },
        LayerType::FullAttention => AttentionPattern::Causal,
    };
    ensure!(
        c.num_key_value_heads > 0 && c.num_attention_heads.is_multiple_of(c.num_key_value_heads),
        "{} heads are not a multiple of {} key/value heads",
        c.num_attention_heads,
        c.num_key_value_heads
    );
    Ok(Attention {
        q_proj: proj("q_proj")?,
        k_proj: proj("k_proj")?,
        v_proj: proj("v_proj")?,
        o_proj: proj("o_proj")?,
        sinks: super::frozen(dense(ckpt, &names::attn_sinks(l), device)?),
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        pattern,
    })
}

fn expert_projection<B: Backend>(
    ckpt: &Arc<Checkpoint>,
    l: usize,
    proj: ExpertProj,
    device: &B::Device,
) -> anyhow::Result<ExpertProjection<B>> {
    let experts = ckpt.config().num_local_experts;
    let packed = (0..experts)
        .map(|e| {
            Ok(
                Arc::new(CheckpointExpert::new(Arc::clone(ckpt), l, proj, e)?)
                    as Arc<dyn PackedWeight>,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bias = dense(ckpt, &names::expert_bias(l, proj.stem()), device)?;
    Ok(ExpertProjection::new(packed, bias))
}

impl<B: kernels::ops::DeployBackend> GptOssForCausalLM<B> {
    /// The base model of `ckpt` on `device`: attention, router, norms, embedding and head as frozen
    /// tensors (the matrices in the backend's [`dense_storage`](kernels::ops::DeployBackend::dense_storage),
    /// the rest f32); experts stay packed in the checkpoint's memory map.
    pub fn from_checkpoint(ckpt: Arc<Checkpoint>, device: &B::Device) -> anyhow::Result<Self> {
        let layers = ckpt.config().num_hidden_layers;
        Self::from_checkpoint_placed(ckpt, &LayerPlacement::single(device, layers))
    }

    /// [`from_checkpoint`](Self::from_checkpoint) with each part on the device `placement` gives
    /// it (layer placement over several devices).
    pub fn from_checkpoint_placed(
        ckpt: Arc<Checkpoint>,
        placement: &LayerPlacement<B::Device>,
    ) -> anyhow::Result<Self> {
        let dense = B::dense_storage(placement.embed());
        tracing::debug!("non-expert matrices held as {dense:?}");
        Self::from_checkpoint_stored(ckpt, placement, dense)
    }
}

impl<B: Backend> GptOssForCausalLM<B> {
    /// [`from_checkpoint_placed`](Self::from_checkpoint_placed) with the frozen matrices
    /// (embedding, `lm_head`, attention q/k/v/o) held as `matrices` (BF16 or F32: the same values).
    pub fn from_checkpoint_stored(
        ckpt: Arc<Checkpoint>,
        placement: &LayerPlacement<B::Device>,
        matrices: burn::tensor::DType,
    ) -> anyhow::Result<Self> {
        let c = ckpt.config().clone();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let device = placement.layer(l);
            let experts = Experts {
                gate_up_proj: expert_projection(&ckpt, l, ExpertProj::GateUp, device)?,
                down_proj: expert_projection(&ckpt, l, ExpertProj::Down, device)?,
                limit: c.swiglu_limit,
            };
            let router = Router::new(
                dense(&ckpt, &names::router_weight(l), device)?,
                dense(&ckpt, &names::router_bias(l), device)?,
                c.experts_per_token,
            );
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(
                    dense(&ckpt, &names::input_layernorm(l), device)?,
                    c.rms_norm_eps,
                ),
                self_attn: attention(&ckpt, l, device, matrices)
                    .with_context(|| format!("layer {l} attention"))?,
                post_attention_layernorm: RmsNorm::new(
                    dense(&ckpt, &names::post_attention_layernorm(l), device)?,
                    c.rms_norm_eps,
                ),
                mlp: Mlp { router, experts },
                index: l,
            });
        }
        let (embed, head) = (placement.embed(), placement.head());
        Ok(Self {
            model: GptOssModel {
                embed_tokens: Embedding::new(stored_dense(
                    &ckpt,
                    names::EMBED_TOKENS,
                    embed,
                    matrices,
                )?),
                layers,
                norm: RmsNorm::new(dense(&ckpt, names::FINAL_NORM, head)?, c.rms_norm_eps),
                rope: yarn_params(&c),
                head_dim: c.head_dim,
            },
            lm_head: LmHead::new(stored_dense(&ckpt, names::LM_HEAD, head, matrices)?),
        })
    }

    /// Attaches every LoRA pair of `adapter` (validated against `config`, the base's) as trainable
    /// parameters; modules the adapter does not target stay plain.
    pub fn with_adapter(
        mut self,
        adapter: &LoraAdapter,
        config: &GptOssConfig,
    ) -> anyhow::Result<Self> {
        let source = adapter.source().display().to_string();
        adapter
            .validate(&base_dims(config))
            .with_context(|| format!("adapter {source} does not match the base model"))?;
        let prefix = |key: String| key.trim_end_matches(".lora_A.weight").to_string();
        for (l, layer) in self.model.layers.iter_mut().enumerate() {
            let device = layer.device();
            let tensor = |values: &[f32], shape: [usize; 2]| {
                Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), shape), &device)
            };
            let attn = &mut layer.self_attn;
            for (proj, module) in [
                (AttnProj::Q, &mut attn.q_proj),
                (AttnProj::K, &mut attn.k_proj),
                (AttnProj::V, &mut attn.v_proj),
                (AttnProj::O, &mut attn.o_proj),
            ] {
                if let Some(lo) = adapter.attention(l, proj) {
                    module.lora = Some(LoraPair::new(
                        tensor(lo.a, [lo.r, lo.in_features]),
                        tensor(lo.b, [lo.out_features, lo.r]),
                        lo.scale,
                        prefix(adapters::attention_key(l, proj, Factor::A)),
                    ));
                }
            }
            let both = adapter.experts(l, adapters::ExpertProj::GateUp).is_some()
                && adapter.experts(l, adapters::ExpertProj::Down).is_some();
            let experts = &mut layer.mlp.experts;
            for (proj, module) in [
                (adapters::ExpertProj::GateUp, &mut experts.gate_up_proj),
                (adapters::ExpertProj::Down, &mut experts.down_proj),
            ] {
                if let Some(lo) = adapter.experts(l, proj) {
                    module.lora = Some(ExpertLora::from_stacked(
                        &lo,
                        prefix(adapters::expert_key(l, proj, both, Factor::A)),
                        &device,
                    ));
                }
            }
        }
        Ok(self)
    }
}
