//! Reading every byte of a checkpoint and checking the values: BF16 all finite, MXFP4 scale
//! bytes plausible, blocks not all zero. Used by `inspect`; parallel over tensors.

use rayon::prelude::*;
use safetensors::Dtype;

use super::open::Checkpoint;

/// Scale bytes outside this range (block magnitudes below 2^-100 or above 2^30) are flagged as
/// implausible for model weights; 255 is E8M0's NaN and is an error.
pub const PLAUSIBLE_SCALES: std::ops::RangeInclusive<u8> = 27..=157;

/// What was found in one tensor's data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorScan {
    /// Tensor name.
    pub name: String,
    /// Bytes read.
    pub bytes: u64,
    /// Non-finite BF16 values (NaN, ±Inf).
    pub non_finite: u64,
    /// Largest |value| of a BF16 tensor.
    pub max_abs: f32,
    /// Smallest and largest byte (scales: E8M0 exponent + 127).
    pub min_byte: u8,
    /// See `min_byte`.
    pub max_byte: u8,
    /// Zero bytes.
    pub zero_bytes: u64,
}

/// Result of [`Checkpoint::scan_data`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataScan {
    /// One entry per tensor, sorted by name.
    pub tensors: Vec<TensorScan>,
    /// Total bytes read.
    pub bytes_read: u64,
    /// Problems that make the checkpoint unusable (NaN/Inf weights, NaN scales).
    pub errors: Vec<String>,
    /// Suspicious but loadable (implausible scales, all-zero blocks).
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Reads every tensor's bytes and checks their values.
    pub fn scan_data(&self) -> DataScan {
        let names: Vec<&str> = self.tensor_names().collect();
        let tensors: Vec<TensorScan> = names
            .par_iter()
            .map(|name| {
                let t = self.tensor(name).expect("listed tensor exists");
                scan_one(name, t.dtype, t.bytes)
            })
            .collect();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for s in &tensors {
            let file = self.shard_file_of(&s.name).unwrap_or("?").to_string();
            if s.non_finite > 0 {
                errors.push(format!(
                    "{file}: tensor `{}` has {} non-finite value(s)",
                    s.name, s.non_finite
                ));
            }
            if s.name.ends_with("_scales") && s.bytes > 0 {
                if s.max_byte == 255 {
                    errors.push(format!(
                        "{file}: tensor `{}` has scale byte 255 (E8M0 NaN)",
                        s.name
                    ));
                } else if !PLAUSIBLE_SCALES.contains(&s.min_byte)
                    || !PLAUSIBLE_SCALES.contains(&s.max_byte)
                {
                    warnings.push(format!(
                        "{file}: tensor `{}` has scale bytes {}..={} (block scales 2^{}..2^{}), outside the plausible range",
                        s.name,
                        s.min_byte,
                        s.max_byte,
                        s.min_byte as i32 - 127,
                        s.max_byte as i32 - 127
                    ));
                }
            }
            if s.name.ends_with("_blocks") && s.bytes > 0 && s.zero_bytes == s.bytes {
                warnings.push(format!("{file}: tensor `{}` is all zero", s.name));
            }
        }
        DataScan {
            bytes_read: tensors.iter().map(|s| s.bytes).sum(),
            tensors,
            errors,
            warnings,
        }
    }
}

fn scan_one(name: &str, dtype: Dtype, bytes: &[u8]) -> TensorScan {
    let mut s = TensorScan {
        name: name.to_string(),
        bytes: bytes.len() as u64,
        non_finite: 0,
        max_abs: 0.0,
        min_byte: u8::MAX,
        max_byte: 0,
        zero_bytes: 0,
    };
    if bytes.is_empty() {
        s.min_byte = 0;
    }
    for &b in bytes {
        s.min_byte = s.min_byte.min(b);
        s.max_byte = s.max_byte.max(b);
        s.zero_bytes += u64::from(b == 0);
    }
    if dtype == Dtype::BF16 {
        for p in bytes.chunks_exact(2) {
            let v = f32::from_bits(u32::from(u16::from_le_bytes([p[0], p[1]])) << 16);
            if v.is_finite() {
                s.max_abs = s.max_abs.max(v.abs());
            } else {
                s.non_finite += 1;
            }
        }
    }
    s
}
