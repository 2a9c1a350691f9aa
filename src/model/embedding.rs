//! The token embedding (`model.embed_tokens`) and the untied output head (`lm_head`), frozen.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::storage::as_f32;

/// `model.embed_tokens`: `weight [vocab, hidden]`, frozen (bf16 where the device supports it).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[vocab, hidden]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// Wraps a frozen table.
    pub fn new(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: super::frozen(weight),
        }
    }

    /// `ids [batch, seq]` (checked to be in range by the caller) -> `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let [_, hidden] = self.weight.dims();
        let rows = self.weight.val().select(0, ids.reshape([batch * seq]));
        as_f32(rows).reshape([batch, seq, hidden])
    }
}

/// `lm_head`: `weight [vocab, hidden]`, no bias, frozen (untied from the embedding; bf16 where
/// the device supports it).
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    /// `[vocab, hidden]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> LmHead<B> {
    /// Wraps a frozen head.
    pub fn new(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: super::frozen(weight),
        }
    }

    /// The weight in f32 (widened when stored as bf16).
    pub fn weight_f32(&self) -> Tensor<B, 2> {
        as_f32(self.weight.val())
    }

    /// `[batch, seq, hidden] -> [batch, seq, vocab]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let [vocab, _] = self.weight.dims();
        x.reshape([batch * seq, hidden])
            .matmul(self.weight_f32().transpose())
            .reshape([batch, seq, vocab])
    }
}
