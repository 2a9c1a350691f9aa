//! `--device cuda[:N]`: burn's CUDA backend, in builds with the `cuda` feature.

#[cfg(feature = "cuda")]
mod enabled {
    use anyhow::Result;
    use burn::backend::cuda::CudaDevice;
    use burn::backend::{Autodiff, Cuda};

    use super::super::{probe, Job};

    /// Runs `job` on CUDA device `n`, after checking it answers.
    pub fn run<J: Job>(n: usize, job: J) -> Result<J::Output> {
        let device = CudaDevice::new(n);
        probe::<Cuda>(&format!("cuda:{n}"), &device)?;
        job.run::<Autodiff<Cuda>>(&device)
    }
}

#[cfg(not(feature = "cuda"))]
mod enabled {
    use anyhow::{bail, Result};

    use super::super::Job;

    /// This build has no CUDA backend.
    pub fn run<J: Job>(n: usize, _: J) -> Result<J::Output> {
        bail!(
            "--device cuda:{n} needs a build with the `cuda` feature \
             (cargo build --release --features cuda)"
        )
    }
}

pub use enabled::run;
