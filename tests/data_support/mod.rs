//! Shared helpers of the data tests: the fixtures' tokenizer directories.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny checkpoint's directory (config, tokenizer, template, weights).
pub fn tiny_base() -> PathBuf {
    fixtures().join("tiny-gpt-oss/base")
}

/// A directory with what `prepare` needs of gpt-oss-20b: its config, the real o200k_harmony
/// `tokenizer.json` (unpacked from the committed .gz), the real chat template and a
/// `tokenizer_config.json` with gpt-oss's special tokens.
pub fn real_tokenizer_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let chat = fixtures().join("gpt-oss-chat");
    let gz = std::fs::File::open(chat.join("tokenizer.json.gz")).expect("tokenizer.json.gz");
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut json)
        .expect("gunzip tokenizer");
    std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    std::fs::copy(
        chat.join("chat_template.jinja"),
        dir.path().join("chat_template.jinja"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/gpt-oss-20b.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    dir
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

/// A JSON array of integers.
pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}
