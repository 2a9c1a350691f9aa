//! The device `tests/device_vulkan.rs` checks against the CPU, chosen by the build's features:
//! `vulkan` → burn's `Vulkan` (wgpu with the SPIR-V compiler; Mesa's lavapipe without a GPU) and
//! `--device vulkan`; `cuda` without `vulkan` → burn's `Cuda` on device 0 and `--device cuda`.
#![allow(dead_code, unused_imports)] // a test file may use part of it

#[cfg(feature = "vulkan")]
mod selected {
    /// The backend under test.
    pub type B = burn::backend::Vulkan;
    /// Its device type.
    pub type Device = burn::backend::wgpu::WgpuDevice;
    /// The `--device` value of the CLI for it, and its name in messages.
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
    /// Its device type.
    pub type Device = burn::backend::cuda::CudaDevice;
    /// The `--device` value of the CLI for it (`cuda` is `cuda:0`), and its name in messages.
    pub const NAME: &str = "cuda";

    /// The device the tests run on: CUDA device 0 (what `--device cuda` picks).
    pub fn device() -> Device {
        Device::new(0)
    }
}

pub use selected::{device, Device, B, NAME};
