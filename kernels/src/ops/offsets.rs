//! Where each expert's rows are in the expert-sorted rows of a grouped op: expert `e` owns rows
//! `offsets[e]..offsets[e+1]`. CPU backends hold the `E + 1` offsets on the host (the grouping is
//! made there); device backends keep them on the device, where the routing made them, so no layer
//! waits for a read-back.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

/// The `E + 1` row offsets of a grouped op.
#[derive(Debug, Clone)]
pub enum ExpertOffsets<B: Backend> {
    /// On the host.
    Host(Vec<usize>),
    /// On the device (`[E + 1]` ints), with the total number of rows (the last offset), which
    /// the host knows without reading them (`tokens · top_k`).
    Device {
        /// `[E + 1]`, non-decreasing from 0 to `rows`.
        offsets: Tensor<B, 1, Int>,
        /// Rows of the grouped input.
        rows: usize,
    },
}

impl<B: Backend> ExpertOffsets<B> {
    /// Number of experts (`E`).
    pub fn experts(&self) -> usize {
        match self {
            Self::Host(o) => o.len().saturating_sub(1),
            Self::Device { offsets, .. } => offsets.dims()[0].saturating_sub(1),
        }
    }

    /// Number of rows (`offsets[E]`; 0 for an empty host list).
    pub fn rows(&self) -> usize {
        match self {
            Self::Host(o) => o.last().copied().unwrap_or(0),
            Self::Device { rows, .. } => *rows,
        }
    }

    /// The offsets on the host. Device offsets are read back: a sync, for the CPU and reference
    /// paths only.
    pub fn to_host(&self) -> Vec<usize> {
        match self {
            Self::Host(o) => o.clone(),
            Self::Device { offsets, .. } => offsets
                .to_data()
                .convert::<i64>()
                .iter::<i64>()
                .map(|v| v.max(0) as usize)
                .collect(),
        }
    }

    /// The offsets as a device tensor (host offsets are uploaded).
    pub fn to_device(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        match self {
            Self::Host(o) => {
                let v: Vec<i64> = o.iter().map(|&x| x as i64).collect();
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), device)
            }
            Self::Device { offsets, .. } => offsets.clone(),
        }
    }

    /// The expert of each row, `[rows]`, computed on the device: row `i` belongs to the number
    /// of experts whose rows end at or before `i`.
    pub fn row_experts(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let rows = self.rows();
        let experts = self.experts();
        let ends = self
            .to_device(device)
            .narrow(0, 1, experts)
            .reshape([1, experts]);
        let row = Tensor::<B, 1, Int>::arange(0..rows as i64, device).reshape([rows, 1]);
        row.greater_equal(ends.expand([rows, experts]))
            .int()
            .sum_dim(1)
            .reshape([rows])
    }
}

impl<B: AutodiffBackend> ExpertOffsets<B> {
    /// The same offsets on the inner backend.
    pub fn inner(&self) -> ExpertOffsets<B::InnerBackend> {
        match self {
            Self::Host(o) => ExpertOffsets::Host(o.clone()),
            Self::Device { offsets, rows } => ExpertOffsets::Device {
                offsets: offsets.clone().inner(),
                rows: *rows,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn host_and_device_views_agree() {
        let dev = Default::default();
        let host = ExpertOffsets::<Flex>::Host(vec![0, 2, 2, 5, 6]);
        let device = ExpertOffsets::<Flex>::Device {
            offsets: host.to_device(&dev),
            rows: 6,
        };
        for o in [&host, &device] {
            assert_eq!((o.experts(), o.rows()), (4, 6));
            assert_eq!(o.to_host(), vec![0, 2, 2, 5, 6]);
            let ids: Vec<i64> = o
                .row_experts(&dev)
                .into_data()
                .convert::<i64>()
                .iter::<i64>()
                .collect();
            assert_eq!(ids, vec![0, 0, 2, 2, 2, 3]);
        }
    }
}
