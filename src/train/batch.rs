//! Micro-batches: sequences padded to the longest. Padding is a segment of its own (position ids
//! from 0, labels -100), so it never attends to, or is attended by, a real example.

use crate::data::Sequence;
use crate::model::IGNORE_INDEX;

/// A micro-batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub positions: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Tokens the loss counts (labels after the shift: column 0 never counts).
    pub fn counted(&self) -> usize {
        (0..self.batch)
            .map(|b| {
                self.labels[b * self.seq + 1..(b + 1) * self.seq]
                    .iter()
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum()
    }
}

/// Pads `seqs` to the longest with `pad_id`.
pub fn collate(seqs: &[Sequence], pad_id: u32) -> Batch {
    let seq = seqs
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut b = Batch {
        ids: Vec::with_capacity(seqs.len() * seq),
        labels: Vec::with_capacity(seqs.len() * seq),
        positions: Vec::with_capacity(seqs.len() * seq),
        batch: seqs.len(),
        seq,
    };
    for s in seqs {
        let n = s.input_ids.len();
        b.ids.extend(s.input_ids.iter().map(|&i| i as i64));
        b.labels.extend(&s.labels);
        b.positions.extend(s.position_ids.iter().map(|&p| p as i64));
        b.ids.extend(std::iter::repeat_n(pad_id as i64, seq - n));
        b.labels.extend(std::iter::repeat_n(IGNORE_INDEX, seq - n));
        b.positions.extend(0..(seq - n) as i64);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_as_its_own_segment() {
        let s = |ids: &[u32], labels: &[i64]| Sequence {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            position_ids: (0..ids.len() as u32).collect(),
        };
        let b = collate(&[s(&[5, 6, 7], &[-100, 6, 7]), s(&[8], &[-100])], 0);
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(b.labels, vec![-100, 6, 7, -100, -100, -100]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(b.counted(), 2);
    }
}
