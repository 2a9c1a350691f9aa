//! The inputs of the LoRA-QAT linear: the frozen base weight (dense or packed MXFP4), the LoRA
//! factors and the quantizer applied to the merged weight.

use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::mxfp4::{self, CodecError};

/// An MXFP4 weight that stays packed until it is used (for example an mmap of the checkpoint).
///
/// The logical weight is `[out, in]` row-major (nn.Linear orientation), its MXFP4 blocks of 32
/// run along `in`.
pub trait PackedWeight: Send + Sync + fmt::Debug {
    /// `[out, in]`.
    fn shape(&self) -> [usize; 2];
    /// Decodes the weight into `out` (length `out * in`, row-major `[out, in]`).
    fn dequantize_into(&self, out: &mut [f32]) -> Result<(), CodecError>;
    /// The packed bytes as they are: `blocks` (`out·in/2`, element 2j in the low nibble of byte
    /// j) and `scales` (`out·in/32` E8M0 bytes). A device uploads these once and decodes there.
    fn packed_bytes(&self) -> Result<(&[u8], &[u8]), CodecError>;
}

/// A packed MXFP4 weight owning its bytes: `blocks` (`out * in / 2` bytes, the checkpoint's
/// `[out, in/32, 16]`) and `scales` (`out * in / 32` bytes, `[out, in/32]`).
#[derive(Clone)]
pub struct OwnedPacked {
    shape: [usize; 2],
    blocks: Arc<[u8]>,
    scales: Arc<[u8]>,
}

impl OwnedPacked {
    /// Wraps packed bytes of an `[out, in]` weight; errors if `in` is not a multiple of 32 or a
    /// byte count does not match the shape.
    pub fn new(
        shape: [usize; 2],
        blocks: impl Into<Arc<[u8]>>,
        scales: impl Into<Arc<[u8]>>,
    ) -> Result<Self, CodecError> {
        let [rows, cols] = shape;
        if !cols.is_multiple_of(mxfp4::BLOCK) {
            return Err(CodecError::Length {
                what: "packed weight `in` (must be a multiple of 32)",
                expected: cols.next_multiple_of(mxfp4::BLOCK),
                got: cols,
            });
        }
        let (blocks, scales) = (blocks.into(), scales.into());
        let elements = rows * cols;
        if blocks.len() != elements / 2 {
            return Err(CodecError::Length {
                what: "packed weight blocks (bytes, out * in / 2)",
                expected: elements / 2,
                got: blocks.len(),
            });
        }
        if scales.len() != elements / mxfp4::BLOCK {
            return Err(CodecError::Length {
                what: "packed weight scales (bytes, out * in / 32)",
                expected: elements / mxfp4::BLOCK,
                got: scales.len(),
            });
        }
        Ok(Self {
            shape,
            blocks,
            scales,
        })
    }

    /// Quantizes a row-major `[out, in]` f32 weight with the codec and keeps it packed.
    pub fn quantize(shape: [usize; 2], values: &[f32]) -> Result<Self, CodecError> {
        let elements = shape[0] * shape[1];
        if values.len() != elements {
            return Err(CodecError::Length {
                what: "weight values (out * in)",
                expected: elements,
                got: values.len(),
            });
        }
        let mut blocks = vec![0u8; elements / 2];
        let mut scales = vec![0u8; elements / mxfp4::BLOCK];
        mxfp4::quantize(values, &mut blocks, &mut scales)?;
        Self::new(shape, blocks, scales)
    }

    /// The packed E2M1 nibbles.
    pub fn blocks(&self) -> &[u8] {
        &self.blocks
    }

    /// The E8M0 block scales.
    pub fn scales(&self) -> &[u8] {
        &self.scales
    }
}

impl fmt::Debug for OwnedPacked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPacked")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl PackedWeight for OwnedPacked {
    fn shape(&self) -> [usize; 2] {
        self.shape
    }

    fn dequantize_into(&self, out: &mut [f32]) -> Result<(), CodecError> {
        mxfp4::dequantize(&self.blocks, &self.scales, out)
    }

    fn packed_bytes(&self) -> Result<(&[u8], &[u8]), CodecError> {
        Ok((&self.blocks, &self.scales))
    }
}

/// The frozen base weight of one linear, `[out, in]`. Its gradient is never computed.
pub enum BaseWeight<B: Backend> {
    /// A dense tensor (attention: a frozen bf16-valued f32 parameter).
    Dense(Tensor<B, 2>),
    /// An MXFP4 weight decoded on demand, in forward and again in backward (experts).
    Packed(Arc<dyn PackedWeight>),
}

impl<B: Backend> Clone for BaseWeight<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Dense(w) => Self::Dense(w.clone()),
            Self::Packed(p) => Self::Packed(Arc::clone(p)),
        }
    }
}

impl<B: Backend> fmt::Debug for BaseWeight<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dense(w) => f.debug_tuple("Dense").field(&w.dims()).finish(),
            Self::Packed(p) => f.debug_tuple("Packed").field(p).finish(),
        }
    }
}

impl<B: Backend> BaseWeight<B> {
    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Packed(p) => p.shape(),
        }
    }

    /// The weight as a dense tensor on `device` (a packed weight is decoded by the host codec;
    /// backends decode through [`DeployBackend::base_dense`](super::DeployBackend::base_dense)).
    pub fn to_dense(&self, device: &B::Device) -> Result<Tensor<B, 2>, CodecError> {
        match self {
            Self::Dense(w) => Ok(w.clone()),
            Self::Packed(p) => {
                let shape = p.shape();
                let mut values = vec![0f32; shape[0] * shape[1]];
                p.dequantize_into(&mut values)?;
                Ok(Tensor::from_data(TensorData::new(values, shape), device))
            }
        }
    }
}

impl<B: AutodiffBackend> BaseWeight<B> {
    /// The same weight on the inner (non-autodiff) backend.
    pub fn inner(&self) -> BaseWeight<B::InnerBackend> {
        match self {
            Self::Dense(w) => BaseWeight::Dense(w.clone().inner()),
            Self::Packed(p) => BaseWeight::Packed(Arc::clone(p)),
        }
    }

    /// A weight of the inner backend as a (constant) weight of this one.
    pub fn from_inner(w: BaseWeight<B::InnerBackend>) -> Self {
        match w {
            BaseWeight::Dense(w) => Self::Dense(Tensor::from_inner(w)),
            BaseWeight::Packed(p) => Self::Packed(p),
        }
    }
}

/// The quantizer applied to the merged weight `W + s·B·A` (straight-through in backward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Quantizer {
    /// No quantization (plain LoRA).
    #[default]
    None,
    /// One round-to-nearest-even to bf16 (attention QAT).
    Bf16,
    /// MXFP4 fake quantization in blocks of 32 along `in` (experts QAT).
    Mxfp4,
}

/// A rank-`r` LoRA adapter of one linear: `ΔW = scale · b · a`.
#[derive(Clone, Debug)]
pub struct Lora<B: Backend> {
    /// `A`, `[r, in]`.
    pub a: Tensor<B, 2>,
    /// `B`, `[out, r]`.
    pub b: Tensor<B, 2>,
    /// `s` (`alpha / r`, or `alpha / √r` for rsLoRA).
    pub scale: f32,
}

impl<B: AutodiffBackend> Lora<B> {
    /// The same factors on the inner (non-autodiff) backend.
    pub fn inner(&self) -> Lora<B::InnerBackend> {
        Lora {
            a: self.a.clone().inner(),
            b: self.b.clone().inner(),
            scale: self.scale,
        }
    }
}
