//! Sequences of training tokens: one example each, or several examples packed into `max_length`
//! tokens by best-fit decreasing (each example goes into the fullest sequence it still fits; no
//! example is split). Position ids restart at 0 at every example; the model confines attention to
//! each example from them. Labels are the ids where trained, `-100` elsewhere, and always `-100` at
//! an example's first token (nothing before it in the example predicts it), so a packed example gets
//! exactly the loss it gets alone.

use std::collections::BTreeSet;

use serde::Serialize;

use super::store::TokenStore;
use crate::model::IGNORE_INDEX;

/// One training sequence, as `prepare` writes it and `train` feeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sequence {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// `input_ids` where trained, else -100 (unshifted: the loss shifts).
    pub labels: Vec<i64>,
    /// Position of each token within its example.
    pub position_ids: Vec<u32>,
}

impl Sequence {
    /// Tokens whose label is counted.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Groups of example indices: one group per sequence. Without `max_length` (no packing) each
/// example is its own sequence, in order. With it, best-fit decreasing: examples by decreasing
/// length (ties in dataset order), each into the open sequence with the least room that still fits
/// it, else a new one. `lengths` must all be `<= max_length`.
pub fn pack(lengths: &[usize], max_length: Option<usize>) -> Vec<Vec<usize>> {
    let Some(cap) = max_length else {
        return (0..lengths.len()).map(|i| vec![i]).collect();
    };
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // (room left, bin) of the open bins
    let mut open: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = lengths[i];
        let fit = open.range((len, 0)..).next().copied();
        match fit {
            Some((room, b)) => {
                open.remove(&(room, b));
                bins[b].push(i);
                if room > len {
                    open.insert((room - len, b));
                }
            }
            None => {
                bins.push(vec![i]);
                if cap > len {
                    open.insert((cap - len, bins.len() - 1));
                }
            }
        }
    }
    bins
}

/// Builds the sequence of a group of examples of `store`.
pub fn build(store: &TokenStore, group: &[usize]) -> Sequence {
    let total: usize = group.iter().map(|&e| store.len_of(e)).sum();
    let mut seq = Sequence {
        input_ids: Vec::with_capacity(total),
        labels: Vec::with_capacity(total),
        position_ids: Vec::with_capacity(total),
    };
    for &e in group {
        let (ids, trained) = store.example(e);
        for (p, (&id, &t)) in ids.iter().zip(trained).enumerate() {
            seq.input_ids.push(id);
            seq.labels
                .push(if t && p > 0 { id as i64 } else { IGNORE_INDEX });
            seq.position_ids.push(p as u32);
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_decreasing() {
        let bins = pack(&[5, 3, 8, 2, 6, 4], Some(10));
        // 8 -> A(2 left); 6 -> B(4); 5 -> C(5); 4 -> B(0); 3 -> C(2); 2 -> A(0) (A and C tie at 2: lower bin)
        assert_eq!(bins, vec![vec![2, 3], vec![4, 5], vec![0, 1]]);
        for b in &bins {
            assert!(b.iter().map(|&i| [5, 3, 8, 2, 6, 4][i]).sum::<usize>() <= 10);
        }
        assert_eq!(pack(&[3, 1], None), vec![vec![0], vec![1]]);
        assert_eq!(pack(&[10, 10], Some(10)), vec![vec![0], vec![1]]);
    }

    #[test]
    fn sequences_restart_positions_and_mask_first_tokens() {
        let mut store = TokenStore::default();
        store.push(&[7, 8, 9], &[true, true, false]);
        store.push(&[4, 5], &[true, true]);
        let s = build(&store, &[0, 1]);
        assert_eq!(s.input_ids, vec![7, 8, 9, 4, 5]);
        assert_eq!(s.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(s.labels, vec![-100, 8, -100, -100, 5]);
        assert_eq!(s.trained_tokens(), 2);
    }
}
