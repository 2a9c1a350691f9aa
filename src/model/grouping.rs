//! Grouping of routed tokens by expert: the (token, slot) assignments sorted by expert id, so each
//! expert multiplies only its own tokens and empty experts are skipped. Two views of one plan:
//! per-expert groups (the reference path gathers each with `select`) and the flat sorted order
//! with per-expert row offsets (the grouped op takes all experts' rows at once).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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

/// Every non-empty expert's group, by ascending expert id, and the concatenated order.
#[derive(Debug, Clone)]
pub struct ExpertGroups<B: Backend> {
    /// Non-empty groups only.
    pub groups: Vec<ExpertGroup<B>>,
    /// The token rows of all groups, concatenated in group order (gather and scatter index).
    pub order: Tensor<B, 1, Int>,
    /// The flat score slots of all groups, in the same order as `order`.
    pub slots: Tensor<B, 1, Int>,
    /// `experts + 1` entries: expert `e` owns rows `offsets[e]..offsets[e+1]` of `order`.
    pub offsets: Vec<usize>,
}

/// Host-side plan: for each expert, the `(token, flat slot)` pairs routed to it.
pub fn plan(indices: &[i64], top_k: usize, experts: usize) -> anyhow::Result<Vec<Vec<(i64, i64)>>> {
    let mut per_expert = vec![Vec::new(); experts];
    for (flat, &e) in indices.iter().enumerate() {
        let e = usize::try_from(e)
            .ok()
            .filter(|&e| e < experts)
            .ok_or_else(|| {
                anyhow::anyhow!("router chose expert {e}, but the layer has {experts}")
            })?;
        per_expert[e].push(((flat / top_k) as i64, flat as i64));
    }
    Ok(per_expert)
}

impl<B: Backend> ExpertGroups<B> {
    /// Groups the row-major `[tokens, top_k]` routing choices (`flat`, on the host).
    pub fn new(
        flat: &[i64],
        top_k: usize,
        experts: usize,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let int = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let mut groups = Vec::new();
        let mut order = Vec::with_capacity(flat.len());
        let mut all_slots = Vec::with_capacity(flat.len());
        let mut offsets = Vec::with_capacity(experts + 1);
        offsets.push(0);
        for (expert, pairs) in plan(flat, top_k, experts)?.into_iter().enumerate() {
            offsets.push(offsets[expert] + pairs.len());
            if pairs.is_empty() {
                continue;
            }
            let (tokens, slots): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
            order.extend_from_slice(&tokens);
            all_slots.extend_from_slice(&slots);
            groups.push(ExpertGroup {
                expert,
                len: tokens.len(),
                tokens: int(tokens),
                slots: int(slots),
            });
        }
        Ok(Self {
            groups,
            order: int(order),
            slots: int(all_slots),
            offsets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_by_expert_in_token_order() {
        // 3 tokens, top-2, 4 experts
        let idx = [2, 0, 0, 3, 2, 3];
        let p = plan(&idx, 2, 4).unwrap();
        assert_eq!(p[0], vec![(0, 1), (1, 2)]);
        assert!(p[1].is_empty());
        assert_eq!(p[2], vec![(0, 0), (2, 4)]);
        assert_eq!(p[3], vec![(1, 3), (2, 5)]);
        assert!(plan(&[4], 1, 4).is_err());
        assert!(plan(&[-1], 1, 4).is_err());
    }

    #[test]
    fn flat_order_slots_and_offsets_follow_the_plan() {
        let idx = [2, 0, 0, 3, 2, 3];
        let g = ExpertGroups::<burn::backend::Flex>::new(&idx, 2, 4, &Default::default()).unwrap();
        let ints = |t: &Tensor<burn::backend::Flex, 1, Int>| {
            t.to_data().convert::<i64>().to_vec::<i64>().unwrap()
        };
        assert_eq!(g.offsets, vec![0, 2, 2, 4, 6]);
        assert_eq!(ints(&g.order), vec![0, 1, 0, 2, 1, 2]);
        assert_eq!(ints(&g.slots), vec![1, 2, 0, 4, 3, 5]);
        assert_eq!(g.groups.len(), 3);
    }
}
