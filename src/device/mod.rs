//! The compute device of `train` and `score` (`--device cpu|cuda[:N]|vulkan`, and for `train`
//! lists such as `cuda:0-7`) and the dispatch of a job, generic over the backend, onto the
//! backend of those devices. A backend that is not compiled in, or a device that does not exist,
//! is a clear error before any work.

mod cuda;
mod set;
mod vulkan;

pub use set::DeviceSet;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use kernels::ops::LoraLinearBackend;

/// Where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's `Flex` CPU backend (memory-mapped packed experts, host kernels).
    Cpu,
    /// CUDA device `N` (builds with the `cuda` feature).
    Cuda(usize),
    /// The default Vulkan adapter (builds with the `vulkan` feature; Mesa's lavapipe on a CPU).
    Vulkan,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "cpu" => Self::Cpu,
            "cuda" | "gpu" => Self::Cuda(0),
            "vulkan" => Self::Vulkan,
            other => match other.strip_prefix("cuda:") {
                Some(n) => Self::Cuda(n.parse().map_err(|_| {
                    anyhow::anyhow!("--device {s}: `cuda:N` needs a device number, e.g. cuda:1")
                })?),
                None => bail!("--device {s}: expected cpu, cuda, cuda:N or vulkan"),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Vulkan => write!(f, "vulkan"),
        }
    }
}

/// Work that runs on any backend: `run::<B>` for inference, `run_autodiff::<B>` when the job
/// trains (B is then the autodiff backend).
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` with `devices` (one or more, in rank order; `B::InnerBackend` for
    /// training jobs is a lora-qat backend too).
    fn run<B>(self, devices: &[B::Device]) -> Result<Self::Output>
    where
        B: AutodiffBackend + LoraLinearBackend,
        B::InnerBackend: LoraLinearBackend;
}

/// Runs `job` on `set`: the CPU (every peer on the host), or the device backend (each device
/// checked to exist first).
pub fn dispatch<J: Job>(set: &DeviceSet, job: J) -> Result<J::Output> {
    match set.first() {
        DeviceChoice::Cpu => {
            let devices = vec![Default::default(); set.len()];
            job.run::<burn::backend::Autodiff<burn::backend::Flex>>(&devices)
        }
        DeviceChoice::Cuda(_) => {
            let ids: Vec<usize> = set
                .devices()
                .iter()
                .filter_map(|d| match d {
                    DeviceChoice::Cuda(n) => Some(*n),
                    _ => None,
                })
                .collect();
            cuda::run(&ids, job)
        }
        DeviceChoice::Vulkan => vulkan::run(job),
    }
}

/// Checks that `device` answers (a one-element round trip): device backends panic deep inside
/// when no driver or device is there, so the panic is caught here and named.
#[cfg(any(feature = "cuda", feature = "vulkan"))]
fn probe<B: burn::tensor::backend::Backend>(what: &str, device: &B::Device) -> Result<()> {
    let device = device.clone();
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        burn::tensor::Tensor::<B, 1>::ones([1], &device)
            .into_data()
            .iter::<f32>()
            .next()
    }));
    match answer {
        Ok(Some(1.0)) => Ok(()),
        Ok(_) => bail!("--device {what}: the device computed a wrong value in a first check"),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            bail!("--device {what}: no usable device ({msg})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_device_names() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "CUDA:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(
            "vulkan".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Vulkan
        );
        let err = "cuda:x".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("device number"), "{err}");
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(
            err.contains("expected cpu, cuda, cuda:N or vulkan"),
            "{err}"
        );
    }
}
