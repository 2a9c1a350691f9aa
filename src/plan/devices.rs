//! `--devices`: how many devices, of which kind, with how much memory each.
//!
//! Forms: `8x80GB`, `1x80GB`, `80GB` (= `1x80GB`), `8x40GB`, `cpu:24GB`, `gpu:2x80GiB`. Units are
//! decimal or binary and say which: `GB` = 10⁹ bytes, `GiB` = 2³⁰ bytes (likewise `MB`/`MiB`,
//! `TB`/`TiB`). A bare `G` is refused as ambiguous. A count is written `N x`, `N X` or `N ×`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// One decimal gigabyte: 10⁹ bytes (what `GB` means in `--devices` and in the printed plan).
pub const GB: u64 = 1_000_000_000;
/// One binary gibibyte: 2³⁰ bytes (`GiB`).
pub const GIB: u64 = 1 << 30;

/// Where the memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// An accelerator (CUDA or Vulkan): the grouped expert op deploys all experts of a projection
    /// at once there.
    Gpu,
    /// Host memory (the Flex backend): experts are deployed one at a time in f32.
    Cpu,
}

/// `count` identical devices of `bytes_each` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Devices {
    /// GPU or CPU.
    pub kind: DeviceKind,
    /// Number of devices (≥ 1).
    pub count: usize,
    /// Capacity of each, in bytes.
    pub bytes_each: u64,
    /// The text given.
    pub spec: String,
}

/// A `--devices` string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--devices {spec:?}: {why} (expected e.g. `8x80GB`, `1x80GB`, `80GB`, `8x40GB`, `cpu:24GB`; \
     GB = 10^9 bytes, GiB = 2^30 bytes)"
)]
pub struct DevicesError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for Devices {
    type Err = DevicesError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DevicesError {
            spec: spec.to_string(),
            why,
        };
        let text = spec.trim();
        let (kind, rest) = match text.split_once(':') {
            Some((k, rest)) => match k.trim().to_ascii_lowercase().as_str() {
                "cpu" | "host" => (DeviceKind::Cpu, rest),
                "gpu" | "cuda" | "vulkan" => (DeviceKind::Gpu, rest),
                other => return Err(err(format!("unknown device kind {other:?} (cpu or gpu)"))),
            },
            None => (DeviceKind::Gpu, text),
        };
        let rest = rest.trim();
        let (count, size) = match rest.find(['x', 'X', '×']) {
            Some(i) => {
                let n = rest[..i].trim();
                let sep = rest[i..].chars().next().map_or(1, char::len_utf8);
                let count: usize = n
                    .parse()
                    .map_err(|_| err(format!("device count {n:?} is not a whole number")))?;
                (count, rest[i + sep..].trim())
            }
            None => (1, rest),
        };
        if count == 0 {
            return Err(err("the device count must be at least 1".into()));
        }
        let bytes_each = parse_bytes(size).map_err(err)?;
        Ok(Devices {
            kind,
            count,
            bytes_each,
            spec: text.to_string(),
        })
    }
}

/// `80GB`, `79.6GiB`, `512MiB`, `2TB` -> bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("size {s:?} has no unit (GB or GiB)"))?;
    let (num, unit) = (s[..split].trim(), s[split..].trim());
    let value: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: {num:?} is not a number"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "gb" => GB as f64,
        "gib" => GIB as f64,
        "mb" => 1e6,
        "mib" => (1u64 << 20) as f64,
        "tb" => 1e12,
        "tib" => (1u64 << 40) as f64,
        "g" | "gi" | "m" | "t" => {
            return Err(format!(
                "unit {unit:?} is ambiguous: write GB (10^9 bytes) or GiB (2^30 bytes)"
            ))
        }
        _ => return Err(format!("unknown unit {unit:?} (GB, GiB, MB, MiB, TB, TiB)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("size {s:?} is not a usable capacity"));
    }
    Ok(bytes.round() as u64)
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DeviceKind::Gpu => "GPU",
            DeviceKind::Cpu => "CPU (host memory)",
        };
        write!(
            f,
            "{} × {kind} of {:.2} GB = {:.2} GiB each (--devices {})",
            self.count,
            self.bytes_each as f64 / GB as f64,
            self.bytes_each as f64 / GIB as f64,
            self.spec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Devices {
        s.parse().unwrap()
    }

    #[test]
    fn the_documented_forms() {
        assert_eq!((p("8x80GB").count, p("8x80GB").bytes_each), (8, 80 * GB));
        assert_eq!(
            p("1x80GB"),
            Devices {
                spec: "1x80GB".into(),
                ..p("1x80GB")
            }
        );
        assert_eq!((p("80GB").count, p("80GB").bytes_each), (1, 80 * GB));
        assert_eq!((p("8X40gb").count, p("8X40gb").bytes_each), (8, 40 * GB));
        let cpu = p("cpu:24GB");
        assert_eq!(
            (cpu.kind, cpu.count, cpu.bytes_each),
            (DeviceKind::Cpu, 1, 24 * GB)
        );
        assert_eq!(p("2 × 80GiB").bytes_each, 80 * GIB);
        assert_eq!(p("gpu:4x79.5GB").bytes_each, 79_500_000_000);
        assert_eq!(p("8x80GB").kind, DeviceKind::Gpu);
    }

    #[test]
    fn bad_strings_say_why() {
        for (s, why) in [
            ("", "no unit"),
            ("8x", "no unit"),
            ("0x80GB", "at least 1"),
            ("ax80GB", "not a whole number"),
            ("8x80", "no unit"),
            ("8x80G", "ambiguous"),
            ("8x80PB", "unknown unit"),
            ("tpu:80GB", "unknown device kind"),
            ("8x..GB", "not a number"),
            ("8x0GB", "not a usable capacity"),
        ] {
            let e = s.parse::<Devices>().unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
            assert!(e.contains("GB = 10^9 bytes"), "{e}");
        }
    }
}
