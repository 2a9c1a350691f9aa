//! The device backend the GPU parity tests (`gpu_*.rs`) run on, chosen by the build's features:
//! `vulkan` → burn's `Vulkan` (wgpu with the SPIR-V compiler; Mesa's lavapipe without a GPU);
//! `cuda` without `vulkan` → burn's `Cuda` on device 0. The tests name only these aliases, so
//! `cargo test -p kernels --features cuda --test gpu_...` runs them on an NVIDIA GPU unchanged.
#![allow(dead_code, unused_imports)] // each test file uses part of it

#[cfg(feature = "vulkan")]
mod selected {
    /// The backend under test.
    pub type B = burn::backend::Vulkan;
    /// Its CubeCL runtime (`B` is `CubeBackend<R, f32, i32, u8>`).
    pub type R = burn::backend::wgpu::WgpuRuntime;
    /// Its device type.
    pub type Device = burn::backend::wgpu::WgpuDevice;
    /// The device's name in messages (and in `--device`).
    pub const NAME: &str = "vulkan";

    /// The device the tests run on.
    pub fn device() -> Device {
        Device::default()
    }
}

#[cfg(all(feature = "cuda", not(feature = "vulkan")))]
mod selected {
    /// The backend under test.
    pub type B = burn::backend::Cuda;
    /// Its CubeCL runtime (`B` is `CubeBackend<R, f32, i32, u8>`; burn-cuda does not re-export
    /// it, cubecl's `cuda` module is there because burn-cuda turns on cubecl's `cuda` feature).
    pub type R = cubecl::cuda::CudaRuntime;
    /// Its device type.
    pub type Device = burn::backend::cuda::CudaDevice;
    /// The device's name in messages (and in `--device`).
    pub const NAME: &str = "cuda";

    /// The device the tests run on: CUDA device 0.
    pub fn device() -> Device {
        Device::new(0)
    }
}

pub use selected::{device, Device, B, NAME, R};
