//! `lora-qat quickstart` end to end (shortened to 6 steps): a random base in the release format,
//! a QAT run, an export that verifies; a second run is refused without --overwrite, and
//! --overwrite never removes a directory the quickstart did not make.

use std::path::Path;
use std::process::{Command, Output};

fn quickstart(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .env("LORA_QAT_LOG", "warn")
        .args([
            "quickstart",
            "--dir",
            dir.to_str().unwrap(),
            "--max-steps",
            "6",
        ])
        .args(extra)
        .output()
        .expect("the binary runs")
}

#[test]
fn quickstart_trains_exports_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let o = quickstart(&dir, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("6 LoRA-QAT steps: eval loss"), "{stdout}");
    assert!(stdout.contains("verify: all 79 tensors match"), "{stdout}");
    for f in [
        "base/config.json",
        "base/model.safetensors",
        "base/tokenizer.json",
        "run/adapter_model.safetensors",
        "run/trainer_state.json",
        "export/model.safetensors",
        "export/lora_qat_export.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // the loss went down over the 6 steps
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run/trainer_state.json")).unwrap())
            .unwrap();
    let evals: Vec<f64> = st["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["eval_loss"].as_f64())
        .collect();
    assert!(
        evals.len() >= 2 && evals.last() < evals.first(),
        "{evals:?}"
    );

    let again = quickstart(&dir, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    assert!(quickstart(&dir, &["--overwrite"]).status.success());

    let other = tmp.path().join("mine");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"x").unwrap();
    let o = quickstart(&other, &["--overwrite"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not made by"));
    assert!(other.join("keep.txt").is_file());
}
