//! The strategy: data parallel when one replica fits a device (no pipeline bubbles), else layer
//! placement (contiguous layer ranges over the devices of a pipeline, split to balance bytes),
//! with the devices left over forming more pipelines (replicas) when the count divides.
//!
//! Candidates are tried in order of preference: fewer stages first (1 stage = data parallel);
//! for each stage count, without gradient checkpointing before with it (when the choice is left
//! open). The first candidate whose every stage fits the usable memory wins.

use std::ops::Range;

use serde::Serialize;

use super::memory::{Breakdown, ModelMemory};

/// How the devices are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Every device holds a full replica.
    DataParallel,
    /// One pipeline over all devices used, each holding a contiguous range of layers.
    LayerPlacement,
    /// Several pipelines (replicas), each over several devices.
    Both,
}

impl StrategyKind {
    /// Its name in the printed plan.
    pub fn label(self) -> &'static str {
        match self {
            Self::DataParallel => "data parallel",
            Self::LayerPlacement => "layer placement",
            Self::Both => "layer placement × data parallel",
        }
    }
}

/// One pipeline stage: the device(s) holding a layer range (every replica has the same stages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Decoder layers held, `start..end`.
    pub layers: Range<usize>,
    /// Whether it holds `embed_tokens`.
    pub embed: bool,
    /// Whether it holds the final norm, `lm_head` and the loss.
    pub head: bool,
    /// Its bytes.
    pub memory: Breakdown,
}

/// A layout of the model over the devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Data parallel, layer placement or both.
    pub kind: StrategyKind,
    /// Number of pipelines (replicas of the model).
    pub replicas: usize,
    /// The stages of one pipeline (one for data parallel).
    pub stages: Vec<Stage>,
    /// Whether this layout uses gradient checkpointing.
    pub gradient_checkpointing: bool,
}

impl Placement {
    /// Devices used: stages × replicas.
    pub fn devices_used(&self) -> usize {
        self.stages.len() * self.replicas
    }

    /// The largest per-device total.
    pub fn peak(&self) -> u64 {
        self.stages
            .iter()
            .map(|s| s.memory.total)
            .max()
            .unwrap_or(0)
    }

    /// The stage with the largest total.
    pub fn peak_stage(&self) -> Option<&Stage> {
        self.stages.iter().max_by_key(|s| s.memory.total)
    }
}

/// The split of the layers into `stages` contiguous ranges minimizing the largest stage total
/// (exact, by dynamic programming over split points); `stages` must be in `1..=layers`.
pub fn balanced(model: &ModelMemory, stages: usize, checkpointing: bool) -> Vec<Stage> {
    let l = model.layers.len();
    let pipelined = stages > 1;
    // totals of every range i..j, computed once
    let totals: Vec<Vec<u64>> = (0..l)
        .map(|i| {
            (0..=l)
                .map(|j| match j > i {
                    true => model.stage(i..j, checkpointing, pipelined).total,
                    false => 0,
                })
                .collect()
        })
        .collect();
    // best[p][j]: the smallest peak placing layers 0..j on p stages, and the last split point
    let mut best = vec![vec![(u64::MAX, 0usize); l + 1]; stages + 1];
    best[0][0] = (0, 0);
    for p in 1..=stages {
        for j in p..=l {
            for i in (p - 1)..j {
                let prev = best[p - 1][i].0;
                if prev == u64::MAX {
                    continue;
                }
                let peak = prev.max(totals[i][j]);
                if peak < best[p][j].0 {
                    best[p][j] = (peak, i);
                }
            }
        }
    }
    let mut bounds = vec![l];
    let mut j = l;
    for p in (1..=stages).rev() {
        j = best[p][j].1;
        bounds.push(j);
    }
    bounds.reverse();
    bounds
        .windows(2)
        .map(|w| Stage {
            layers: w[0]..w[1],
            embed: w[0] == 0,
            head: w[1] == l,
            memory: model.stage(w[0]..w[1], checkpointing, pipelined),
        })
        .collect()
}

/// A placement of one pipeline of `stages` stages, replicated `replicas` times.
pub fn placement(
    model: &ModelMemory,
    stages: usize,
    replicas: usize,
    checkpointing: bool,
) -> Placement {
    let kind = match (stages, replicas) {
        (1, _) => StrategyKind::DataParallel,
        (_, 1) => StrategyKind::LayerPlacement,
        _ => StrategyKind::Both,
    };
    Placement {
        kind,
        replicas,
        stages: balanced(model, stages, checkpointing),
        gradient_checkpointing: checkpointing,
    }
}

/// The preferred placement on `devices` devices of `usable` bytes each, or `None`.
/// `checkpointing`: `Some` when fixed by the user, `None` to try without, then with.
pub fn choose(
    model: &ModelMemory,
    devices: usize,
    usable: u64,
    checkpointing: Option<bool>,
) -> Option<Placement> {
    let modes: &[bool] = match checkpointing {
        Some(true) => &[true],
        Some(false) => &[false],
        None => &[false, true],
    };
    let max_stages = devices.min(model.layers.len());
    (1..=max_stages)
        .filter(|s| devices.is_multiple_of(*s))
        .flat_map(|s| modes.iter().map(move |&gc| (s, gc)))
        .map(|(s, gc)| placement(model, s, devices / s, gc))
        .find(|p| p.peak() <= usable)
}

/// The smallest number of devices (of `usable` bytes each) on which one pipeline fits, searching
/// up to one layer per device; `None` when even that does not fit.
pub fn devices_needed(model: &ModelMemory, usable: u64, checkpointing: bool) -> Option<usize> {
    (1..=model.layers.len()).find(|&s| placement(model, s, 1, checkpointing).peak() <= usable)
}
