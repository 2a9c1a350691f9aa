//! Throughput of the expert delta at gpt-oss-120b size (H = I = 2880, 128 experts, rank 16), compared with
//! the scalar reference on one expert: `cargo bench -p adapters --bench delta`.

use std::time::Instant;

use adapters::{add_expert_delta_packed, reference, ExpertLora};

fn main() {
    let (r, n, i_n, o_n) = (16, 128, 2880, 5760);
    let a: Vec<f32> = (0..r * n * i_n)
        .map(|k| ((k % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let b: Vec<f32> = (0..o_n * r * n)
        .map(|k| ((k % 89) as f32 - 44.0) * 1e-3)
        .collect();
    let l = ExpertLora {
        a: &a,
        b: &b,
        r,
        experts: n,
        in_features: i_n,
        out_features: o_n,
        scale: 2.0,
    };
    let mut w = vec![0.0f32; o_n * i_n];
    add_expert_delta_packed(&l, 0, &mut w); // warm up
    let t = Instant::now();
    for e in 0..n {
        add_expert_delta_packed(&l, e, &mut w);
    }
    let fast = t.elapsed().as_secs_f64();
    let t = Instant::now();
    reference::add_expert_delta_packed(&l, 1, &mut w);
    let scalar = t.elapsed().as_secs_f64();
    let flops = 2.0 * (r * i_n * o_n) as f64;
    println!(
        "gate_up 2880x5760, r {r}, {n} experts: {:.3} s total, {:.2} ms/expert ({:.1} GFLOP/s); \
         scalar reference {:.1} ms/expert ({:.2} GFLOP/s); {} threads",
        fast,
        fast * 1e3 / n as f64,
        flops * n as f64 / fast / 1e9,
        scalar * 1e3,
        flops / scalar / 1e9,
        rayon::current_num_threads()
    );
}
