//! Numerics of lora-qat, with no knowledge of the model: the exact MXFP4 and BF16 codecs
//! (a scalar reference beside every fast path) and the burn custom ops with their autodiff.

pub mod bf16;
pub mod deploy;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod mxfp4;
pub mod ops;
