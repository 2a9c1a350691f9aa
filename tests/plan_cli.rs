//! `lora-qat plan` as users run it: the shipped gpt-oss configs on several device sets, refusals,
//! bad `--devices` strings, unknown bases, and the tiny fixture base (a directory and its config).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base")
}

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .arg("plan")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> (bool, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = plan(&all);
    let (out, err) = text(&o);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (o.status.success(), v)
}

#[test]
fn gpt_oss_20b_on_one_80gb_is_data_parallel() {
    let o = plan(&[
        "--base",
        "gpt-oss-20b",
        "--devices",
        "1x80GB",
        "--seq",
        "4096",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("verdict: FITS — strategy: data parallel"),
        "{out}"
    );
    assert!(out.contains("GB = 10^9 bytes"), "{out}");
    assert!(out.contains("23.88"), "per-device total: {out}");
    let (ok, v) = json(&["--base", "gpt-oss-20b", "--devices", "80GB"]);
    assert!(ok);
    assert_eq!(v["placement"]["kind"], "data_parallel");
    assert_eq!(
        v["placement"]["stages"][0]["memory"]["total"],
        23_880_817_920u64
    );
    assert_eq!(v["usable_per_device"], 72_000_000_000u64);
}

#[test]
fn gpt_oss_120b_on_8x80gb_and_8x40gb_places_layers() {
    let o = plan(&[
        "--base",
        "gpt-oss-120b",
        "--devices",
        "8x80GB",
        "--seq",
        "4096",
        "--batch",
        "1",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("layer placement × data parallel (4 replica(s) × 2 stage(s)"),
        "{out}"
    );
    assert!(out.contains("dev 1: L19-35"), "{out}");
    let (ok, v) = json(&["--base", "gpt-oss-120b", "--devices", "8x40GB"]);
    assert!(ok);
    assert_eq!(v["placement"]["kind"], "both");
    assert_eq!(v["placement"]["stages"].as_array().unwrap().len(), 4);
    for s in v["placement"]["stages"].as_array().unwrap() {
        assert!(s["memory"]["total"].as_u64().unwrap() <= 36_000_000_000);
    }
    // forcing checkpointing off needs more stages
    let (ok, v) = json(&[
        "--base",
        "gpt-oss-120b",
        "--devices",
        "8x80GB",
        "--gradient-checkpointing",
        "false",
    ]);
    assert!(ok);
    assert_eq!(v["placement"]["gradient_checkpointing"], false);
    assert_eq!(v["placement"]["stages"].as_array().unwrap().len(), 4);
}

#[test]
fn refusals_say_what_is_needed_and_what_would_help() {
    let o = plan(&["--base", "gpt-oss-120b", "--devices", "1x16GB"]);
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("verdict: DOES NOT FIT"), "{out}");
    assert!(
        err.contains("needs") && err.contains("14.40 GB usable"),
        "{err}"
    );
    assert!(err.contains("packed experts dominate"), "{err}");
    assert!(err.contains("more devices"), "{err}");
    let o = plan(&["--base", "gpt-oss-120b", "--devices", "1x80GB"]);
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("needs 84.28 GB per device, 72.00 GB usable"),
        "{err}"
    );
    assert!(err.contains("2 × 80.00 GB"), "{err}");
    assert!(out.contains("what would help"), "{out}");
    // JSON output still printed, with the refusal
    let (ok, v) = json(&["--base", "gpt-oss-120b", "--devices", "1x80GB"]);
    assert!(!ok);
    assert!(v["placement"].is_null());
    assert_eq!(v["refusal"]["needed"], 84_282_620_160u64);
    // checkpointing off on 1×80GB for 20B: refused, and turning it on is suggested
    let o = plan(&[
        "--base",
        "gpt-oss-20b",
        "--devices",
        "1x80GB",
        "--gradient-checkpointing",
        "false",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("--gradient-checkpointing true: fits"), "{err}");
}

#[test]
fn bad_devices_and_unknown_bases_are_clear_errors() {
    for (d, why) in [
        ("8x80", "no unit"),
        ("8x80G", "ambiguous"),
        ("zx80GB", "not a whole number"),
        ("0x80GB", "at least 1"),
        ("tpu:80GB", "unknown device kind"),
    ] {
        let o = plan(&["--base", "gpt-oss-20b", "--devices", d]);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{d}");
        assert!(
            err.contains(why) && err.contains("GB = 10^9 bytes"),
            "{d}: {err}"
        );
    }
    let o = plan(&["--base", "gpt-oss-7b", "--devices", "1x80GB"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("unknown base \"gpt-oss-7b\""), "{err}");
    let o = plan(&["--base", "/nonexistent/config.json", "--devices", "1x80GB"]);
    assert!(!o.status.success());
    let o = plan(&[
        "--base",
        "gpt-oss-20b",
        "--devices",
        "1x80GB",
        "--targets",
        "nope",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("matches no module"), "{err}");
}

#[test]
fn the_tiny_fixture_base_plans_from_its_directory_and_its_config() {
    let dir = fixture();
    let cfg = dir.join("config.json");
    for base in [dir.to_str().unwrap(), cfg.to_str().unwrap()] {
        let (ok, v) = json(&[
            "--base",
            base,
            "--devices",
            "cpu:24GB",
            "--seq",
            "64",
            "--lora-r",
            "4",
        ]);
        assert!(ok, "{v}");
        assert_eq!(v["placement"]["kind"], "data_parallel");
        assert_eq!(v["devices"]["kind"], "cpu");
        // 4 layers · (attention 4·((64+96) + 2·(64+32) + (96+64)) + 8·4·((192+64) + (64+96)))
        // = 4 · (2048 + 13312) = 61_440
        assert_eq!(v["lora_params"], 61_440);
        // packed experts: 4 · 8 · (192·64 + 64·96)·17/32 = 313_344
        assert_eq!(v["replica"][0]["experts_packed"], 313_344);
    }
    // one replica needs ≈ 4.9 MB with checkpointing: 2 × 5 MB (4.5 MB usable) split the layers
    // (the fullest stage ≈ 3.7 MB), 1 × 1 MB refuses
    let (ok, v) = json(&[
        "--base",
        dir.to_str().unwrap(),
        "--devices",
        "2x5MB",
        "--seq",
        "64",
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["placement"]["kind"], "layer_placement");
    let o = plan(&[
        "--base",
        dir.to_str().unwrap(),
        "--devices",
        "1x1MB",
        "--seq",
        "64",
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("does not fit on 1x1MB"), "{err}");
}
