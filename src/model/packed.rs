//! One expert's MXFP4 weight, left packed in the memory-mapped checkpoint and decoded on demand.

use std::sync::Arc;

use kernels::mxfp4::{self, CodecError};
use kernels::ops::PackedWeight;

use crate::checkpoint::{names, Checkpoint, ExpertProj};

/// `(checkpoint, layer, projection, expert)`: a `[rows, cols]` weight (rows = out features),
/// decoded from the checkpoint's `*_blocks` / `*_scales` bytes each time it is used.
#[derive(Clone)]
pub struct CheckpointExpert {
    checkpoint: Arc<Checkpoint>,
    blocks: String,
    scales: String,
    expert: usize,
    shape: [usize; 2],
}

impl CheckpointExpert {
    /// A handle on expert `expert` of `layer`'s `proj`; checks that the packed tensors exist with
    /// the config's shapes and that the expert is in range.
    pub fn new(
        checkpoint: Arc<Checkpoint>,
        layer: usize,
        proj: ExpertProj,
        expert: usize,
    ) -> anyhow::Result<Self> {
        let packed = checkpoint.experts(layer, proj)?;
        anyhow::ensure!(
            expert < packed.experts,
            "layer {layer} has {} experts, asked for expert {expert}",
            packed.experts
        );
        let shape = [packed.rows, packed.cols];
        drop(packed);
        Ok(Self {
            blocks: names::expert_blocks(layer, proj.stem()),
            scales: names::expert_scales(layer, proj.stem()),
            checkpoint,
            expert,
            shape,
        })
    }

    fn bytes(&self, name: &str, per_expert: usize) -> Result<&[u8], CodecError> {
        let missing = CodecError::Length {
            what: "packed expert tensor bytes (no longer readable from the checkpoint)",
            expected: per_expert,
            got: 0,
        };
        // the checkpoint is immutable and was validated when this handle was made
        let all = self
            .checkpoint
            .u8_bytes(name)
            .map_err(|_| missing.clone())?;
        all.get(self.expert * per_expert..(self.expert + 1) * per_expert)
            .ok_or(missing)
    }
}

impl std::fmt::Debug for CheckpointExpert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointExpert")
            .field("blocks", &self.blocks)
            .field("expert", &self.expert)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl PackedWeight for CheckpointExpert {
    fn shape(&self) -> [usize; 2] {
        self.shape
    }

    fn dequantize_into(&self, out: &mut [f32]) -> Result<(), CodecError> {
        let (blocks, scales) = self.packed_bytes()?;
        mxfp4::dequantize(blocks, scales, out)
    }

    fn packed_bytes(&self) -> Result<(&[u8], &[u8]), CodecError> {
        let elements = self.shape[0] * self.shape[1];
        Ok((
            self.bytes(&self.blocks, elements / 2)?,
            self.bytes(&self.scales, elements / mxfp4::BLOCK)?,
        ))
    }
}
