//! MXFP4 codec throughput: `cargo bench -p kernels --bench codec`.
//! 64M random normal f32 (CODEC_BENCH_N overrides); reference (scalar) on 1/16 of it, the fast
//! kernels on one thread (rayon pool of 1) and the parallel top level on 1 and 2 threads.
//! Prints G elements/s and G elements/s per core (best of CODEC_BENCH_ROUNDS, default 5).

use kernels::mxfp4::{self, fast, reference};
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random normal data (SplitMix64 + Box-Muller), scale 0.02 like LLM weights.
fn random_normal(n: usize) -> Vec<f32> {
    let mut s = 42u64;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (1.0 - next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 0.02) as f32
        })
        .collect()
}

/// Best wall time over `rounds` runs of `f`, in seconds.
fn best(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(name: &str, n: usize, threads: usize, secs: f64) {
    let g = n as f64 / secs / 1e9;
    println!(
        "{name:<34} threads {threads}  {n:>9} elems  {:>8.2} ms  {g:>6.3} G elem/s  {:>6.3} G elem/s/core",
        secs * 1e3,
        g / threads as f64
    );
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

fn main() {
    let n = env_usize("CODEC_BENCH_N", 64 << 20) / 32 * 32;
    let rounds = env_usize("CODEC_BENCH_ROUNDS", 5);
    println!("mxfp4 codec, fast kernel level: {}", fast::selected_level());
    let x = random_normal(n);
    // outputs touched once up front so page faults are not timed
    let mut blocks = vec![1u8; n / 2];
    let mut scales = vec![1u8; n / 32];
    let mut out = vec![1.0f32; n];

    let nr = (n / 16).max(32) / 32 * 32;
    let (xr, br, sr, or) = (
        &x[..nr],
        &mut blocks[..nr / 2],
        &mut scales[..nr / 32],
        &mut out[..nr],
    );
    let t = best(rounds.min(3), || {
        reference::quantize(xr, br, sr).expect("quantize")
    });
    report("reference quantize", nr, 1, t);
    let t = best(rounds.min(3), || {
        reference::dequantize(br, sr, or).expect("dequantize")
    });
    report("reference dequantize", nr, 1, t);
    let t = best(rounds.min(3), || {
        reference::fake_quantize(xr, or).expect("fake")
    });
    report("reference fake_quantize", nr, 1, t);

    let one = pool(1);
    one.install(|| {
        let t = best(rounds, || {
            fast::quantize(&x, &mut blocks, &mut scales).expect("q")
        });
        report("fast quantize", n, 1, t);
        let t = best(rounds, || {
            fast::dequantize(&blocks, &scales, &mut out).expect("dq")
        });
        report("fast dequantize", n, 1, t);
        let t = best(rounds, || fast::fake_quantize(&x, &mut out).expect("fq"));
        report("fast fake_quantize", n, 1, t);
    });
    for threads in [1, 2] {
        pool(threads).install(|| {
            let t = best(rounds, || {
                mxfp4::quantize(&x, &mut blocks, &mut scales).expect("q")
            });
            report("parallel quantize", n, threads, t);
            let t = best(rounds, || {
                mxfp4::dequantize(&blocks, &scales, &mut out).expect("dq")
            });
            report("parallel dequantize", n, threads, t);
            let t = best(rounds, || mxfp4::fake_quantize(&x, &mut out).expect("fq"));
            report("parallel fake_quantize", n, threads, t);
            let mut y = x.clone();
            let t = best(rounds, || {
                mxfp4::fake_quantize_in_place(&mut y).expect("fq")
            });
            report("parallel fake_quantize_in_place", n, threads, t);
        });
    }
}
