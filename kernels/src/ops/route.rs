//! Routing as a backend op: from a layer's router logits, the top-k experts of each token and
//! the (token, slot) assignments grouped by expert, made where the backend computes. CPU backends
//! make them on the host with the references of [`super::routing`]; device backends run the
//! kernels of `crate::gpu::routing` and keep everything on the device, their errors flagged there
//! and read once by [`RoutingBackend::routing_errors`] (not once per layer).

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::offsets::ExpertOffsets;
use super::routing::{group_by_expert, top_k_rows, Grouping, RoutingError};

/// One layer's routing decision for `tokens` rows.
#[derive(Debug, Clone)]
pub struct Route<B: Backend> {
    /// `[tokens, top_k]` expert ids, each row by descending logit (ties: lower id first).
    pub indices: Tensor<B, 2, Int>,
    /// `[tokens · top_k]`: the token of each assignment, sorted by expert (then flat slot).
    pub order: Tensor<B, 1, Int>,
    /// `[tokens · top_k]`: the flat slot `token · top_k + k` of each, in the same order.
    pub slots: Tensor<B, 1, Int>,
    /// The rows of each expert in that order.
    pub offsets: ExpertOffsets<B>,
    /// The row-major choices on the host, when the backend routed there.
    pub host: Option<Vec<i64>>,
}

/// A backend that routes (see the module doc).
pub trait RoutingBackend: Backend {
    /// Routes `logits [tokens, experts]` (no gradient flows through the choice).
    ///
    /// Errors (host routing): `top_k` outside `1..=experts`, a non-finite logit. Device backends
    /// check the arguments here and flag bad values for [`Self::routing_errors`].
    fn route(logits: Tensor<Self, 2>, top_k: usize) -> Result<Route<Self>, RoutingError>;

    /// The errors flagged on `device` since the last call (a read-back on device backends;
    /// nothing to do where routing runs on the host).
    fn routing_errors(_device: &Self::Device) -> Result<(), RoutingError> {
        Ok(())
    }
}

/// Host routing: the logits are read back, routed by the references, the result uploaded.
pub fn route_on_host<B: Backend>(
    logits: Tensor<B, 2>,
    top_k: usize,
) -> Result<Route<B>, RoutingError> {
    let [tokens, experts] = logits.dims();
    let device = logits.device();
    let host: Vec<f32> = logits.into_data().iter::<f32>().collect();
    let chosen = top_k_rows(&host, experts, top_k)?;
    let Grouping {
        order,
        slots,
        offsets,
    } = group_by_expert(&chosen, top_k, experts)?;
    let int = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
    };
    Ok(Route {
        indices: int(chosen.clone()).reshape([tokens, top_k]),
        order: int(order),
        slots: int(slots),
        offsets: ExpertOffsets::Host(offsets),
        host: Some(chosen),
    })
}

impl RoutingBackend for burn::backend::Flex {
    fn route(logits: Tensor<Self, 2>, top_k: usize) -> Result<Route<Self>, RoutingError> {
        route_on_host(logits, top_k)
    }
}

impl<B: RoutingBackend, C: CheckpointStrategy> RoutingBackend for Autodiff<B, C> {
    fn route(logits: Tensor<Self, 2>, top_k: usize) -> Result<Route<Self>, RoutingError> {
        let r = B::route(logits.inner(), top_k)?;
        Ok(Route {
            indices: Tensor::from_inner(r.indices),
            order: Tensor::from_inner(r.order),
            slots: Tensor::from_inner(r.slots),
            offsets: match r.offsets {
                ExpertOffsets::Host(o) => ExpertOffsets::Host(o),
                ExpertOffsets::Device { offsets, rows } => ExpertOffsets::Device {
                    offsets: Tensor::from_inner(offsets),
                    rows,
                },
            },
            host: r.host,
        })
    }

    fn routing_errors(device: &Self::Device) -> Result<(), RoutingError> {
        B::routing_errors(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn host_route_follows_the_references() {
        let dev = Default::default();
        // 3 tokens over 4 experts, top-2
        let logits = [
            0.5f32, 2.0, -1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 5.0,
        ];
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(logits.to_vec(), [3, 4]), &dev);
        let r = <Autodiff<Flex> as RoutingBackend>::route(Tensor::from_inner(t), 2).unwrap();
        let ints = |t: Tensor<Autodiff<Flex>, 1, Int>| -> Vec<i64> {
            t.into_data().convert::<i64>().iter::<i64>().collect()
        };
        assert_eq!(r.host.as_deref(), Some(&[1, 3, 0, 1, 3, 2][..]));
        assert_eq!(ints(r.indices.reshape([6])), vec![1, 3, 0, 1, 3, 2]);
        assert_eq!(r.offsets.to_host(), vec![0, 1, 3, 4, 6]);
        assert_eq!(ints(r.order), vec![1, 0, 1, 2, 0, 2]);
        assert_eq!(ints(r.slots), vec![2, 0, 3, 5, 1, 4]);
        let bad = Tensor::<Flex, 2>::from_data(TensorData::new(vec![f32::NAN, 0.0], [1, 2]), &dev);
        assert!(matches!(
            Flex::route(bad, 1),
            Err(RoutingError::NonFinite { .. })
        ));
    }
}
