//! The optimizer numerics against torch + transformers (tests/fixtures/train/optim_golden.json,
//! from scripts/gen_optim_golden.py): AdamW parameters and moments bit-identical to
//! torch.optim.AdamW(foreach=False), also across a save/load; clip_grad_norm_'s total within
//! 1 ulp (f64 accumulation here, f32 in torch) and the clipped gradients bit-identical when the
//! totals agree; every schedule within 1e-12 relative of transformers (bit-identical for the
//! kinds without `cos`); and the errors on bad input.

use std::path::PathBuf;

use lora_qat::train::clip::{clip_grad_norm, global_grad_norm};
use lora_qat::train::config::Warmup;
use lora_qat::train::optim::{AdamW, AdamWConfig};
use lora_qat::train::schedule::{
    warmup_from_hf, warmup_steps, LrSchedule, MinLr, ScheduleConfig, SchedulerKind,
};
use serde_json::Value;

fn golden() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/optim_golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    let s = v.as_str().unwrap();
    assert_eq!(s.len() % 8, 0);
    (0..s.len())
        .step_by(8)
        .map(|i| f32::from_bits(u32::from_str_radix(&s[i..i + 8], 16).unwrap()))
        .collect()
}

fn f64_hex(v: &Value) -> f64 {
    f64::from_bits(u64::from_str_radix(v.as_str().unwrap(), 16).unwrap())
}

/// Bit equality, reported as a count and the first differing element.
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = diff.first() {
        panic!(
            "{what}: {} of {} elements differ; first [{i}]: {:e} vs {:e}",
            diff.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// ulp distance between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} vs {b}");
    a.to_bits().abs_diff(b.to_bits())
}

/// One recorded optimizer step: the lr used, the gradients, the parameters after it.
struct Step {
    lr: f64,
    grads: Vec<Vec<f32>>,
    params: Vec<Vec<f32>>,
}

struct AdamCase {
    name: String,
    config: AdamWConfig,
    names: Vec<String>,
    init: Vec<Vec<f32>>,
    steps: Vec<Step>,
    final_step: Vec<u64>,
    final_m: Vec<Vec<f32>>,
    final_v: Vec<Vec<f32>>,
}

fn adam_cases() -> Vec<AdamCase> {
    let g = golden();
    g["adamw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let cfg = &c["config"];
            let list = |v: &Value| v.as_array().unwrap().iter().map(f32s).collect::<Vec<_>>();
            let tensors = c["tensors"].as_array().unwrap();
            AdamCase {
                name: c["name"].as_str().unwrap().to_owned(),
                config: AdamWConfig {
                    beta1: f64_hex(&cfg["beta1"]),
                    beta2: f64_hex(&cfg["beta2"]),
                    eps: f64_hex(&cfg["eps"]),
                    weight_decay: f64_hex(&cfg["weight_decay"]),
                },
                names: tensors
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect(),
                init: tensors.iter().map(|t| f32s(&t["init"])).collect(),
                steps: c["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| Step {
                        lr: f64_hex(&s["lr"]),
                        grads: list(&s["grads"]),
                        params: list(&s["params"]),
                    })
                    .collect(),
                final_step: c["final"]["step"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_u64().unwrap())
                    .collect(),
                final_m: list(&c["final"]["exp_avg"]),
                final_v: list(&c["final"]["exp_avg_sq"]),
            }
        })
        .collect()
}

fn run_steps(
    opt: &mut AdamW,
    case: &AdamCase,
    params: &mut [Vec<f32>],
    range: std::ops::Range<usize>,
) {
    for k in range {
        let Step {
            lr,
            grads,
            params: want,
        } = &case.steps[k];
        let mut named: Vec<(&str, &mut [f32])> = case
            .names
            .iter()
            .map(String::as_str)
            .zip(params.iter_mut().map(|p| p.as_mut_slice()))
            .collect();
        let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        opt.step(*lr, &mut named, &grads).unwrap();
        for (i, (got, want)) in params.iter().zip(want).enumerate() {
            assert_bits(
                got,
                want,
                &format!("{}: step {k}, tensor {}", case.name, case.names[i]),
            );
        }
    }
}

fn check_final(opt: &AdamW, case: &AdamCase) {
    assert_eq!(opt.steps(), case.steps.len() as u64);
    for (i, name) in case.names.iter().enumerate() {
        let s = opt.state(name).unwrap();
        assert_eq!(s.step, case.final_step[i], "{}: {name}", case.name);
        assert_bits(
            &s.exp_avg,
            &case.final_m[i],
            &format!("{}: {name}.exp_avg", case.name),
        );
        assert_bits(
            &s.exp_avg_sq,
            &case.final_v[i],
            &format!("{}: {name}.exp_avg_sq", case.name),
        );
    }
}

#[test]
fn adamw_is_bit_identical_to_torch() {
    for case in adam_cases() {
        let mut opt = AdamW::new(case.config).unwrap();
        let mut params = case.init.clone();
        run_steps(&mut opt, &case, &mut params, 0..case.steps.len());
        check_final(&opt, &case);
    }
}

#[test]
fn adamw_resumes_bit_identically_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    for case in adam_cases() {
        let mut opt = AdamW::new(case.config).unwrap();
        let mut params = case.init.clone();
        run_steps(&mut opt, &case, &mut params, 0..3);
        let path = dir.path().join(format!("{}.safetensors", case.name));
        opt.save(&path).unwrap();
        let mut loaded = AdamW::load(&path, case.config).unwrap();
        assert_eq!(loaded, opt);
        let names: Vec<String> = loaded.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&format!("{}.exp_avg_sq", case.names[0])),
            "{names:?}"
        );
        run_steps(&mut loaded, &case, &mut params, 3..case.steps.len());
        check_final(&loaded, &case);
    }
    // Nothing but the state files is left behind (the temporary files were renamed).
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        adam_cases().len()
    );
}

#[test]
fn clip_matches_torch_within_one_ulp() {
    let g = golden();
    for c in g["clip"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let max_norm = c["max_norm"].as_f64().unwrap();
        let mut grads: Vec<Vec<f32>> = c["grads"].as_array().unwrap().iter().map(f32s).collect();
        let want_total = f32s(&c["total_norm"])[0];
        let want: Vec<Vec<f32>> = c["clipped"].as_array().unwrap().iter().map(f32s).collect();
        let views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let norm_only = global_grad_norm(&views);
        let mut slices: Vec<&mut [f32]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
        let total = clip_grad_norm(&mut slices, max_norm).unwrap();
        assert_eq!(total.to_bits(), norm_only.to_bits());
        assert!(
            ulps(total, want_total) <= 1,
            "{name}: total {total} vs torch {want_total}"
        );
        for (got, want) in grads.iter().zip(&want) {
            if total == want_total {
                assert_bits(got, want, &format!("{name}: clipped gradients"));
            } else {
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(&a, &b)| ulps(a, b))
                    .max()
                    .unwrap();
                assert!(
                    worst <= 1,
                    "{name}: clipped gradients {worst} ulp from torch"
                );
            }
        }
    }
}

#[test]
fn clip_reports_a_nonfinite_norm_and_leaves_gradients() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut a = [1.0f32, 2.0, bad];
        let mut b = [3.0f32];
        let total = clip_grad_norm(&mut [&mut a[..], &mut b[..]], 1.0).unwrap();
        assert!(!total.is_finite());
        assert_eq!((a[0], a[1], b[0]), (1.0, 2.0, 3.0));
    }
    let mut a = [1.0f32];
    assert!(clip_grad_norm(&mut [&mut a[..]], -1.0).is_err());
}

#[test]
fn schedules_match_transformers() {
    let g = golden();
    let s = &g["schedules"];
    let (base_lr, total) = (
        s["base_lr"].as_f64().unwrap(),
        s["total_steps"].as_u64().unwrap() as usize,
    );
    for c in s["cases"].as_array().unwrap() {
        let kind: SchedulerKind = c["kind"].as_str().unwrap().parse().unwrap();
        let warmup = match (c["warmup"].get("steps"), c["warmup"].get("ratio")) {
            (Some(n), None) => Warmup::Steps(n.as_u64().unwrap() as usize),
            (None, Some(r)) => Warmup::Ratio(r.as_f64().unwrap()),
            _ => panic!("warmup {:?}", c["warmup"]),
        };
        let min_lr = MinLr::from_kwargs(
            c.get("min_lr_rate").map(|v| v.as_f64().unwrap()),
            c.get("min_lr").map(|v| v.as_f64().unwrap()),
        )
        .unwrap();
        let sched = LrSchedule::new(&ScheduleConfig {
            kind,
            base_lr,
            warmup,
            total_steps: total,
            min_lr,
        })
        .unwrap();
        let label = format!("{kind} {:?} {min_lr:?}", c["warmup"]);
        if kind != SchedulerKind::Constant {
            assert_eq!(
                sched.warmup_steps() as u64,
                c["resolved_warmup"].as_u64().unwrap(),
                "{label}"
            );
        }
        for (k, want) in c["lrs"].as_array().unwrap().iter().map(f64_hex).enumerate() {
            let got = sched.lr_at(k);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "{label}: step {k}: {got:e} vs {want:e}"
            );
            if !matches!(kind, SchedulerKind::Cosine | SchedulerKind::CosineWithMinLr) {
                assert_eq!(got.to_bits(), want.to_bits(), "{label}: step {k}");
            }
        }
    }
}

#[test]
fn warmup_steps_resolve_like_training_arguments() {
    let g = golden();
    for row in g["warmup_steps"].as_array().unwrap() {
        let value = row["warmup_steps"].as_f64().unwrap();
        let total = row["total"].as_u64().unwrap() as usize;
        let want = row["resolved"].as_u64().unwrap() as usize;
        assert_eq!(
            warmup_steps(warmup_from_hf(value).unwrap(), total),
            want,
            "warmup_steps {value}, total {total}"
        );
    }
}

#[test]
fn adamw_refuses_bad_inputs_without_touching_anything() {
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let (mut a, mut b) = (vec![1.0f32; 4], vec![2.0f32; 3]);
    let g4 = vec![0.5f32; 4];
    let g2 = vec![0.5f32; 2];
    let err = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());

    // Gradient shorter than its parameter: nothing changes, not even the first tensor.
    let e = err(opt.step(
        1e-3,
        &mut [("lora_A", &mut a[..]), ("lora_B", &mut b[..])],
        &[&g4, &g2],
    ));
    assert!(
        e.contains("lora_B") && e.contains('3') && e.contains('2'),
        "{e}"
    );
    assert_eq!((a[0], opt.steps(), opt.state("lora_A")), (1.0, 0, None));

    let e = err(opt.step(1e-3, &mut [("lora_A", &mut a[..])], &[&g4, &g4]));
    assert!(e.contains("1 parameters but 2 gradients"), "{e}");
    let e = err(opt.step(
        1e-3,
        &mut [("x", &mut a[..]), ("x", &mut b[..])],
        &[&g4, &g2],
    ));
    assert!(e.contains("twice"), "{e}");
    let e = err(opt.step(f64::NAN, &mut [("lora_A", &mut a[..])], &[&g4]));
    assert!(e.contains("learning rate"), "{e}");

    // A parameter whose length changed since its state was made.
    opt.step(1e-3, &mut [("lora_A", &mut a[..])], &[&g4])
        .unwrap();
    let e = err(opt.step(1e-3, &mut [("lora_A", &mut b[..])], &[&g4[..3]]));
    assert!(
        e.contains("lora_A") && e.contains("optimizer state has 4"),
        "{e}"
    );
}

#[test]
fn unknown_scheduler_names_list_the_known_ones() {
    let e = "cosine_annealing"
        .parse::<SchedulerKind>()
        .unwrap_err()
        .to_string();
    for known in [
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_min_lr",
    ] {
        assert!(e.contains(known), "{e}");
    }
    let e = "cosine_with_restarts"
        .parse::<SchedulerKind>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("not supported"), "{e}");
}

#[test]
fn corrupt_optimizer_files_are_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let (mut a, g) = (vec![1.0f32; 5], vec![0.25f32; 5]);
    opt.step(
        1e-3,
        &mut [("base_model.model.x.lora_A.weight", &mut a[..])],
        &[&g],
    )
    .unwrap();
    let good = dir.path().join("optimizer.safetensors");
    opt.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let load = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        format!("{:#}", AdamW::load(&p, AdamWConfig::default()).unwrap_err())
    };

    let e = load("garbage.safetensors", b"not a safetensors file at all");
    assert!(e.contains("garbage.safetensors"), "{e}");
    let e = load("truncated.safetensors", &bytes[..bytes.len() - 3]);
    assert!(e.contains("truncated.safetensors"), "{e}");
    let e = format!(
        "{:#}",
        AdamW::load(
            &dir.path().join("absent.safetensors"),
            AdamWConfig::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("absent.safetensors"), "{e}");

    // Well-formed safetensors with the wrong content.
    let write = |tensors: Vec<(&str, Vec<f32>)>, meta: &[(&str, &str)]| -> Vec<u8> {
        let bytes: Vec<(String, Vec<u8>, usize)> = tensors
            .into_iter()
            .map(|(n, v)| {
                (
                    n.to_owned(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    v.len(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, b, len)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                        .unwrap(),
                )
            })
            .collect();
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    };
    let ok_meta = [
        ("optimizer", "adamw"),
        ("step", "1"),
        ("param_steps", r#"{"w":1}"#),
    ];
    let e = load(
        "no_sq.safetensors",
        &write(vec![("w.exp_avg", vec![0.0; 3])], &ok_meta),
    );
    assert!(
        e.contains("no_sq.safetensors") && e.contains("w.exp_avg_sq"),
        "{e}"
    );
    let e = load(
        "stray.safetensors",
        &write(
            vec![("w.exp_avg", vec![0.0; 3]), ("w.momentum", vec![0.0; 3])],
            &ok_meta,
        ),
    );
    assert!(
        e.contains("stray.safetensors") && e.contains("w.momentum"),
        "{e}"
    );
    let e = load(
        "lengths.safetensors",
        &write(
            vec![("w.exp_avg", vec![0.0; 3]), ("w.exp_avg_sq", vec![0.0; 4])],
            &ok_meta,
        ),
    );
    assert!(
        e.contains("lengths.safetensors") && e.contains("w.exp_avg"),
        "{e}"
    );
    let e = load(
        "nan.safetensors",
        &write(
            vec![
                ("w.exp_avg", vec![f32::NAN; 3]),
                ("w.exp_avg_sq", vec![0.0; 3]),
            ],
            &ok_meta,
        ),
    );
    assert!(
        e.contains("nan.safetensors") && e.contains("w.exp_avg") && e.contains("non-finite"),
        "{e}"
    );
    let e = load(
        "no_meta.safetensors",
        &write(
            vec![("w.exp_avg", vec![0.0; 3]), ("w.exp_avg_sq", vec![0.0; 3])],
            &[],
        ),
    );
    assert!(
        e.contains("no_meta.safetensors") && e.contains("optimizer"),
        "{e}"
    );
    let e = load(
        "steps.safetensors",
        &write(
            vec![("w.exp_avg", vec![0.0; 3]), ("w.exp_avg_sq", vec![0.0; 3])],
            &[("optimizer", "adamw"), ("step", "1"), ("param_steps", "{}")],
        ),
    );
    assert!(
        e.contains("steps.safetensors") && e.contains("param_steps") && e.contains('w'),
        "{e}"
    );
}
