//! Seeded order: the eval split, the shuffled order of each epoch, and the data position that a
//! training checkpoint saves so that a resumed run sees the same sequences in the same order.
//! Orders come from ChaCha8 seeded with the seed, one stream per epoch: the same on every machine.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Stream of the eval split's generator (epochs use streams 0, 1, ...).
const SPLIT_STREAM: u64 = u64::MAX;

/// Splits `n` examples: a seeded `fraction` (at least one, at most `n - 1`) for eval.
/// Returns `(train, eval)` indices, each in dataset order.
pub fn split_eval(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let k = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1));
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(SPLIT_STREAM);
    idx.shuffle(&mut rng);
    let mut eval = idx[..k].to_vec();
    let mut train = idx[k..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    (train, eval)
}

/// The order of `n` sequences in `epoch` (a permutation; the same for the same seed and epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    idx.shuffle(&mut rng);
    idx
}

/// Where training is in the data: the epoch and how many of its sequences were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Epoch (from 0).
    pub epoch: u64,
    /// Sequences of this epoch already consumed.
    pub index: usize,
}

/// Yields sequence indices epoch after epoch in seeded order, from a saved position.
#[derive(Debug, Clone)]
pub struct Sampler {
    n: usize,
    seed: u64,
    shuffle: bool,
    position: DataPosition,
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler over `n` sequences starting at `position`.
    pub fn new(n: usize, seed: u64, shuffle: bool, position: DataPosition) -> Self {
        let mut s = Self {
            n,
            seed,
            shuffle,
            position,
            order: Vec::new(),
        };
        s.order = s.order_of(position.epoch);
        s
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            epoch_order(self.n, self.seed, epoch)
        } else {
            (0..self.n).collect()
        }
    }

    /// The position to save: the next call to `next` resumes from it.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// The next sequence index and the epoch it belongs to (`None` when there is no sequence).
    pub fn next_index(&mut self) -> Option<(usize, u64)> {
        if self.n == 0 {
            return None;
        }
        if self.position.index >= self.n {
            self.position = DataPosition {
                epoch: self.position.epoch + 1,
                index: 0,
            };
            self.order = self.order_of(self.position.epoch);
        }
        let i = self.order[self.position.index];
        self.position.index += 1;
        Some((i, self.position.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t, e) = split_eval(100, 0.1, 7);
        assert_eq!((t.len(), e.len()), (90, 10));
        assert_eq!(split_eval(100, 0.1, 7), (t.clone(), e.clone()));
        assert_ne!(split_eval(100, 0.1, 8).1, e);
        let mut all = [t, e].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_eval(3, 0.01, 0).1.len(), 1);
        assert_eq!(split_eval(3, 0.99, 0).1.len(), 2);
    }

    #[test]
    fn epochs_differ_and_resume_continues_exactly() {
        assert_ne!(epoch_order(50, 1, 0), epoch_order(50, 1, 1));
        assert_eq!(epoch_order(50, 1, 1), epoch_order(50, 1, 1));
        let mut full = Sampler::new(7, 3, true, DataPosition::default());
        let seen: Vec<_> = (0..20).map(|_| full.next_index().unwrap()).collect();
        let mut first = Sampler::new(7, 3, true, DataPosition::default());
        for _ in 0..9 {
            first.next_index();
        }
        let mut resumed = Sampler::new(7, 3, true, first.position());
        let rest: Vec<_> = (9..20).map(|_| resumed.next_index().unwrap()).collect();
        assert_eq!(rest, seen[9..]);
        // each epoch is a permutation
        let mut e0: Vec<usize> = seen[..7].iter().map(|x| x.0).collect();
        e0.sort_unstable();
        assert_eq!(e0, (0..7).collect::<Vec<_>>());
    }
}
