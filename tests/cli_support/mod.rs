//! Shared helpers of the end-to-end tests that run the `lora-qat` binary: run it, expect success
//! or failure, and a short QAT run on the tiny fixture.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The tiny gpt-oss fixture directory (base, adapter, data, goldens).
pub fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss")
}

/// Runs the binary with `args` (logs at `warn`).
pub fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .env("LORA_QAT_LOG", "warn")
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Asserts success; returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts failure; returns stderr.
pub fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A short QAT run (rank 4, alpha 8) on the fixture into `dir/run`, with `extra` flags; returns
/// the run directory (the final adapter).
pub fn train_tiny(dir: &Path, steps: usize, extra: &[&str]) -> PathBuf {
    let run = dir.join("run");
    let (base, data) = (tiny().join("base"), tiny().join("data/train.jsonl"));
    let steps = steps.to_string();
    let mut a = vec![
        "train",
        "--base",
        s(&base),
        "--data",
        s(&data),
        "--output-dir",
        s(&run),
        "--max-steps",
        &steps,
        "--learning-rate",
        "1e-2",
        "--per-device-train-batch-size",
        "4",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--chat-template-date",
        "2026-01-01",
    ];
    a.extend(extra);
    ok(&bin(&a));
    run
}

/// Copies the regular files of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

/// The tensors of `dir/adapter_model.safetensors`, sorted by name.
pub fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (k, vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest relative L2 difference `‖a − b‖ / ‖a‖` over the adapter's tensors (f64 sums).
pub fn max_rel_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .map(|((name, x), (_, y))| {
            let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let diff = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(diff.is_finite(), "{name}");
            diff / norm.max(1e-30)
        })
        .fold(0f64, f64::max)
}
