//! `lora-qat combine` end to end (the binary): the combination of the two fixture adapters scores
//! (`score --quant none`) like PEFT with both adapters active at once (golden_combine.safetensors, made by
//! scripts/gen_combine_golden.py); bad inputs fail with clear errors and leave nothing behind; an existing
//! output is kept without `--overwrite`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adapters::LoraAdapter;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss")
}

fn bin(cmd: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .arg(cmd)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn combine(args: &[&str]) -> Output {
    bin("combine", args)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_err(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "should fail; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    stderr
}

/// Names in `dir`, sorted (to see that nothing half-written is left).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file of an adapter directory with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    entries(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

struct GoldenCombine {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

impl GoldenCombine {
    fn load() -> Self {
        let bytes = std::fs::read(fixture().join("golden_combine.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut f32s = HashMap::new();
        let mut i64s = HashMap::new();
        for (name, v) in st.tensors() {
            match v.dtype() {
                Dtype::F32 => {
                    let vals = v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    f32s.insert(name, (v.shape().to_vec(), vals));
                }
                Dtype::I64 => {
                    i64s.insert(name, (v.shape().to_vec(), v.data().to_vec()));
                }
                d => panic!("golden_combine {name}: unexpected dtype {d:?}"),
            }
        }
        Self { f32s, i64s }
    }

    fn f32(&self, name: &str) -> &[f32] {
        &self.f32s[name].1
    }

    /// `input_ids` and `labels` written as a score input file.
    fn write_input(&self, path: &Path) {
        let views: Vec<(&str, TensorView)> = ["input_ids", "labels"]
            .iter()
            .map(|n| {
                let (shape, bytes) = &self.i64s[*n];
                (
                    *n,
                    TensorView::new(Dtype::I64, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }
}

fn read_scores(path: &Path) -> (Vec<usize>, Vec<f32>, f32) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str| {
        let v = st.tensor(n).unwrap();
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v.shape().to_vec(), vals)
    };
    let (shape, logits) = get("logits");
    let loss = get("loss").1[0];
    (shape, logits, loss)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// golden.json's tolerance for a float32 implementation against the reference. Measured (the test prints it):
/// the Rust float32 forward of the combined adapter is 3.5e-5 from PEFT's float32 two-adapter logits and 4.7e-5
/// from its float64 ones (PEFT's own float32 vs float64 spread: 3.6e-5); the fixture adapter alone is 5.2e-5
/// from golden logits_lora. The tight check is relative: the combination must be as close to PEFT as the
/// adapter alone is (within 2x + 1e-5), which holds whatever float32 rounding the CPU's kernels do.
const LOGITS_TOL: f32 = 2e-3;
const LOSS_REL_TOL: f32 = 1e-4;

#[test]
fn combined_adapter_scores_like_peft_with_both_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("combined");
    let fx = fixture();
    let out = combine(&[
        p(&fx.join("adapter")),
        p(&fx.join("adapter_b")),
        "--output-path",
        p(&c),
        "--json",
    ]);
    assert_ok("combine", &out);
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    assert_eq!(summary["modules"], 22);
    assert_eq!(summary["r"], 4);
    assert_eq!(summary["max_rank"], 7);
    assert_eq!(summary["rank_pattern_entries"], 11);
    assert_eq!(summary["parts"].as_array().unwrap().len(), 2);
    assert_eq!(summary["base_model_name_or_path"], "tiny-gpt-oss");
    let written: u64 = [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    ]
    .iter()
    .map(|f| std::fs::metadata(c.join(f)).unwrap().len())
    .sum();
    assert_eq!(summary["bytes"], written);
    assert_eq!(
        entries(dir.path()),
        vec!["combined"],
        "nothing but the output"
    );
    assert_eq!(
        entries(&c),
        vec![
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "lora_qat_provenance.json"
        ]
    );

    // the text summary
    let c2 = dir.path().join("combined2");
    let out = combine(&[
        p(&fx.join("adapter")),
        p(&fx.join("adapter_b")),
        "--output-path",
        p(&c2),
    ]);
    assert_ok("combine", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "combined 2 adapters",
        "22 (16 attention projections, 6 expert weights)",
        "r = lora_alpha = 4",
        "base: tiny-gpt-oss",
        "bytes",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.join("lora_qat_provenance.json")).unwrap())
            .unwrap();
    assert_eq!(side["origin"], "combine");
    assert_eq!(side["base"]["model_id"], "tiny-gpt-oss");
    assert_eq!(side["parts"].as_array().unwrap().len(), 2);
    // deterministic output (the provenance sidecar carries the time it was written)
    let stable = |d: &Path| {
        let mut v = snapshot(d);
        v.retain(|(n, _)| n != "lora_qat_provenance.json");
        v
    };
    assert_eq!(stable(&c), stable(&c2), "deterministic output");

    // score the combination, no quantization, against PEFT with both adapters active
    let g = GoldenCombine::load();
    let input = dir.path().join("ids.safetensors");
    g.write_input(&input);
    let scores = dir.path().join("scores.safetensors");
    let base = fx.join("base");
    let out = bin(
        "score",
        &[
            "--base",
            p(&base),
            "--adapter",
            p(&c),
            "--quant",
            "none",
            "--input",
            p(&input),
            "--out",
            p(&scores),
        ],
    );
    assert_ok("score", &out);
    let (shape, logits, loss) = read_scores(&scores);
    assert_eq!(shape, vec![2, 24, 384]);
    let d32 = max_abs_diff(&logits, g.f32("logits_two_adapters_f32"));
    let d64 = max_abs_diff(&logits, g.f32("logits_two_adapters_f64"));
    let ref_spread = max_abs_diff(
        g.f32("logits_two_adapters_f32"),
        g.f32("logits_two_adapters_f64"),
    );
    let want_loss = g.f32("loss_two_adapters_f64")[0];
    eprintln!(
        "combined adapter, score --quant none: max abs diff vs PEFT two-adapter float32 logits {d32:e}, \
         vs float64 {d64:e} (PEFT float32 vs float64: {ref_spread:e}); loss {loss} vs {want_loss}"
    );
    assert!(d32 <= LOGITS_TOL && d64 <= LOGITS_TOL, "{d32} / {d64}");
    assert!(((loss - want_loss) / want_loss).abs() <= LOSS_REL_TOL);
    // the combination is not one of its parts: adapter_b moves the logits far beyond the tolerance
    let a_only = dir.path().join("a.safetensors");
    let out = bin(
        "score",
        &[
            "--base",
            p(&base),
            "--adapter",
            p(&fx.join("adapter")),
            "--quant",
            "none",
            "--input",
            p(&input),
            "--out",
            p(&a_only),
        ],
    );
    assert_ok("score", &out);
    let (_, logits_a, _) = read_scores(&a_only);
    assert!(max_abs_diff(&logits_a, g.f32("logits_two_adapters_f64")) > 100.0 * LOGITS_TOL);
    // ... and scores as close to PEFT as the adapter alone does
    let single = max_abs_diff(&logits_a, &golden_logits_lora());
    eprintln!(
        "adapter alone, score --quant none: max abs diff vs PEFT float64 logits_lora {single:e}"
    );
    assert!(
        d64 <= 2.0 * single + 1e-5,
        "the combination is {d64:e} from PEFT, the adapter alone {single:e}"
    );
}

/// `logits_lora` of golden.safetensors (PEFT, the fixture adapter alone, float64 compute).
fn golden_logits_lora() -> Vec<f32> {
    let bytes = std::fs::read(fixture().join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("logits_lora").unwrap();
    assert_eq!(v.dtype(), Dtype::F32);
    v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn one_adapter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c");
    let out = combine(&[p(&fixture().join("adapter")), "--output-path", p(&c)]);
    assert_err(&out, &["<ADAPTERS>"]);
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn existing_output_is_kept_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture();
    let (a, b) = (fx.join("adapter"), fx.join("adapter_b"));
    let c = dir.path().join("c");
    assert_ok("combine", &combine(&[p(&a), p(&b), "--output-path", p(&c)]));
    let before = snapshot(&c);
    // a different combination into the same place: refused, untouched
    let out = combine(&[p(&a), p(&b), p(&a), "--output-path", p(&c)]);
    assert_err(&out, &["already exists", "--overwrite"]);
    assert_eq!(snapshot(&c), before);
    assert_eq!(entries(dir.path()), vec!["c"]);
    // with --overwrite it is replaced
    let out = combine(&[p(&a), p(&b), p(&a), "--output-path", p(&c), "--overwrite"]);
    assert_ok("combine --overwrite", &out);
    assert_ne!(snapshot(&c), before);
    assert_eq!(entries(dir.path()), vec!["c"]);
    let three = LoraAdapter::load(&c).unwrap();
    assert_eq!(three.attention(0, adapters::AttnProj::K).unwrap().r, 8);

    // a directory that is not an adapter is not replaced, even with --overwrite
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let out = combine(&[p(&a), p(&b), "--output-path", p(&other), "--overwrite"]);
    assert_err(&out, &["not an adapter directory"]);
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(entries(&other), vec!["notes.txt"]);
    // a file is not replaced
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = combine(&[p(&a), p(&b), "--output-path", p(&file), "--overwrite"]);
    assert_err(&out, &["not a directory"]);
    // the output may not be one of the parts
    let copy = dir.path().join("copy");
    LoraAdapter::load(&a).unwrap().save(&copy, false).unwrap();
    let copy_before = snapshot(&copy);
    let out = combine(&[p(&copy), p(&b), "--output-path", p(&copy), "--overwrite"]);
    assert_err(&out, &["is part 1"]);
    assert_eq!(snapshot(&copy), copy_before);
    assert_eq!(entries(dir.path()), vec!["c", "copy", "file", "other"]);
}

/// adapter_b as if trained on a base with hidden size 128 instead of 64 (every dimension 64 doubled).
fn adapter_of_another_base(dir: &Path) -> PathBuf {
    let b = LoraAdapter::load(&fixture().join("adapter_b")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = b
        .tensors()
        .map(|(k, shape, _)| {
            let shape: Vec<usize> = shape
                .iter()
                .map(|&d| if d == 64 { 128 } else { d })
                .collect();
            let n = shape.iter().product::<usize>();
            (k.to_string(), shape, vec![0.01; n])
        })
        .collect();
    let other = LoraAdapter::from_parts(b.config().clone(), tensors).unwrap();
    let path = dir.join("other_base");
    other.save(&path, false).unwrap();
    path
}

#[test]
fn parts_of_different_bases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture();
    let other = adapter_of_another_base(dir.path());
    let c = dir.path().join("c");
    let out = combine(&[p(&fx.join("adapter")), p(&other), "--output-path", p(&c)]);
    assert_err(
        &out,
        &[
            "part 2",
            "other_base",
            "part 1",
            "model.layers.0.self_attn.q_proj",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "lora_A [2, 128] / lora_B [96, 2]",
            "lora_A [4, 64] / lora_B [96, 4]",
            "different bases",
        ],
    );
    assert_eq!(entries(dir.path()), vec!["other_base"], "nothing written");

    // same shapes but a different base named in the config
    let renamed = dir.path().join("renamed");
    let b = LoraAdapter::load(&fx.join("adapter_b")).unwrap();
    let mut cfg = b.config().clone();
    cfg.base_model_name_or_path = Some("openai/gpt-oss-20b".into());
    let t: Vec<_> = b
        .tensors()
        .map(|(k, s, d)| (k.to_string(), s.to_vec(), d.to_vec()))
        .collect();
    LoraAdapter::from_parts(cfg, t)
        .unwrap()
        .save(&renamed, false)
        .unwrap();
    let out = combine(&[p(&fx.join("adapter")), p(&renamed), "--output-path", p(&c)]);
    assert_err(
        &out,
        &[
            "different base models",
            "tiny-gpt-oss",
            "openai/gpt-oss-20b",
        ],
    );
    assert_eq!(entries(dir.path()), vec!["other_base", "renamed"]);
}

#[test]
fn a_missing_part_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_adapter");
    let c = dir.path().join("c");
    let out = combine(&[
        p(&fixture().join("adapter")),
        p(&missing),
        "--output-path",
        p(&c),
    ]);
    assert_err(&out, &["part 2", "no_such_adapter"]);
    // a directory without the weights
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(
        fixture().join("adapter/adapter_config.json"),
        empty.join("adapter_config.json"),
    )
    .unwrap();
    let out = combine(&[
        p(&fixture().join("adapter")),
        p(&empty),
        "--output-path",
        p(&c),
    ]);
    assert_err(&out, &["part 2", "adapter_model.safetensors"]);
    assert_eq!(entries(dir.path()), vec!["empty"]);
}
