//! Attention patterns: full causal, and sliding window (`q - window < k <= q`), optionally
//! confined to packed segments (key `k` must also lie in the query's segment, `k >= start(q)`).

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

    /// Whether query `q`, whose packed segment starts at column `segment_start`, sees key `k`:
    /// the pattern allows it and `k` lies in the query's segment.
    pub fn visible_in_segment(self, q: usize, k: usize, segment_start: usize) -> bool {
        k >= segment_start && self.visible(q, k)
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
        // a segment starting at 4 hides keys 2 and 3 from query 5
        let seen: Vec<usize> = (0..8).filter(|&k| p.visible_in_segment(5, k, 4)).collect();
        assert_eq!(seen, vec![4, 5]);
        let seen: Vec<usize> = (0..8).filter(|&k| c.visible_in_segment(5, k, 3)).collect();
        assert_eq!(seen, vec![3, 4, 5]);
    }
}
