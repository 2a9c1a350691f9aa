//! Additive attention masks: full causal, and sliding window (`q - window < k <= q`).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPattern {
    /// Every key at or before the query.
    Causal,
    /// Key `k` is visible from query `q` iff `q - window < k <= q`.
    Sliding {
        /// Number of visible keys, the query's own position included.
        window: usize,
    },
}

impl AttentionPattern {
    /// Whether query position `q` sees key position `k`.
    pub fn visible(self, q: usize, k: usize) -> bool {
        match self {
            Self::Causal => k <= q,
            Self::Sliding { window } => k <= q && q < k + window,
        }
    }

    /// `[1, 1, seq, seq]` additive mask: 0 where visible, `-inf` elsewhere.
    pub fn additive_mask<B: Backend>(self, seq: usize, device: &B::Device) -> Tensor<B, 4> {
        let mut values = vec![f32::NEG_INFINITY; seq * seq];
        for q in 0..seq {
            for k in 0..=q {
                if self.visible(q, k) {
                    values[q * seq + k] = 0.0;
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [1, 1, seq, seq]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_matches_the_definition() {
        let p = AttentionPattern::Sliding { window: 4 };
        // query 5 sees keys 2, 3, 4, 5 only
        let seen: Vec<usize> = (0..8).filter(|&k| p.visible(5, k)).collect();
        assert_eq!(seen, vec![2, 3, 4, 5]);
        let seen: Vec<usize> = (0..8).filter(|&k| p.visible(1, k)).collect();
        assert_eq!(seen, vec![0, 1]);
        let c = AttentionPattern::Causal;
        let seen: Vec<usize> = (0..8).filter(|&k| c.visible(5, k)).collect();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn additive_mask_layout() {
        let m = AttentionPattern::Sliding { window: 2 }
            .additive_mask::<burn::backend::Flex>(3, &Default::default())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let ninf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, ninf, ninf, 0.0, 0.0, ninf, ninf, 0.0, 0.0]);
    }
}
