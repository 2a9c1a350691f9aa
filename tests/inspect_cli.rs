//! `lora-qat inspect` on the fixture, on corrupted copies and on the shipped release configs.
//! Expected facts come from the fixture's own files and the gpt-oss model card, not from the code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/tiny-gpt-oss/base")
}

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

/// `label: value` lines of the text output, whitespace-normalized.
fn fact(stdout: &str, label: &str) -> String {
    let prefix = format!("{label}:");
    stdout
        .lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(&prefix)
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"))
}

/// Parameters and bytes computed straight from the safetensors headers: BF16 elements count
/// once, MXFP4 blocks twice per byte, scales not at all.
fn params_from_headers(dir: &Path) -> (u64, u64, usize) {
    let (mut params, mut bytes, mut tensors) = (0u64, 0u64, 0usize);
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
        for (name, info) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            tensors += 1;
            let numel: u64 = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            let o = info["data_offsets"].as_array().unwrap();
            bytes += o[1].as_u64().unwrap() - o[0].as_u64().unwrap();
            params += match name {
                n if n.ends_with("_blocks") => 2 * numel,
                n if n.ends_with("_scales") => 0,
                _ => numel,
            };
        }
    }
    (params, bytes, tensors)
}

#[test]
fn describes_the_fixture() {
    let out = inspect(&[fixture().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(fact(&stdout, "layers"), "4");
    assert_eq!(fact(&stdout, "experts"), "8");
    assert_eq!(fact(&stdout, "top-k"), "3");
    assert_eq!(fact(&stdout, "hidden"), "64");
    assert_eq!(fact(&stdout, "intermediate"), "96");
    assert_eq!(fact(&stdout, "heads"), "6 query / 2 kv");
    assert_eq!(fact(&stdout, "head_dim"), "16");
    assert_eq!(fact(&stdout, "window"), "4");
    assert_eq!(fact(&stdout, "vocab"), "384");
    assert!(fact(&stdout, "attention pattern").starts_with("SFSF "));
    assert!(fact(&stdout, "rope").starts_with("yarn theta 150000 factor 32"));
    assert_eq!(cfg["num_hidden_layers"], 4);
    let (params, bytes, tensors) = params_from_headers(&fixture());
    assert_eq!(fact(&stdout, "parameters"), params.to_string());
    let read = fact(&stdout, "data read");
    assert_eq!(read, format!("{bytes} bytes in {tensors} tensors"));
    let verdict = fact(&stdout, "validation");
    assert!(verdict.starts_with("OK"), "{verdict}");
    assert!(verdict.contains(&bytes.to_string()), "{verdict}");
}

#[test]
fn json_output() {
    let out = inspect(&[fixture().to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &v["architecture"];
    assert_eq!(a["layers"], 4);
    assert_eq!(a["experts"], 8);
    assert_eq!(a["top_k"], 3);
    assert_eq!(a["hidden_size"], 64);
    assert_eq!(a["intermediate_size"], 96);
    assert_eq!(a["num_attention_heads"], 6);
    assert_eq!(a["num_key_value_heads"], 2);
    assert_eq!(a["head_dim"], 16);
    assert_eq!(a["sliding_window"], 4);
    assert_eq!(a["vocab_size"], 384);
    let (params, bytes, tensors) = params_from_headers(&fixture());
    assert_eq!(v["parameters"]["total"], params);
    assert_eq!(v["scan"]["bytes_read"], bytes);
    assert_eq!(v["scan"]["tensors"].as_array().unwrap().len(), tensors);
    let on_disk: u64 = [
        "model-00000-of-00001.safetensors",
        "model-00001-of-00001.safetensors",
    ]
    .iter()
    .map(|f| std::fs::metadata(fixture().join(f)).unwrap().len())
    .sum();
    assert_eq!(v["bytes_on_disk"], on_disk);
    assert_eq!(v["quantized"]["tensors"], 16);
    assert_eq!(v["verdict"]["ok"], true);
}

/// A copy of the fixture with `patch` applied to the bytes of one tensor in shard 1.
fn corrupt(tensor: &str, patch: impl FnOnce(&mut [u8])) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let path = tmp.path().join("model-00001-of-00001.safetensors");
    let mut data = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let o = header[tensor]["data_offsets"].as_array().unwrap();
    let (s, e) = (
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    );
    patch(&mut data[8 + n + s..8 + n + e]);
    std::fs::write(&path, data).unwrap();
    tmp
}

#[test]
fn non_finite_weights_fail_validation() {
    let name = "model.layers.2.self_attn.k_proj.weight";
    // bf16 0x7fc0 = NaN, written little-endian into element 5.
    let tmp = corrupt(name, |b| b[10..12].copy_from_slice(&[0xc0, 0x7f]));
    let out = inspect(&[tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        fact(&stdout, "validation").starts_with("FAILED"),
        "{stdout}"
    );
    let err = fact(&stdout, "error");
    assert!(
        err.contains(name) && err.contains("model-00001-of-00001.safetensors"),
        "{err}"
    );
    assert!(err.contains("1 non-finite"), "{err}");
}

#[test]
fn nan_scale_fails_and_implausible_scale_warns() {
    let name = "model.layers.3.mlp.experts.down_proj_scales";
    let tmp = corrupt(name, |b| b[7] = 255);
    let out = inspect(&[tmp.path().to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["verdict"]["errors"].to_string();
    assert!(errors.contains(name) && errors.contains("255"), "{errors}");

    let tmp = corrupt(name, |b| b[0] = 200);
    let out = inspect(&[tmp.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["verdict"]["warnings"].to_string().contains(name));
}

#[test]
fn structural_errors_exit_nonzero_with_the_file_and_tensor() {
    let tmp = corrupt("model.norm.weight", |_| {});
    let shard = tmp.path().join("model-00001-of-00001.safetensors");
    let data = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &data[..data.len() - 1]).unwrap();
    let out = inspect(&[tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model-00001-of-00001.safetensors"),
        "{stderr}"
    );
    assert!(stderr.contains("gate_up_proj_scales"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Sizes of the shipped release configs against the gpt-oss model card (116.83B / 5.13B active
/// for 120b, 20.91B / 3.61B for 20b) and the released file sizes (about 65.2 / 13.8 GB).
#[test]
fn release_configs_estimates() {
    for (file, layers, experts, total, active, gb) in [
        ("configs/gpt-oss-120b.json", 36, 128, 116.83, 5.13, 65.2),
        ("configs/gpt-oss-20b.json", 24, 32, 20.91, 3.61, 13.8),
    ] {
        let path = root().join(file);
        let out = inspect(&[path.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let a = &v["architecture"];
        assert_eq!(a["layers"], layers);
        assert_eq!(a["experts"], experts);
        assert_eq!(a["top_k"], 4);
        assert_eq!(a["hidden_size"], 2880);
        assert_eq!(a["vocab_size"], 201088);
        assert_eq!(a["rope"]["theta"], 150000.0);
        assert_eq!(v["kind"], "config");
        let billions = |x: &Value| (x.as_u64().unwrap() as f64 / 1e7).round() / 100.0;
        assert_eq!(billions(&v["parameters"]["total"]), total, "{file}");
        assert_eq!(billions(&v["parameters"]["active"]), active, "{file}");
        let disk = v["bytes_on_disk"].as_u64().unwrap() as f64 / 1e9;
        assert!((disk - gb).abs() < 0.1, "{file}: {disk} GB");
        let text = inspect(&[path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&text.stdout);
        assert!(
            fact(&stdout, "bytes on disk").contains("estimated"),
            "{stdout}"
        );
        assert!(
            fact(&stdout, "training memory").starts_with(">="),
            "{stdout}"
        );
    }
}
