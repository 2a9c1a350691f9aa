//! One LoRA(-QAT) training step of gpt-oss on CPU: forward + loss + backward + AdamW, batch 1,
//! random tokens with labels = inputs — the same step as `shared/reference/bench/torch_train_step.py`.
//!
//! `cargo bench --bench train_step -- BASE_DIR ADAPTER_DIR [--seq 512] [--mode qat|lora]
//!   [--path custom|reference] [--warmup 3] [--steps 10]`
//! Prints one JSON line (median seconds per step, tokens/s, peak RSS). Threads: `RAYON_NUM_THREADS`.
//! `scripts/bench_train_step.sh` makes the bench-small checkpoint and runs this side by side with
//! PyTorch eager + PEFT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use lora_qat::checkpoint::Checkpoint;
use lora_qat::model::{ForwardMode, GptOssForCausalLM, GradPath, QuantMode};

type AD = Autodiff<Flex>;

struct Args {
    base: PathBuf,
    adapter: PathBuf,
    seq: usize,
    mode: QuantMode,
    path: GradPath,
    warmup: usize,
    steps: usize,
}

fn parse() -> anyhow::Result<Args> {
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let flag = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let positional: Vec<&String> = argv
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !argv[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    anyhow::ensure!(
        positional.len() == 2,
        "usage: train_step BASE_DIR ADAPTER_DIR [--seq N] [--mode qat|lora] [--path custom|reference]"
    );
    let num = |name: &str, default: usize| -> anyhow::Result<usize> {
        flag(name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name} {v}"))
        })
    };
    Ok(Args {
        base: positional[0].into(),
        adapter: positional[1].into(),
        seq: num("--seq", 512)?,
        mode: match flag("--mode").as_deref().unwrap_or("qat") {
            "qat" => QuantMode::Mxfp4,
            "lora" => QuantMode::None,
            other => anyhow::bail!("--mode {other}: expected qat or lora"),
        },
        path: match flag("--path").as_deref().unwrap_or("custom") {
            "custom" => GradPath::CustomOp,
            "reference" => GradPath::Reference,
            other => anyhow::bail!("--path {other}: expected custom or reference"),
        },
        warmup: num("--warmup", 3)?,
        steps: num("--steps", 10)?,
    })
}

/// Peak resident set size of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A small deterministic generator for the token ids (xorshift64*).
fn random_ids(n: usize, vocab: usize, mut state: u64) -> Vec<i64> {
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as i64 % vocab as i64
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let device = Default::default();
    let t0 = Instant::now();
    let ckpt = Arc::new(Checkpoint::open(&args.base)?);
    let config = ckpt.config().clone();
    let adapter = adapters::LoraAdapter::load(&args.adapter)?;
    let mut model =
        GptOssForCausalLM::<AD>::from_checkpoint(ckpt, &device)?.with_adapter(&adapter, &config)?;
    let mode = ForwardMode {
        quant: args.mode,
        path: args.path,
    };
    let ids = random_ids(args.seq, config.vocab_size, 0x9E37_79B9_7F4A_7C15);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let setup_s = t0.elapsed().as_secs_f64();
    let rss_before = peak_rss_mib();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        let input = model.input_ids(&ids, 1, args.seq, &device)?;
        let out = model.forward_with_loss(input, &ids, mode)?;
        let loss: f32 = out.loss.loss.clone().into_scalar();
        let t_forward = t.elapsed().as_secs_f64();
        let grads = out.loss.loss.backward();
        let t_backward = t.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-4, model, grads);
        let dt = t.elapsed().as_secs_f64();
        losses.push(loss);
        if i >= args.warmup {
            times.push(dt);
            phases[0].push(t_forward);
            phases[1].push(t_backward - t_forward);
            phases[2].push(dt - t_backward);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    let [forward_s, backward_s, optim_s] = phases.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    });
    println!(
        "{{\"impl\":\"lora-qat\",\"config\":\"bench-small\",\"mode\":\"{}\",\"path\":\"{}\",\"seq\":{},\"batch\":1,\"threads\":{},\"steps_measured\":{},\"s_per_step_median\":{:.4},\"s_per_step_min\":{:.4},\"forward_s\":{:.4},\"backward_s\":{:.4},\"optimizer_s\":{:.4},\"tokens_per_s\":{:.1},\"peak_rss_mib\":{:.1},\"rss_before_train_mib\":{:.1},\"loss_first\":{:.4},\"loss_last\":{:.4},\"setup_s\":{:.2}}}",
        if args.mode == QuantMode::Mxfp4 { "qat" } else { "lora" },
        if args.path == GradPath::CustomOp { "custom" } else { "reference" },
        args.seq,
        rayon::current_num_threads(),
        times.len(),
        med,
        times[0],
        forward_s,
        backward_s,
        optim_s,
        args.seq as f64 / med,
        peak_rss_mib(),
        rss_before,
        losses[0],
        losses[losses.len() - 1],
        setup_s,
    );
    Ok(())
}
