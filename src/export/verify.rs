//! `verify`: an export checked tensor by tensor against a recomputation through the deployed-weight
//! function (adapted tensors) and against the base (every other tensor, byte for byte), with the
//! same names, dtypes, shapes and shard files as the base.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::deployed::{attention_bytes, ExpertsJob};
use super::set::{MergeSet, Role};
use super::trust::TrustPolicy;
use crate::checkpoint::{names, Checkpoint, ExpertProj};

/// The outcome for one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Tensor name.
    pub tensor: String,
    /// `merged` (recomputed from the adapters), `copied` (equal to the base), `missing`
    /// (in the base, not in the export) or `unexpected` (in the export only).
    pub kind: &'static str,
    /// `None` when the tensor is as it must be; else what differs.
    pub mismatch: Option<String>,
}

/// Every tensor's [`Check`], in the base's order.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The export checked.
    pub export: PathBuf,
    /// Per tensor.
    pub checks: Vec<Check>,
}

impl VerifyReport {
    /// Number of tensors that are not as they must be.
    pub fn mismatches(&self) -> usize {
        self.checks.iter().filter(|c| c.mismatch.is_some()).count()
    }
}

/// Differing bytes of two equally long strings: `None` when equal.
fn byte_diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} bytes, expected {}", got.len(), want.len()));
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b)?;
    let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
    Some(format!(
        "{n} of {} bytes differ (first at byte {first}: {:#04x}, expected {:#04x})",
        got.len(),
        got[first],
        want[first]
    ))
}

/// Checks blocks and scales of one adapted expert projection, expert by expert.
fn check_experts(
    job: &ExpertsJob<'_>,
    export: &Checkpoint,
    l: usize,
    p: ExpertProj,
) -> Result<[Check; 2]> {
    let stem = p.stem();
    let (bn, sn) = (names::expert_blocks(l, stem), names::expert_scales(l, stem));
    let got = export
        .experts(l, p)
        .with_context(|| format!("the export's {bn}"))?;
    let (mut bad_blocks, mut bad_scales) = (Vec::new(), Vec::new());
    let n = job.packed.experts;
    let batch = job.batch();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        for (e, (b, s)) in (start..end).zip(job.experts(start..end)?) {
            if got.expert_blocks(e) != b.as_slice() {
                bad_blocks.push(e);
            }
            if got.expert_scales(e) != s.as_slice() {
                bad_scales.push(e);
            }
        }
    }
    let describe = |bad: &[usize]| {
        (!bad.is_empty()).then(|| {
            let shown: Vec<String> = bad.iter().take(8).map(|e| e.to_string()).collect();
            format!(
                "{} of {n} experts differ from the recomputation (experts {}{})",
                bad.len(),
                shown.join(", "),
                if bad.len() > 8 { ", …" } else { "" }
            )
        })
    };
    Ok([
        Check {
            tensor: bn,
            kind: "merged",
            mismatch: describe(&bad_blocks),
        },
        Check {
            tensor: sn,
            kind: "merged",
            mismatch: describe(&bad_scales),
        },
    ])
}

/// Verifies the export at `export_dir` against `base_dir` merged with `loras` (in order).
pub fn verify(
    export_dir: &Path,
    base_dir: &Path,
    loras: &[PathBuf],
    policy: &TrustPolicy,
) -> Result<VerifyReport> {
    let export = Checkpoint::open(export_dir)
        .with_context(|| format!("opening the export {}", export_dir.display()))?;
    let base = Checkpoint::open(base_dir)?;
    let set = MergeSet::load(loras, &base, policy)?;
    let layers = base.config().num_hidden_layers;
    let exported: BTreeSet<&str> = export.tensor_names().collect();
    let mut checks = Vec::new();
    let mut pending: HashMap<String, Check> = HashMap::new();
    for shard in base.layout() {
        for t in &shard.tensors {
            let name = t.name.as_str();
            if !exported.contains(name) {
                checks.push(Check {
                    tensor: t.name.clone(),
                    kind: "missing",
                    mismatch: Some("not in the export".into()),
                });
                continue;
            }
            let got = export.tensor(name)?;
            let got_file = export.shard_file_of(name).unwrap_or_default();
            let layout_diff = if got.dtype != t.dtype || got.shape != t.shape.as_slice() {
                Some(format!(
                    "{:?} {:?}, expected {:?} {:?}",
                    got.dtype, got.shape, t.dtype, t.shape
                ))
            } else if got_file != shard.file_name {
                Some(format!("in {got_file}, expected in {}", shard.file_name))
            } else {
                None
            };
            let role = set.role(name, layers, false);
            let kind = if role == Role::Copy {
                "copied"
            } else {
                "merged"
            };
            if let Some(d) = layout_diff {
                checks.push(Check {
                    tensor: t.name.clone(),
                    kind,
                    mismatch: Some(d),
                });
                continue;
            }
            let check = match role {
                Role::Copy => Check {
                    tensor: t.name.clone(),
                    kind,
                    mismatch: byte_diff(got.bytes, base.tensor(name)?.bytes),
                },
                Role::Attention(l, p) => Check {
                    tensor: t.name.clone(),
                    kind,
                    mismatch: byte_diff(got.bytes, &attention_bytes(&base, &*set.layer(l)?, p)?),
                },
                Role::ExpertBlocks(l, p) | Role::ExpertScales(l, p) => match pending.remove(name) {
                    Some(c) => c,
                    None => {
                        let loras = set.layer(l)?;
                        let job = ExpertsJob::new(&base, &loras, p)?;
                        let [blocks, scales] = check_experts(&job, &export, l, p)?;
                        let (this, other) = if blocks.tensor == name {
                            (blocks, scales)
                        } else {
                            (scales, blocks)
                        };
                        pending.insert(other.tensor.clone(), other);
                        this
                    }
                },
            };
            checks.push(check);
            base.release(name);
            export.release(name);
        }
    }
    for name in export.tensor_names() {
        if base.tensor(name).is_err() {
            checks.push(Check {
                tensor: name.to_string(),
                kind: "unexpected",
                mismatch: Some("not in the base".into()),
            });
        }
    }
    Ok(VerifyReport {
        export: export_dir.to_path_buf(),
        checks,
    })
}
