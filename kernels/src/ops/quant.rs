//! Building `Wq = Q(W + s·B·A)` from burn tensors. With a quantizer the backend builds it
//! ([`DeployBackend`]): on the CPU the merge and the Q step go through host data and [`deploy`]
//! (the deployed-weight function export and verify call), so `Wq` is decoded from the very bytes
//! `merge-export` writes; a GPU backend runs kernels with the same arithmetic.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::deploy_backend::DeployBackend;
use super::weight::{BaseWeight, Lora, OwnedPacked, Quantizer};
use crate::deploy::{deploy, Deployed, HostLora};
use crate::mxfp4::CodecError;

/// `W + s·B·A` (or `W` without LoRA) as a tensor on `device`. Under autodiff the LoRA part is
/// tracked, the base never is.
pub fn merged_weight<B: DeployBackend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    let w = B::base_dense(base, device)?;
    Ok(match lora {
        Some(l) => w + l.b.clone().matmul(l.a.clone()).mul_scalar(l.scale),
        None => w,
    })
}

/// The deployed form of `Q(W + s·B·A)` and the host values it was made from: `values` holds
/// the merged weight afterwards, `dtype` is a dense base's dtype (`None` for a packed base).
fn deploy_host<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<(Vec<f32>, Option<DType>, Deployed), CodecError> {
    let shape = base.shape();
    let (mut values, dtype) = match base {
        BaseWeight::Dense(w) => {
            let (values, dtype) = host_f32(w.clone());
            (values, Some(dtype))
        }
        BaseWeight::Packed(p) => {
            let mut values = vec![0f32; shape[0] * shape[1]];
            p.dequantize_into(&mut values)?;
            (values, None)
        }
    };
    let factors = lora.map(|l| (host_f32(l.a.clone()).0, host_f32(l.b.clone()).0));
    let host: Vec<HostLora<'_>> = match (lora, &factors) {
        (Some(l), Some((a, b))) => vec![HostLora {
            a,
            b,
            rank: l.a.dims()[0],
            scale: l.scale,
        }],
        _ => Vec::new(),
    };
    let deployed = deploy(&mut values, shape, &host, quant)?;
    Ok((values, dtype, deployed))
}

/// `Wq = Q(W + s·B·A)` on `device`, untracked for `Bf16`/`Mxfp4` (built by the backend: the
/// values of what export writes, bit for bit); `None` stays in burn ops (`W + (B·A)·s`).
pub fn quantized_weight<B: DeployBackend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    if quant == Quantizer::None {
        return merged_weight(base, lora, device);
    }
    B::deployed_weight(base, lora, quant, device)
}

/// `Q(W + s·B·A)` for `Bf16`/`Mxfp4` through the host: [`deploy`]ed and decoded back (what
/// export writes, bit for bit), uploaded to `device`.
pub(crate) fn host_quantized_weight<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
    device: &B::Device,
) -> Result<Tensor<B, 2>, CodecError> {
    let (mut values, dtype, deployed) = deploy_host(base, lora, quant)?;
    deployed.decode_into(&mut values)?;
    let data = TensorData::new(values, base.shape());
    Ok(match dtype {
        Some(dtype) => Tensor::from_data(data, (device, dtype)),
        None => Tensor::from_data(data, device),
    })
}

/// `MXFP4(W + s·B·A)` kept packed (the bytes export writes): a base weight whose plain decode
/// (`Quantizer::None`, no LoRA) is exactly the `Wq` of [`quantized_weight`] with `Mxfp4`.
pub fn deployed_packed<B: Backend>(
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
) -> Result<OwnedPacked, CodecError> {
    match deploy_host(base, lora, Quantizer::Mxfp4)? {
        (_, _, Deployed::Mxfp4 { blocks, scales }) => {
            OwnedPacked::new(base.shape(), blocks, scales)
        }
        _ => unreachable!("an MXFP4 quantizer gives blocks and scales"),
    }
}

/// The values of a tensor as host f32, with its dtype.
fn host_f32<B: Backend>(t: Tensor<B, 2>) -> (Vec<f32>, DType) {
    let data = t.into_data();
    let dtype = data.dtype;
    let values = data
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("TensorData converted to f32 holds f32");
    (values, dtype)
}

/// Checks that `x [n, in]`, the base `[out, in]` and the LoRA factors `A [r, in]`, `B [out, r]`
/// agree, reporting the first mismatch as a [`CodecError::Length`].
pub fn check_shapes<B: Backend>(
    x_dims: [usize; 2],
    base: &BaseWeight<B>,
    bias_len: Option<usize>,
    lora: Option<&Lora<B>>,
) -> Result<(), CodecError> {
    let [out, inp] = base.shape();
    CodecError::expect_len("x columns (the base weight's `in`)", inp, x_dims[1])?;
    if let Some(len) = bias_len {
        CodecError::expect_len("bias length (the base weight's `out`)", out, len)?;
    }
    if let Some(l) = lora {
        let [r, a_in] = l.a.dims();
        let [b_out, b_r] = l.b.dims();
        CodecError::expect_len("LoRA A columns (the base weight's `in`)", inp, a_in)?;
        CodecError::expect_len("LoRA B rows (the base weight's `out`)", out, b_out)?;
        CodecError::expect_len("LoRA B columns (the rank of A)", r, b_r)?;
    }
    Ok(())
}

/// `x · Q(W + s·B·A)ᵀ` (`x [n, in] -> [n, out]`). With `Quantizer::None` and a LoRA, the low-rank
/// form `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` (PEFT's forward: no dense merge); otherwise through `Wq`.
pub fn apply_weight<B: DeployBackend>(
    x: Tensor<B, 2>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    let device = x.device();
    Ok(match (quant, lora) {
        (Quantizer::None, Some(l)) => {
            let w = quantized_weight(base, None, Quantizer::None, &device)?;
            let low = x
                .clone()
                .matmul(l.a.clone().transpose())
                .mul_scalar(l.scale);
            x.matmul(w.transpose()) + low.matmul(l.b.clone().transpose())
        }
        _ => x.matmul(quantized_weight(base, lora, quant, &device)?.transpose()),
    })
}

/// `dy · Q(W + s·B·A)` (`dy [n, out] -> [n, in]`), the input gradient of [`apply_weight`]; the
/// low-rank form `dy·W + s·(dy·B)·A` with `Quantizer::None` and a LoRA.
pub fn apply_weight_transposed<B: DeployBackend>(
    dy: Tensor<B, 2>,
    base: &BaseWeight<B>,
    lora: Option<&Lora<B>>,
    quant: Quantizer,
) -> Result<Tensor<B, 2>, CodecError> {
    let device = dy.device();
    Ok(match (quant, lora) {
        (Quantizer::None, Some(l)) => {
            let w = quantized_weight(base, None, Quantizer::None, &device)?;
            let low = dy.clone().matmul(l.b.clone()).mul_scalar(l.scale);
            dy.matmul(w) + low.matmul(l.a.clone())
        }
        _ => dy.matmul(quantized_weight(base, lora, quant, &device)?),
    })
}
