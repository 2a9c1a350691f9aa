//! `--device cuda[:N]`: burn's CUDA backend, in builds with the `cuda` feature.

#[cfg(feature = "cuda")]
mod enabled {
    use anyhow::Result;
    use burn::backend::cuda::CudaDevice;
    use burn::backend::{Autodiff, Cuda};

    use super::super::{probe, Job};

    /// Runs `job` on CUDA devices `ids`, after checking each answers.
    pub fn run<J: Job>(ids: &[usize], job: J) -> Result<J::Output> {
        let mut devices = Vec::with_capacity(ids.len());
        for &n in ids {
            let device = CudaDevice::new(n);
            probe::<Cuda>(&format!("cuda:{n}"), &device)?;
            devices.push(device);
        }
        job.run::<Autodiff<Cuda>>(&devices)
    }
}

#[cfg(not(feature = "cuda"))]
mod enabled {
    use anyhow::{bail, Result};

    use super::super::Job;

    /// This build has no CUDA backend.
    pub fn run<J: Job>(ids: &[usize], _: J) -> Result<J::Output> {
        bail!(
            "--device cuda:{} needs a build with the `cuda` feature \
             (cargo build --release --features cuda)",
            ids.first().copied().unwrap_or(0)
        )
    }
}

pub use enabled::run;
