//! `lora-qat train`: LoRA-QAT fine-tuning. The trainable state is the adapter, keyed by PEFT
//! tensor names (f32, on the host or on the devices: `trainable`), with its AdamW moments; the frozen base stays packed and
//! memory-mapped and never enters an optimizer or a checkpoint.

pub mod batch;
pub mod clip;
pub mod clip_device;
pub mod config;
pub mod eval;
pub mod nodes;
pub mod optim;
pub mod parallel;
pub mod pipeline;
pub mod provenance;
pub mod recompute;
pub mod report;
pub mod schedule;
pub mod setup;
pub mod state;
pub mod step;
pub mod targets;
pub mod trainable;
pub mod trainer;
