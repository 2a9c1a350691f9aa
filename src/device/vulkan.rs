//! `--device vulkan`: burn's wgpu backend with the SPIR-V compiler on the default Vulkan adapter
//! (a GPU, or Mesa's lavapipe on a CPU), in builds with the `vulkan` feature.

#[cfg(feature = "vulkan")]
mod enabled {
    use anyhow::Result;
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::{Autodiff, Vulkan};

    use super::super::{probe, Job};

    /// Runs `job` on the default Vulkan adapter, after checking it answers.
    pub fn run<J: Job>(job: J) -> Result<J::Output> {
        let device = WgpuDevice::default();
        probe::<Vulkan>("vulkan", &device)?;
        job.run::<Autodiff<Vulkan>>(&[device])
    }
}

#[cfg(not(feature = "vulkan"))]
mod enabled {
    use anyhow::{bail, Result};

    use super::super::Job;

    /// This build has no Vulkan backend.
    pub fn run<J: Job>(_: J) -> Result<J::Output> {
        bail!(
            "--device vulkan needs a build with the `vulkan` feature \
             (cargo build --release --features vulkan)"
        )
    }
}

pub use enabled::run;
