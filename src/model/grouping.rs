//! Grouping of routed tokens by expert: the (token, slot) assignments sorted by expert id, so each
//! expert multiplies only its own tokens (gathered with `select`) and empty experts are skipped.

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

/// Every non-empty expert's group, by ascending expert id, and the concatenated token order.
#[derive(Debug, Clone)]
pub struct ExpertGroups<B: Backend> {
    /// Non-empty groups only.
    pub groups: Vec<ExpertGroup<B>>,
    /// The token rows of all groups, concatenated in group order (the scatter index).
    pub order: Tensor<B, 1, Int>,
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
        for (expert, pairs) in plan(flat, top_k, experts)?.into_iter().enumerate() {
            if pairs.is_empty() {
                continue;
            }
            let (tokens, slots): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
            order.extend_from_slice(&tokens);
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
}
