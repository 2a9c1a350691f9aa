//! The grouped expert matmul over rows sorted by expert, reading the experts' MXFP4 codes on the
//! device: no decoded copy of the experts, no host loop over experts, no host read of the row
//! offsets. One tiled kernel (`grouped_mxfp4/kernel.rs`) serves both products:
//!
//! - forward: `y[i, :] = x[i, :] · W_eᵀ` (`x [N, in] -> y [N, out]`);
//! - input gradient (`transpose`): `dx[i, :] = dy[i, :] · W_e` (`dy [N, out] -> dx [N, in]`),
//!
//! for each row `i` of expert `e` (`offsets[e] <= i < offsets[e + 1]`). The weights of the `E`
//! experts (`[out, in]`, blocks of 32 along `in`) are a [`StackedMxfp4`]: the frozen base
//! ([`super::stacked::stacked_base`], scale bytes packed 4 per word) or the deployed weights
//! ([`super::stacked::deploy_stacked`], one scale word per block); the kernel reads either
//! layout (a comptime flag). Decoding is exact; the sums are f32.

mod kernel;

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::deploy::at_most;
use super::stacked::{ScaleLayout, StackedMxfp4};
use crate::mxfp4::{CodecError, BLOCK};
use kernel::{grouped_mxfp4_kernel, TM, TN, UNITS};

/// Cubes per grid axis (the smallest limit of the targets: CUDA's y and z, Vulkan's minimum).
const MAX_CUBES: usize = 65_535;

/// `Ok` when `t` has one of the dtypes `want`; else a [`CodecError::Length`] with the element
/// sizes (of the first wanted dtype and of `t`'s).
fn dtype<R: CubeRuntime>(
    what: &'static str,
    t: &CubeTensor<R>,
    want: &[DType],
) -> Result<(), CodecError> {
    if want.contains(&t.dtype) {
        return Ok(());
    }
    Err(CodecError::Length {
        what,
        expected: want[0].size(),
        got: t.dtype.size(),
    })
}

/// The grouped product on the device of `x` (see the module doc): `x` is f32 `[N, in]` (or
/// `[N, out]` with `transpose`), its rows sorted by expert; `offsets` an i32 (burn's Int dtype
/// of these backends) or u32 tensor `[E + 1]` on the same device (`offsets[0] = 0`,
/// non-decreasing, `offsets[E] = N`; empty experts allowed), read only by the kernel; `w` the
/// `E` weights `[out, in]`. Returns a contiguous f32 `[N, out]` (or `[N, in]` with `transpose`).
///
/// Errors ([`CodecError::Length`]): `in` not a multiple of 32, no expert, `x` not f32 or not
/// `[N, in]` (`[N, out]`), `offsets` not i32/u32 `[E + 1]`, or buffers of the wrong size.
/// Offsets that break the contract (decreasing, negative, past `N`) cannot make the kernel read
/// or write outside its buffers: rows past `N` are clipped; their results are unspecified.
pub fn grouped_mxfp4_matmul<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &StackedMxfp4<R>,
    offsets: &CubeTensor<R>,
    transpose: bool,
) -> Result<CubeTensor<R>, CodecError> {
    let (experts, out, inp) = (w.experts, w.out, w.inp);
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
    dtype("x (must be f32)", x, &[DType::F32])?;
    CodecError::expect_len("x columns (in, or out with transpose)", kred, shape[1])?;
    let rows = shape[0];
    let oshape = offsets.meta.shape();
    CodecError::expect_len("offsets rank", 1, oshape.num_dims())?;
    dtype(
        "offsets (must be i32 or u32)",
        offsets,
        &[DType::I32, DType::U32],
    )?;
    CodecError::expect_len("offsets length (experts + 1)", experts + 1, oshape[0])?;
    let n_blocks = experts * out * inp / BLOCK;
    let used = |h: &Handle| h.size_in_used() as usize;
    CodecError::expect_len(
        "codes (bytes, 16 per block)",
        (n_blocks * 16).max(4),
        used(&w.codes),
    )?;
    let (scale_words, packed) = match w.layout {
        ScaleLayout::Packed => (n_blocks.div_ceil(4), true),
        ScaleLayout::Word => (n_blocks, false),
    };
    CodecError::expect_len(
        "scales (bytes, by the layout)",
        scale_words.max(1) * 4,
        used(&w.scales),
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
            arg(&w.codes, n_blocks.max(1) * 4),
            arg(&w.scales, scale_words.max(1)),
            arg(&offsets.handle, experts + 1),
            arg(&result, elements),
            rows as u32,
            experts as u32,
            out as u32,
            inp as u32,
            kred as u32,
            ncols as u32,
            transpose,
            packed,
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
