//! Flash attention on CubeCL backends (`CubeBackend<R, F, I, BT>`: burn's `Cuda` and `Vulkan`):
//! [`FlashAttentionBackend`] with the kernels of `forward.rs` and `backward.rs`. The segment starts
//! go to the device as a `u32` tensor `[batch·seq]` (zeros for contiguous rows), the window as a
//! scalar (the causal pattern is a compile-time variant). Memory beyond inputs and outputs:
//! the per-row `lse` and `D = Σ dO∘O`.

mod backward;
mod forward;

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use crate::ops::{
    AttentionDims, AttentionGrads, AttentionInputs, AttentionMask, FlashAttentionBackend,
};

/// Units (rows) per cube.
const ROWS: u32 = 64;

/// An uninitialized contiguous tensor of `shape` like `like` (client, device, dtype).
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    let shape = Shape::from(shape);
    let bytes = shape.num_elements() * like.dtype.size();
    let handle = like.client.empty(bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        like.dtype,
    )
}

/// The segment starts on the device, `u32 [batch·seq]`.
fn segment_tensor<R: CubeRuntime>(
    like: &CubeTensor<R>,
    dims: AttentionDims,
    mask: &AttentionMask,
) -> CubeTensor<R> {
    let n = dims.batch * dims.seq;
    let starts: Vec<u32> = match &mask.segment_starts {
        Some(s) => s.iter().map(|&x| x.min(u32::MAX as usize) as u32).collect(),
        None => vec![0; n],
    };
    let handle = like.client.create_from_slice(u32::as_bytes(&starts));
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![n]),
        handle,
        DType::U32,
    )
}

/// Dims of contiguous inputs.
fn dims_of<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>) -> AttentionDims {
    let (qs, ks) = (q.meta.shape(), k.meta.shape());
    AttentionDims {
        batch: qs[0],
        heads: qs[1],
        kv_heads: ks[1],
        seq: qs[2],
        head_dim: qs[3],
    }
}

/// The launch scalars: `(heads, group, seq, window, causal)`.
fn scalars(dims: AttentionDims, mask: &AttentionMask) -> (u32, u32, u32, u32, bool) {
    let window = mask
        .window
        .map_or(u32::MAX, |w| w.min(u32::MAX as usize) as u32);
    (
        dims.heads as u32,
        dims.group() as u32,
        dims.seq as u32,
        window,
        mask.window.is_none(),
    )
}

/// Cubes over `rows` rows (x) and `planes` (batch·head or batch·kv head, y).
fn cubes(rows: usize, planes: usize) -> CubeCount {
    CubeCount::Static((rows as u32).div_ceil(ROWS), planes as u32, 1)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> FlashAttentionBackend
    for CubeBackend<R, F, I, BT>
{
    fn flash_attention_forward(
        inputs: AttentionInputs<Self>,
        mask: &AttentionMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let q = into_contiguous(inputs.q);
        let k = into_contiguous(inputs.k);
        let v = into_contiguous(inputs.v);
        let sinks = into_contiguous(inputs.sinks);
        let dims = dims_of(&q, &k);
        let (heads, group, seq, window, causal) = scalars(dims, mask);
        let seg = segment_tensor(&q, dims, mask);
        let out = empty_like(&q, q.meta.shape().to_vec());
        let lse = empty_like(&q, vec![dims.batch, dims.heads, dims.seq]);
        let client = q.client.clone();
        forward::attention_forward::launch::<F, R>(
            &client,
            cubes(dims.seq, dims.batch * dims.heads),
            CubeDim::new_1d(ROWS),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            sinks.into_tensor_arg(),
            seg.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            heads,
            group,
            seq,
            window,
            dims.scale(),
            dims.head_dim,
            causal,
        );
        (out, lse)
    }

    fn flash_attention_backward(
        inputs: AttentionInputs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        mask: &AttentionMask,
    ) -> AttentionGrads<Self> {
        let q = into_contiguous(inputs.q);
        let k = into_contiguous(inputs.k);
        let v = into_contiguous(inputs.v);
        let grad_out = into_contiguous(grad_out);
        let lse = into_contiguous(lse);
        let delta = Self::float_sum_dim(Self::float_mul(grad_out.clone(), out), 3);
        let delta = into_contiguous(delta);
        let dims = dims_of(&q, &k);
        let (heads, group, seq, window, causal) = scalars(dims, mask);
        let seg = segment_tensor(&q, dims, mask);
        let dq = empty_like(&q, q.meta.shape().to_vec());
        let dk = empty_like(&k, k.meta.shape().to_vec());
        let dv = empty_like(&v, v.meta.shape().to_vec());
        let client = q.client.clone();
        backward::attention_backward_dq::launch::<F, R>(
            &client,
            cubes(dims.seq, dims.batch * dims.heads),
            CubeDim::new_1d(ROWS),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            grad_out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            seg.clone().into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            heads,
            group,
            seq,
            window,
            dims.scale(),
            dims.head_dim,
            causal,
        );
        backward::attention_backward_dkdv::launch::<F, R>(
            &client,
            cubes(dims.seq, dims.batch * dims.kv_heads),
            CubeDim::new_1d(ROWS),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            grad_out.into_tensor_arg(),
            lse.into_tensor_arg(),
            delta.into_tensor_arg(),
            seg.into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            heads,
            group,
            seq,
            window,
            dims.scale(),
            dims.head_dim,
            causal,
        );
        AttentionGrads { dq, dk, dv }
    }
}
