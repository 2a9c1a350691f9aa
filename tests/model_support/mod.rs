//! Shared helpers of the model tests: the tiny-gpt-oss fixture and its golden tensors (computed by
//! transformers + PEFT, see tests/fixtures/tiny-gpt-oss/golden.json).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use lora_qat::checkpoint::Checkpoint;
use lora_qat::model::GptOssForCausalLM;
use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/tiny-gpt-oss`.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss")
}

/// A golden tensor: shape and values (f32 tensors as f32, i64 tensors as i64).
pub struct Golden {
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Golden {
    pub fn load() -> Self {
        let bytes =
            std::fs::read(fixture().join("golden.safetensors")).expect("golden.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("golden parses");
        let mut f32s = HashMap::new();
        let mut i64s = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F32 => {
                    let v = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    f32s.insert(name, (shape, v));
                }
                Dtype::I64 => {
                    let v = view
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    i64s.insert(name, (shape, v));
                }
                _ => {}
            }
        }
        Self { f32s, i64s }
    }

    pub fn f32(&self, name: &str) -> &[f32] {
        &self
            .f32s
            .get(name)
            .unwrap_or_else(|| panic!("golden {name}"))
            .1
    }

    pub fn ids(&self, name: &str) -> (&[i64], usize, usize) {
        let (shape, v) = self
            .i64s
            .get(name)
            .unwrap_or_else(|| panic!("golden {name}"));
        (v, shape[0], shape[1])
    }
}

/// The tiny base checkpoint, opened.
pub fn checkpoint() -> Arc<Checkpoint> {
    Arc::new(Checkpoint::open(&fixture().join("base")).expect("fixture base opens"))
}

/// The base model (frozen matrices held as the backend holds them), with the fixture's PEFT
/// adapter when `adapter`.
pub fn model<B: kernels::ops::DeployBackend>(
    adapter: bool,
    device: &B::Device,
) -> GptOssForCausalLM<B> {
    model_stored(adapter, device, B::dense_storage(device))
}

/// [`model`] with the frozen matrices held as `dense` (BF16 or F32).
pub fn model_stored<B: Backend>(
    adapter: bool,
    device: &B::Device,
    dense: burn::tensor::DType,
) -> GptOssForCausalLM<B> {
    let ckpt = checkpoint();
    let config = ckpt.config().clone();
    let layers = config.num_hidden_layers;
    let placement = lora_qat::model::LayerPlacement::single(device, layers);
    let m = GptOssForCausalLM::<B>::from_checkpoint_stored(ckpt, &placement, dense)
        .expect("model loads");
    if adapter {
        let a = adapters::LoraAdapter::load(&fixture().join("adapter")).expect("adapter loads");
        m.with_adapter(&a, &config).expect("adapter attaches")
    } else {
        m
    }
}

/// max |a - b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// ‖a − b‖₂ / ‖b‖₂ in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Logit tolerance (golden.json: max abs diff <= 2e-3).
pub const LOGITS_TOL: f32 = 2e-3;
/// Loss tolerance (golden.json: within 1e-4 relative).
pub const LOSS_REL_TOL: f32 = 1e-4;
/// Gradient tolerance (golden.json: relative L2 <= 1e-3 per tensor).
pub const GRAD_REL_TOL: f64 = 1e-3;

/// Position ids of one row packed from segments of the given lengths (each restarting at 0).
pub fn packed_positions(lengths: &[usize]) -> Vec<i64> {
    lengths.iter().flat_map(|&n| 0..n as i64).collect()
}
