//! `lora-qat score` end to end (the binary): parity with the golden logits/losses, packed inputs
//! (`position_ids`), bad inputs with clear errors, and the no-overwrite rule.

mod export_support;
mod model_support;

use std::path::Path;
use std::process::{Command, Output};

use export_support::*;
use model_support::*;
use safetensors::{Dtype, SafeTensors};

fn score(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .arg("score")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn base() -> String {
    fixture().join("base").display().to_string()
}

fn adapter() -> String {
    fixture().join("adapter").display().to_string()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "score failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_err(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "score should fail; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

fn check_parity(extra: &[&str], logits_key: &str, loss_key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), "ids.safetensors", true);
    let out = dir.path().join("out.safetensors");
    let b = base();
    let mut args = vec![
        "--base",
        &b,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    assert_ok(&score(&args));
    let g = Golden::load();
    let (shape, logits, loss, meta) = read_output(&out);
    assert_eq!(shape, vec![2, 24, 384]);
    let diff = max_abs_diff(&logits, g.f32(logits_key));
    assert!(diff <= LOGITS_TOL, "{logits_key}: max abs diff {diff}");
    let want = g.f32(loss_key)[0];
    assert!(
        ((loss - want) / want).abs() <= LOSS_REL_TOL,
        "{loss_key}: {loss} vs {want}"
    );
    assert_eq!(meta.unwrap().get("format").map(String::as_str), Some("pt"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "only the input and the output remain");
}

#[test]
fn base_scores_like_transformers() {
    check_parity(&[], "logits_base", "loss_base");
}

#[test]
fn adapter_quant_none_scores_like_peft() {
    let a = adapter();
    check_parity(
        &["--adapter", &a, "--quant", "none"],
        "logits_lora",
        "loss_lora",
    );
}

#[test]
fn adapter_default_quant_is_the_qat_forward() {
    let a = adapter();
    check_parity(&["--adapter", &a], "logits_qat", "loss_qat");
}

/// Layers placed over two (CPU) devices score what one device scores, byte for byte; more
/// devices than layers are refused.
#[test]
fn layers_over_two_devices_score_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), "ids.safetensors", true);
    let (b, a) = (base(), adapter());
    let run = |device: &str, name: &str| {
        let out = dir.path().join(name);
        let args = [
            "--base",
            &b,
            "--adapter",
            &a,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
        ];
        (score(&args), out)
    };
    let (one, one_out) = run("cpu", "one.safetensors");
    assert_ok(&one);
    let (two, two_out) = run("cpu:0-1", "two.safetensors");
    assert_ok(&two);
    let (l1, l2) = (read_output(&one_out), read_output(&two_out));
    assert_eq!(l1.0, l2.0);
    assert!(l1
        .1
        .iter()
        .zip(&l2.1)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(l1.2.to_bits(), l2.2.to_bits());
    let (five, _) = run("cpu:0-4", "five.safetensors");
    assert_err(&five, &["5 devices for 4 layers"]);
}

#[test]
fn without_labels_the_input_ids_are_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let with = input_file(dir.path(), "with.safetensors", true);
    let without = input_file(dir.path(), "without.safetensors", false);
    let (o1, o2) = (dir.path().join("o1"), dir.path().join("o2"));
    let b = base();
    assert_ok(&score(&[
        "--base",
        &b,
        "--input",
        with.to_str().unwrap(),
        "--out",
        o1.to_str().unwrap(),
    ]));
    assert_ok(&score(&[
        "--base",
        &b,
        "--input",
        without.to_str().unwrap(),
        "--out",
        o2.to_str().unwrap(),
    ]));
    let (_, l1, loss1, _) = read_output(&o1);
    let (_, l2, loss2, _) = read_output(&o2);
    assert_eq!(l1, l2, "labels do not change the logits");
    // more tokens are counted without the -100 prefix, so the mean differs
    assert!(loss1.is_finite() && loss2.is_finite() && loss1 != loss2);
}

#[test]
fn refuses_to_overwrite_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), "ids.safetensors", true);
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    let b = base();
    let args = [
        "--base",
        &b,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_err(&score(&args), &["exists", "--overwrite"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let mut args = args.to_vec();
    args.push("--overwrite");
    assert_ok(&score(&args));
    assert_eq!(read_output(&out).0, vec![2, 24, 384]);
}

#[test]
fn bad_inputs_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let b = base();
    let run = |input: &Path| {
        score(&[
            "--base",
            &b,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let ids: Vec<i64> = (0..6).collect();

    let missing = dir.path().join("missing.safetensors");
    write_tensors(
        &missing,
        &[("tokens", Dtype::I64, vec![1, 6], i64_bytes(&ids))],
    );
    assert_err(&run(&missing), &["missing.safetensors", "input_ids"]);

    let wrong_dtype = dir.path().join("f32.safetensors");
    let f: Vec<u8> = ids.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    write_tensors(&wrong_dtype, &[("input_ids", Dtype::F32, vec![1, 6], f)]);
    assert_err(&run(&wrong_dtype), &["f32.safetensors", "input_ids", "I64"]);

    let wrong_rank = dir.path().join("rank.safetensors");
    write_tensors(
        &wrong_rank,
        &[("input_ids", Dtype::I64, vec![6], i64_bytes(&ids))],
    );
    assert_err(
        &run(&wrong_rank),
        &["rank.safetensors", "input_ids", "[batch, seq]"],
    );

    let out_of_vocab = dir.path().join("vocab.safetensors");
    write_tensors(
        &out_of_vocab,
        &[("input_ids", Dtype::I64, vec![1, 2], i64_bytes(&[3, 384]))],
    );
    assert_err(
        &run(&out_of_vocab),
        &["input_ids[0, 1]", "384", "vocabulary"],
    );

    let bad_labels = dir.path().join("labels.safetensors");
    write_tensors(
        &bad_labels,
        &[
            ("input_ids", Dtype::I64, vec![1, 6], i64_bytes(&ids)),
            ("labels", Dtype::I64, vec![2, 3], i64_bytes(&ids)),
        ],
    );
    assert_err(
        &run(&bad_labels),
        &["labels.safetensors", "labels", "[1, 6]"],
    );

    let label_out_of_vocab = dir.path().join("label_vocab.safetensors");
    write_tensors(
        &label_out_of_vocab,
        &[
            ("input_ids", Dtype::I64, vec![1, 3], i64_bytes(&[1, 2, 3])),
            ("labels", Dtype::I64, vec![1, 3], i64_bytes(&[1, -100, 999])),
        ],
    );
    assert_err(&run(&label_out_of_vocab), &["labels", "999"]);

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    assert_err(&run(&garbage), &["garbage.safetensors"]);
    assert!(!out.exists(), "nothing is written on error");
}

#[test]
fn adapter_not_matching_the_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_file(dir.path(), "ids.safetensors", true);
    let out = dir.path().join("out.safetensors");
    // the fixture adapter with layer 0's q_proj lora_A cut to 32 input features (the base has 64)
    let bad = dir.path().join("adapter");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        fixture().join("adapter/adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture().join("adapter/adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let (shape, data) = if name == key {
            let rows: Vec<u8> = view
                .data()
                .chunks_exact(64 * 4)
                .flat_map(|r| r[..32 * 4].to_vec())
                .collect();
            (vec![4, 32], rows)
        } else {
            (view.shape().to_vec(), view.data().to_vec())
        };
        tensors.push((name, shape, data));
    }
    let owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), Dtype::F32, s.clone(), d.clone()))
        .collect();
    write_tensors(&bad.join("adapter_model.safetensors"), &owned);
    let b = base();
    let out_s = out.to_str().unwrap();
    let args = [
        "--base",
        &b,
        "--adapter",
        bad.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out_s,
    ];
    assert_err(&score(&args), &["q_proj.lora_A"]);
    assert!(!out.exists());
}

/// Scores `input` with the fixture adapter (QAT forward) into `out`.
fn score_qat(input: &Path, out: &Path) -> ScoreOutput {
    let (b, a) = (base(), adapter());
    assert_ok(&score(&[
        "--base",
        &b,
        "--adapter",
        &a,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    read_output(out)
}

#[test]
fn packed_input_scores_each_example_like_alone() {
    let dir = tempfile::tempdir().unwrap();
    let g = Golden::load();
    let (ids, _, seq) = g.ids("input_ids");
    let examples = [&ids[..7], &ids[seq..seq + 13], &ids[seq + 13..seq + 18]];
    let vocab = 384;
    // each example alone (labels = input_ids)
    let mut solo = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        let input = dir.path().join(format!("solo{i}.safetensors"));
        write_tensors(
            &input,
            &[("input_ids", Dtype::I64, vec![1, e.len()], i64_bytes(e))],
        );
        let (_, logits, loss, _) = score_qat(&input, &dir.path().join(format!("solo{i}.out")));
        solo.push((logits, loss, e.len() - 1));
    }
    let total: usize = solo.iter().map(|s| s.2).sum();
    let mean = solo.iter().map(|s| s.1 as f64 * s.2 as f64).sum::<f64>() / total as f64;

    // two rows, different orders, 3 pad tokens as a last segment; labels -100 at each example's
    // first token and on the padding
    let rows: [&[usize]; 2] = [&[0, 1, 2], &[2, 0, 1]];
    let (mut packed, mut labels, mut positions, mut starts) = (vec![], vec![], vec![], vec![]);
    for order in rows {
        let mut col = 0;
        let mut lengths = vec![];
        let mut row_starts = vec![];
        for &e in order {
            packed.extend_from_slice(examples[e]);
            labels.push(-100);
            labels.extend_from_slice(&examples[e][1..]);
            lengths.push(examples[e].len());
            row_starts.push((e, col));
            col += examples[e].len();
        }
        packed.extend([376; 3]);
        labels.extend([-100; 3]);
        lengths.push(3);
        positions.extend(packed_positions(&lengths));
        starts.push(row_starts);
    }
    let seq = packed.len() / 2;
    let input = dir.path().join("packed.safetensors");
    write_tensors(
        &input,
        &[
            ("input_ids", Dtype::I64, vec![2, seq], i64_bytes(&packed)),
            ("labels", Dtype::I64, vec![2, seq], i64_bytes(&labels)),
            (
                "position_ids",
                Dtype::I64,
                vec![2, seq],
                i64_bytes(&positions),
            ),
        ],
    );
    let (shape, logits, loss, _) = score_qat(&input, &dir.path().join("packed.out"));
    assert_eq!(shape, vec![2, seq, vocab]);
    for (b, row) in starts.iter().enumerate() {
        for &(e, start) in row {
            let len = examples[e].len();
            let got = &logits[(b * seq + start) * vocab..][..len * vocab];
            let diff = max_abs_diff(got, &solo[e].0);
            // see tests/model_packing.rs for the tolerance (f32 noise of the causal blocks)
            assert!(
                diff <= 5e-5,
                "row {b}, example {e}: max abs diff {diff} vs alone"
            );
        }
    }
    assert!(
        (loss as f64 - mean).abs() <= 1e-5,
        "packed loss {loss} vs token-weighted solo mean {mean}"
    );

    // without labels, a packed example's first token is not predicted from the previous one
    let one: Vec<i64> = examples.concat();
    let pos = packed_positions(&examples.map(<[i64]>::len));
    let input = dir.path().join("packed_nolabels.safetensors");
    write_tensors(
        &input,
        &[
            ("input_ids", Dtype::I64, vec![1, one.len()], i64_bytes(&one)),
            (
                "position_ids",
                Dtype::I64,
                vec![1, one.len()],
                i64_bytes(&pos),
            ),
        ],
    );
    let (_, _, loss, _) = score_qat(&input, &dir.path().join("packed_nolabels.out"));
    assert!(
        (loss as f64 - mean).abs() <= 1e-5,
        "packed loss without labels {loss} vs token-weighted solo mean {mean}"
    );
}

#[test]
fn bad_position_ids_name_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let b = base();
    let run = |input: &Path| {
        score(&[
            "--base",
            &b,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let ids: Vec<i64> = (0..12).collect();
    let with_positions = |name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        write_tensors(
            &path,
            &[
                ("input_ids", Dtype::I64, vec![2, 6], i64_bytes(&ids)),
                ("position_ids", dtype, shape, bytes),
            ],
        );
        path
    };

    let jump = with_positions(
        "jump.safetensors",
        Dtype::I64,
        vec![2, 6],
        i64_bytes(&[0, 1, 2, 0, 1, 2, 0, 1, 2, 4, 5, 6]),
    );
    assert_err(
        &run(&jump),
        &["jump.safetensors", "position_ids[1, 3] = 4 follows 2"],
    );

    let negative = with_positions(
        "negative.safetensors",
        Dtype::I64,
        vec![2, 6],
        i64_bytes(&[0, 1, 2, 3, 4, -1, 0, 1, 2, 3, 4, 5]),
    );
    assert_err(
        &run(&negative),
        &[
            "negative.safetensors",
            "position_ids[0, 5] = -1",
            "negative",
        ],
    );

    let late_start = with_positions(
        "start.safetensors",
        Dtype::I64,
        vec![2, 6],
        i64_bytes(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    );
    assert_err(
        &run(&late_start),
        &["start.safetensors", "position_ids[1, 0] = 6"],
    );

    let shape = with_positions(
        "shape.safetensors",
        Dtype::I64,
        vec![1, 12],
        i64_bytes(&packed_positions(&[12])),
    );
    assert_err(
        &run(&shape),
        &["shape.safetensors", "position_ids", "[1, 12]", "[2, 6]"],
    );

    let f: Vec<u8> = (0..12).flat_map(|x| (x as f32).to_le_bytes()).collect();
    let dtype = with_positions("dtype.safetensors", Dtype::F32, vec![2, 6], f);
    assert_err(&run(&dtype), &["dtype.safetensors", "position_ids", "I64"]);
    assert!(!out.exists(), "nothing is written on error");
}
