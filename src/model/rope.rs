//! YaRN rotary position embedding, as transformers' `_compute_yarn_parameters` + gpt-oss's
//! half-split rotation (`x1·cos − x2·sin`, `x2·cos + x1·sin`), cos and sin both scaled by the
//! attention factor.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::positions::PositionIds;

/// YaRN parameters: the checkpoint config's rope section (`rope_scaling` / `rope_parameters`).
pub type YarnParams = crate::checkpoint::RopeConfig;

impl YarnParams {
    /// The `head_dim / 2` inverse frequencies, rounded to f32 like transformers' buffer.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let dim = head_dim as f64;
        let base = self.theta;
        let orig = self.original_max_position_embeddings as f64;
        let correction_dim = |rotations: f64| {
            dim * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (mut low, mut high) = (
            correction_dim(self.beta_fast),
            correction_dim(self.beta_slow),
        );
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let high = high.min(dim - 1.0);
        let span = if low == high { 0.001 } else { high - low };
        (0..head_dim / 2)
            .map(|i| {
                let pos_freq = (base as f32).powf((2 * i) as f32 / head_dim as f32) as f64;
                let extrapolation = 1.0 / pos_freq;
                let interpolation = 1.0 / (self.factor * pos_freq);
                let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                (interpolation * (1.0 - extrapolation_factor)
                    + extrapolation * extrapolation_factor) as f32
            })
            .collect()
    }
}

/// cos and sin tables `[rows, 1, seq, head_dim / 2]`, one row per batch row (or a single row
/// shared by the batch when all rows hold the same positions), broadcast over the heads.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `cos(pos · inv_freq) · attention_scale`
    pub cos: Tensor<B, 4>,
    /// `sin(pos · inv_freq) · attention_scale`
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `0..seq`, shared by every batch row.
    pub fn new(params: &YarnParams, head_dim: usize, seq: usize, device: &B::Device) -> Self {
        Self::at(params, head_dim, &PositionIds::contiguous(1, seq), device)
    }

    /// Tables for the given position ids (angles `pos · inv_freq` in f32 like transformers,
    /// cos/sin evaluated exactly); `[1, 1, seq, half]` when all rows are equal, else
    /// `[batch, 1, seq, half]`.
    pub fn at(
        params: &YarnParams,
        head_dim: usize,
        positions: &PositionIds,
        device: &B::Device,
    ) -> Self {
        let inv_freq = params.inv_freq(head_dim);
        let scale = params.attention_scaling();
        let half = head_dim / 2;
        let seq = positions.seq();
        let rows = if positions.rows_equal() {
            1
        } else {
            positions.batch()
        };
        // one evaluation per distinct position, then gathered per token
        let distinct = positions.values().iter().max().map_or(0, |&m| m + 1);
        let mut cos_of = Vec::with_capacity(distinct * half);
        let mut sin_of = Vec::with_capacity(distinct * half);
        for pos in 0..distinct {
            for &f in &inv_freq {
                let angle = ((pos as f32) * f) as f64;
                cos_of.push((angle.cos() * scale) as f32);
                sin_of.push((angle.sin() * scale) as f32);
            }
        }
        let mut cos = Vec::with_capacity(rows * seq * half);
        let mut sin = Vec::with_capacity(rows * seq * half);
        for b in 0..rows {
            for &pos in positions.row(b) {
                cos.extend_from_slice(&cos_of[pos * half..][..half]);
                sin.extend_from_slice(&sin_of[pos * half..][..half]);
            }
        }
        let shape = [rows, 1, seq, half];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x [batch, heads, seq, head_dim]` (half-split rotation).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self.cos.clone().narrow(2, 0, seq);
        let sin = self.sin.clone().narrow(2, 0, seq);
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let first = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let second = x2 * cos + x1 * sin;
        Tensor::cat(vec![first, second], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn gpt_oss() -> YarnParams {
        YarnParams {
            theta: 150000.0,
            factor: 32.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            original_max_position_embeddings: 4096,
            truncate: false,
            attention_factor: None,
        }
    }

    /// From transformers 5 `_compute_yarn_parameters` (head_dim 16, the gpt-oss rope parameters):
    /// `python -c "...; print(_compute_yarn_parameters(GptOssConfig(head_dim=16, rope_parameters=...)))"`.
    const INV_FREQ_16: [f64; 8] = [
        1.0,
        0.22541800141334534,
        0.05081327259540558,
        0.006794959306716919,
        0.0004564839182421565,
        1.818833698052913e-05,
        4.099978468730114e-06,
        9.242089618055616e-07,
    ];

    #[test]
    fn inv_freq_matches_transformers() {
        let p = gpt_oss();
        assert!((p.attention_scaling() - 1.3465735902799727).abs() < 1e-12);
        let got = p.inv_freq(16);
        for (g, w) in got.iter().zip(INV_FREQ_16) {
            assert!(((*g as f64) - w).abs() <= 1e-7 * w, "{got:?}");
        }
        // head_dim 64 (the real model): spot values from the same transformers call
        let got = p.inv_freq(64);
        assert!((got[1] as f64 - 0.6890442967414856).abs() < 1e-7);
        assert!((got[17] as f64 - 0.00012931869423482567).abs() < 1e-10);
        assert!((got[31] as f64 - 3.023511396804679e-07).abs() < 1e-13);
    }

    #[test]
    fn rotation_by_hand() {
        let dev = Default::default();
        let p = YarnParams {
            factor: 1.0,
            ..gpt_oss()
        };
        // head_dim 2: inv_freq = [1], scale 1; position 1 rotates (a, b) by one radian
        let t = RopeTables::<Flex>::new(&p, 2, 2, &dev);
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 1.0, 2.0], [1, 1, 2, 2]),
            &dev,
        );
        let y = t.apply(x).into_data().to_vec::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1.0, 2.0, c - 2.0 * s, 2.0 * c + s];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn packed_positions_take_the_rows_of_their_ids() {
        let dev = Default::default();
        let p = gpt_oss();
        let host = |t: &Tensor<Flex, 4>| (t.dims(), t.to_data().to_vec::<f32>().unwrap());
        let full = RopeTables::<Flex>::new(&p, 16, 5, &dev);
        let (dims, cos) = host(&full.cos);
        assert_eq!(dims, [1, 1, 5, 8]);
        // row 0 packs [0, 1, 2] + [0, 1]; row 1 is contiguous: one table row per batch row
        let ids = PositionIds::from_i64(&[0, 1, 2, 0, 1, 0, 1, 2, 3, 4], 2, 5).unwrap();
        let packed = RopeTables::<Flex>::at(&p, 16, &ids, &dev);
        let (dims, got) = host(&packed.cos);
        assert_eq!(dims, [2, 1, 5, 8]);
        let (_, got_sin) = host(&packed.sin);
        let (_, sin) = host(&full.sin);
        for (i, &pos) in ids.values().iter().enumerate() {
            assert_eq!(got[i * 8..][..8], cos[pos * 8..][..8], "cos of token {i}");
            assert_eq!(
                got_sin[i * 8..][..8],
                sin[pos * 8..][..8],
                "sin of token {i}"
            );
        }
        // equal rows share one table row
        let same = PositionIds::from_i64(&[0, 1, 0, 1, 0, 1], 3, 2).unwrap();
        assert_eq!(
            RopeTables::<Flex>::at(&p, 16, &same, &dev).cos.dims(),
            [1, 1, 2, 8]
        );
    }
}
