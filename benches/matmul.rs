//! CPU backend matmul throughput: the measurement behind the choice of burn's `flex` backend
//! (DESIGN §4). Prints one JSON line per shape: GFLOP/s of a forward matmul and the time of an
//! autodiff round trip (forward + backward) at M×K×N, f32.
//!
//! `cargo bench --bench matmul` (threads: `RAYON_NUM_THREADS`, default all cores);
//! `scripts/bench_matmul.sh` runs it side by side with PyTorch at the same thread count.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

type B = Flex;
type AD = Autodiff<Flex>;

const SHAPES: [(usize, usize, usize); 4] = [
    (512, 2880, 5760),
    (128, 2880, 5760),
    (512, 2880, 2880),
    (512, 512, 1024),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn forward_gflops(m: usize, k: usize, n: usize) -> f64 {
    let dev = Default::default();
    let a = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
    let mut times = Vec::new();
    for i in 0..8 {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        let _ = c.into_data();
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (m * k * n) as f64 / median(times) / 1e9
}

fn autodiff_round_trip_ms(m: usize, k: usize, n: usize) -> f64 {
    let dev = Default::default();
    let a = Tensor::<AD, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let b = Tensor::<AD, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let mut times = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        let loss = a.clone().matmul(b.clone()).sum();
        let grads = loss.backward();
        let ga = a.grad(&grads).map(|g| g.into_data());
        let gb = b.grad(&grads).map(|g| g.into_data());
        assert!(ga.is_some() && gb.is_some());
        if i >= 1 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    median(times) * 1e3
}

fn main() {
    let threads = rayon::current_num_threads();
    for (m, k, n) in SHAPES {
        let gflops = forward_gflops(m, k, n);
        let rt = if m == 512 && k == 2880 && n == 5760 {
            format!("{:.1}", autodiff_round_trip_ms(m, k, n))
        } else {
            "null".to_string()
        };
        println!(
            "{{\"impl\":\"burn-flex-x86v4\",\"threads\":{threads},\"m\":{m},\"k\":{k},\"n\":{n},\"gflops\":{gflops:.1},\"autodiff_round_trip_ms\":{rt}}}"
        );
    }
}
