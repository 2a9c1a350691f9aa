//! All experts of one projection as one device representation: the stacked MXFP4 codes and scale
//! bytes of `E` weights `[out, in]`, expert-major (global block `e·n_blocks + j`, `n_blocks` =
//! out·in/32), read by the grouped matmul ([`super::grouped_mxfp4`]).
//!
//! Two such stacks: the frozen base ([`stacked_base`], the checkpoint's bytes, uploaded once and
//! shared with the per-expert deploy of [`super::deploy`]), and the deployed weights of all
//! experts ([`deploy_stacked`], `MXFP4(W_e + s·B_e·A_e)` in one launch, bit-identical per expert
//! to `kernels::deploy::deploy`).

use std::sync::Arc;

use burn_cubecl::element::BoolElement;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::deploy::launch_mxfp4;
use super::resident::stacked;
use crate::mxfp4::{CodecError, BLOCK, BLOCK_BYTES};
use crate::ops::{GroupedLora, PackedWeight};

/// How the scale bytes are laid out in a stacked buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleLayout {
    /// 4 scale bytes per word, little-endian (the checkpoint's bytes, zero-padded to whole
    /// words): block `j`'s byte is byte `j % 4` of word `j / 4`.
    Packed,
    /// One word per block, the byte in the low 8 bits.
    Word,
}

/// All `E` experts of one projection on the device, expert-major: global block index
/// `e·n_blocks + j` (`n_blocks` = out·in/32, row-major `[out, in/32]` within an expert).
pub struct StackedMxfp4<R: CubeRuntime> {
    /// The codes: 4 little-endian words per block (the checkpoint's 16 bytes, element 2j in the
    /// low nibble of byte j); at least one word.
    pub codes: Handle,
    /// The scale bytes, laid out as `layout` says; at least one word.
    pub scales: Handle,
    /// The layout of `scales`.
    pub layout: ScaleLayout,
    /// `E`, the number of experts.
    pub experts: usize,
    /// Rows of each expert's weight.
    pub out: usize,
    /// Columns of each expert's weight (a multiple of 32).
    pub inp: usize,
    client: ComputeClient<R>,
}

impl<R: CubeRuntime> StackedMxfp4<R> {
    /// Blocks of one expert (`out·in/32`).
    pub fn blocks_per_expert(&self) -> usize {
        self.out * self.inp / BLOCK
    }

    /// Expert `e`'s checkpoint bytes (`blocks`: 16 per block; `scales`: one per block), read
    /// back from the device (tests, export); empty for `e >= experts`.
    pub fn bytes(&self, e: usize) -> (Vec<u8>, Vec<u8>) {
        let n = self.blocks_per_expert();
        if e >= self.experts || n == 0 {
            return (Vec::new(), Vec::new());
        }
        let codes = self.range(&self.codes, e * n * BLOCK_BYTES, (e + 1) * n * BLOCK_BYTES);
        let scales = match self.layout {
            ScaleLayout::Word => self
                .range(&self.scales, e * n * 4, (e + 1) * n * 4)
                .chunks_exact(4)
                .map(|w| w[0])
                .collect(),
            ScaleLayout::Packed => {
                // whole words around the expert's bytes (copies are word-aligned)
                let (start, end) = (e * n, (e + 1) * n);
                let first = start / 4 * 4;
                let words = self.range(&self.scales, first, end.next_multiple_of(4));
                words[start - first..end - first].to_vec()
            }
        };
        (codes, scales)
    }

    /// Bytes `start..end` (multiples of 4) of `handle`.
    fn range(&self, handle: &Handle, start: usize, end: usize) -> Vec<u8> {
        let size = handle.size_in_used() as usize;
        let view = handle
            .clone()
            .offset_start(start as u64)
            .offset_end((size - end) as u64);
        self.client.read_one_unchecked(view).to_vec()
    }
}

/// The frozen base of one projection (`bases`: its experts, all of one shape `[out, in]`),
/// uploaded once ([`ScaleLayout::Packed`]): cached by the address of `bases[0]`'s allocation,
/// the number of experts and the device, holding `Weak`s of the weights; the experts' own
/// uploads (of `super::deploy::mxfp4_on_device`) are replaced by views into it, so the base has
/// one device copy. Errors ([`CodecError::Length`]): no expert, shapes that differ, `in` not a
/// multiple of 32, byte counts that do not match the shape.
pub fn stacked_base<R: CubeRuntime>(
    bases: &[Arc<dyn PackedWeight>],
    device: &R::Device,
) -> Result<StackedMxfp4<R>, CodecError> {
    let (resident, [out, inp]) = stacked::<R>(bases, device)?;
    Ok(StackedMxfp4 {
        codes: resident.blocks,
        scales: resident.scales,
        layout: ScaleLayout::Packed,
        experts: bases.len(),
        out,
        inp,
        client: R::client(device),
    })
}

/// `MXFP4(W_e + s·B_e·A_e)` of all experts of `bases` in one kernel launch
/// ([`ScaleLayout::Word`]), bit-identical per expert to `kernels::deploy::deploy`; without
/// `lora`, each base re-quantized. The base is read from [`stacked_base`]'s copy; `lora` holds
/// the `E` experts' factors (`a [E·r, in]`, `b [out, E·r]`). A block whose merged values hold a
/// NaN/Inf (the CPU refuses it) gets the scale byte 255 and zero codes, whose values are NaN.
/// Errors ([`CodecError::Length`]): those of [`stacked_base`], factors of the wrong shape, or
/// sizes past 32-bit indices.
pub fn deploy_stacked<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    bases: &[Arc<dyn PackedWeight>],
    lora: Option<&GroupedLora<CubeBackend<R, f32, I, BT>>>,
    device: &R::Device,
) -> Result<StackedMxfp4<R>, CodecError> {
    let (resident, shape) = stacked::<R>(bases, device)?;
    let factors = lora.map(|l| (&l.a, &l.b, l.scale));
    let launched = launch_mxfp4(&resident, bases.len(), shape, factors, true, false, device)?;
    Ok(StackedMxfp4 {
        codes: launched.codes,
        scales: launched.scales,
        layout: ScaleLayout::Word,
        experts: bases.len(),
        out: shape[0],
        inp: shape[1],
        client: R::client(device),
    })
}
