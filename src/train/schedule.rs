//! Learning-rate schedules, exactly transformers' `get_scheduler` lambdas (`optimization.py`).
//!
//! `lr_at(k)` is the learning rate of the k-th optimizer step, 0-based: transformers builds a
//! `LambdaLR`, whose lr before the first `optimizer.step()` is `base_lr * lambda(0)` and which
//! advances once after every step, so step k uses `base_lr * lambda(k)`. (What the HF Trainer
//! *logs* as `learning_rate` at global step k+1 is read after `scheduler.step()`, i.e. `lr_at(k+1)`.)
//! The arithmetic is transformers' own, in f64 in the same order, so the values are identical up
//! to the platform's `cos` (glibc's, as Python's `math.cos`, on Linux).
//!
//! Lambdas (w = warmup steps, T = total steps, k = step; warmup phase `k < w`: `k / max(1, w)`):
//! - `constant`: 1 (no warmup, as `get_scheduler` ignores it);
//! - `constant_with_warmup`: 1 after the warmup;
//! - `linear`: `max(0, (T - k) / max(1, T - w))`;
//! - `cosine`: `max(0, 0.5·(1 + cos(π·0.5·2·p)))`, `p = (k - w) / max(1, T - w)` (not clamped past T);
//! - `cosine_with_min_lr`: the cosine factor `f` mapped to `f·(1 - r) + r`, `r = min_lr_rate` or
//!   `min_lr / base_lr`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

use super::config::Warmup;

/// transformers' `num_cycles` default for the cosine schedules (a half cosine).
const NUM_CYCLES: f64 = 0.5;

/// The scheduler kinds supported, by their transformers / TRL names (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
    CosineWithMinLr,
}

impl SchedulerKind {
    /// Every supported kind, in the order error messages list them.
    pub const ALL: [SchedulerKind; 5] = [
        Self::Constant,
        Self::ConstantWithWarmup,
        Self::Linear,
        Self::Cosine,
        Self::CosineWithMinLr,
    ];

    /// The transformers name (`SchedulerType` value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::ConstantWithWarmup => "constant_with_warmup",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::CosineWithMinLr => "cosine_with_min_lr",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// transformers' other `SchedulerType` names: recognised, so the error says "not supported"
/// rather than "unknown".
const HF_UNSUPPORTED: [&str; 7] = [
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
];

fn supported_list() -> String {
    SchedulerKind::ALL.map(SchedulerKind::name).join(", ")
}

impl FromStr for SchedulerKind {
    type Err = anyhow::Error;

    /// Parses transformers' names exactly (`-` is accepted for `_`).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().replace('-', "_");
        if let Some(kind) = Self::ALL.into_iter().find(|k| k.name() == norm) {
            return Ok(kind);
        }
        if HF_UNSUPPORTED.contains(&norm.as_str()) {
            bail!(
                "lr scheduler {s:?} (transformers) is not supported; supported: {}",
                supported_list()
            );
        }
        bail!("unknown lr scheduler {s:?}; known: {}", supported_list())
    }
}

/// The floor of `cosine_with_min_lr` (transformers' `lr_scheduler_kwargs`; exactly one is given).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinLr {
    /// `min_lr_rate`: a fraction of the base learning rate.
    Rate(f64),
    /// `min_lr`: an absolute learning rate (rate = `min_lr / base_lr`).
    Lr(f64),
}

impl MinLr {
    /// From the two optional kwargs, with transformers' checks.
    pub fn from_kwargs(min_lr_rate: Option<f64>, min_lr: Option<f64>) -> Result<Option<Self>> {
        match (min_lr_rate, min_lr) {
            (Some(_), Some(_)) => bail!("only one of min_lr or min_lr_rate may be set"),
            (Some(r), None) => Ok(Some(Self::Rate(r))),
            (None, Some(l)) => Ok(Some(Self::Lr(l))),
            (None, None) => Ok(None),
        }
    }
}

/// The warmup as transformers 5 reads `warmup_steps` (`TrainingArguments.get_warmup_steps`):
/// a value >= 1 is a step count (truncated, Python `int()`), a value < 1 a ratio of the total.
pub fn warmup_from_hf(value: f64) -> Result<Warmup> {
    if !value.is_finite() || value < 0.0 {
        bail!("warmup_steps {value}: expected a step count >= 1 or a ratio in [0, 1)");
    }
    Ok(if value >= 1.0 {
        Warmup::Steps(value as usize)
    } else {
        Warmup::Ratio(value)
    })
}

/// The number of warmup steps: `Steps(n)` is n, `Ratio(r)` is `ceil(total_steps · r)` computed
/// in f64 as transformers does (so `0.07 · 100 = 7.000000000000001` gives 8, like transformers).
pub fn warmup_steps(warmup: Warmup, total_steps: usize) -> usize {
    match warmup {
        Warmup::Steps(n) => n,
        Warmup::Ratio(r) => (total_steps as f64 * r).ceil() as usize,
    }
}

/// What a schedule is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConfig {
    pub kind: SchedulerKind,
    /// The optimizer's learning rate (`learning_rate`).
    pub base_lr: f64,
    pub warmup: Warmup,
    /// Total optimizer steps of the run (`num_training_steps`).
    pub total_steps: usize,
    /// Required by `cosine_with_min_lr`, refused by the other kinds.
    pub min_lr: Option<MinLr>,
}

/// A learning-rate schedule; stateless, so resuming needs only the step.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    kind: SchedulerKind,
    base_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    min_lr_rate: f64,
}

impl LrSchedule {
    /// Validates the configuration and resolves the warmup and the min-lr rate.
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let ScheduleConfig {
            kind,
            base_lr,
            warmup,
            total_steps,
            min_lr,
        } = *config;
        if !base_lr.is_finite() || base_lr < 0.0 {
            bail!("learning rate {base_lr}: must be finite and >= 0");
        }
        if let Warmup::Ratio(r) = warmup {
            if !(0.0..=1.0).contains(&r) {
                bail!("warmup ratio {r}: must be in [0, 1]");
            }
        }
        let min_lr_rate = match (kind, min_lr) {
            (SchedulerKind::CosineWithMinLr, None) => {
                bail!("lr scheduler cosine_with_min_lr needs min_lr_rate or min_lr (lr_scheduler_kwargs)")
            }
            (SchedulerKind::CosineWithMinLr, Some(MinLr::Rate(r))) => r,
            // transformers: `min_lr_rate = min_lr / optimizer.defaults["lr"]`.
            (SchedulerKind::CosineWithMinLr, Some(MinLr::Lr(l))) => l / base_lr,
            (_, None) => 0.0,
            (_, Some(_)) => bail!(
                "lr scheduler {kind} takes no min_lr / min_lr_rate (only cosine_with_min_lr does)"
            ),
        };
        if !min_lr_rate.is_finite() || min_lr_rate < 0.0 {
            bail!("min_lr_rate {min_lr_rate}: must be finite and >= 0");
        }
        Ok(Self {
            kind,
            base_lr,
            warmup_steps: warmup_steps(warmup, total_steps),
            total_steps,
            min_lr_rate,
        })
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// The resolved number of warmup steps (0 for `constant`, which has none).
    pub fn warmup_steps(&self) -> usize {
        match self.kind {
            SchedulerKind::Constant => 0,
            _ => self.warmup_steps,
        }
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// The learning rate of the `step`-th optimizer step (0-based): `base_lr · lambda(step)`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.lambda(step)
    }

    /// transformers' lambda at `step`, with its arithmetic order.
    pub fn lambda(&self, step: usize) -> f64 {
        let (k, w, t) = (
            step as i64,
            self.warmup_steps as i64,
            self.total_steps as i64,
        );
        if self.kind == SchedulerKind::Constant {
            return 1.0;
        }
        if k < w {
            return k as f64 / w.max(1) as f64;
        }
        match self.kind {
            SchedulerKind::Constant | SchedulerKind::ConstantWithWarmup => 1.0,
            SchedulerKind::Linear => ((t - k) as f64 / (t - w).max(1) as f64).max(0.0),
            SchedulerKind::Cosine | SchedulerKind::CosineWithMinLr => {
                let progress = (k - w) as f64 / (t - w).max(1) as f64;
                let factor =
                    0.5 * (1.0 + (std::f64::consts::PI * NUM_CYCLES * 2.0 * progress).cos());
                let factor = factor * (1.0 - self.min_lr_rate) + self.min_lr_rate;
                factor.max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(
        kind: SchedulerKind,
        warmup: Warmup,
        total: usize,
        min_lr: Option<MinLr>,
    ) -> LrSchedule {
        LrSchedule::new(&ScheduleConfig {
            kind,
            base_lr: 1.0,
            warmup,
            total_steps: total,
            min_lr,
        })
        .unwrap()
    }

    #[test]
    fn names_round_trip_and_errors_list_the_known_names() {
        for kind in SchedulerKind::ALL {
            assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
        }
        assert_eq!(
            "cosine-with-min-lr".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::CosineWithMinLr
        );
        let e = "cosin".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(
            e.contains("unknown")
                && e.contains("cosine_with_min_lr")
                && e.contains("constant_with_warmup"),
            "{e}"
        );
        let e = "polynomial"
            .parse::<SchedulerKind>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported") && e.contains("linear"), "{e}");
    }

    #[test]
    fn warmup_longer_than_the_run_and_steps_past_the_end() {
        let s = sched(SchedulerKind::Linear, Warmup::Steps(10), 5, None);
        assert_eq!(s.lambda(4), 0.4);
        assert_eq!(s.lambda(10), 0.0);
        let s = sched(SchedulerKind::Linear, Warmup::Steps(0), 4, None);
        assert_eq!(s.lambda(0), 1.0);
        assert_eq!(s.lambda(6), 0.0);
        let s = sched(SchedulerKind::Constant, Warmup::Steps(3), 4, None);
        assert_eq!((s.lambda(0), s.warmup_steps()), (1.0, 0));
    }

    #[test]
    fn min_lr_is_required_exactly_where_it_applies() {
        let cfg = |kind, min_lr| ScheduleConfig {
            kind,
            base_lr: 2e-4,
            warmup: Warmup::Steps(0),
            total_steps: 10,
            min_lr,
        };
        assert!(LrSchedule::new(&cfg(SchedulerKind::CosineWithMinLr, None)).is_err());
        assert!(LrSchedule::new(&cfg(SchedulerKind::Linear, Some(MinLr::Rate(0.1)))).is_err());
        let s =
            LrSchedule::new(&cfg(SchedulerKind::CosineWithMinLr, Some(MinLr::Lr(2e-5)))).unwrap();
        assert!((s.lr_at(10) - 2e-5).abs() < 1e-18);
        assert!(MinLr::from_kwargs(Some(0.1), Some(1e-5)).is_err());
        assert!(warmup_from_hf(-1.0).is_err());
        assert_eq!(warmup_from_hf(3.7).unwrap(), Warmup::Steps(3));
        assert_eq!(warmup_from_hf(0.25).unwrap(), Warmup::Ratio(0.25));
    }
}
