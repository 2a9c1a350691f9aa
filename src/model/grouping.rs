//! Grouping of routed tokens by expert: the (token, slot) assignments sorted by expert id, so each
//! expert multiplies only its own tokens and empty experts are skipped. Two views of one plan:
//! per-expert groups (the reference path gathers each with `select`) and the flat sorted order
//! with per-expert row offsets (the grouped op takes all experts' rows at once).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use kernels::ops::{routing, ExpertOffsets, Route};

/// The tokens one expert processes.
#[derive(Debug, Clone)]
pub struct ExpertGroup<B: Backend> {
    /// Expert id.
    pub expert: usize,
    /// Row indices into the `[tokens, hidden]` input, ascending.
    pub tokens: Tensor<B, 1, Int>,
    /// Flat indices `token · top_k + slot` into the `[tokens · top_k]` router scores.
    pub slots: Tensor<B, 1, Int>,
    /// Number of tokens.
    pub len: usize,
}

/// The assignments of one layer sorted by expert: the flat order the grouped op takes, and the
/// per-expert groups of the reference path.
#[derive(Debug, Clone)]
pub struct ExpertGroups<B: Backend> {
    /// The token rows of all experts, concatenated by expert (gather and scatter index).
    pub order: Tensor<B, 1, Int>,
    /// The flat score slots of all experts, in the same order as `order`.
    pub slots: Tensor<B, 1, Int>,
    /// Expert `e` owns rows `offsets[e]..offsets[e+1]` of `order` (on the host or the device).
    pub offsets: ExpertOffsets<B>,
}

/// Host-side plan: for each expert, the `(token, flat slot)` pairs routed to it (the reference
/// is [`kernels::ops::routing::plan`]). Errors on an expert id out of range.
pub fn plan(indices: &[i64], top_k: usize, experts: usize) -> anyhow::Result<Vec<Vec<(i64, i64)>>> {
    Ok(routing::plan(indices, top_k, experts)?)
}

impl<B: Backend> ExpertGroups<B> {
    /// The grouping a route carries.
    pub fn from_route(route: &Route<B>) -> Self {
        Self {
            order: route.order.clone(),
            slots: route.slots.clone(),
            offsets: route.offsets.clone(),
        }
    }

    /// Groups the row-major `[tokens, top_k]` routing choices `flat` on the host.
    pub fn new(
        flat: &[i64],
        top_k: usize,
        experts: usize,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let grouping = routing::group_by_expert(flat, top_k, experts)?;
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(v, [n]), device)
        };
        Ok(Self {
            order: int(grouping.order),
            slots: int(grouping.slots),
            offsets: ExpertOffsets::Host(grouping.offsets),
        })
    }

    /// Rows of all experts together.
    pub fn rows(&self) -> usize {
        self.offsets.rows()
    }

    /// The non-empty experts' groups, by ascending id (the reference path; device offsets are
    /// read back).
    pub fn groups(&self) -> Vec<ExpertGroup<B>> {
        let offsets = self.offsets.to_host();
        (0..offsets.len().saturating_sub(1))
            .filter(|&e| offsets[e + 1] > offsets[e])
            .map(|expert| {
                let (start, len) = (offsets[expert], offsets[expert + 1] - offsets[expert]);
                ExpertGroup {
                    expert,
                    len,
                    tokens: self.order.clone().narrow(0, start, len),
                    slots: self.slots.clone().narrow(0, start, len),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_its_error_message() {
        let p = plan(&[2, 0, 0, 3, 2, 3], 2, 4).unwrap();
        assert_eq!(p[2], vec![(0, 0), (2, 4)]);
        let err = plan(&[4], 1, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "router chose expert 4, but the layer has 4"
        );
    }

    #[test]
    fn flat_order_slots_and_offsets_follow_the_plan() {
        let idx = [2, 0, 0, 3, 2, 3];
        let g = ExpertGroups::<burn::backend::Flex>::new(&idx, 2, 4, &Default::default()).unwrap();
        let ints = |t: &Tensor<burn::backend::Flex, 1, Int>| {
            t.to_data().convert::<i64>().to_vec::<i64>().unwrap()
        };
        assert_eq!(g.offsets.to_host(), vec![0, 2, 2, 4, 6]);
        assert_eq!(ints(&g.order), vec![0, 1, 0, 2, 1, 2]);
        assert_eq!(ints(&g.slots), vec![1, 2, 0, 4, 3, 5]);
        let groups = g.groups();
        assert_eq!(groups.len(), 3);
        let ids: Vec<usize> = groups.iter().map(|gr| gr.expert).collect();
        assert_eq!(ids, vec![0, 2, 3]);
        assert_eq!(ints(&groups[1].tokens), vec![0, 2]);
        assert_eq!(ints(&groups[1].slots), vec![0, 4]);
        assert!(groups.iter().all(|gr| gr.len == 2));
        assert!(ExpertGroups::<burn::backend::Flex>::new(&[9], 1, 4, &Default::default()).is_err());
    }
}
