//! `train --optimizer-on device` (LoRA factors, gradients and AdamW state kept beside the layers,
//! the default on a GPU) trains the adapter `--optimizer-on host` (the exact torch-CPU AdamW)
//! trains, within the rounding of the device update; its checkpoints are the host's format, so a
//! run resumes from them with either placement; it works with layer placement (factors on their
//! stage's device) and data parallelism. Runs on CPU peers, the device path's arithmetic being
//! the same burn ops on every backend (the vulkan test runs it on lavapipe).

mod cli_support;

use std::path::Path;

use cli_support::{adapter_tensors, bin, copy_dir, err, max_rel_diff, s, train_tiny};

/// Largest relative L2 difference of any adapter tensor between the device and the host
/// optimizer after 3 steps at lr 1e-2: the device update rounds its two multiply-adds unfused
/// and sums each gradient's squares in f32 for the clipping norm (~1e-7 relative per step);
/// AdamW's first steps (≈ lr·sign(g)) carry that furthest where a gradient is near zero.
const DEVICE_OPTIMIZER_REL_TOL: f64 = 2e-5;

fn trained(dir: &Path, extra: &[&str]) -> std::path::PathBuf {
    let mut a = vec!["--save-steps", "2"];
    a.extend(extra);
    train_tiny(dir, 3, &a)
}

#[test]
fn the_device_optimizer_trains_what_the_host_optimizer_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let host = trained(&tmp.path().join("host"), &["--optimizer-on", "host"]);
    let device = trained(&tmp.path().join("device"), &["--optimizer-on", "device"]);
    let rel = max_rel_diff(&adapter_tensors(&host), &adapter_tensors(&device));
    eprintln!("device vs host optimizer: max relative L2 {rel:.3e}");
    assert!(rel <= DEVICE_OPTIMIZER_REL_TOL, "{rel:.3e}");

    // the factors on their stages' devices, two replicas: the same sums in rank order
    let placed = trained(
        &tmp.path().join("placed"),
        &[
            "--optimizer-on",
            "device",
            "--device",
            "cpu:0-3",
            "--pipeline-stages",
            "2",
            "--per-device-train-batch-size",
            "2",
        ],
    );
    let rel = max_rel_diff(&adapter_tensors(&host), &adapter_tensors(&placed));
    eprintln!("device optimizer on 2 replicas x 2 stages vs host: max relative L2 {rel:.3e}");
    assert!(rel <= DEVICE_OPTIMIZER_REL_TOL, "{rel:.3e}");

    // a device run's checkpoint resumes on the host optimizer, and a host run's on the device
    for (from, place, whole) in [(&device, "host", &host), (&host, "device", &device)] {
        let part = tmp.path().join(format!("resumed-{place}"));
        copy_dir(&from.join("checkpoint-2"), &part.join("run/checkpoint-2"));
        std::fs::copy(
            from.join("training_args.json"),
            part.join("run/training_args.json"),
        )
        .unwrap();
        let resumed = trained(
            &part,
            &[
                "--optimizer-on",
                place,
                "--resume-from-checkpoint",
                "latest",
            ],
        );
        let rel = max_rel_diff(&adapter_tensors(whole), &adapter_tensors(&resumed));
        eprintln!("resumed from step 2 on the {place}: max relative L2 {rel:.3e}");
        assert!(rel <= DEVICE_OPTIMIZER_REL_TOL, "{place}: {rel:.3e}");
    }
}

#[test]
fn a_bad_placement_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let e = err(&bin(&[
        "train",
        "--base",
        s(&cli_support::tiny().join("base")),
        "--data",
        s(&cli_support::tiny().join("data/train.jsonl")),
        "--output-dir",
        s(&out),
        "--optimizer-on",
        "gpu",
    ]));
    assert!(e.contains("expected host or device"), "{e}");
    assert!(!out.exists());
}
