//! The top-k router (`mlp.router`): `logits = x·Wᵀ + b`, top-k, softmax over the k selected logits.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kernels::ops::{Route, RoutingBackend};

/// Per row of `logits [rows, experts]`, the `k` largest entries' indices, by descending value
/// (ties: lower index first). Errors on a non-finite logit or `k` outside `1..=experts`. The
/// reference is [`kernels::ops::routing::top_k_rows`] (the device kernel's too).
pub fn top_k_rows(logits: &[f32], experts: usize, k: usize) -> anyhow::Result<Vec<i64>> {
    Ok(kernels::ops::routing::top_k_rows(logits, experts, k)?)
}

/// `mlp.router`: frozen `weight [experts, hidden]` and `bias [experts]`.
#[derive(Module, Debug)]
pub struct Router<B: Backend> {
    /// `[experts, hidden]`, frozen.
    pub weight: Param<Tensor<B, 2>>,
    /// `[experts]`, frozen.
    pub bias: Param<Tensor<B, 1>>,
    /// Experts chosen per token.
    pub top_k: usize,
}

/// The routing decision for `tokens` rows.
#[derive(Debug, Clone)]
pub struct Routing<B: Backend> {
    /// The choices and their grouping by expert, where the backend made them.
    pub route: Route<B>,
    /// `[tokens, top_k]` softmax over the selected logits (differentiable w.r.t. the input).
    pub scores: Tensor<B, 2>,
}

impl<B: Backend> Router<B> {
    /// A router over the given (frozen) weights.
    pub fn new(weight: Tensor<B, 2>, bias: Tensor<B, 1>, top_k: usize) -> Self {
        Self {
            weight: super::frozen(weight),
            bias: super::frozen(bias),
            top_k,
        }
    }
}

impl<B: RoutingBackend> Router<B> {
    /// Routes `x [tokens, hidden]`: the top-k choice and its grouping by expert are made by the
    /// backend ([`RoutingBackend::route`]: on the host for CPU backends, which refuse non-finite
    /// logits here; on the device for device backends, which flag them for
    /// [`RoutingBackend::routing_errors`]).
    pub fn forward(&self, x: Tensor<B, 2>) -> anyhow::Result<Routing<B>> {
        let logits = x.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze::<2>();
        let route = B::route(logits.clone().detach(), self.top_k)?;
        let selected = logits.gather(1, route.indices.clone());
        Ok(Routing {
            scores: stable_softmax(selected),
            route,
        })
    }
}

/// Softmax over the last dim as composite ops (detached max shift, exp, sum, divide): the same
/// arithmetic on every backend, autodiff or not. (Flex's fused softmax rounds differently from
/// the composite one that `Autodiff` records, which would make a graph-free recompute of a
/// layer differ from its tracked forward.)
fn stable_softmax<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let max = x.clone().detach().max_dim(1);
    let exp = (x - max).exp();
    let sum = exp.clone().sum_dim(1);
    exp / sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn top_k_errors_keep_their_messages() {
        assert_eq!(top_k_rows(&[0.5, 2.0], 2, 1).unwrap(), vec![1]);
        let err = top_k_rows(&[0.0, f32::NAN], 2, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "router logit of token 0 expert 1 is NaN (non-finite)"
        );
        assert!(top_k_rows(&[0.0, 0.0], 2, 3).is_err());
    }

    #[test]
    fn picks_top_k_and_normalizes_over_them() {
        let dev = Default::default();
        // 3 experts over hidden 2; token (1, 0) gives logits [1, 3, 2] + bias [0, 0, 0.5]
        let w = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 3.0, 0.0, 2.0, 0.0], [3, 2]),
            &dev,
        );
        let b = Tensor::<Flex, 1>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.5], [3]), &dev);
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &dev);
        let r = Router::new(w, b, 2).forward(x).unwrap();
        assert_eq!(r.route.host.as_deref(), Some(&[1, 2][..]));
        let mut pairs: Vec<(i64, f32)> = r
            .route
            .indices
            .into_data()
            .iter::<i64>()
            .zip(r.scores.into_data().iter::<f32>())
            .collect();
        pairs.sort_by_key(|p| p.0);
        // logits 3 and 2.5 selected: softmax = [1/(1+e^-0.5), e^-0.5/(1+e^-0.5)]
        let p1 = 1.0 / (1.0 + (-0.5f32).exp());
        assert_eq!(pairs[0].0, 1);
        assert_eq!(pairs[1].0, 2);
        assert!((pairs[0].1 - p1).abs() < 1e-6 && (pairs[1].1 - (1.0 - p1)).abs() < 1e-6);
    }
}
