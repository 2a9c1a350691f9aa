//! gpt-oss's clamped SwiGLU: `gate = gu[::2]` clamped above at `limit`, `up = gu[1::2]` clamped to
//! `[-limit, limit]`, `out = (up + 1) · gate · σ(alpha · gate)`.

use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The sigmoid slope of gpt-oss's gated unit.
pub const SWIGLU_ALPHA: f32 = 1.702;

/// `gate_up [n, 2I]` (interleaved gate/up columns) -> `[n, I]`.
pub fn swiglu<B: Backend>(gate_up: Tensor<B, 2>, limit: f32) -> Tensor<B, 2> {
    let [n, two_i] = gate_up.dims();
    let i = two_i / 2;
    let pairs = gate_up.reshape([n, i, 2]);
    let gate = pairs
        .clone()
        .narrow(2, 0, 1)
        .reshape([n, i])
        .clamp_max(limit);
    let up = pairs.narrow(2, 1, 1).reshape([n, i]).clamp(-limit, limit);
    let glu = gate.clone() * sigmoid(gate.mul_scalar(SWIGLU_ALPHA));
    up.add_scalar(1.0) * glu
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn clamps_and_gates_by_hand() {
        let dev = Default::default();
        // one token, I = 2: (gate, up) = (1, 0.5) and (9, -8)
        let gu = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 0.5, 9.0, -8.0], [1, 4]),
            &dev,
        );
        let y = swiglu(gu, 7.0).into_data().to_vec::<f32>().unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want = [1.5 * s(1.702), (-7.0 + 1.0) * 7.0 * s(7.0 * 1.702)];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-5 * w.abs().max(1.0), "{y:?}");
        }
    }
}
