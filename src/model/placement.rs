//! Layer placement: which device holds each part of the model. The embedding sits with the first
//! decoder layer, the final norm and `lm_head` with the last, and every decoder layer on its
//! stage's device; activations move between devices with `to_device` (differentiable under
//! autodiff), so a pipeline of stages computes what one device would.

use std::ops::Range;

use anyhow::{ensure, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{BasicOps, Tensor};

use kernels::ops::LoraLinearBackend;

use super::layer::DecoderLayer;
use super::mode::ForwardMode;
use super::positions::PositionIds;
use super::rope::{RopeTables, YarnParams};

/// The device of every part of the model.
#[derive(Debug, Clone)]
pub struct LayerPlacement<D> {
    layers: Vec<D>,
    embed: D,
    head: D,
}

impl<D: Clone + PartialEq> LayerPlacement<D> {
    /// Everything on `device`.
    pub fn single(device: &D, layers: usize) -> Self {
        Self {
            layers: vec![device.clone(); layers],
            embed: device.clone(),
            head: device.clone(),
        }
    }

    /// Stage `i` (a contiguous layer range) on `devices[i]`; the ranges must cover `0..layers` in
    /// order, each non-empty.
    pub fn stages(ranges: &[Range<usize>], devices: &[D], layers: usize) -> Result<Self> {
        ensure!(
            !ranges.is_empty() && ranges.len() == devices.len(),
            "{} layer ranges for {} devices",
            ranges.len(),
            devices.len()
        );
        let mut next = 0;
        let mut placed = Vec::with_capacity(layers);
        for (r, d) in ranges.iter().zip(devices) {
            ensure!(
                r.start == next && r.end > r.start,
                "layer ranges {ranges:?} do not cover 0..{layers} in order"
            );
            placed.extend(std::iter::repeat_n(d.clone(), r.len()));
            next = r.end;
        }
        ensure!(
            next == layers,
            "layer ranges {ranges:?} do not cover 0..{layers}"
        );
        Ok(Self {
            layers: placed,
            embed: devices[0].clone(),
            head: devices[devices.len() - 1].clone(),
        })
    }

    /// The device of decoder layer `l`.
    pub fn layer(&self, l: usize) -> &D {
        &self.layers[l]
    }

    /// The device of `embed_tokens` (where token ids go).
    pub fn embed(&self) -> &D {
        &self.embed
    }

    /// The device of the final norm, `lm_head` and the loss.
    pub fn head(&self) -> &D {
        &self.head
    }
}

/// `layers` cut into `parts` contiguous ranges of equal size (the first ones one layer longer when
/// it does not divide): the split for inference, where every layer weighs the same.
pub fn even_ranges(layers: usize, parts: usize) -> Result<Vec<Range<usize>>> {
    ensure!(
        (1..=layers).contains(&parts),
        "{parts} devices for {layers} layers: give between 1 and {layers}"
    );
    let (each, extra) = (layers / parts, layers % parts);
    let mut start = 0;
    Ok((0..parts)
        .map(|i| {
            let end = start + each + usize::from(i < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect())
}

/// `x` on `device` (no copy when it is already there).
pub fn moved<B: Backend, const D: usize, K: BasicOps<B>>(
    x: Tensor<B, D, K>,
    device: &B::Device,
) -> Tensor<B, D, K> {
    if &x.device() == device {
        x
    } else {
        x.to_device(device)
    }
}

/// Runs `layers` from `x`, moving it onto each layer's device (the forward of a contiguous range
/// of decoder layers, placed or not).
pub fn forward_layers<B: LoraLinearBackend>(
    layers: &[DecoderLayer<B>],
    mut x: Tensor<B, 3>,
    rope: &mut RopeByDevice<B>,
    positions: &PositionIds,
    mode: ForwardMode,
) -> Result<Tensor<B, 3>> {
    for layer in layers {
        let on = layer.device();
        x = layer.forward(moved(x, &on), rope.on(&on), positions, mode)?;
    }
    Ok(x)
}

/// The rotary tables of one pass, built once per device that needs them.
pub struct RopeByDevice<'a, B: Backend> {
    params: &'a YarnParams,
    head_dim: usize,
    positions: &'a PositionIds,
    tables: Vec<(B::Device, RopeTables<B>)>,
}

impl<'a, B: Backend> RopeByDevice<'a, B> {
    /// No table yet.
    pub fn new(params: &'a YarnParams, head_dim: usize, positions: &'a PositionIds) -> Self {
        Self {
            params,
            head_dim,
            positions,
            tables: Vec::new(),
        }
    }

    /// The tables on `device`.
    pub fn on(&mut self, device: &B::Device) -> &RopeTables<B> {
        let i = match self.tables.iter().position(|(d, _)| d == device) {
            Some(i) => i,
            None => {
                let t = RopeTables::at(self.params, self.head_dim, self.positions, device);
                self.tables.push((device.clone(), t));
                self.tables.len() - 1
            }
        };
        &self.tables[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_cover_the_layers_in_order() {
        let p = LayerPlacement::stages(&[0..2, 2..5], &['a', 'b'], 5).unwrap();
        assert_eq!((0..5).map(|l| *p.layer(l)).collect::<String>(), "aabbb");
        assert_eq!((*p.embed(), *p.head()), ('a', 'b'));
        let single = LayerPlacement::single(&'c', 3);
        assert_eq!((*single.layer(2), *single.head()), ('c', 'c'));
    }

    #[test]
    fn even_ranges_cover_the_layers() {
        assert_eq!(even_ranges(4, 2).unwrap(), vec![0..2, 2..4]);
        assert_eq!(even_ranges(36, 8).unwrap()[..2], [0..5, 5..10]);
        assert_eq!(even_ranges(36, 8).unwrap()[7], 32..36);
        assert!(even_ranges(4, 5)
            .unwrap_err()
            .to_string()
            .contains("5 devices for 4 layers"));
        assert!(even_ranges(4, 0).is_err());
    }

    #[test]
    fn refuses_gaps_overlaps_and_count_mismatches() {
        let err = |r: &[Range<usize>], d: &[char]| {
            LayerPlacement::stages(r, d, 4).unwrap_err().to_string()
        };
        assert!(err(&[0..2, 3..4], &['a', 'b']).contains("do not cover"));
        assert!(err(&[0..2, 1..4], &['a', 'b']).contains("do not cover"));
        assert!(err(&[0..2, 2..3], &['a', 'b']).contains("do not cover 0..4"));
        let whole = [Range { start: 0, end: 4 }];
        assert!(err(&whole, &['a', 'b']).contains("1 layer ranges for 2 devices"));
        assert!(err(&[0..2, 2..2, 2..4], &['a', 'b', 'c']).contains("do not cover"));
    }
}
