//! Serializing a safetensors header for the writer, and a byte-counting `Write` adapter.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use safetensors::Dtype;

/// One tensor of a shard header; offsets are relative to the data section.
pub(crate) struct HeaderItem {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// The JSON header (tensors in insertion order), padded with spaces to a multiple of 8 bytes.
pub(crate) fn header_bytes(
    items: &[HeaderItem],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut obj = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        obj.push_str("\"__metadata__\":");
        obj.push_str(&serde_json::to_string(metadata)?);
        first = false;
    }
    for it in items {
        if !first {
            obj.push(',');
        }
        first = false;
        let entry = serde_json::json!({
            "dtype": it.dtype,
            "shape": it.shape,
            "data_offsets": [it.start, it.end],
        });
        obj.push_str(&serde_json::to_string(&it.name)?);
        obj.push(':');
        obj.push_str(&serde_json::to_string(&entry)?);
    }
    obj.push('}');
    let mut bytes = obj.into_bytes();
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    Ok(bytes)
}

pub(crate) struct CountingWriter<'a, W: Write> {
    pub inner: &'a mut W,
    pub n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a safetensors file of 1-D f32 tensors (in the given order) with `metadata` in key
/// order: the same bytes for the same content, unlike a `HashMap` metadata.
pub(crate) fn write_f32_tensors<W: Write>(
    w: &mut W,
    tensors: &[(String, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut items = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, data) in tensors {
        let len = 4 * data.len() as u64;
        items.push(HeaderItem {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: vec![data.len()],
            start: offset,
            end: offset + len,
        });
        offset += len;
    }
    let header = header_bytes(&items, metadata)?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for (_, data) in tensors {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}
