//! The routing references on the host: the top-k experts of each token's router logits, and the
//! grouping of the (token, slot) assignments by expert. The device kernels of `gpu::routing`
//! compute the same results exactly.

/// Why a routing step was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoutingError {
    /// `k` is not in `1..=experts`.
    #[error("top-k of {k} over {experts} experts")]
    TopK {
        /// Experts asked for per token.
        k: usize,
        /// Experts in the layer.
        experts: usize,
    },
    /// A router logit is NaN or infinite.
    #[error("router logit of token {token} expert {expert} is {value} (non-finite)")]
    NonFinite {
        /// Row of the logit.
        token: usize,
        /// Column of the logit.
        expert: usize,
        /// The logit.
        value: f32,
    },
    /// A routing choice names an expert the layer does not have.
    #[error("router chose expert {expert}, but the layer has {experts}")]
    ExpertOutOfRange {
        /// The id chosen.
        expert: i64,
        /// Experts in the layer.
        experts: usize,
    },
    /// The device routing set its error flag (`gpu::routing`): bit 1, a non-finite router logit;
    /// bit 2, an expert id out of range. (The device does not say which token.)
    #[error("routing on the device flagged {flags:#x} (1: a non-finite router logit, 2: an expert id out of range)")]
    DeviceFlag {
        /// The flag's bits.
        flags: u32,
    },
    /// An input's length or shape does not fit the others.
    #[error("routing: bad {what}: expected {expected}, got {got}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// What was expected (a length, or a multiple of it).
        expected: usize,
        /// What was given.
        got: usize,
    },
}

/// Per row of `logits [rows, experts]` (row-major), the `k` largest entries' indices, by
/// descending value (ties: lower index first; `-0.0` ranks below `+0.0`, as `f32::total_cmp`).
/// Errors when `k` is outside `1..=experts`, when the length is not a multiple of `experts`, or
/// on a non-finite logit (naming its token and expert).
pub fn top_k_rows(logits: &[f32], experts: usize, k: usize) -> Result<Vec<i64>, RoutingError> {
    if !(1..=experts).contains(&k) {
        return Err(RoutingError::TopK { k, experts });
    }
    if !logits.len().is_multiple_of(experts) {
        return Err(RoutingError::Shape {
            what: "router logits length (a multiple of the experts)",
            expected: logits.len().next_multiple_of(experts),
            got: logits.len(),
        });
    }
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(RoutingError::NonFinite {
            token: i / experts,
            expert: i % experts,
            value: logits[i],
        });
    }
    let mut out = Vec::with_capacity(logits.len() / experts * k);
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for row in logits.chunks_exact(experts) {
        order.clear();
        order.extend(0..experts);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        out.extend(order[..k].iter().map(|&e| e as i64));
    }
    Ok(out)
}

/// Checks the routing choices (`[tokens · top_k]`, row-major) against the layer: `top_k ≥ 1` and
/// every id in `0..experts`; returns the ids as indices.
fn expert_ids(indices: &[i64], top_k: usize, experts: usize) -> Result<Vec<usize>, RoutingError> {
    if top_k == 0 {
        return Err(RoutingError::TopK { k: 0, experts });
    }
    indices
        .iter()
        .map(|&e| {
            usize::try_from(e)
                .ok()
                .filter(|&e| e < experts)
                .ok_or(RoutingError::ExpertOutOfRange { expert: e, experts })
        })
        .collect()
}

/// For each expert, the `(token, flat slot)` pairs routed to it, by ascending flat slot
/// `token · top_k + slot` of the row-major `[tokens, top_k]` choices `indices`. Errors on an id
/// outside `0..experts` or `top_k` 0.
pub fn plan(
    indices: &[i64],
    top_k: usize,
    experts: usize,
) -> Result<Vec<Vec<(i64, i64)>>, RoutingError> {
    let mut per_expert = vec![Vec::new(); experts];
    for (flat, e) in expert_ids(indices, top_k, experts)?.into_iter().enumerate() {
        per_expert[e].push(((flat / top_k) as i64, flat as i64));
    }
    Ok(per_expert)
}

/// The assignments sorted by expert, flat: what the device grouping computes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grouping {
    /// The token of each sorted assignment (the gather and scatter row index).
    pub order: Vec<i64>,
    /// The flat slot `token · top_k + slot` of each sorted assignment (into the router scores).
    pub slots: Vec<i64>,
    /// `experts + 1` entries: expert `e` owns entries `offsets[e]..offsets[e + 1]`.
    pub offsets: Vec<usize>,
}

/// The flat form of [`plan`]: the assignments by ascending expert, then ascending flat slot, with
/// per-expert offsets. Errors as [`plan`].
pub fn group_by_expert(
    indices: &[i64],
    top_k: usize,
    experts: usize,
) -> Result<Grouping, RoutingError> {
    let ids = expert_ids(indices, top_k, experts)?;
    // counting sort, stable in the flat slot
    let mut offsets = vec![0usize; experts + 1];
    for &e in &ids {
        offsets[e + 1] += 1;
    }
    for e in 0..experts {
        offsets[e + 1] += offsets[e];
    }
    let mut next = offsets[..experts].to_vec();
    let mut order = vec![0i64; ids.len()];
    let mut slots = vec![0i64; ids.len()];
    for (flat, &e) in ids.iter().enumerate() {
        order[next[e]] = (flat / top_k) as i64;
        slots[next[e]] = flat as i64;
        next[e] += 1;
    }
    Ok(Grouping {
        order,
        slots,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_by_hand() {
        let l = [0.5, 2.0, -1.0, 2.0, 3.0, 1.0, 0.0, 0.0];
        assert_eq!(top_k_rows(&l, 4, 2).unwrap(), vec![1, 3, 0, 1]);
        assert!(top_k_rows(&[f32::NAN, 0.0], 2, 1).is_err());
        assert!(top_k_rows(&[0.0, 0.0], 2, 3).is_err());
        assert!(top_k_rows(&[0.0, 0.0], 2, 0).is_err());
        assert!(top_k_rows(&[0.0, 0.0, 0.0], 2, 1).is_err());
        // total order: +0.0 above -0.0
        assert_eq!(top_k_rows(&[-0.0, 0.0], 2, 1).unwrap(), vec![1]);
    }

    #[test]
    fn errors_name_the_token_and_expert() {
        let l = [0.0, 1.0, 2.0, f32::INFINITY];
        let err = top_k_rows(&l, 2, 1).unwrap_err();
        assert_eq!(
            err,
            RoutingError::NonFinite {
                token: 1,
                expert: 1,
                value: f32::INFINITY
            }
        );
        assert_eq!(
            err.to_string(),
            "router logit of token 1 expert 1 is inf (non-finite)"
        );
        assert_eq!(
            plan(&[4], 1, 4).unwrap_err().to_string(),
            "router chose expert 4, but the layer has 4"
        );
    }

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
        assert!(plan(&[0], 0, 4).is_err());
    }

    #[test]
    fn flat_grouping_follows_the_plan() {
        let idx = [2, 0, 0, 3, 2, 3];
        let g = group_by_expert(&idx, 2, 4).unwrap();
        assert_eq!(g.offsets, vec![0, 2, 2, 4, 6]);
        assert_eq!(g.order, vec![0, 1, 0, 2, 1, 2]);
        assert_eq!(g.slots, vec![1, 2, 0, 4, 3, 5]);
        assert!(group_by_expert(&[-1], 1, 4).is_err());
        let empty = group_by_expert(&[], 2, 3).unwrap();
        assert_eq!(empty.offsets, vec![0; 4]);
        assert!(empty.order.is_empty() && empty.slots.is_empty());
    }

    #[test]
    fn flat_grouping_concatenates_the_plan_on_pseudo_random_choices() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for &(experts, k) in &[(5usize, 1usize), (5, 4), (32, 2), (128, 4)] {
            let idx: Vec<i64> = (0..97 * k)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    ((state >> 33) % experts as u64) as i64
                })
                .collect();
            let p = plan(&idx, k, experts).unwrap();
            let g = group_by_expert(&idx, k, experts).unwrap();
            let flat: Vec<(i64, i64)> = p.iter().flatten().copied().collect();
            assert_eq!(g.order, flat.iter().map(|x| x.0).collect::<Vec<_>>());
            assert_eq!(g.slots, flat.iter().map(|x| x.1).collect::<Vec<_>>());
            for (e, pairs) in p.iter().enumerate() {
                assert_eq!(g.offsets[e + 1] - g.offsets[e], pairs.len());
            }
        }
    }
}
