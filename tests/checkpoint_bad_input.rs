//! Broken checkpoints (copies of the tiny fixture, corrupted in a tempdir) must fail to open with
//! an error naming the file and the tensor (or field).

use std::path::{Path, PathBuf};

use lora_qat::checkpoint::{Checkpoint, GptOssConfig};
use serde_json::Value;

const SHARD0: &str = "model-00000-of-00001.safetensors";
const SHARD1: &str = "model-00001-of-00001.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base")
}

/// A private copy of the fixture checkpoint.
fn copy_base() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("base");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

/// Splits a safetensors file into (header JSON, data section).
fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn join(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Rewrites the header of `file` in `dir` with `edit`, keeping the data section.
fn edit_header(dir: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join(file);
    let (mut header, data) = split(&std::fs::read(&path).unwrap());
    edit(&mut header);
    std::fs::write(&path, join(&header, &data)).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Opening must fail with a message containing every one of `needles`.
fn open_err(dir: &Path, needles: &[&str]) -> String {
    let err = match Checkpoint::open(dir) {
        Ok(_) => panic!("broken checkpoint opened"),
        Err(e) => format!("{e:#}"),
    };
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
    err
}

#[test]
fn the_fixture_itself_opens() {
    let (_t, dir) = copy_base();
    Checkpoint::open(&dir).unwrap();
}

#[test]
fn truncated_shard() {
    let (_t, dir) = copy_base();
    let path = dir.join(SHARD1);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    // The tensor stored last in that shard is the one cut short.
    open_err(
        &dir,
        &[
            SHARD1,
            "model.layers.3.mlp.experts.gate_up_proj_scales",
            "truncated",
        ],
    );
    std::fs::write(&path, &bytes[..5]).unwrap();
    open_err(&dir, &[SHARD1, "too short"]);
}

#[test]
fn trailing_bytes_after_the_last_tensor() {
    let (_t, dir) = copy_base();
    let path = dir.join(SHARD0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend([0u8; 16]);
    std::fs::write(&path, bytes).unwrap();
    open_err(&dir, &[SHARD0, "16 bytes after the last tensor"]);
}

#[test]
fn header_lies_about_offsets() {
    let (_t, dir) = copy_base();
    let victim = "model.layers.2.self_attn.q_proj.weight";
    edit_header(&dir, SHARD1, |h| {
        let offs = h[victim]["data_offsets"].as_array().unwrap();
        let (s, e) = (offs[0].as_u64().unwrap(), offs[1].as_u64().unwrap());
        h.get_mut(victim).unwrap()["data_offsets"] = serde_json::json!([s + 2, e + 2]);
    });
    open_err(&dir, &[SHARD1, victim, "lies about offsets"]);

    let (_t, dir) = copy_base();
    edit_header(&dir, SHARD1, |h| {
        h.get_mut(victim).unwrap()["data_offsets"] = serde_json::json!([0, 10_000_000]);
    });
    open_err(&dir, &[SHARD1, victim]);

    let (_t, dir) = copy_base();
    edit_header(&dir, SHARD1, |h| {
        // Shape no longer matches the byte range.
        h.get_mut(victim).unwrap()["shape"] = serde_json::json!([96, 65]);
    });
    open_err(&dir, &[SHARD1, victim, "data_offsets"]);
}

#[test]
fn shard_named_in_the_index_but_missing() {
    let (_t, dir) = copy_base();
    std::fs::remove_file(dir.join(SHARD1)).unwrap();
    open_err(&dir, &[SHARD1, INDEX, "missing", "model.layers."]);
}

#[test]
fn tensor_in_two_shards() {
    let (_t, dir) = copy_base();
    let name = "model.layers.0.input_layernorm.weight";
    let s0 = std::fs::read(dir.join(SHARD0)).unwrap();
    let (h0, d0) = split(&s0);
    let offs = h0[name]["data_offsets"].as_array().unwrap();
    let (a, b) = (
        offs[0].as_u64().unwrap() as usize,
        offs[1].as_u64().unwrap() as usize,
    );
    let (mut h1, mut d1) = split(&std::fs::read(dir.join(SHARD1)).unwrap());
    let end = d1.len();
    d1.extend_from_slice(&d0[a..b]);
    h1.insert(
        name.into(),
        serde_json::json!({"dtype": "BF16", "shape": [64], "data_offsets": [end, end + (b - a)]}),
    );
    std::fs::write(dir.join(SHARD1), join(&h1, &d1)).unwrap();
    open_err(&dir, &[name, "two shards", SHARD0, SHARD1]);
}

#[test]
fn index_disagrees_with_the_shards() {
    let (_t, dir) = copy_base();
    let name = "model.norm.weight";
    edit_json(&dir.join(INDEX), |o| {
        o.get_mut("weight_map").unwrap()[name] = SHARD0.into();
    });
    open_err(&dir, &[name, INDEX, SHARD1]);

    let (_t, dir) = copy_base();
    edit_json(&dir.join(INDEX), |o| {
        o["weight_map"].as_object_mut().unwrap().remove(name);
    });
    open_err(&dir, &[name, "missing from", INDEX]);
}

#[test]
fn weight_map_file_names_must_be_plain() {
    for bad in [
        "../model-00001-of-00001.safetensors",
        "sub/model.safetensors",
        "/tmp/x.safetensors",
    ] {
        let (_t, dir) = copy_base();
        edit_json(&dir.join(INDEX), |o| {
            o.get_mut("weight_map").unwrap()["model.norm.weight"] = bad.into();
        });
        open_err(&dir, &[INDEX, "model.norm.weight", bad]);
    }
}

#[test]
fn wrong_dtype_for_the_config() {
    let (_t, dir) = copy_base();
    let name = "model.norm.weight";
    edit_header(&dir, SHARD1, |h| {
        h.get_mut(name).unwrap()["dtype"] = "F16".into();
    });
    open_err(&dir, &[SHARD1, name, "F16", "BF16"]);
}

#[test]
fn wrong_shape_for_the_config() {
    let (_t, dir) = copy_base();
    let name = "model.layers.2.self_attn.o_proj.weight";
    edit_header(&dir, SHARD1, |h| {
        h.get_mut(name).unwrap()["shape"] = serde_json::json!([96, 64]);
    });
    open_err(&dir, &[SHARD1, name, "[96, 64]", "[64, 96]"]);

    // Blocks whose shape says a different expert width.
    let (_t, dir) = copy_base();
    let name = "model.layers.3.mlp.experts.down_proj_blocks";
    edit_header(&dir, SHARD1, |h| {
        h.get_mut(name).unwrap()["shape"] = serde_json::json!([8, 64, 6, 8]);
    });
    open_err(&dir, &[SHARD1, name]);
}

#[test]
fn config_does_not_match_the_tensors() {
    let (_t, dir) = copy_base();
    edit_json(&dir.join("config.json"), |o| {
        o.insert("intermediate_size".into(), 128.into());
    });
    open_err(&dir, &["gate_up_proj_blocks", "config"]);
}

#[test]
fn non_multiple_of_32_expert_dims() {
    let (_t, dir) = copy_base();
    edit_json(&dir.join("config.json"), |o| {
        o.insert("intermediate_size".into(), 100.into());
    });
    open_err(
        &dir,
        &["config.json", "intermediate_size", "multiple of 32"],
    );
}

#[test]
fn config_missing_a_field() {
    for field in [
        "num_key_value_heads",
        "hidden_size",
        "sliding_window",
        "rope_theta",
        "vocab_size",
    ] {
        let (_t, dir) = copy_base();
        edit_json(&dir.join("config.json"), |o| {
            o.remove(field);
        });
        open_err(&dir, &["config.json", field]);
    }
    let (_t, dir) = copy_base();
    edit_json(&dir.join("config.json"), |o| {
        o.remove("experts_per_token");
        o.remove("num_experts_per_tok");
    });
    open_err(&dir, &["config.json", "experts_per_token"]);
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    v["hidden_size"] = "64".into();
    let err = format!(
        "{:#}",
        GptOssConfig::from_json_str(&v.to_string(), "x.json").unwrap_err()
    );
    assert!(
        err.contains("x.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_base();
    let name = "model.layers.1.self_attn.sinks";
    let (mut h, d) = split(&std::fs::read(dir.join(SHARD0)).unwrap());
    // Drop the tensor from header and data, shifting the later offsets.
    let offs = h[name]["data_offsets"].as_array().unwrap().clone();
    let (a, b) = (offs[0].as_u64().unwrap(), offs[1].as_u64().unwrap());
    h.remove(name);
    for (k, v) in h.iter_mut() {
        if k == "__metadata__" {
            continue;
        }
        let o = v["data_offsets"].as_array().unwrap();
        let (s, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
        if s >= b {
            v["data_offsets"] = serde_json::json!([s - (b - a), e - (b - a)]);
        }
    }
    let mut data = d[..a as usize].to_vec();
    data.extend_from_slice(&d[b as usize..]);
    std::fs::write(dir.join(SHARD0), join(&h, &data)).unwrap();
    edit_json(&dir.join(INDEX), |o| {
        o["weight_map"].as_object_mut().unwrap().remove(name);
    });
    open_err(&dir, &[name, "missing"]);
}

#[test]
fn unexpected_tensor_is_reported_not_fatal() {
    let (_t, dir) = copy_base();
    let name = "model.layers.0.mlp.extra.weight";
    let (mut h, mut d) = split(&std::fs::read(dir.join(SHARD1)).unwrap());
    let end = d.len();
    d.extend([0u8; 8]);
    h.insert(
        name.into(),
        serde_json::json!({"dtype": "BF16", "shape": [4], "data_offsets": [end, end + 8]}),
    );
    std::fs::write(dir.join(SHARD1), join(&h, &d)).unwrap();
    edit_json(&dir.join(INDEX), |o| {
        o.get_mut("weight_map").unwrap()[name] = SHARD1.into();
    });
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.unexpected_tensors(), &[name.to_string()]);
}

#[test]
fn single_file_checkpoint_opens() {
    let (_t, dir) = copy_base();
    let mut all = Vec::new();
    let s0 = std::fs::read(dir.join(SHARD0)).unwrap();
    let s1 = std::fs::read(dir.join(SHARD1)).unwrap();
    for bytes in [&s0, &s1] {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        for (name, view) in st.tensors() {
            all.push((
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = all
        .iter()
        .map(|(n, dt, sh, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, sh.clone(), data).unwrap(),
            )
        })
        .collect();
    for f in [SHARD0, SHARD1, INDEX] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert!(!ck.is_sharded());
    assert_eq!(ck.tensor_names().count(), 79);

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    open_err(&dir, &["model.safetensors", "not a safetensors checkpoint"]);
}
