//! Position ids and the packed segments they define.
//!
//! Training packs several examples into one row of `max_length` tokens (padding-free packing, as
//! transformers / TRL do it with flash-attention varlen): `position_ids` restart at 0 at each
//! example, and attention is confined to each example. The segments are derived from the position
//! ids alone, like transformers' `position_ids == 0` boundaries: a new segment starts at every
//! token whose position id is 0, and the token at column `t` belongs to the segment starting at
//! `t - position_ids[t]`. Within a segment the ids must run 0, 1, 2, …; a row must start at 0.
//!
//! Contiguous positions (`0..seq` in every row) are one segment per row: the plain causal model.

use anyhow::{bail, ensure};

/// Validated position ids of a `[batch, seq]` batch (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionIds {
    batch: usize,
    seq: usize,
    values: Vec<usize>,
}

impl PositionIds {
    /// `0..seq` in every row: one segment per row.
    pub fn contiguous(batch: usize, seq: usize) -> Self {
        Self {
            batch,
            seq,
            values: (0..batch).flat_map(|_| 0..seq).collect(),
        }
    }

    /// Checks `values` (row-major `[batch, seq]`): every row starts at 0 and each id is either 0
    /// (a new segment) or the previous id + 1. Errors name the offending `[row, column]`.
    pub fn from_i64(values: &[i64], batch: usize, seq: usize) -> anyhow::Result<Self> {
        ensure!(
            values.len() == batch * seq,
            "position_ids: {} values for batch {batch} × seq {seq}",
            values.len()
        );
        let mut out = Vec::with_capacity(values.len());
        for b in 0..batch {
            for t in 0..seq {
                let p = values[b * seq + t];
                ensure!(
                    p >= 0,
                    "position_ids[{b}, {t}] = {p} is negative (positions count from 0 within each \
                     packed example)"
                );
                let p = p as usize;
                if t == 0 {
                    ensure!(
                        p == 0,
                        "position_ids[{b}, 0] = {p}: a row must start at position 0"
                    );
                } else if p != 0 {
                    let prev = out[b * seq + t - 1];
                    if p != prev + 1 {
                        bail!(
                            "position_ids[{b}, {t}] = {p} follows {prev}: expected {} (the same \
                             example) or 0 (a new example)",
                            prev + 1
                        );
                    }
                }
                out.push(p);
            }
        }
        Ok(Self {
            batch,
            seq,
            values: out,
        })
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Columns.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The ids, row-major `[batch, seq]`.
    pub fn values(&self) -> &[usize] {
        &self.values
    }

    /// The ids of row `b`.
    pub fn row(&self, b: usize) -> &[usize] {
        &self.values[b * self.seq..][..self.seq]
    }

    /// Column where the segment of token `[b, t]` starts (`t - position_ids[b, t]`); non-decreasing
    /// along a row.
    pub fn segment_start(&self, b: usize, t: usize) -> usize {
        t - self.values[b * self.seq + t]
    }

    /// The smallest segment start of column `t` over the rows: no query at column `>= t` sees a
    /// key before it.
    pub fn min_segment_start(&self, t: usize) -> usize {
        (0..self.batch)
            .map(|b| self.segment_start(b, t))
            .min()
            .unwrap_or(0)
    }

    /// Whether every row is `0..seq` (one segment per row).
    pub fn is_contiguous(&self) -> bool {
        (0..self.batch).all(|b| self.row(b).iter().enumerate().all(|(t, &p)| t == p))
    }

    /// Whether all rows hold the same ids (then per-row tables can be shared by the batch).
    pub fn rows_equal(&self) -> bool {
        (1..self.batch).all(|b| self.row(b) == self.row(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_restart_at_zero() {
        let p = PositionIds::from_i64(&[0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5], 2, 6).unwrap();
        let starts: Vec<usize> = (0..6).map(|t| p.segment_start(0, t)).collect();
        assert_eq!(starts, vec![0, 0, 0, 3, 3, 5]);
        assert_eq!(p.min_segment_start(4), 0);
        assert_eq!(p.segment_start(1, 5), 0);
        assert!(!p.is_contiguous() && !p.rows_equal());
        assert_eq!(p.row(1), &[0, 1, 2, 3, 4, 5]);
        let c = PositionIds::contiguous(2, 3);
        assert_eq!(c.values(), &[0, 1, 2, 0, 1, 2]);
        assert!(c.is_contiguous() && c.rows_equal());
        assert_eq!(c, PositionIds::from_i64(&[0, 1, 2, 0, 1, 2], 2, 3).unwrap());
    }

    #[test]
    fn bad_ids_name_row_and_column() {
        let err = |v: &[i64], b, s| PositionIds::from_i64(v, b, s).unwrap_err().to_string();
        assert!(err(&[0, 1, 2], 2, 3).contains("3 values for batch 2 × seq 3"));
        let e = err(&[0, 1, 2, 0, -1, 0], 2, 3);
        assert!(
            e.contains("position_ids[1, 1] = -1") && e.contains("negative"),
            "{e}"
        );
        let e = err(&[0, 1, 2, 1, 2, 3], 2, 3);
        assert!(e.contains("position_ids[1, 0] = 1"), "{e}");
        let e = err(&[0, 1, 3], 1, 3);
        assert!(e.contains("position_ids[0, 2] = 3 follows 1"), "{e}");
        let e = err(&[0, 1, 1], 1, 3);
        assert!(e.contains("position_ids[0, 2] = 1 follows 1"), "{e}");
    }
}
