//! [`RoutingBackend`] on CubeCL devices: the router's top-k and the grouping by expert run as the
//! kernels of [`super::routing`]; the offsets stay on the device. Bad values (a non-finite logit,
//! an expert id out of range) set bits of one flag per device, read and cleared by
//! `routing_errors` (once per step, not per layer).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::tensor::{Int, Tensor};
use burn_cubecl::element::BoolElement;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime, IntElement};

use super::routing::{check_flag, group_by_expert_on_device, routing_flag, top_k_on_device};
use crate::ops::routing::RoutingError;
use crate::ops::{ExpertOffsets, Route, RoutingBackend};

type Cube<R, I, BT> = CubeBackend<R, f32, I, BT>;

type Flags = Mutex<HashMap<String, Box<dyn Any + Send>>>;

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(Default::default)
}

fn key<R: CubeRuntime>(device: &R::Device) -> String {
    format!("{}:{device:?}", std::any::type_name::<R>())
}

/// The device's routing flag (made on first use).
fn flag<R: CubeRuntime>(device: &R::Device) -> CubeTensor<R> {
    let mut map = flags().lock().unwrap_or_else(|e| e.into_inner());
    let entry = map
        .entry(key::<R>(device))
        .or_insert_with(|| Box::new(routing_flag::<R>(device)));
    match entry.downcast_ref::<CubeTensor<R>>() {
        Some(f) => f.clone(),
        None => {
            let f = routing_flag::<R>(device);
            *entry = Box::new(f.clone());
            f
        }
    }
}

impl<R: CubeRuntime, I: IntElement, BT: BoolElement> RoutingBackend for Cube<R, I, BT> {
    fn route(logits: Tensor<Self, 2>, top_k: usize) -> Result<Route<Self>, RoutingError> {
        let [tokens, experts] = logits.dims();
        let device = logits.device();
        let flag = flag::<R>(&device);
        let logits: CubeTensor<R> = logits.into_primitive().tensor();
        let indices = top_k_on_device(&logits, top_k, &flag)?;
        let grouping = group_by_expert_on_device(&indices, top_k, experts, &flag)?;
        let int = |t: CubeTensor<R>| Tensor::<Self, 1, Int>::from_primitive(t);
        Ok(Route {
            indices: int(indices).reshape([tokens, top_k]),
            order: int(grouping.order),
            slots: int(grouping.slots),
            offsets: ExpertOffsets::Device {
                offsets: int(grouping.offsets),
                rows: tokens * top_k,
            },
            host: None,
        })
    }

    fn routing_errors(device: &Self::Device) -> Result<(), RoutingError> {
        let current = flag::<R>(device);
        let result = check_flag(&current);
        if result.is_err() {
            // start clean: the next step's errors are its own
            let mut map = flags().lock().unwrap_or_else(|e| e.into_inner());
            map.insert(key::<R>(device), Box::new(routing_flag::<R>(device)));
        }
        result
    }
}
