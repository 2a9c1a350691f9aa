//! `lora-qat plan`: per-device memory of a LoRA-QAT run and the strategy that fits it on the given
//! devices (data parallel, layer placement, or both), decided before anything is allocated.
//!
//! [`memory`] models the bytes (what is derived exactly from the config and what is estimated
//! from the implementation is said there), [`strategy`] chooses, [`devices`] parses `--devices`,
//! [`render`] prints. A fraction [`HEADROOM`] of every device is kept free for allocator
//! fragmentation and the CUDA context; plans fill at most the rest.
//! The way the figures are computed is written up in `docs/PLAN.md`.

pub mod devices;
pub mod memory;
mod render;
pub mod strategy;
#[cfg(test)]
mod tests;

use anyhow::{bail, Result};
use serde::Serialize;

pub use devices::{DeviceKind, Devices, DevicesError, GB, GIB};
pub use memory::{Breakdown, LayerTargets, ModelMemory, Workload};
pub use strategy::{Placement, Stage, StrategyKind};

use crate::checkpoint::GptOssConfig;
use crate::train::config::{QuantCfg, TrainConfig};
use crate::train::targets::{self, Module};

/// Fraction of each device's capacity never planned on (allocator fragmentation, CUDA context).
pub const HEADROOM: f64 = 0.10;

/// What to plan for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The devices.
    pub devices: Devices,
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// `Some` when fixed; `None` lets the planner pick (without when it fits, else with).
    pub gradient_checkpointing: Option<bool>,
    /// LoRA rank.
    pub lora_r: usize,
    /// `lora_target_modules` as `train` reads them (`None`: attention q/k/v/o and both expert
    /// projections of every layer).
    pub targets: Option<Vec<String>>,
    /// `layers_to_transform`.
    pub layers_to_transform: Option<Vec<usize>>,
    /// QAT (deployed MXFP4 experts) rather than plain LoRA.
    pub qat: bool,
}

impl PlanOptions {
    /// The options of a training configuration on `devices`.
    pub fn from_train_config(cfg: &TrainConfig, devices: Devices) -> Self {
        Self {
            devices,
            seq: cfg.max_length,
            batch: cfg.per_device_train_batch_size,
            gradient_checkpointing: Some(cfg.gradient_checkpointing),
            lora_r: cfg.lora_r,
            targets: cfg.lora_target_modules.clone(),
            layers_to_transform: cfg.layers_to_transform.clone(),
            qat: cfg.quant_cfg == QuantCfg::Mxfp4MlpWeightOnly,
        }
    }

    /// The workload these options describe on a base of `config`.
    pub fn workload(&self, config: &GptOssConfig) -> Result<Workload> {
        if self.seq == 0 || self.batch == 0 || self.lora_r == 0 {
            bail!(
                "seq ({}), batch ({}) and LoRA rank ({}) must all be at least 1",
                self.seq,
                self.batch,
                self.lora_r
            );
        }
        let cfg = TrainConfig {
            lora_target_modules: self.targets.clone(),
            layers_to_transform: self.layers_to_transform.clone(),
            ..TrainConfig::default()
        };
        let layers = config.num_hidden_layers;
        let mut per_layer = vec![LayerTargets::default(); layers];
        for m in targets::select(&cfg, layers)? {
            match m {
                Module::Attention(l, p) => per_layer[l].attention.push(p.name().to_string()),
                Module::Experts(l, p) => per_layer[l].experts.push(p.name().to_string()),
            }
        }
        Ok(Workload {
            seq: self.seq,
            batch: self.batch,
            lora_r: self.lora_r,
            qat: self.qat,
            kind: self.devices.kind,
            targets: per_layer,
        })
    }
}

/// Why nothing fits, and what would.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Bytes the fullest device needs in the best layout tried (one pipeline over every device).
    pub needed: u64,
    /// Usable bytes per device.
    pub available: u64,
    /// The largest component on that device: `(name, bytes)`.
    pub dominant: (String, u64),
    /// What would make it fit, each with its figure.
    pub suggestions: Vec<String>,
}

/// The plan: the model's bytes, the layout chosen (or the refusal) and why.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Where the config came from.
    pub base: String,
    /// Layers, experts (top-k), hidden, intermediate, heads, kv heads, head dim, vocab.
    pub architecture: [usize; 9],
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// LoRA rank.
    pub lora_r: usize,
    /// QAT or plain LoRA.
    pub qat: bool,
    /// Trainable LoRA parameters of the whole model.
    pub lora_params: u64,
    /// Rows per cross-entropy chunk.
    pub ce_chunk_rows: usize,
    /// The devices.
    pub devices: Devices,
    /// [`HEADROOM`].
    pub headroom: f64,
    /// `bytes_each · (1 - headroom)`.
    pub usable_per_device: u64,
    /// As requested (`None`: left to the planner).
    pub gradient_checkpointing_requested: Option<bool>,
    /// One whole replica on one device, without and with gradient checkpointing.
    pub replica: [Breakdown; 2],
    /// The layout chosen; `None` when nothing fits.
    pub placement: Option<Placement>,
    /// Why this layout (or why none).
    pub reason: String,
    /// Set when nothing fits.
    pub refusal: Option<Refusal>,
}

impl Plan {
    /// Whether a layout fits.
    pub fn fits(&self) -> bool {
        self.placement.is_some()
    }
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / GB as f64)
}

/// The plan of `options` on a base of `config` (`base` names it); a plan that does not fit is
/// returned with its [`Refusal`]. Errors only on bad options (targets that match nothing, zeros).
pub fn plan(base: &str, config: &GptOssConfig, options: &PlanOptions) -> Result<Plan> {
    let workload = options.workload(config)?;
    let model = ModelMemory::new(config, &workload);
    let d = &options.devices;
    let usable = (d.bytes_each as f64 * (1.0 - HEADROOM)) as u64;
    let all = 0..config.num_hidden_layers;
    let replica = [false, true].map(|gc| model.stage(all.clone(), gc, false));
    let placement = strategy::choose(&model, d.count, usable, options.gradient_checkpointing);
    let (reason, refusal) = match &placement {
        Some(p) => (reason(p, &model, &replica, usable, options), None),
        None => {
            let r = refusal(config, options, &model, usable)?;
            let why = format!(
                "nothing fits: the fullest device needs {} but {} are usable ({} of {} minus {:.0}% \
                 headroom); {} dominate with {}",
                gb(r.needed),
                gb(r.available),
                d.spec,
                gb(d.bytes_each),
                HEADROOM * 100.0,
                r.dominant.0,
                gb(r.dominant.1)
            );
            (why, Some(r))
        }
    };
    let c = config;
    Ok(Plan {
        base: base.to_string(),
        architecture: [
            c.num_hidden_layers,
            c.num_local_experts,
            c.experts_per_token,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size,
        ],
        seq: options.seq,
        batch: options.batch,
        lora_r: options.lora_r,
        qat: options.qat,
        lora_params: model.lora_params(),
        ce_chunk_rows: model.chunk_rows,
        devices: d.clone(),
        headroom: HEADROOM,
        usable_per_device: usable,
        gradient_checkpointing_requested: options.gradient_checkpointing,
        replica,
        placement,
        reason,
        refusal,
    })
}

/// [`plan`] for the trainer: an error (with the whole printed plan and what would help) when
/// nothing fits, so a run stops before allocating anything.
pub fn plan_for_training(config: &GptOssConfig, options: &PlanOptions) -> Result<Plan> {
    let p = plan("base", config, options)?;
    if !p.fits() {
        bail!("{p}");
    }
    Ok(p)
}

fn reason(
    p: &Placement,
    model: &ModelMemory,
    replica: &[Breakdown; 2],
    usable: u64,
    o: &PlanOptions,
) -> String {
    let gc = p.gradient_checkpointing;
    let one = &replica[usize::from(gc)];
    let mut s = match p.kind {
        StrategyKind::DataParallel => format!(
            "one whole replica needs {} ≤ {} usable per device, so every device holds the whole \
             model and trains its own micro-batches (data parallel: no pipeline bubbles)",
            gb(one.total),
            gb(usable)
        ),
        _ => format!(
            "one whole replica needs {} > {} usable per device (largest share: {} {}), so the \
             layers are split into {} contiguous ranges balanced by bytes (fullest device {}); \
             {} pipeline(s) of {} devices; fewer stages did not fit",
            gb(one.total),
            gb(usable),
            one.dominant().0,
            gb(one.dominant().1),
            p.stages.len(),
            gb(p.peak()),
            p.replicas,
            p.stages.len()
        ),
    };
    if o.gradient_checkpointing.is_none() {
        s += &match gc {
            true => format!(
                "; gradient checkpointing on, because without it this layout needs {}",
                gb(strategy::placement(model, p.stages.len(), p.replicas, false).peak())
            ),
            false => "; gradient checkpointing not needed (off: no recompute)".to_string(),
        };
    }
    s
}

fn refusal(
    config: &GptOssConfig,
    o: &PlanOptions,
    model: &ModelMemory,
    usable: u64,
) -> Result<Refusal> {
    let d = o.devices.count;
    let gc = o.gradient_checkpointing.unwrap_or(true);
    let stages = d.min(model.layers.len());
    let attempt = strategy::placement(model, stages, (d / stages).max(1), gc);
    let fullest = attempt.peak_stage().map(|s| s.memory.clone());
    let (dom, dom_bytes) = fullest.as_ref().map_or(("nothing", 0), Breakdown::dominant);
    let fits_with = |changed: &PlanOptions| -> Result<Option<Placement>> {
        let m = ModelMemory::new(config, &changed.workload(config)?);
        Ok(strategy::choose(
            &m,
            changed.devices.count,
            usable,
            changed.gradient_checkpointing,
        ))
    };
    let mut tips = Vec::new();
    if !gc {
        let on = PlanOptions {
            gradient_checkpointing: Some(true),
            ..o.clone()
        };
        if let Some(p) = fits_with(&on)? {
            tips.push(format!(
                "--gradient-checkpointing true: fits ({}, fullest device {})",
                p.kind.label(),
                gb(p.peak())
            ));
        }
    }
    match strategy::devices_needed(model, usable, gc) {
        Some(n) => tips.push(format!(
            "more devices: {n} × {} (layer placement over {n} devices)",
            gb(o.devices.bytes_each)
        )),
        None => tips.push(format!(
            "no count of these devices: even one layer per device needs {}",
            gb(strategy::placement(model, model.layers.len(), 1, gc).peak())
        )),
    }
    let mut seq = o.seq / 2;
    while seq >= 128 {
        if let Some(p) = fits_with(&PlanOptions { seq, ..o.clone() })? {
            tips.push(format!(
                "a shorter sequence: --seq {seq} fits ({}, fullest device {})",
                p.kind.label(),
                gb(p.peak())
            ));
            break;
        }
        seq /= 2;
    }
    if o.batch > 1 {
        if let Some(p) = fits_with(&PlanOptions {
            batch: 1,
            ..o.clone()
        })? {
            tips.push(format!("--batch 1 fits (fullest device {})", gb(p.peak())));
        }
    }
    let attn_only = PlanOptions {
        targets: Some(vec!["self_attn".into()]),
        ..o.clone()
    };
    match fits_with(&attn_only)? {
        Some(p) => tips.push(format!(
            "fewer targets: attention only (--targets self_attn) fits ({}, fullest device {})",
            p.kind.label(),
            gb(p.peak())
        )),
        None => tips.push(
            "fewer targets or a lower rank alone would not do: attention-only LoRA does not fit either"
                .into(),
        ),
    }
    if let Some(f) = &fullest {
        // AdamW m and v are half of the 16 B/param LoRA state
        let optimizer = f.lora_state / 2;
        let leaner = f.total.saturating_sub(optimizer);
        tips.push(format!(
            "AdamW moments on the host (`train --optimizer-on host`, -{}) would make the fullest \
             device need {}: {}",
            gb(optimizer),
            gb(leaner),
            match leaner <= usable {
                true => "fits".to_string(),
                false => format!("still {} over", gb(leaner - usable)),
            }
        ));
    }
    Ok(Refusal {
        needed: attempt.peak(),
        available: usable,
        dominant: (dom.to_string(), dom_bytes),
        suggestions: tips,
    })
}
