//! CubeCL device kernels (CUDA, and Vulkan through SPIR-V, which Mesa's lavapipe runs on a CPU),
//! each with the CPU code as its reference: the deployed expert and attention weights
//! (bit-identical to the CPU), and the backend extensions of `ops/` on `CubeBackend`.

pub mod attention;
mod backend;
pub mod deploy;
pub mod deploy_kernel;
mod grouped;
pub mod grouped_mxfp4;
mod resident;
mod route;
pub mod routing;
pub mod stacked;
mod tables;
