//! The token embedding (`model.embed_tokens`) and the untied output head (`lm_head`), frozen.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// `model.embed_tokens`: `weight [vocab, hidden]`, frozen.
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
        self.weight
            .val()
            .select(0, ids.reshape([batch * seq]))
            .reshape([batch, seq, hidden])
    }
}

/// `lm_head`: `weight [vocab, hidden]`, no bias, frozen (untied from the embedding).
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

    /// `[batch, seq, hidden] -> [batch, seq, vocab]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let [vocab, _] = self.weight.dims();
        x.reshape([batch * seq, hidden])
            .matmul(self.weight.val().transpose())
            .reshape([batch, seq, vocab])
    }
}
