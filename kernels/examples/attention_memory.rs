//! Peak memory and time of flash attention forward + backward at one head group (batch 1,
//! heads 8, kv heads 1, d 64, causal) for a given sequence length:
//!
//! `cargo run --release -p kernels --example attention_memory [--features vulkan] -- \
//!     --device cpu|vulkan --seq N`
//!
//! Prints the growth of the peak resident set (`VmHWM` of /proc/self/status) over the inputs,
//! which is linear in `seq` when no `[seq, seq]` tensor is formed (on lavapipe the "device"
//! memory is host memory too), and the wall time of forward + backward.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use kernels::ops::{flash_attention, AttentionMask, FlashAttentionBackend};

const HEADS: usize = 8;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 64;

/// Peak resident set in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs forward + backward once; returns (peak RSS delta MiB, seconds).
fn run<B: FlashAttentionBackend>(seq: usize, device: &B::Device) -> (f64, f64) {
    let normal = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<Autodiff<B>, 4>::random([1, HEADS, seq, HEAD_DIM], normal, device);
    let k = Tensor::<Autodiff<B>, 4>::random([1, KV_HEADS, seq, HEAD_DIM], normal, device);
    let v = Tensor::<Autodiff<B>, 4>::random([1, KV_HEADS, seq, HEAD_DIM], normal, device);
    let sinks = Tensor::<Autodiff<B>, 1>::random([HEADS], normal, device);
    let (q, k, v) = (q.require_grad(), k.require_grad(), v.require_grad());
    // settle the inputs before measuring
    let _ = q.clone().sum().into_scalar();
    let before = peak_kib();
    let start = Instant::now();
    let out = flash_attention(
        q.clone(),
        k.clone(),
        v.clone(),
        sinks,
        &AttentionMask::causal(),
    )
    .expect("valid shapes");
    let grads = out.sum().backward();
    let dq = q.grad(&grads).expect("q is tracked");
    let dk = k.grad(&grads).expect("k is tracked");
    let _ = (dq.sum() + dk.sum()).into_scalar();
    let secs = start.elapsed().as_secs_f64();
    let delta = peak_kib().saturating_sub(before) as f64 / 1024.0;
    (delta, secs)
}

#[cfg(feature = "vulkan")]
fn run_vulkan(seq: usize) -> Result<(f64, f64), String> {
    Ok(run::<burn::backend::Vulkan>(seq, &Default::default()))
}

#[cfg(not(feature = "vulkan"))]
fn run_vulkan(_seq: usize) -> Result<(f64, f64), String> {
    Err("built without the `vulkan` feature".into())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device = value("--device").unwrap_or_else(|| "cpu".into());
    let seq: usize = value("--seq")
        .unwrap_or_else(|| "1024".into())
        .parse()
        .map_err(|e| format!("--seq: {e}"))?;
    let (delta, secs) = match device.as_str() {
        "cpu" => run::<Flex>(seq, &Default::default()),
        "vulkan" => run_vulkan(seq)?,
        other => return Err(format!("unknown device {other} (cpu or vulkan)")),
    };
    let inputs = (HEADS + 2 * KV_HEADS) * seq * HEAD_DIM * 4;
    println!(
        "device {device} seq {seq} heads {HEADS} kv {KV_HEADS} d {HEAD_DIM} causal: \
         forward+backward {secs:.2} s, peak RSS delta {delta:.1} MiB \
         (inputs {:.1} MiB; one [heads, seq, seq] f32 would be {:.1} MiB)",
        inputs as f64 / (1 << 20) as f64,
        (HEADS * seq * seq * 4) as f64 / (1 << 20) as f64,
    );
    Ok(())
}
