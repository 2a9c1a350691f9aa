//! The routing kernels: top-k per token and the counting sort of the assignments by expert.
//! Integer work only (the logits are compared by their bits in `f32::total_cmp`'s order), so
//! the results are the CPU reference's exactly. The error flag is set by an atomic OR, whose
//! result does not depend on the order of the units.

use cubecl::prelude::*;

/// Flag bit: a router logit is NaN or infinite.
pub const NON_FINITE_LOGIT: u32 = 1;
/// Flag bit: a routing choice is outside `0..experts`.
pub const EXPERT_OUT_OF_RANGE: u32 = 2;

/// Exponent bits of an f32 (all ones: Inf/NaN).
const EXP_MASK: u32 = 0x7F80_0000;

/// The key of `v` in `f32::total_cmp`'s order, as an unsigned integer: negative values have all
/// bits flipped, the others their sign bit set.
#[cube]
fn total_key(v: f32) -> u32 {
    let bits = u32::reinterpret(v);
    let mut key: u32 = bits | 0x8000_0000u32;
    if (bits >> 31u32) == 1u32 {
        key = bits ^ 0xFFFF_FFFFu32;
    }
    key
}

/// One unit per token of `logits [tokens, experts]`: the `k` experts of largest logit, by
/// descending logit (ties: lower index first) into `indices [tokens, k]`. Each choice is the
/// best one ranked after the previous choice, so nothing is marked. Sets
/// [`NON_FINITE_LOGIT`] in `flag[0]` when the row holds a NaN/Inf (the choices are then
/// unspecified).
#[cube(launch)]
pub fn top_k_kernel(
    logits: &Array<f32>,
    indices: &mut Array<i32>,
    flag: &mut Array<Atomic<u32>>,
    tokens: u32,
    experts: u32,
    k: u32,
) {
    let token = ABSOLUTE_POS;
    if token >= tokens as usize {
        terminate!();
    }
    let experts = experts as usize;
    let k = k as usize;
    let row = token * experts;
    let mut bad: u32 = 0u32;
    for e in 0..experts {
        if (u32::reinterpret(logits[row + e]) & EXP_MASK) == EXP_MASK {
            bad = 1u32;
        }
    }
    if bad == 1u32 {
        flag[0].fetch_or(NON_FINITE_LOGIT);
    }
    let mut prev_key: u32 = 0u32;
    let mut prev_idx: usize = 0usize;
    for s in 0..k {
        let mut best_key: u32 = 0u32;
        let mut best_idx: usize = experts;
        for e in 0..experts {
            let key = total_key(logits[row + e]);
            // ranked after the previous choice: a smaller key, or an equal key at a higher index
            let after = s == 0 || key < prev_key || (key == prev_key && e > prev_idx);
            // ascending `e`: on equal keys the first (lower) index is kept
            if after && (best_idx == experts || key > best_key) {
                best_key = key;
                best_idx = e;
            }
        }
        indices[token * k + s] = best_idx as i32;
        prev_key = best_key;
        prev_idx = best_idx;
    }
}

/// One unit per assignment: sets [`EXPERT_OUT_OF_RANGE`] in `flag[0]` when `indices[i]` is
/// outside `0..experts`.
#[cube(launch)]
pub fn expert_range_kernel(
    indices: &Array<i32>,
    flag: &mut Array<Atomic<u32>>,
    n: u32,
    experts: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= n as usize {
        terminate!();
    }
    let e = indices[i];
    if e < 0i32 || e >= experts as i32 {
        flag[0].fetch_or(EXPERT_OUT_OF_RANGE);
    }
}

/// One unit per expert `e`: `offsets[e + 1]` = the number of assignments to `e` among the `n`
/// of `indices`.
#[cube(launch)]
pub fn expert_count_kernel(indices: &Array<i32>, offsets: &mut Array<i32>, n: u32, experts: u32) {
    let e = ABSOLUTE_POS;
    if e >= experts as usize {
        terminate!();
    }
    let id = e as i32;
    let mut count: i32 = 0i32;
    for i in 0..n as usize {
        if indices[i] == id {
            count += 1i32;
        }
    }
    offsets[e + 1] = count;
}

/// One unit: the counts in `offsets[1..=experts]` become their inclusive prefix sums, and
/// `offsets[0]` = 0 (an exclusive scan of the counts over `experts + 1` entries).
#[cube(launch)]
pub fn offsets_scan_kernel(offsets: &mut Array<i32>, experts: u32) {
    if ABSOLUTE_POS != 0 {
        terminate!();
    }
    offsets[0] = 0i32;
    let mut sum: i32 = 0i32;
    for e in 0..experts as usize {
        sum += offsets[e + 1];
        offsets[e + 1] = sum;
    }
}

/// One unit per expert `e`: walks the `n` assignments in flat order and writes those to `e` at
/// `offsets[e]..offsets[e + 1]`: the token (`flat / top_k`) into `order`, the flat slot into
/// `slots`. Stable by construction.
#[cube(launch)]
pub fn expert_scatter_kernel(
    indices: &Array<i32>,
    offsets: &Array<i32>,
    order: &mut Array<i32>,
    slots: &mut Array<i32>,
    n: u32,
    top_k: u32,
    experts: u32,
) {
    let e = ABSOLUTE_POS;
    if e >= experts as usize {
        terminate!();
    }
    let id = e as i32;
    let top_k = top_k as usize;
    let mut pos: usize = offsets[e] as usize;
    for i in 0..n as usize {
        if indices[i] == id {
            order[pos] = (i / top_k) as i32;
            slots[pos] = i as i32;
            pos += 1;
        }
    }
}
