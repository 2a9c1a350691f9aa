//! Shared helpers of the score and export tests: score input/output files, and counting how far
//! exported bytes are from the reference export (bf16 ulps, MXFP4 code steps).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::model_support::Golden;

pub fn write_tensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `input_ids` (and `labels` when asked) of the golden batch, written to `dir/name`.
pub fn input_file(dir: &Path, name: &str, with_labels: bool) -> PathBuf {
    let g = Golden::load();
    let (ids, b, s) = g.ids("input_ids");
    let (labels, _, _) = g.ids("labels");
    let path = dir.join(name);
    let mut t = vec![("input_ids", Dtype::I64, vec![b, s], i64_bytes(ids))];
    if with_labels {
        t.push(("labels", Dtype::I64, vec![b, s], i64_bytes(labels)));
    }
    write_tensors(&path, &t);
    path
}

/// `(logits shape, logits, loss, metadata)` of a score output file.
pub type ScoreOutput = (Vec<usize>, Vec<f32>, f32, Option<HashMap<String, String>>);

pub fn read_output(path: &Path) -> ScoreOutput {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name} dtype");
        let vals = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v.shape().to_vec(), vals)
    };
    let (shape, logits) = f32s("logits");
    let (loss_shape, loss) = f32s("loss");
    assert_eq!(loss_shape, vec![1]);
    (shape, logits, loss[0], meta.metadata().clone())
}

/// Counts of (differing, far-off) elements between two bf16 byte strings (far = more than 1 ulp).
pub fn bf16_diffs(got: &[u8], want: &[u8]) -> (usize, usize) {
    let (mut diff, mut far) = (0, 0);
    for (g, w) in got.chunks_exact(2).zip(want.chunks_exact(2)) {
        let (g, w) = (
            u16::from_le_bytes([g[0], g[1]]),
            u16::from_le_bytes([w[0], w[1]]),
        );
        if g != w {
            diff += 1;
            if (g as i32 - w as i32).abs() != 1 {
                far += 1;
            }
        }
    }
    (diff, far)
}

/// Counts of (differing, far-off) nibbles between two packed MXFP4 block strings; a nibble is
/// one code step away when its sign agrees and its magnitude code differs by one, or both are
/// the smallest non-zero code and zero.
pub fn nibble_diffs(got: &[u8], want: &[u8]) -> (usize, usize) {
    let (mut diff, mut far) = (0, 0);
    for (&g, &w) in got.iter().zip(want) {
        for shift in [0, 4] {
            let (a, b) = ((g >> shift) & 0xF, (w >> shift) & 0xF);
            if a == b {
                continue;
            }
            diff += 1;
            let (ma, mb) = (a & 7, b & 7);
            let same_sign = (a & 8) == (b & 8) || ma == 0 || mb == 0;
            if !(same_sign && (ma as i32 - mb as i32).abs() == 1) {
                far += 1;
            }
        }
    }
    (diff, far)
}
