//! Tokenized examples in two flat buffers (ids and trained flags) with one range per example:
//! about 5 bytes a token, whatever the number of examples.

use std::ops::Range;

/// All examples of a split, in dataset order.
#[derive(Debug, Default, Clone)]
pub struct TokenStore {
    ids: Vec<u32>,
    trained: Vec<bool>,
    ranges: Vec<Range<usize>>,
}

impl TokenStore {
    /// Appends an example.
    pub fn push(&mut self, ids: &[u32], trained: &[bool]) {
        debug_assert_eq!(ids.len(), trained.len());
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.trained.extend_from_slice(trained);
        self.ranges.push(start..self.ids.len());
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Tokens of example `i`.
    pub fn len_of(&self, i: usize) -> usize {
        self.ranges[i].len()
    }

    /// Lengths of all examples.
    pub fn lengths(&self) -> Vec<usize> {
        self.ranges.iter().map(|r| r.len()).collect()
    }

    /// Ids and trained flags of example `i`.
    pub fn example(&self, i: usize) -> (&[u32], &[bool]) {
        let r = self.ranges[i].clone();
        (&self.ids[r.clone()], &self.trained[r])
    }

    /// All tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// A new store with the examples `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> TokenStore {
        let mut out = TokenStore::default();
        for &i in idx {
            let (ids, t) = self.example(i);
            out.push(ids, t);
        }
        out
    }
}
