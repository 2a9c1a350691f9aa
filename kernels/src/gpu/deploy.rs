//! The deployed weight on a CubeCL device ([`DeployBackend`] for `CubeBackend`): the packed base
//! is read from its device copy (uploaded once, [`super::resident`]), merged with the LoRA
//! factors already on the device and quantized there, by the kernels of `deploy_kernel.rs`.
//! Nothing crosses to the host on the way. One launcher ([`launch_mxfp4`]) serves one expert
//! ([`mxfp4_on_device`]) and all experts of a projection (`super::stacked::deploy_stacked`).

use std::sync::Arc;

use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::deploy_kernel::{bf16_deploy_kernel, mxfp4_deploy_kernel};
use super::resident::{codec_tables, resident, Resident};
use crate::mxfp4::{self, CodecError};
use crate::ops::{host_quantized_weight, BaseWeight, DeployBackend, Lora, PackedWeight, Quantizer};

/// Units per cube of the deploy kernels.
const CUBE_UNITS: u32 = 256;

/// The device backends of this build with f32 floats.
type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

/// An MXFP4 weight deployed on the device: the decoded `Wq [out, in]` (f32) and, as handles,
/// its codes (4 words per block) and scale bytes (one word per block).
pub struct DeviceMxfp4<R: CubeRuntime> {
    /// `Wq`, the values of the codes.
    pub wq: CubeTensor<R>,
    codes: Handle,
    scales: Handle,
    client: ComputeClient<R>,
}

impl<R: CubeRuntime> DeviceMxfp4<R> {
    /// The packed bytes (`blocks`, `scales`) read back to the host: what `merge-export` writes.
    pub fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let codes = self.client.read_one_unchecked(self.codes.clone());
        let scales = self.client.read_one_unchecked(self.scales.clone());
        let scales = scales.chunks_exact(4).map(|w| w[0]).collect();
        (codes.to_vec(), scales)
    }
}

/// A contiguous f32 tensor's handle and length, as a kernel array argument.
fn array<R: CubeRuntime>(t: &CubeTensor<R>) -> ArrayArg<R> {
    let len = t.meta.shape().num_elements();
    // SAFETY: `t` is contiguous f32 with `len` elements.
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) }
}

/// A handle of `len` elements as a kernel array argument.
fn raw<R: CubeRuntime>(handle: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every caller passes the handle's exact element count.
    unsafe { ArrayArg::from_raw_parts(handle.clone(), len) }
}

/// Factors as given to the launchers: `(A, B, scale)` of one expert ([`Lora`]) or of a stack
/// (`GroupedLora`, expert-major).
pub(crate) type Factors<'a, R, I, BT> = (
    &'a Tensor<Cube<R, I, BT>, 2>,
    &'a Tensor<Cube<R, I, BT>, 2>,
    f32,
);

/// One expert's [`Lora`] as [`Factors`].
fn single<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    lora: Option<&Lora<Cube<R, I, BT>>>,
) -> Option<Factors<'_, R, I, BT>> {
    lora.map(|l| (&l.a, &l.b, l.scale))
}

/// The LoRA factors on the device, contiguous: `(A, B, rank, scale)`; empty arrays without LoRA.
fn factors<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    lora: Option<Factors<'_, R, I, BT>>,
    client: &ComputeClient<R>,
) -> (CubeTensor<R>, CubeTensor<R>, u32, f32) {
    let tensor =
        |t: &Tensor<Cube<R, I, BT>, 2>| into_contiguous(t.clone().into_primitive().tensor());
    match lora {
        Some((a, b, scale)) => (tensor(a), tensor(b), a.dims()[0] as u32, scale),
        None => {
            let empty = || {
                let handle = client.create_from_slice(&0f32.to_le_bytes());
                CubeTensor::new_contiguous(
                    client.clone(),
                    Default::default(),
                    Shape::new([1]),
                    handle,
                    DType::F32,
                )
            };
            (empty(), empty(), 0, 0.0)
        }
    }
}

fn cube_count<R: CubeRuntime>(client: &ComputeClient<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(CUBE_UNITS);
    (
        cubecl::calculate_cube_count_elemwise(client, units, dim),
        dim,
    )
}

/// The outputs of [`launch_mxfp4`]: `wq` (f32, 32 per block; one unwritten word without
/// `write_dense`), the codes (4 words per block) and the scale bytes (one word per block), all
/// experts expert-major.
pub(crate) struct Launched {
    pub wq: Handle,
    pub codes: Handle,
    pub scales: Handle,
}

/// `Ok` when `got <= max`; else a [`CodecError::Length`] expecting `max`.
pub(crate) fn at_most(what: &'static str, max: usize, got: usize) -> Result<(), CodecError> {
    if got <= max {
        return Ok(());
    }
    Err(CodecError::Length {
        what,
        expected: max,
        got,
    })
}

/// One launch of `mxfp4_deploy_kernel` over `experts` weights `[out, inp]` read from `base` from
/// its block `base.offset` on, with the stacked LoRA `lora` (`A [E·r, in]`, `B [out, E·r]`):
/// decodes (`quantize` false) or deploys, writing `wq` only with `write_dense`. Errors: `inp` not
/// a multiple of 32, factors or base of the wrong size, indices past 32 bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mxfp4<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    base: &Resident,
    experts: usize,
    [out, inp]: [usize; 2],
    lora: Option<Factors<'_, R, I, BT>>,
    quantize: bool,
    write_dense: bool,
    device: &R::Device,
) -> Result<Launched, CodecError> {
    if !inp.is_multiple_of(mxfp4::BLOCK) {
        return Err(CodecError::Length {
            what: "packed weight `in` (must be a multiple of 32)",
            expected: inp.next_multiple_of(mxfp4::BLOCK),
            got: inp,
        });
    }
    let n_blocks = out * inp / mxfp4::BLOCK;
    let units = experts * n_blocks;
    let end = base.offset + units;
    at_most("base blocks (words)", base.lengths[0], (end * 4).max(1))?;
    at_most(
        "base scales (words)",
        base.lengths[1],
        end.div_ceil(4).max(1),
    )?;
    if let Some((a, b, _)) = lora {
        let rows = a.dims()[0];
        CodecError::expect_len(
            "LoRA A rows (experts · rank)",
            rows.next_multiple_of(experts.max(1)),
            rows,
        )?;
        CodecError::expect_len("LoRA A columns (in)", inp, a.dims()[1])?;
        CodecError::expect_len("LoRA B rows (out)", out, b.dims()[0])?;
        CodecError::expect_len("LoRA B columns (experts · rank)", rows, b.dims()[1])?;
    }
    // kernel indices are 32-bit
    at_most(
        "deployed elements",
        u32::MAX as usize,
        (end * 32).max(units * 32),
    )?;
    let client = R::client(device);
    let (a, b, rows, scale) = factors(lora, &client);
    at_most("LoRA elements", u32::MAX as usize, rows as usize * inp)?;
    let rank = rows / experts.max(1) as u32;
    let tables = codec_tables::<R>(device);
    let [n_decode, n_thresholds, n_upper] = tables.lengths;
    let dense = if write_dense { units * 32 } else { 1 };
    let wq = client.empty(dense.max(1) * 4);
    let codes = client.empty(units.max(1) * 16);
    let scales_out = client.empty(units.max(1) * 4);
    if units > 0 {
        let (count, dim) = cube_count(&client, units);
        mxfp4_deploy_kernel::launch::<R>(
            &client,
            count,
            dim,
            raw(&base.blocks, base.lengths[0]),
            raw(&base.scales, base.lengths[1]),
            array(&a),
            array(&b),
            raw(&tables.decode, n_decode),
            raw(&tables.thresholds, n_thresholds),
            raw(&tables.upper, n_upper),
            raw(&wq, dense.max(1)),
            raw(&codes, units.max(1) * 4),
            raw(&scales_out, units.max(1)),
            rank,
            experts as u32,
            inp as u32,
            n_blocks as u32,
            base.offset as u32,
            scale,
            1.0,
            0.0,
            quantize,
            write_dense,
        );
    }
    Ok(Launched {
        wq,
        codes,
        scales: scales_out,
    })
}

/// Decodes (`quantize` false) or deploys (`true`) the packed `weight` with `lora` on `device`:
/// the one-expert case of the stacked launch, reading the weight's device copy (its view into
/// the stack of its projection when [`super::stacked::stacked_base`] made one).
pub fn mxfp4_on_device<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    weight: &Arc<dyn PackedWeight>,
    lora: Option<&Lora<Cube<R, I, BT>>>,
    quantize: bool,
    device: &R::Device,
) -> Result<DeviceMxfp4<R>, CodecError> {
    let [out, inp] = weight.shape();
    if !inp.is_multiple_of(mxfp4::BLOCK) {
        return Err(CodecError::Length {
            what: "packed weight `in` (must be a multiple of 32)",
            expected: inp.next_multiple_of(mxfp4::BLOCK),
            got: inp,
        });
    }
    let base = resident::<R>(weight, device)?;
    let launched = launch_mxfp4(&base, 1, [out, inp], single(lora), quantize, true, device)?;
    let client = R::client(device);
    let wq = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        Shape::new([out, inp]),
        launched.wq,
        DType::F32,
    );
    Ok(DeviceMxfp4 {
        wq,
        codes: launched.codes,
        scales: launched.scales,
        client,
    })
}

/// `bf16(W + s·B·A)` on the device of `w` (f32 holding bf16 values).
pub fn bf16_on_device<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    w: &Tensor<Cube<R, I, BT>, 2>,
    lora: Option<&Lora<Cube<R, I, BT>>>,
) -> CubeTensor<R> {
    let [out, inp] = w.dims();
    let w = into_contiguous(w.clone().into_primitive().tensor());
    let client = w.client.clone();
    let (a, b, rank, scale) = factors(single(lora), &client);
    let n = out * inp;
    let result = client.empty(n.max(1) * 4);
    if n > 0 {
        let (count, dim) = cube_count(&client, n);
        bf16_deploy_kernel::launch::<R>(
            &client,
            count,
            dim,
            array(&w),
            array(&a),
            array(&b),
            raw(&result, n),
            rank,
            inp as u32,
            n as u32,
            scale,
            1.0,
            0.0,
        );
    }
    CubeTensor::new_contiguous(
        client,
        w.device.clone(),
        Shape::new([out, inp]),
        result,
        DType::F32,
    )
}

fn wrap<R: CubeRuntime, I: IntElement, BT: BoolElement>(
    t: CubeTensor<R>,
) -> Tensor<Cube<R, I, BT>, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> DeployBackend for Cube<R, I, BT> {
    fn base_dense(
        base: &BaseWeight<Self>,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        match base {
            BaseWeight::Dense(w) => Ok(w.clone()),
            BaseWeight::Packed(p) => Ok(wrap(
                mxfp4_on_device::<R, I, BT>(p, None, false, device)?.wq,
            )),
        }
    }

    fn deployed_weight(
        base: &BaseWeight<Self>,
        lora: Option<&Lora<Self>>,
        quant: Quantizer,
        device: &Self::Device,
    ) -> Result<Tensor<Self, 2>, CodecError> {
        match (quant, base) {
            (Quantizer::Mxfp4, BaseWeight::Packed(p)) => {
                Ok(wrap(mxfp4_on_device(p, lora, true, device)?.wq))
            }
            (Quantizer::Bf16, BaseWeight::Dense(w)) => Ok(wrap(bf16_on_device(w, lora))),
            // combinations the model never builds (a dense MXFP4 or packed bf16 weight)
            _ => host_quantized_weight(base, lora, quant, device),
        }
    }

    /// bf16 where the device has bf16 tensors: widening is one elementwise kernel.
    fn dense_storage(device: &Self::Device) -> burn::tensor::DType {
        use burn::tensor::backend::Backend;
        match Self::supports_dtype(device, burn::tensor::DType::BF16) {
            true => burn::tensor::DType::BF16,
            false => burn::tensor::DType::F32,
        }
    }

    fn deployed_base(
        _: &BaseWeight<Self>,
        _: Option<&Lora<Self>>,
    ) -> Result<Option<BaseWeight<Self>>, CodecError> {
        // rebuilding Wq on the device costs less than keeping every expert's copy
        Ok(None)
    }
}
