//! One memory-mapped safetensors file: header parsing and validation.
//!
//! The header is checked against the file: every tensor's byte range has the size its dtype and
//! shape imply, the ranges tile the data section exactly (no gap, no overlap), and the file is
//! exactly header + data long. Errors name the file and the tensor.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Largest header accepted (the safetensors crate's limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A tensor as described by a shard header; `start..end` are absolute offsets into the file.
#[derive(Debug, Clone)]
pub(crate) struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A mapped shard. The map is read-only; the file must not be modified while it is open.
pub(crate) struct Shard {
    pub path: PathBuf,
    pub file_name: String,
    pub mmap: Mmap,
    /// Size of the whole file in bytes.
    pub len: u64,
    /// `__metadata__` of the header, if any.
    pub metadata: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Header entries in file order; duplicate keys are kept so that they can be reported.
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(RawHeader(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Shard {
    /// Maps `path` and parses and validates its header.
    pub(crate) fn open(path: &Path) -> Result<(Shard, Vec<HeaderEntry>)> {
        let shown = path.display();
        let file = File::open(path).with_context(|| format!("cannot open shard {shown}"))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat shard {shown}"))?
            .len();
        if len < 8 {
            bail!("{shown}: file is {len} bytes, too short for a safetensors header (truncated?)");
        }
        // SAFETY: the map is read-only and the checkpoint files are not modified while open;
        // this is how every safetensors reader avoids copying multi-GB files.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot mmap {shown}"))?;
        let n = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES || n > len - 8 {
            bail!(
                "{shown}: header length field says {n} bytes but the file has {} bytes after it (truncated or not a safetensors file)",
                len - 8
            );
        }
        let data_start = 8 + n as usize;
        let header = std::str::from_utf8(&mmap[8..data_start])
            .with_context(|| format!("{shown}: header is not UTF-8"))?;
        let raw: RawHeader = serde_json::from_str(header)
            .with_context(|| format!("{shown}: header is not a valid safetensors JSON header"))?;
        let data_len = (len - data_start as u64) as usize;
        let mut metadata = Vec::new();
        let mut entries = Vec::with_capacity(raw.0.len());
        let mut seen = std::collections::HashSet::new();
        for (name, value) in raw.0 {
            if !seen.insert(name.clone()) {
                bail!("{shown}: tensor `{name}` appears twice in the header");
            }
            if name == "__metadata__" {
                let map: std::collections::BTreeMap<String, String> = serde_json::from_value(value)
                    .with_context(|| {
                        format!("{shown}: __metadata__ must map strings to strings")
                    })?;
                metadata = map.into_iter().collect();
                continue;
            }
            let info: RawInfo = serde_json::from_value(value)
                .with_context(|| format!("{shown}: tensor `{name}`: bad header entry"))?;
            let (s, e) = info.data_offsets;
            let size = byte_size(info.dtype, &info.shape).with_context(|| {
                format!("{shown}: tensor `{name}`: shape {:?} overflows", info.shape)
            })?;
            if e < s || e - s != size {
                bail!(
                    "{shown}: tensor `{name}`: header says {:?} {:?} ({size} bytes) but data_offsets [{s}, {e}] do not span that",
                    info.dtype,
                    info.shape
                );
            }
            entries.push(HeaderEntry {
                name,
                dtype: info.dtype,
                shape: info.shape,
                start: s,
                end: e,
            });
        }
        check_tiling(&mut entries, data_len, &shown.to_string())?;
        for e in &mut entries {
            e.start += data_start;
            e.end += data_start;
        }
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shard = Shard {
            path: path.to_path_buf(),
            file_name,
            mmap,
            len,
            metadata,
        };
        Ok((shard, entries))
    }
}

/// Bytes a tensor of `dtype` and `shape` occupies, `None` on overflow or a partial byte.
pub(crate) fn byte_size(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let bits = numel.checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// The ranges (relative to the data section) must tile `0..data_len` exactly.
fn check_tiling(entries: &mut [HeaderEntry], data_len: usize, shown: &str) -> Result<()> {
    entries.sort_by_key(|e| (e.start, e.end));
    let mut pos = 0usize;
    let mut prev: Option<&str> = None;
    for e in entries.iter() {
        if e.end > data_len {
            bail!(
                "{shown}: tensor `{}` needs data bytes [{}, {}) but the file holds only {data_len} data bytes (truncated file, or a header that lies about offsets)",
                e.name,
                e.start,
                e.end
            );
        }
        if e.start != pos {
            let after = prev.map_or("the header".to_string(), |p| format!("tensor `{p}`"));
            let what = if e.start < pos {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            bail!(
                "{shown}: tensor `{}` at data_offsets [{}, {}) {what} {after} (which ends at {pos}): the header lies about offsets",
                e.name,
                e.start,
                e.end
            );
        }
        pos = e.end;
        prev = Some(&e.name);
    }
    if pos != data_len {
        let last = prev.map_or("(no tensors)".to_string(), |p| format!("`{p}`"));
        bail!(
            "{shown}: {} bytes after the last tensor {last}: file length does not match the header",
            data_len - pos
        );
    }
    Ok(())
}
