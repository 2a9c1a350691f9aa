//! RMSNorm in f32, as `GptOssRMSNorm`: `w · x / sqrt(mean(x²) + eps)` over the last axis.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Root-mean-square norm with a frozen weight (`…layernorm.weight`, `model.norm.weight`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`, frozen (bf16 values held in f32).
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root (config `rms_norm_eps`).
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm over the given (frozen) weight.
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: super::frozen(weight),
            eps,
        }
    }

    /// Normalizes `x` over its last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean_square = x.clone().square().mean_dim(D - 1);
        let inv = mean_square.add_scalar(self.eps).sqrt().recip();
        let w = self.weight.val().unsqueeze::<D>();
        x * inv * w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn normalizes_each_row_by_hand() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![3.0f32, 4.0, 0.0, 0.0], [2, 2]),
            &dev,
        );
        let w = Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &dev);
        let y = RmsNorm::new(w, 1e-5)
            .forward(x)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // row 0: mean square 12.5, so x / sqrt(12.5 + 1e-5) times [1, 2]; row 1 stays zero
        let d = (12.5f64 + 1e-5).sqrt();
        let want = [3.0 / d, 8.0 / d, 0.0, 0.0];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{y:?}");
        }
    }
}
