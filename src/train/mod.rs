//! `lora-qat train`: LoRA-QAT fine-tuning. The trainable state is the adapter, keyed by PEFT
//! tensor names (host f32), with its AdamW moments; the frozen base stays packed and
//! memory-mapped and never enters an optimizer or a checkpoint.

pub mod config;
pub mod targets;
