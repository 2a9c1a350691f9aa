//! MoE routing on a CubeCL device, equal to the host references of [`crate::ops::routing`]: the
//! top-k experts of each token ([`top_k_on_device`], as `top_k_rows`) and the assignments grouped
//! by expert ([`group_by_expert_on_device`], as `group_by_expert`). Nothing is read back to the
//! host on the way: errors in the data (a non-finite logit, an expert id out of range) set bits
//! of a device flag ([`routing_flag`]) that the caller reads once, when it chooses
//! ([`check_flag`]).
//!
//! Integer outputs are `i32` (`DType::I32`, the int element of burn's wgpu/Vulkan and CUDA
//! backends by default), so they can be wrapped as burn `Int` tensors of those backends.

mod kernel;

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;

use kernel::{
    expert_count_kernel, expert_range_kernel, expert_scatter_kernel, offsets_scan_kernel,
    top_k_kernel,
};
pub use kernel::{EXPERT_OUT_OF_RANGE, NON_FINITE_LOGIT};

use crate::ops::routing::RoutingError;

/// Units per cube of the per-token and per-assignment kernels.
const CUBE_UNITS: u32 = 64;

/// The assignments grouped by expert on the device: `i32` tensors equal to
/// [`crate::ops::routing::Grouping`]'s fields.
pub struct DeviceGrouping<R: CubeRuntime> {
    /// `[tokens · top_k]`: the token of each sorted assignment.
    pub order: CubeTensor<R>,
    /// `[tokens · top_k]`: the flat slot `token · top_k + slot` of each sorted assignment.
    pub slots: CubeTensor<R>,
    /// `[experts + 1]`: expert `e` owns entries `offsets[e]..offsets[e + 1]`.
    pub offsets: CubeTensor<R>,
}

/// A fresh routing error flag on `device`: one `u32` (`[1]`, `DType::U32`), zero. The routing
/// launchers OR [`NON_FINITE_LOGIT`] / [`EXPERT_OUT_OF_RANGE`] into it and never clear it, so
/// one flag can serve every layer of a step.
pub fn routing_flag<R: CubeRuntime>(device: &R::Device) -> CubeTensor<R> {
    let client = R::client(device);
    let handle = client.create_from_slice(&0u32.to_le_bytes());
    CubeTensor::new_contiguous(client, device.clone(), Shape::new([1]), handle, DType::U32)
}

/// Reads `flag` back to the host (the one synchronisation of the routing) and turns a set bit
/// into [`RoutingError::DeviceFlag`].
pub fn check_flag<R: CubeRuntime>(flag: &CubeTensor<R>) -> Result<(), RoutingError> {
    check_flag_tensor(flag)?;
    let bytes = flag.client.read_one_unchecked(flag.handle.clone());
    let word: [u8; 4] = bytes[..4].try_into().map_err(|_| RoutingError::Shape {
        what: "routing flag bytes",
        expected: 4,
        got: bytes.len(),
    })?;
    match u32::from_le_bytes(word) {
        0 => Ok(()),
        flags => Err(RoutingError::DeviceFlag { flags }),
    }
}

/// Per token of `logits [tokens, experts]` (f32; made contiguous on the device if it is not),
/// the `k` experts of largest logit by descending logit, ties to the lower index:
/// `[tokens, k]` `i32`, equal to `top_k_rows`. A NaN/Inf logit sets [`NON_FINITE_LOGIT`] in
/// `flag` (that token's choices are then unspecified). Errors (on the host, before any launch)
/// on `k` outside `1..=experts`, a logits tensor that is not 2-D f32, a bad flag, or sizes
/// beyond `i32`.
pub fn top_k_on_device<R: CubeRuntime>(
    logits: &CubeTensor<R>,
    k: usize,
    flag: &CubeTensor<R>,
) -> Result<CubeTensor<R>, RoutingError> {
    check_flag_tensor(flag)?;
    let dims = logits.meta.shape().clone();
    if dims.num_dims() != 2 {
        return Err(shape("router logits rank", 2, dims.num_dims()));
    }
    if logits.dtype != DType::F32 {
        return Err(shape(
            "router logits element size (f32)",
            4,
            logits.elem_size(),
        ));
    }
    let (tokens, experts) = (dims[0], dims[1]);
    if !(1..=experts).contains(&k) {
        return Err(RoutingError::TopK { k, experts });
    }
    fits_i32("router logits", tokens * experts)?;
    let client = logits.client.clone();
    let n = tokens * k;
    let indices = client.empty(n.max(1) * 4);
    if tokens > 0 {
        let logits = into_contiguous(logits.clone());
        let (count, dim) = cube_count(&client, tokens);
        top_k_kernel::launch::<R>(
            &client,
            count,
            dim,
            raw(&logits.handle, tokens * experts),
            raw(&indices, n),
            raw(&flag.handle, 1),
            tokens as u32,
            experts as u32,
            k as u32,
        );
    }
    Ok(int_tensor(
        &client,
        &logits.device,
        Shape::new([tokens, k]),
        indices,
    ))
}

/// Groups the row-major `[tokens, top_k]` choices `indices` (`i32`, any shape, read flat; made
/// contiguous on the device if needed) by expert: equal to `group_by_expert` (ascending expert,
/// then ascending flat slot; deterministic, no atomics in the order). An id outside
/// `0..experts` sets [`EXPERT_OUT_OF_RANGE`] in `flag` (the outputs are then unspecified).
/// Errors (on the host) on `top_k` 0, indices that are not `i32`, a bad flag, or sizes beyond
/// `i32`.
pub fn group_by_expert_on_device<R: CubeRuntime>(
    indices: &CubeTensor<R>,
    top_k: usize,
    experts: usize,
    flag: &CubeTensor<R>,
) -> Result<DeviceGrouping<R>, RoutingError> {
    check_flag_tensor(flag)?;
    if top_k == 0 {
        return Err(RoutingError::TopK { k: 0, experts });
    }
    if indices.dtype != DType::I32 {
        return Err(shape(
            "routing indices element size (i32)",
            4,
            indices.elem_size(),
        ));
    }
    let n = indices.meta.shape().num_elements();
    fits_i32("routing assignments", n)?;
    fits_i32("experts", experts + 1)?;
    let client = indices.client.clone();
    let device = &indices.device;
    let indices = into_contiguous(indices.clone());
    let idx = || raw(&indices.handle, n.max(1));
    let order = client.empty(n.max(1) * 4);
    let slots = client.empty(n.max(1) * 4);
    let offsets = client.empty((experts + 1) * 4);
    if n > 0 {
        let (count, dim) = cube_count(&client, n);
        expert_range_kernel::launch::<R>(
            &client,
            count,
            dim,
            idx(),
            raw(&flag.handle, 1),
            n as u32,
            experts as u32,
        );
    }
    if experts > 0 {
        let (count, dim) = cube_count(&client, experts);
        expert_count_kernel::launch::<R>(
            &client,
            count,
            dim,
            idx(),
            raw(&offsets, experts + 1),
            n as u32,
            experts as u32,
        );
    }
    offsets_scan_kernel::launch::<R>(
        &client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(1),
        raw(&offsets, experts + 1),
        experts as u32,
    );
    if experts > 0 && n > 0 {
        let (count, dim) = cube_count(&client, experts);
        expert_scatter_kernel::launch::<R>(
            &client,
            count,
            dim,
            idx(),
            raw(&offsets, experts + 1),
            raw(&order, n),
            raw(&slots, n),
            n as u32,
            top_k as u32,
            experts as u32,
        );
    }
    Ok(DeviceGrouping {
        order: int_tensor(&client, device, Shape::new([n]), order),
        slots: int_tensor(&client, device, Shape::new([n]), slots),
        offsets: int_tensor(&client, device, Shape::new([experts + 1]), offsets),
    })
}

fn shape(what: &'static str, expected: usize, got: usize) -> RoutingError {
    RoutingError::Shape {
        what,
        expected,
        got,
    }
}

/// Errors when `len` does not fit an `i32` index.
fn fits_i32(what: &'static str, len: usize) -> Result<(), RoutingError> {
    let max = i32::MAX as usize;
    if len > max {
        return Err(RoutingError::Shape {
            what,
            expected: max,
            got: len,
        });
    }
    Ok(())
}

/// Errors unless `flag` is one `u32`.
fn check_flag_tensor<R: CubeRuntime>(flag: &CubeTensor<R>) -> Result<(), RoutingError> {
    if flag.dtype != DType::U32 {
        return Err(shape("routing flag dtype (u32)", 4, flag.elem_size()));
    }
    let len = flag.meta.shape().num_elements();
    if len != 1 {
        return Err(shape("routing flag length", 1, len));
    }
    Ok(())
}

/// A contiguous `i32` tensor over `handle`.
fn int_tensor<R: CubeRuntime>(
    client: &ComputeClient<R>,
    device: &R::Device,
    shape: Shape,
    handle: Handle,
) -> CubeTensor<R> {
    CubeTensor::new_contiguous(client.clone(), device.clone(), shape, handle, DType::I32)
}

/// A handle of `len` elements as a kernel array argument.
fn raw<R: CubeRuntime>(handle: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every caller passes at most the handle's element count (4-byte elements).
    unsafe { ArrayArg::from_raw_parts(handle.clone(), len) }
}

fn cube_count<R: CubeRuntime>(client: &ComputeClient<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(CUBE_UNITS);
    (
        cubecl::calculate_cube_count_elemwise(client, units, dim),
        dim,
    )
}
