//! The deployed bytes of adapted tensors, through `kernels::deploy` (the function the QAT forward
//! decodes its weights from): attention weights whole, experts in bounded batches, in parallel.
//! Shared by `merge-export` and `verify`.

use adapters::AttnProj;
use anyhow::{Context, Result};
use kernels::deploy::{deploy, Deployed, HostLora};
use kernels::mxfp4::{self, CodecError};
use kernels::ops::Quantizer;
use rayon::prelude::*;

use super::set::LayerLoras;
use crate::checkpoint::{names, Checkpoint, ExpertProj, PackedExperts};

/// f32 working memory allowed for one batch of experts (each expert's merged weight is f32).
const BATCH_BYTES: usize = 512 << 20;

/// A merged value that is not finite, named by tensor and (for experts) expert, row and column.
fn non_finite(err: CodecError, tensor: &str, expert: Option<usize>, cols: usize) -> anyhow::Error {
    match err {
        CodecError::NonFinite { index, value } => {
            let at = format!("row {}, column {}", index / cols, index % cols);
            match expert {
                Some(e) => anyhow::anyhow!(
                    "{tensor}: the merged weight of expert {e} is {value} at {at}; refusing to export a non-finite weight"
                ),
                None => anyhow::anyhow!(
                    "{tensor}: the merged weight is {value} at {at} (after rounding to bf16); refusing to export a non-finite weight"
                ),
            }
        }
        other => anyhow::Error::new(other).context(tensor.to_string()),
    }
}

/// `bf16(W + Σ s·B·A)` of attention projection `p` of `loras.layer` as BF16 bytes.
pub fn attention_bytes(base: &Checkpoint, loras: &LayerLoras, p: AttnProj) -> Result<Vec<u8>> {
    let name = names::attn_weight(loras.layer, p.name());
    let t = base.tensor(&name)?;
    let shape = [t.shape[0], t.shape[1]];
    let mut w = base.bf16_to_f32(&name)?;
    match deploy(&mut w, shape, &loras.attention(p), Quantizer::Bf16) {
        Ok(Deployed::Bf16(bytes)) => Ok(bytes),
        Ok(_) => unreachable!("a bf16 quantizer gives bf16 bytes"),
        Err(e) => Err(non_finite(e, &name, None, shape[1])),
    }
}

/// The adapted experts of one layer and projection.
pub struct ExpertsJob<'a> {
    /// `…{proj}_blocks` (names errors).
    pub name: String,
    /// The packed base.
    pub packed: PackedExperts<'a>,
    /// The stacked LoRAs, in merge order.
    pub loras: Vec<adapters::ExpertLora<'a>>,
    /// The base (its mapped pages are released expert by expert).
    base: &'a Checkpoint,
}

impl<'a> ExpertsJob<'a> {
    /// The job for `p` of `loras.layer`.
    pub fn new(base: &'a Checkpoint, loras: &'a LayerLoras, p: ExpertProj) -> Result<Self> {
        let l = loras.layer;
        Ok(Self {
            name: names::expert_blocks(l, p.stem()),
            packed: base.experts(l, p)?,
            loras: loras.experts(p),
            base,
        })
    }

    /// Experts per batch: as many as run in parallel, within [`BATCH_BYTES`] of f32.
    pub fn batch(&self) -> usize {
        let per = self.packed.rows * self.packed.cols * 4;
        (BATCH_BYTES / per.max(1))
            .clamp(1, rayon::current_num_threads().max(1))
            .min(self.packed.experts.max(1))
    }

    /// Expert `e` dequantized from the base, merged and quantized: `(blocks, scales)`.
    pub fn expert(&self, e: usize) -> Result<(Vec<u8>, Vec<u8>)> {
        // one f32 working buffer per thread, reused from expert to expert (no fresh pages)
        thread_local! {
            static WORK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        WORK.with_borrow_mut(|w| {
            w.resize(self.packed.rows * self.packed.cols, 0.0);
            self.expert_in(e, w)
        })
    }

    fn expert_in(&self, e: usize, w: &mut [f32]) -> Result<(Vec<u8>, Vec<u8>)> {
        let (rows, cols) = (self.packed.rows, self.packed.cols);
        mxfp4::dequantize(
            self.packed.expert_blocks(e),
            self.packed.expert_scales(e),
            w,
        )
        .with_context(|| format!("{}: expert {e}", self.name))?;
        let bs: Vec<Vec<f32>> = self.loras.iter().map(|l| l.expert_b(e)).collect();
        let host: Vec<HostLora<'_>> = self
            .loras
            .iter()
            .zip(&bs)
            .map(|(l, b)| HostLora {
                a: l.expert_a(e),
                b,
                rank: l.r,
                scale: l.scale,
            })
            .collect();
        match deploy(w, [rows, cols], &host, Quantizer::Mxfp4) {
            Ok(Deployed::Mxfp4 { blocks, scales }) => Ok((blocks, scales)),
            Ok(_) => unreachable!("an MXFP4 quantizer gives blocks and scales"),
            Err(err) => Err(non_finite(err, &self.name, Some(e), cols)),
        }
    }

    /// Experts `range`, in parallel, in order; their base pages are released afterwards. When
    /// several fail, the error of the lowest expert is returned (deterministic, whatever the
    /// threads' timing).
    pub fn experts(&self, range: std::ops::Range<usize>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let each: Vec<Result<(Vec<u8>, Vec<u8>)>> = range
            .clone()
            .into_par_iter()
            .map(|e| self.expert(e))
            .collect();
        let out = each.into_iter().collect();
        for e in range {
            self.base.release_bytes(self.packed.expert_blocks(e));
            self.base.release_bytes(self.packed.expert_scales(e));
        }
        out
    }
}
