//! `lora-qat train` from the command line on the tiny fixture: QAT lowers the eval loss, runs
//! resume exactly (also after `kill -9`), the adapter is a PEFT adapter that `score` reproduces,
//! and bad configurations are refused before the first step.

mod data_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use data_support::{fixtures, read_json, tiny_base};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lora-qat"));
    c.env("LORA_QAT_LOG", "warn");
    c
}

fn train_jsonl() -> PathBuf {
    fixtures().join("tiny-gpt-oss/data/train.jsonl")
}

/// The common flags of a short QAT run into `out`.
fn args(out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--base",
        tiny_base().to_str().unwrap(),
        "--data",
        train_jsonl().to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--max-steps",
        &steps.to_string(),
        "--learning-rate",
        "1e-2",
        "--per-device-train-batch-size",
        "4",
        "--logging-steps",
        "10",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--chat-template-date",
        "2026-01-01",
        "--save-steps",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(a: &[String]) -> Output {
    bin().args(a).output().expect("lora-qat runs")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded");
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn evals(out: &Path) -> Vec<(u64, f64, f64)> {
    let st = read_json(&out.join("trainer_state.json"));
    st["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("eval_loss").is_some())
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["eval_loss"].as_f64().unwrap(),
                e["eval_loss_unquantized"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn qat_lowers_the_eval_loss_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    ok(&run(&args(
        &full,
        40,
        &[
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "20",
            "--eval-on-start",
        ],
    )));
    let e = evals(&full);
    assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 20, 40]);
    let (start, end) = (e[0].1, e[2].1);
    eprintln!(
        "eval loss (deployed weights): {start:.4} -> {end:.4}; unquantized {:.4} -> {:.4}",
        e[0].2, e[2].2
    );
    // measured: 6.43 -> 3.01 (the adapter starts with B = 0, so step 0 is the base model)
    assert!(
        end < start - 2.0,
        "40 QAT steps must lower the eval loss by more than 2 nats: {start} -> {end}"
    );
    assert!(
        (e[0].1 - e[0].2).abs() < 1e-6,
        "at step 0 both evals are the base model"
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "loss.svg",
        "train_log.jsonl",
    ] {
        assert!(full.join(f).is_file(), "{f}");
    }
    for c in [10, 20, 30, 40] {
        let cp = full.join(format!("checkpoint-{c}"));
        assert!(
            cp.join("optimizer.safetensors").is_file()
                && cp.join("adapter_model.safetensors").is_file()
        );
    }
    // resume from step 20 in another directory, the rest with gradient checkpointing (each
    // layer recomputed in backward: the same arithmetic): byte-identical final adapter
    let resumed = dir.path().join("resumed");
    std::fs::create_dir(&resumed).unwrap();
    copy_dir(&full.join("checkpoint-20"), &resumed.join("checkpoint-20"));
    ok(&run(&args(
        &resumed,
        40,
        &[
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "20",
            "--resume-from-checkpoint",
            "latest",
            "--gradient-checkpointing",
            "true",
        ],
    )));
    assert_eq!(
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed.join("adapter_model.safetensors")).unwrap(),
        "resumed run (with gradient checkpointing) ends with the same adapter"
    );
    assert_eq!(
        std::fs::read(full.join("checkpoint-40/optimizer.safetensors")).unwrap(),
        std::fs::read(resumed.join("checkpoint-40/optimizer.safetensors")).unwrap(),
        "and the same optimizer state, byte for byte"
    );
    // the same after kill -9 at an arbitrary moment (once checkpoint-10 exists)
    let killed = dir.path().join("killed");
    let evals_flags = ["--eval-strategy", "steps", "--eval-steps", "20"];
    let mut child = bin().args(args(&killed, 40, &evals_flags)).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !killed.join("checkpoint-10").is_dir() && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let resume_flags = [&evals_flags[..], &["--resume-from-checkpoint", "latest"]].concat();
    ok(&run(&args(&killed, 40, &resume_flags)));
    assert_eq!(
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(killed.join("adapter_model.safetensors")).unwrap(),
        "a run killed with SIGKILL and resumed ends with the same adapter"
    );
}

#[test]
fn ctrl_c_saves_and_resume_finishes_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let (full, stopped) = (dir.path().join("full"), dir.path().join("stopped"));
    ok(&run(&args(&full, 30, &["--save-steps", "100"])));
    let mut child = bin()
        .args(args(&stopped, 30, &["--save-steps", "100"]))
        .spawn()
        .unwrap();
    // interrupt once training has started (the log gets its first entry at step 10)
    let t0 = std::time::Instant::now();
    while !stopped.join("train_log.jsonl").is_file() && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C exits cleanly");
    let saved: Vec<_> = std::fs::read_dir(&stopped)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(
        saved.len(),
        1,
        "one checkpoint saved at the interruption: {saved:?}"
    );
    assert!(
        !stopped.join("adapter_model.safetensors").exists(),
        "no final adapter for an interrupted run"
    );
    ok(&run(&args(
        &stopped,
        30,
        &["--save-steps", "100", "--resume-from-checkpoint", "latest"],
    )));
    assert_eq!(
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(stopped.join("adapter_model.safetensors")).unwrap()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn adapter_follows_peft_conventions_and_score_reproduces_the_eval() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // the fixture adapter's targets: attention everywhere, experts of layers 0, 1, 3
    let targets = "q_proj,k_proj,v_proj,o_proj,layers.0.mlp.experts.gate_up_proj,layers.0.mlp.experts.down_proj,\
                   layers.1.mlp.experts.gate_up_proj,layers.1.mlp.experts.down_proj,\
                   layers.3.mlp.experts.gate_up_proj,layers.3.mlp.experts.down_proj";
    let eval_row = dir.path().join("eval.jsonl");
    let first = std::fs::read_to_string(train_jsonl())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&eval_row, format!("{first}\n")).unwrap();
    ok(&run(&args(
        &out,
        5,
        &[
            "--lora-target-modules",
            targets,
            "--eval-data",
            eval_row.to_str().unwrap(),
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "5",
        ],
    )));
    let fixture = fixtures().join("tiny-gpt-oss/adapter");
    let header = |p: &Path| -> serde_json::Value {
        let b = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        serde_json::from_slice(&b[8..8 + n]).unwrap()
    };
    let (hw, hg) = (header(&fixture), header(&out));
    let shapes = |h: &serde_json::Value| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = h
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, t)| (k.clone(), t["shape"].to_string(), t["dtype"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        shapes(&hg),
        shapes(&hw),
        "keys, shapes and dtypes as PEFT wrote the fixture"
    );
    assert_eq!(hg["__metadata__"], hw["__metadata__"]);
    let (cw, cg) = (
        read_json(&fixture.join("adapter_config.json")),
        read_json(&out.join("adapter_config.json")),
    );
    let set = |v: &serde_json::Value| {
        let mut s: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(set(&cg["target_modules"]), set(&cw["target_modules"]));
    assert_eq!(set(&cg["target_parameters"]), set(&cw["target_parameters"]));
    for k in [
        "peft_type",
        "r",
        "lora_alpha",
        "bias",
        "use_rslora",
        "use_dora",
        "fan_in_fan_out",
    ] {
        assert_eq!(cg[k], cw[k], "{k}");
    }
    let mut keys_g: Vec<&String> = cg.as_object().unwrap().keys().collect();
    let mut keys_w: Vec<&String> = cw.as_object().unwrap().keys().collect();
    keys_g.sort();
    keys_w.sort();
    let only_g: Vec<_> = keys_g.iter().filter(|k| !keys_w.contains(k)).collect();
    // `peft_version` names the PEFT release that wrote a file; lora-qat is not PEFT and leaves it out
    let only_w: Vec<_> = keys_w
        .iter()
        .filter(|k| !keys_g.contains(k) && k.as_str() != "peft_version")
        .collect();
    assert!(
        only_g.is_empty() && only_w.is_empty(),
        "adapter_config.json keys: ours only {only_g:?}, PEFT only {only_w:?}"
    );

    // score the eval example with the trained adapter: the loss is the last eval_loss
    let prepared = dir.path().join("eval_seq.jsonl");
    let o = bin()
        .args([
            "prepare",
            "--base",
            tiny_base().to_str().unwrap(),
            "--data",
            eval_row.to_str().unwrap(),
            "--out",
            prepared.to_str().unwrap(),
            "--chat-template-date",
            "2026-01-01",
        ])
        .output()
        .unwrap();
    ok(&o);
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&prepared)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<i64> = line["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let labels: Vec<i64> = line["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let input = dir.path().join("ids.safetensors");
    let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (bi, bl) = (bytes(&ids), bytes(&labels));
    let views = vec![
        (
            "input_ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, ids.len()], &bi)
                .unwrap(),
        ),
        (
            "labels",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![1, labels.len()],
                &bl,
            )
            .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let scores = dir.path().join("scores.safetensors");
    ok(&bin()
        .args([
            "score",
            "--base",
            tiny_base().to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--quant",
            "mxfp4",
            "--input",
            input.to_str().unwrap(),
            "--out",
            scores.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let b = std::fs::read(&scores).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let loss =
        f32::from_le_bytes(st.tensor("loss").unwrap().data()[..4].try_into().unwrap()) as f64;
    let last = evals(&out).last().unwrap().1;
    assert!(
        (loss - last).abs() <= 1e-5 * last.abs(),
        "score {loss} vs last eval_loss {last}"
    );
}

#[test]
fn bad_configurations_are_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: &[(&[&str], &str)] = &[
        (&["--learning-rate", "0"], "learning_rate 0: must be > 0"),
        (
            &["--learning-rate", "fast"],
            "learning_rate: \"fast\" is not a number",
        ),
        (
            &["--gradient-accumulation-steps", "0"],
            "gradient_accumulation_steps 0",
        ),
        (
            &["--lora-target-modules", "q_proj,router"],
            "\"router\" matches no module",
        ),
        (&["--layers-to-transform", "9"], "layer 9 does not exist"),
        (&["--lora-dropout", "0.05"], "lora_dropout 0.05"),
        (&["--quant-cfg", "INT4"], "quantization \"INT4\""),
        (
            &["--lr-scheduler-type", "wobbly"],
            "unknown lr scheduler \"wobbly\"",
        ),
        (
            &["--init-adapter", "/nonexistent/adapter"],
            "--init_adapter /nonexistent/adapter",
        ),
        (
            &["--resume-from-checkpoint", "latest"],
            "holds no checkpoint",
        ),
    ];
    for (extra, want) in cases {
        let e = err(&run(&args(&out, 3, extra)));
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!out.join("checkpoint-1").exists());
    }
    // --max-steps 0
    let mut a = args(&out, 3, &[]);
    let i = a.iter().position(|x| x == "--max-steps").unwrap();
    a[i + 1] = "0".into();
    assert!(err(&run(&a)).contains("max_steps 0"));
    // an adapter of another rank than asked for
    let e = err(&run(&args(
        &out,
        3,
        &[
            "--init-adapter",
            fixtures().join("tiny-gpt-oss/adapter").to_str().unwrap(),
            "--lora-r",
            "8",
        ],
    )));
    assert!(e.contains("has rank 4, the run asks for lora_r 8"), "{e}");
    // a diverging run stops at the first non-finite value, naming the step and the last good checkpoint
    let diverged = dir.path().join("diverged");
    let e = err(&run(&args(
        &diverged,
        5,
        &[
            "--learning-rate",
            "1e30",
            "--max-grad-norm",
            "0",
            "--save-steps",
            "1",
        ],
    )));
    assert!(
        e.contains("step 2: training stopped; the last good checkpoint is")
            && e.contains("checkpoint-1"),
        "{e}"
    );
    assert!(e.contains("NaN") || e.contains("non-finite"), "{e}");
    // a finished run is not overwritten; unknown recipe keys are reported
    ok(&run(&args(&out, 2, &[])));
    let e = err(&run(&args(&out, 2, &[])));
    assert!(
        e.contains("holds a previous run") && e.contains("--overwrite_output_dir"),
        "{e}"
    );
    let recipe = dir.path().join("r.yaml");
    std::fs::write(
        &recipe,
        "learning_rate: 1.0e-3\nnot_a_key: 3\nreport_to: [trackio]\n",
    )
    .unwrap();
    let o = run(&args(
        &out,
        2,
        &[
            "--config",
            recipe.to_str().unwrap(),
            "--overwrite-output-dir",
        ],
    ));
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("unknown keys, not used: not_a_key"),
        "{stderr}"
    );
    assert!(stderr.contains("report_to"), "{stderr}");
}
