//! `lora-qat prepare` from the command line: its output on the tiny fixture against the golden
//! (golden_chat.json, made by the reference stack), packing, truncation, splits, order, and every
//! bad input with the file, line or flag it names.

mod data_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use data_support::{fixtures, ints, read_json, tiny_base};

const DATE: &str = "2026-01-01";

fn train_jsonl() -> PathBuf {
    fixtures().join("tiny-gpt-oss/data/train.jsonl")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .args(args)
        .env("LORA_QAT_LOG", "warn")
        .output()
        .expect("lora-qat runs")
}

/// Runs `prepare` on the tiny base with the fixed date; returns the output.
fn prepare(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let base = tiny_base();
    let mut args = vec![
        "prepare",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--chat_template_date",
        DATE,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// (input_ids, labels, position_ids) of every line.
fn lines(path: &Path) -> Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                ints(&v["input_ids"]),
                ints(&v["labels"]),
                ints(&v["position_ids"]),
            )
        })
        .collect()
}

fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The golden rows' ids and the labels they must get (ids where the golden mask is 1, except the
/// first token of the example).
fn golden() -> Vec<(Vec<i64>, Vec<i64>)> {
    let g = read_json(&fixtures().join("tiny-gpt-oss/golden_chat.json"));
    g["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ids = ints(&r["input_ids"]);
            let mask = ints(&r["assistant_mask"]);
            let labels = ids
                .iter()
                .zip(&mask)
                .enumerate()
                .map(|(i, (&id, &m))| if m == 1 && i > 0 { id } else { -100 })
                .collect();
            (ids, labels)
        })
        .collect()
}

#[test]
fn fixture_output_equals_golden() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seq.jsonl");
    let s = summary(&ok(&prepare(&train_jsonl(), &out, &["--json"])));
    let want = golden();
    let got = lines(&out);
    assert_eq!(got.len(), want.len());
    for (i, ((ids, labels, pos), (wids, wlabels))) in got.iter().zip(&want).enumerate() {
        assert_eq!(ids, wids, "row {i}");
        assert_eq!(labels, wlabels, "row {i}");
        assert_eq!(*pos, (0..ids.len() as i64).collect::<Vec<_>>(), "row {i}");
    }
    let tokens: usize = want.iter().map(|w| w.0.len()).sum();
    let trained: usize = want
        .iter()
        .map(|w| w.1.iter().filter(|&&l| l != -100).count())
        .sum();
    assert_eq!(s["rows"], 24);
    assert_eq!(s["sequences"], 24);
    assert_eq!(s["tokens"], tokens);
    assert_eq!(s["trained_tokens"], trained);
    // Parquet (pyarrow, two row groups, null thinking fields) gives the same bytes
    let out2 = dir.path().join("pq.jsonl");
    ok(&prepare(&fixtures().join("data/chat.parquet"), &out2, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn prepared_output_reads_back_as_pre_tokenized_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    ok(&prepare(&train_jsonl(), &first, &[]));
    ok(&prepare(&first, &second, &[]));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
    // pre-tokenized rows need no tokenizer; ids are still checked against the vocabulary
    let data = dir.path().join("ids.jsonl");
    std::fs::write(
        &data,
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 99999]}\n",
    )
    .unwrap();
    let e = err(&prepare(&data, &dir.path().join("c.jsonl"), &[]));
    assert!(e.contains("ids.jsonl:2") && e.contains("99999"), "{e}");
}

#[test]
fn packing_keeps_every_example_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("packed.jsonl");
    let s = summary(&ok(&prepare(
        &train_jsonl(),
        &out,
        &["--packing", "--max_length", "700", "--json"],
    )));
    let got = lines(&out);
    assert_eq!(s["sequences"], got.len());
    assert!(
        got.len() < 24 && got.len() >= 6325 / 700,
        "{} sequences",
        got.len()
    );
    // split every sequence at its position restarts: the examples are the golden ones, each once
    let mut examples = Vec::new();
    for (ids, labels, pos) in &got {
        assert!(ids.len() <= 700);
        let mut start = 0;
        for i in 1..=ids.len() {
            if i == ids.len() || pos[i] == 0 {
                assert_eq!(
                    pos[start..i],
                    (0..(i - start) as i64).collect::<Vec<_>>()[..]
                );
                examples.push((ids[start..i].to_vec(), labels[start..i].to_vec()));
                start = i;
            }
        }
    }
    let mut want = golden();
    want.sort();
    examples.sort();
    assert_eq!(examples, want);
}

#[test]
fn truncation_counts_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let want = golden();
    let max = 198;
    let s = summary(&ok(&prepare(
        &train_jsonl(),
        &out,
        &["--max-length", "198", "--json"],
    )));
    let truncated = want.iter().filter(|w| w.0.len() > max).count();
    let dropped = want
        .iter()
        .filter(|w| w.0.len() > max && w.1[..max].iter().all(|&l| l == -100))
        .count();
    assert!(
        truncated > 0 && dropped > 0,
        "fixture must exercise both ({truncated}, {dropped})"
    );
    assert_eq!(s["truncated"], truncated);
    assert_eq!(s["dropped_truncated"], dropped);
    let got = lines(&out);
    assert_eq!(got.len(), 24 - dropped);
    let kept: Vec<_> = want
        .iter()
        .filter(|w| !(w.0.len() > max && w.1[..max].iter().all(|&l| l == -100)))
        .collect();
    for ((ids, labels, _), w) in got.iter().zip(kept) {
        let n = w.0.len().min(max);
        assert_eq!(ids[..], w.0[..n]);
        assert_eq!(labels[..], w.1[..n]);
    }
}

#[test]
fn seed_shuffles_and_eval_split_holds_out() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, plain) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let eval = dir.path().join("eval.jsonl");
    ok(&prepare(&train_jsonl(), &plain, &[]));
    ok(&prepare(&train_jsonl(), &a, &["--seed", "7"]));
    let s = summary(&ok(&prepare(
        &train_jsonl(),
        &b,
        &[
            "--seed",
            "7",
            "--eval_split",
            "0.25",
            "--eval-out",
            eval.to_str().unwrap(),
            "--json",
        ],
    )));
    let (pa, pp) = (lines(&a), lines(&plain));
    assert_ne!(pa, pp, "--seed must shuffle");
    let (mut sa, mut sp) = (pa.clone(), pp.clone());
    sa.sort();
    sp.sort();
    assert_eq!(sa, sp, "a shuffle is a permutation");
    ok(&prepare(
        &train_jsonl(),
        &a,
        &["--seed", "7", "--overwrite"],
    ));
    assert_eq!(lines(&a), pa, "same seed, same order");
    assert_eq!(s["eval"]["examples"], 6);
    assert_eq!(s["examples"], 18);
    let mut both = [lines(&b), lines(&eval)].concat();
    both.sort();
    assert_eq!(both, sp, "train + eval = all examples, each once");
}

#[test]
fn show_marks_trained_spans_and_full_loss_trains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.jsonl");
    let stdout = ok(&prepare(&train_jsonl(), &out, &["--show", "2"]));
    assert_eq!(stdout.matches("=== ").count(), 2);
    assert!(stdout.contains("<|start|>assistant«<|channel|>final<|message|>17 + 25 = 42.<|end|>»"));
    assert!(!stdout.contains("«<|start|>user"));
    ok(&prepare(
        &train_jsonl(),
        &out,
        &["--assistant_only_loss", "false", "--overwrite"],
    ));
    for (ids, labels, _) in lines(&out) {
        assert_eq!(labels[0], -100);
        assert_eq!(labels[1..], ids[1..]);
    }
}

#[test]
fn existing_output_is_kept_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    std::fs::write(&out, "keep").unwrap();
    let e = err(&prepare(&train_jsonl(), &out, &[]));
    assert!(e.contains("exists") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

#[test]
fn bad_rows_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let cases = [
        ("empty.jsonl", String::new(), "holds no row"),
        ("nokind.jsonl", format!("{GOOD}\n{{\"question\": \"x\"}}\n"), "nokind.jsonl:2: no `messages`"),
        ("malformed.jsonl", format!("{GOOD}\n{GOOD}\n{{\"messages\": [\n"), "malformed.jsonl:3: malformed JSON"),
        (
            "refused.jsonl",
            format!("{GOOD}\n{}\n", r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<|channel|>final<|message|>x"}]}"#),
            "refused.jsonl:2: the chat template refused it: You have passed a message containing <|channel|> tags",
        ),
        ("role.jsonl", r#"{"messages": [{"role": "wizard", "content": "q"}]}"#.to_string(), "role.jsonl:1: `messages[0]`: role \"wizard\""),
        ("untrained.jsonl", r#"{"messages": [{"role": "user", "content": "q"}]}"#.to_string(), "none of the 1 rows gives a trainable example"),
    ];
    for (name, text, want) in cases {
        let data = write(dir.path(), name, &text);
        let e = err(&prepare(&data, &out, &[]));
        assert!(e.contains(want), "{name}: {e}");
        assert!(!out.exists(), "{name}: nothing written");
    }
    // skipped and counted on request
    let data = write(
        dir.path(),
        "mixed.jsonl",
        &format!("{GOOD}\nnot json\n{{\"x\": 1}}\n{GOOD}\n"),
    );
    let s = summary(&ok(&prepare(&data, &out, &["--skip_bad_rows", "--json"])));
    assert_eq!(
        (
            s["rows"].as_u64(),
            s["skipped_bad_rows"].as_u64(),
            s["examples"].as_u64()
        ),
        (Some(4), Some(2), Some(2))
    );
}

#[test]
fn bad_files_and_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let data = train_jsonl();
    let other = fixtures().join("data/other_columns.parquet");
    let e = err(&prepare(&other, &out, &[]));
    assert!(
        e.contains("other_columns.parquet") && e.contains("question, answer"),
        "{e}"
    );
    let e = err(&prepare(&dir.path().join("missing.jsonl"), &out, &[]));
    assert!(e.contains("missing.jsonl: no such file"), "{e}");
    let e = err(&prepare(&dir.path().join("nothing-*.jsonl"), &out, &[]));
    assert!(e.contains("matches no file"), "{e}");
    let e = err(&prepare(&data, &out, &["--max_length", "40"]));
    assert!(e.contains("--max_length 40") && e.contains("header"), "{e}");
    let e = err(&prepare(&data, &out, &["--packing"]));
    assert!(e.contains("--packing needs --max_length"), "{e}");
    let e = err(&prepare(&data, &out, &["--eval_split", "1.5"]));
    assert!(e.contains("--eval_split 1.5"), "{e}");
    let e = err(&prepare(&data, &out, &["--reasoning_effort", "extreme"]));
    assert!(e.contains("--reasoning_effort"), "{e}");
    let e = err(&run(&[
        "prepare",
        "--base",
        tiny_base().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--chat_template_date",
        "01/02/2026",
    ]));
    assert!(e.contains("YYYY-MM-DD"), "{e}");
}

/// A copy of the tiny base's non-weight files, with `edit` applied.
fn base_copy(dir: &Path, edit: impl Fn(&Path)) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(tiny_base().join(f), base.join(f)).unwrap();
    }
    edit(&base);
    base
}

fn prepare_with_base(base: &Path, out: &Path) -> Output {
    run(&[
        "prepare",
        "--base",
        base.to_str().unwrap(),
        "--data",
        train_jsonl().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--chat_template_date",
        DATE,
    ])
}

#[test]
fn checkpoint_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    // config, tokenizer and template are enough: no weight is read
    let base = base_copy(&dir.path().join("ok"), |_| {});
    ok(&prepare_with_base(&base, &out));
    let base = base_copy(&dir.path().join("tok"), |b| {
        std::fs::remove_file(b.join("tokenizer.json")).unwrap()
    });
    let e = err(&prepare_with_base(&base, &dir.path().join("o2")));
    assert!(e.contains("no tokenizer.json"), "{e}");
    let base = base_copy(&dir.path().join("tmpl"), |b| {
        std::fs::remove_file(b.join("chat_template.jinja")).unwrap()
    });
    let e = err(&prepare_with_base(&base, &dir.path().join("o3")));
    assert!(
        e.contains("chat_template.jinja") && e.contains("train.jsonl:1"),
        "{e}"
    );
    let base = base_copy(&dir.path().join("cfg"), |b| {
        std::fs::remove_file(b.join("config.json")).unwrap()
    });
    let e = err(&prepare_with_base(&base, &dir.path().join("o4")));
    assert!(e.contains("no config.json"), "{e}");
    // a tokenizer with ids past the model's vocabulary
    let base = base_copy(&dir.path().join("vocab"), |b| {
        let p = b.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c["vocab_size"] = 300.into();
        std::fs::write(&p, c.to_string()).unwrap();
    });
    let e = err(&prepare_with_base(&base, &dir.path().join("o5")));
    assert!(
        e.contains("train.jsonl:1")
            && e.contains("outside the model's vocabulary (vocab_size 300)"),
        "{e}"
    );
    let base = base_copy(&dir.path().join("badtmpl"), |b| {
        std::fs::write(b.join("chat_template.jinja"), "{% for %}").unwrap()
    });
    let e = err(&prepare_with_base(&base, &dir.path().join("o6")));
    assert!(
        e.contains("chat_template.jinja: the chat template does not parse"),
        "{e}"
    );
}
