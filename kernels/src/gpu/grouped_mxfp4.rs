//! The grouped expert matmul over rows sorted by expert, reading the experts' MXFP4 codes on the
//! device: no decoded copy of the experts, no host loop over experts, no host read of the row
//! offsets. One tiled kernel (`grouped_mxfp4/kernel.rs`) serves both products:
//!
//! - forward: `y[i, :] = x[i, :] · W_eᵀ` (`x [N, in] -> y [N, out]`);
//! - input gradient (`transpose`): `dx[i, :] = dy[i, :] · W_e` (`dy [N, out] -> dx [N, in]`),
//!
//! for each row `i` of expert `e` (`offsets[e] <= i < offsets[e + 1]`). The weights of the `E`
//! experts (`[out, in]`, blocks of 32 along `in`) are stacked expert-major in two buffers:
//! `codes`, 4 little-endian words per block (the checkpoint's 16 code bytes), and `scales`, one
//! word per block with the E8M0 byte in its low 8 bits (the formats of
//! [`super::deploy_kernel::mxfp4_deploy_kernel`]'s `codes` and `scales_out`); [`upload_stacked`]
//! builds them from the checkpoint's `*_blocks`/`*_scales` bytes. Decoding is exact; the sums
//! are f32.

mod kernel;

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::mxfp4::{CodecError, BLOCK, BLOCK_BYTES};
use kernel::{grouped_mxfp4_kernel, TM, TN, UNITS};

/// Uploads the `E` experts' packed bytes as the stacked `(codes, scales)` buffers of
/// [`grouped_mxfp4_matmul`]: `blocks[e]` is expert `e`'s `*_blocks` bytes (16 per block of 32,
/// row-major `[out, in/32]`), `scales[e]` its `*_scales` bytes (one per block). All experts must
/// have the same number of blocks. Errors: mismatched lengths, or no expert.
pub fn upload_stacked<R: CubeRuntime>(
    client: &ComputeClient<R>,
    blocks: &[&[u8]],
    scales: &[&[u8]],
) -> Result<(Handle, Handle), CodecError> {
    CodecError::expect_len("scale slices (one per expert)", blocks.len(), scales.len())?;
    let Some(first) = scales.first() else {
        return Err(CodecError::Length {
            what: "experts (at least one)",
            expected: 1,
            got: 0,
        });
    };
    let per_expert = first.len();
    let mut codes = Vec::with_capacity(blocks.len() * per_expert * BLOCK_BYTES);
    let mut words = Vec::with_capacity(scales.len() * per_expert * 4);
    for (b, s) in blocks.iter().zip(scales) {
        CodecError::expect_len("expert scales (bytes, blocks)", per_expert, s.len())?;
        CodecError::expect_len(
            "expert blocks (bytes, 16 per block)",
            per_expert * BLOCK_BYTES,
            b.len(),
        )?;
        codes.extend_from_slice(b);
        words.extend(s.iter().flat_map(|&byte| u32::from(byte).to_le_bytes()));
    }
    // a zero-sized buffer is not bindable: keep one word
    codes.resize(codes.len().max(4), 0);
    words.resize(words.len().max(4), 0);
    Ok((
        client.create_from_slice(&codes),
        client.create_from_slice(&words),
    ))
}

/// Cubes per grid axis (the smallest limit of the targets: CUDA's y and z, Vulkan's minimum).
const MAX_CUBES: usize = 65_535;

/// `Ok` when `got <= max`; else a [`CodecError::Length`] expecting `max`.
fn at_most(what: &'static str, max: usize, got: usize) -> Result<(), CodecError> {
    if got <= max {
        return Ok(());
    }
    Err(CodecError::Length {
        what,
        expected: max,
        got,
    })
}

/// `Ok` when `t` has dtype `want`; else a [`CodecError::Length`] with the element sizes.
fn dtype<R: CubeRuntime>(
    what: &'static str,
    t: &CubeTensor<R>,
    want: DType,
) -> Result<(), CodecError> {
    if t.dtype == want {
        return Ok(());
    }
    Err(CodecError::Length {
        what,
        expected: want.size(),
        got: t.dtype.size(),
    })
}

/// The grouped product on the device of `x` (see the module doc): `x` is f32 `[N, in]` (or
/// `[N, out]` with `transpose`), its rows sorted by expert; `offsets` a u32 tensor `[E + 1]` on
/// the same device (`offsets[0] = 0`, non-decreasing, `offsets[E] = N`; empty experts allowed),
/// read only by the kernel (a tensor rather than a raw handle, so its dtype and length are
/// checked from metadata); `codes`/`scales` the stacked weights of `experts` experts of shape
/// `[out, inp]` (as [`upload_stacked`] makes them). Returns a contiguous f32 `[N, out]` (or
/// `[N, in]` with `transpose`).
///
/// Errors ([`CodecError::Length`]): `inp` not a multiple of 32, no expert, `x` not f32 or not
/// `[N, in]` (`[N, out]`), `offsets` not u32 `[experts + 1]`, or buffers of the wrong size.
/// Offsets that break the contract (decreasing, past `N`) cannot make the kernel read or write
/// outside its buffers: rows past `N` are clipped; their results are unspecified.
#[allow(clippy::too_many_arguments)]
pub fn grouped_mxfp4_matmul<R: CubeRuntime>(
    x: &CubeTensor<R>,
    codes: &Handle,
    scales: &Handle,
    offsets: &CubeTensor<R>,
    experts: usize,
    out: usize,
    inp: usize,
    transpose: bool,
) -> Result<CubeTensor<R>, CodecError> {
    if !inp.is_multiple_of(BLOCK) {
        return Err(CodecError::Length {
            what: "grouped weight `in` (must be a multiple of 32)",
            expected: inp.next_multiple_of(BLOCK),
            got: inp,
        });
    }
    if experts == 0 {
        return Err(CodecError::Length {
            what: "experts (at least one)",
            expected: 1,
            got: 0,
        });
    }
    let (kred, ncols) = if transpose { (out, inp) } else { (inp, out) };
    let shape = x.meta.shape();
    CodecError::expect_len("x rank", 2, shape.num_dims())?;
    dtype("x (must be f32)", x, DType::F32)?;
    CodecError::expect_len("x columns (in, or out with transpose)", kred, shape[1])?;
    let rows = shape[0];
    let oshape = offsets.meta.shape();
    CodecError::expect_len("offsets rank", 1, oshape.num_dims())?;
    dtype("offsets (must be u32)", offsets, DType::U32)?;
    CodecError::expect_len("offsets length (experts + 1)", experts + 1, oshape[0])?;
    let n_blocks = experts * out * inp / BLOCK;
    let used = |h: &Handle| h.size_in_used() as usize;
    CodecError::expect_len(
        "codes (bytes, 16 per block)",
        (n_blocks * 16).max(4),
        used(codes),
    )?;
    CodecError::expect_len(
        "scales (bytes, 4 per block)",
        (n_blocks * 4).max(4),
        used(scales),
    )?;
    // kernel indices are 32-bit; a grid axis holds at most 65535 cubes
    let largest = (rows * kred).max(rows * ncols).max(n_blocks * 4);
    at_most(
        "grouped matmul buffer (elements)",
        u32::MAX as usize,
        largest,
    )?;
    let slots = rows.div_ceil(TM) + experts;
    at_most("row tiles + experts (cubes)", MAX_CUBES, slots)?;
    at_most("column tiles (cubes)", MAX_CUBES, ncols.div_ceil(TN))?;

    let x = into_contiguous(x.clone());
    let offsets = into_contiguous(offsets.clone());
    let client = x.client.clone();
    let elements = rows * ncols;
    let result = client.empty(elements.max(1) * 4);
    if elements > 0 {
        let count = CubeCount::Static(slots as u32, ncols.div_ceil(TN) as u32, 1);
        // SAFETY: every array is given its exact element count (checked above or just made).
        let arg = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len) };
        grouped_mxfp4_kernel::launch::<R>(
            &client,
            count,
            CubeDim::new_1d(UNITS as u32),
            arg(&x.handle, rows * kred),
            arg(codes, n_blocks.max(1) * 4),
            arg(scales, n_blocks.max(1)),
            arg(&offsets.handle, experts + 1),
            arg(&result, elements),
            rows as u32,
            experts as u32,
            out as u32,
            inp as u32,
            kred as u32,
            ncols as u32,
            transpose,
        );
    }
    Ok(CubeTensor::new_contiguous(
        client,
        x.device.clone(),
        Shape::new([rows, ncols]),
        result,
        DType::F32,
    ))
}
