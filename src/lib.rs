//! lora-qat: LoRA quantization-aware fine-tuning of gpt-oss with an exact MXFP4 export.
//!
//! `checkpoint` reads and writes Hugging Face checkpoints in the gpt-oss release format,
//! `model` is gpt-oss in burn (module paths equal tensor names), `cli` is the command line.

pub mod adapter_report;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod export;
pub mod model;
pub mod plan;
pub mod quickstart;
pub mod train;
