//! `--device` lists for training on several devices: `cuda:0-7`, `cuda:0,cuda:1`, `cpu:0-1`.
//!
//! Each entry is one device. On the CPU, `cpu:N` names a logical peer: every CPU peer computes on
//! the host (one process, one memory), which is what the multi-device tests run on. A list holds
//! one kind of device, each named once; Vulkan has one (the default adapter).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

use super::DeviceChoice;

/// One or more devices of one kind, in the order given (rank order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSet {
    devices: Vec<DeviceChoice>,
}

impl DeviceSet {
    /// A set of one device.
    pub fn one(device: DeviceChoice) -> Self {
        Self {
            devices: vec![device],
        }
    }

    /// The devices, in rank order.
    pub fn devices(&self) -> &[DeviceChoice] {
        &self.devices
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Never true: a set holds at least one device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The first device (what a one-device command uses).
    pub fn first(&self) -> DeviceChoice {
        self.devices[0]
    }

    /// Whether every device is the CPU.
    pub fn is_cpu(&self) -> bool {
        self.devices[0] == DeviceChoice::Cpu
    }
}

/// `N` or `N-M` (inclusive) after `kind:`.
fn indices(entry: &str, spec: &str) -> Result<Vec<usize>> {
    let parse = |s: &str| -> Result<usize> {
        s.trim()
            .parse()
            .with_context(|| format!("--device {entry}: `{s}` is not a device number"))
    };
    Ok(match spec.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            ensure!(a <= b, "--device {entry}: the range {a}-{b} is empty");
            (a..=b).collect()
        }
        None => vec![parse(spec)?],
    })
}

impl FromStr for DeviceSet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut devices = Vec::new();
        let mut cpu_ids = Vec::new();
        for entry in s.split(',').map(str::trim) {
            let lower = entry.to_ascii_lowercase();
            match lower.split_once(':') {
                Some(("cpu", spec)) => {
                    for i in indices(entry, spec)? {
                        cpu_ids.push(i);
                        devices.push(DeviceChoice::Cpu);
                    }
                }
                Some(("cuda" | "gpu", spec)) => {
                    devices.extend(indices(entry, spec)?.into_iter().map(DeviceChoice::Cuda))
                }
                _ => {
                    let one: DeviceChoice = entry.parse()?;
                    if one == DeviceChoice::Cpu {
                        cpu_ids.push(0);
                    }
                    devices.push(one);
                }
            }
        }
        let first = devices[0];
        for d in &devices {
            let same_kind = matches!(
                (first, d),
                (DeviceChoice::Cpu, DeviceChoice::Cpu)
                    | (DeviceChoice::Cuda(_), DeviceChoice::Cuda(_))
                    | (DeviceChoice::Vulkan, DeviceChoice::Vulkan)
            );
            ensure!(
                same_kind,
                "--device {s}: one kind of device per run ({first} and {d} were given)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in devices.iter().enumerate() {
            let key = match d {
                DeviceChoice::Cpu => cpu_ids[i],
                DeviceChoice::Cuda(n) => *n,
                DeviceChoice::Vulkan => 0,
            };
            if !seen.insert(key) {
                if *d == DeviceChoice::Vulkan {
                    bail!("--device {s}: one Vulkan device (the default adapter) is supported");
                }
                bail!("--device {s}: {d} is named twice");
            }
        }
        Ok(Self { devices })
    }
}

impl fmt::Display for DeviceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.devices.as_slice() {
            [one] => write!(f, "{one}"),
            many if self.is_cpu() => write!(f, "cpu:0-{}", many.len() - 1),
            many => {
                let names: Vec<String> = many.iter().map(ToString::to_string).collect();
                write!(f, "{}", names.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Result<DeviceSet> {
        s.parse()
    }

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(set("cpu").unwrap(), DeviceSet::one(DeviceChoice::Cpu));
        assert_eq!(set("cpu:0-1").unwrap().len(), 2);
        assert!(set("cpu:0,cpu:1,cpu:2").unwrap().is_cpu());
        assert_eq!(
            set("cuda:0-3").unwrap().devices(),
            &[0, 1, 2, 3].map(DeviceChoice::Cuda)
        );
        assert_eq!(
            set("cuda:2,cuda:0").unwrap().devices(),
            &[DeviceChoice::Cuda(2), DeviceChoice::Cuda(0)]
        );
        assert_eq!(set("vulkan").unwrap().first(), DeviceChoice::Vulkan);
        assert_eq!(set("cpu:0-3").unwrap().to_string(), "cpu:0-3");
        assert_eq!(set("cuda:0,cuda:1").unwrap().to_string(), "cuda:0,cuda:1");
    }

    #[test]
    fn refuses_mixed_repeated_and_malformed_lists() {
        let err = |s: &str| set(s).unwrap_err().to_string();
        assert!(
            err("cpu,cuda:0").contains("one kind of device"),
            "{}",
            err("cpu,cuda:0")
        );
        assert!(err("cuda:0,cuda:0").contains("cuda:0 is named twice"));
        assert!(err("cpu,cpu").contains("named twice"));
        assert!(err("vulkan,vulkan").contains("one Vulkan device"));
        assert!(err("cuda:3-1").contains("range 3-1 is empty"));
        assert!(err("cuda:x").contains("not a device number"));
        assert!(err("tpu").contains("expected cpu, cuda, cuda:N or vulkan"));
    }
}
