//! Zero-copy access to the tensors of an opened checkpoint.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;

use super::names;
use super::open::Checkpoint;
use super::spec::{ExpertProj, MXFP4_BLOCK, MXFP4_BLOCK_BYTES};

/// A tensor's bytes inside the memory map, with its description.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Shard file holding it.
    pub file: &'a Path,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Raw little-endian bytes (borrowed from the map).
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The packed MXFP4 experts of one layer and projection: blocks `[E, rows, cols/32, 16]`,
/// scales `[E, rows, cols/32]`, bias `[E, rows]` decoded to f32; rows = out features
/// (`2I` for gate_up, `H` for down), cols = in features (`H`, resp. `I`).
#[derive(Debug, Clone)]
pub struct PackedExperts<'a> {
    /// Packed nibbles, borrowed from the map.
    pub blocks: &'a [u8],
    /// E8M0 scale bytes, borrowed from the map.
    pub scales: &'a [u8],
    /// Bias `[E, rows]` in f32 (exact decode of the BF16 tensor).
    pub bias: Vec<f32>,
    /// Number of experts E.
    pub experts: usize,
    /// Output features.
    pub rows: usize,
    /// Input features (multiple of 32).
    pub cols: usize,
}

impl PackedExperts<'_> {
    /// Bytes of blocks per expert.
    pub fn blocks_per_expert(&self) -> usize {
        self.rows * (self.cols / MXFP4_BLOCK) * MXFP4_BLOCK_BYTES
    }

    /// Scale bytes per expert.
    pub fn scales_per_expert(&self) -> usize {
        self.rows * (self.cols / MXFP4_BLOCK)
    }

    /// Blocks of expert `e` (`[rows, cols/32, 16]`). Panics if `e >= experts`.
    pub fn expert_blocks(&self, e: usize) -> &[u8] {
        let n = self.blocks_per_expert();
        &self.blocks[e * n..(e + 1) * n]
    }

    /// Scales of expert `e` (`[rows, cols/32]`). Panics if `e >= experts`.
    pub fn expert_scales(&self, e: usize) -> &[u8] {
        let n = self.scales_per_expert();
        &self.scales[e * n..(e + 1) * n]
    }

    /// Bias of expert `e` (`[rows]`). Panics if `e >= experts`.
    pub fn expert_bias(&self, e: usize) -> &[f32] {
        &self.bias[e * self.rows..(e + 1) * self.rows]
    }
}

impl Checkpoint {
    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, entry) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| anyhow!("no tensor `{name}` in checkpoint {}", self.dir.display()))?;
        let shard = &self.shards[entry.shard];
        Ok(TensorRef {
            name: key,
            file: &shard.path,
            dtype: entry.dtype,
            shape: &entry.shape,
            bytes: &shard.mmap[entry.start..entry.end],
        })
    }

    /// Looks a tensor up and checks its dtype.
    pub fn tensor_of(&self, name: &str, dtype: Dtype) -> Result<TensorRef<'_>> {
        let t = self.tensor(name)?;
        if t.dtype != dtype {
            bail!(
                "{}: tensor `{name}` is {:?}, expected {dtype:?}",
                t.file.display(),
                t.dtype
            );
        }
        Ok(t)
    }

    /// Decodes a BF16 tensor to f32 (exact), row-major.
    pub fn bf16_to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_of(name, Dtype::BF16)?;
        let mut out = vec![0f32; t.numel()];
        kernels::bf16::decode_le(t.bytes, &mut out)
            .with_context(|| format!("{}: tensor `{name}`", t.file.display()))?;
        Ok(out)
    }

    /// The values of a BF16 tensor as they are stored, row-major.
    pub fn bf16_values(&self, name: &str) -> Result<Vec<half::bf16>> {
        let t = self.tensor_of(name, Dtype::BF16)?;
        let (pairs, rest) = t.bytes.as_chunks::<2>();
        if !rest.is_empty() || pairs.len() != t.numel() {
            bail!(
                "{}: tensor `{name}`: {} bytes for {} bf16 values",
                t.file.display(),
                t.bytes.len(),
                t.numel()
            );
        }
        Ok(pairs
            .iter()
            .map(|p| half::bf16::from_bits(u16::from_le_bytes(*p)))
            .collect())
    }

    /// The raw bytes of a U8 tensor (MXFP4 blocks or scales).
    pub fn u8_bytes(&self, name: &str) -> Result<&[u8]> {
        Ok(self.tensor_of(name, Dtype::U8)?.bytes)
    }

    /// The packed experts of `layer` for `proj`, shapes checked against the config.
    pub fn experts(&self, layer: usize, proj: ExpertProj) -> Result<PackedExperts<'_>> {
        let c = &self.config;
        if layer >= c.num_hidden_layers {
            bail!(
                "layer {layer} out of range: the model has {} layers",
                c.num_hidden_layers
            );
        }
        let (rows, cols) = proj.dims(c);
        let e = c.num_local_experts;
        let stem = proj.stem();
        let blocks = self.tensor_of(&names::expert_blocks(layer, stem), Dtype::U8)?;
        let scales = self.tensor_of(&names::expert_scales(layer, stem), Dtype::U8)?;
        let nb = cols / MXFP4_BLOCK;
        for (t, want) in [
            (&blocks, vec![e, rows, nb, MXFP4_BLOCK_BYTES]),
            (&scales, vec![e, rows, nb]),
        ] {
            if t.shape != want.as_slice() {
                bail!(
                    "{}: tensor `{}` has shape {:?}, expected {want:?}",
                    t.file.display(),
                    t.name,
                    t.shape
                );
            }
        }
        let bias_name = names::expert_bias(layer, stem);
        let bias = self.bf16_to_f32(&bias_name)?;
        if bias.len() != e * rows {
            bail!(
                "tensor `{bias_name}` has {} elements, expected {e}×{rows}",
                bias.len()
            );
        }
        Ok(PackedExperts {
            blocks: blocks.bytes,
            scales: scales.bytes,
            bias,
            experts: e,
            rows,
            cols,
        })
    }
}
