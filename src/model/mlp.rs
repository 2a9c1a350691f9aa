//! The mixture-of-experts block (`mlp`): router then experts.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::ops::LoraLinearBackend;

use super::experts::Experts;
use super::mode::ForwardMode;
use super::router::Router;

/// `model.layers.{l}.mlp`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `mlp.router`.
    pub router: Router<B>,
    /// `mlp.experts`.
    pub experts: Experts<B>,
}

impl<B: LoraLinearBackend> Mlp<B> {
    /// `[batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, mode: ForwardMode) -> anyhow::Result<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let x = x.reshape([batch * seq, hidden]);
        let routing = self.router.forward(x.clone())?;
        Ok(self
            .experts
            .forward(x, routing, mode)?
            .reshape([batch, seq, hidden]))
    }
}
