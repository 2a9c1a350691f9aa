//! Global-norm clipping of gradients on their devices, for the optimizer that runs there: each
//! tensor's sum of squares is reduced where the tensor is (f32, the device's reduction order),
//! the per-tensor sums are read to the host in one transfer and added in f64, and the host's
//! coefficient ([`clip_coef`], torch's f32 arithmetic) multiplies the gradients on the device.
//! It differs from the host's [`super::clip::clip_grad_norm`] only in each tensor's sum
//! (f32 on the device, exact-product f64 blocks on the host); tested with a tolerance.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::clip::clip_coef;

/// One value per tensor (`f` reduces a tensor to one element), read to the host in one transfer.
fn per_tensor<B: Backend>(
    tensors: &BTreeMap<String, Tensor<B, 2>>,
    f: impl Fn(Tensor<B, 2>) -> Tensor<B, 1>,
) -> Result<Vec<f32>> {
    let Some(first) = tensors.values().next() else {
        return Ok(Vec::new());
    };
    let device = first.device();
    let parts: Vec<Tensor<B, 1>> = tensors
        .values()
        .map(|t| f(t.clone()).to_device(&device))
        .collect();
    Tensor::cat(parts, 0)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading per-tensor sums: {e:?}"))
}

/// The 2-norm of all gradients as one vector (per-tensor f32 sums on the device, added in f64).
pub fn global_grad_norm_device<B: Backend>(grads: &BTreeMap<String, Tensor<B, 2>>) -> Result<f32> {
    let sums = per_tensor(grads, |t| (t.clone() * t).sum())?;
    Ok(sums.iter().map(|&s| f64::from(s)).sum::<f64>().sqrt() as f32)
}

/// Clips the gradients to a global 2-norm of at most `max_norm` (0: the norm only, as HF does
/// with `max_grad_norm` 0) and returns the norm before clipping. A non-finite norm leaves the
/// gradients untouched (the caller stops training).
pub fn clip_grad_norm_device<B: Backend>(
    grads: &mut BTreeMap<String, Tensor<B, 2>>,
    max_norm: f64,
) -> Result<f32> {
    let total = global_grad_norm_device(grads)?;
    if max_norm > 0.0 && total.is_finite() {
        let coef = clip_coef(total, max_norm);
        if coef != 1.0 {
            for g in grads.values_mut() {
                *g = g.clone().mul_scalar(coef);
            }
        }
    }
    Ok(total)
}

/// The first tensor (by name) holding a NaN or an infinity, with one transfer for all of them
/// (`sum(t · 0)` is 0 exactly when every value is finite).
pub fn first_non_finite<B: Backend>(
    tensors: &BTreeMap<String, Tensor<B, 2>>,
) -> Result<Option<String>> {
    let flags = per_tensor(tensors, |t| t.mul_scalar(0.0).sum())?;
    Ok(tensors
        .keys()
        .zip(flags)
        .find(|(_, f)| *f != 0.0)
        .map(|(k, _)| k.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn map(values: &[(&str, Vec<f32>)]) -> BTreeMap<String, Tensor<Flex, 2>> {
        let dev = Default::default();
        values
            .iter()
            .map(|(k, v)| {
                let t = Tensor::from_data(TensorData::new(v.clone(), [1, v.len()]), &dev);
                (k.to_string(), t)
            })
            .collect()
    }

    #[test]
    fn clips_like_the_host_and_finds_non_finite_tensors() {
        let mut g = map(&[("a", vec![3.0, 0.0]), ("b", vec![0.0, 4.0])]);
        assert_eq!(clip_grad_norm_device(&mut g, 0.0).unwrap(), 5.0);
        assert_eq!(
            g["a"].clone().into_data().to_vec::<f32>().unwrap(),
            [3.0, 0.0]
        );
        assert_eq!(clip_grad_norm_device(&mut g, 1.0).unwrap(), 5.0);
        let coef = clip_coef(5.0, 1.0);
        let b = g["b"].clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(b, [0.0, 4.0 * coef]);
        assert_eq!(first_non_finite(&g).unwrap(), None);
        let bad = map(&[
            ("a", vec![1.0]),
            ("b", vec![f32::INFINITY]),
            ("c", vec![f32::NAN]),
        ]);
        assert_eq!(first_non_finite(&bad).unwrap().as_deref(), Some("b"));
        assert!(!global_grad_norm_device(&bad).unwrap().is_finite());
    }
}
