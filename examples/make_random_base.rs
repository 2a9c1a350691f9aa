//! Writes a random gpt-oss checkpoint in the release format from a `config.json`
//! (`GptOssConfig::init_checkpoint`: transformers' initialization, MXFP4 experts through the
//! codec, one tensor in memory at a time), with the tokenizer and chat template beside it.
//!
//! ```text
//! cargo run --release --example make_random_base -- CONFIG OUT_DIR TOKENIZER CHAT_TEMPLATE [SEED]
//! ```
//! `TOKENIZER` may be gzipped (`.gz`, as `tests/fixtures/gpt-oss-chat/tokenizer.json.gz`).
//! Used by `scripts/run_20b_cpu.sh` with `configs/gpt-oss-20b.json` (about 13 GB).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lora_qat::checkpoint::GptOssConfig;

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", path.display()))?;
        return Ok(out);
    }
    Ok(raw)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=5).contains(&args.len()) {
        bail!("usage: make_random_base CONFIG OUT_DIR TOKENIZER CHAT_TEMPLATE [SEED]");
    }
    let config_path = PathBuf::from(&args[0]);
    let out = PathBuf::from(&args[1]);
    let seed: u64 = match args.get(4) {
        Some(s) => s.parse().with_context(|| format!("seed {s:?}"))?,
        None => 0,
    };
    let json = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config = GptOssConfig::from_json_str(&json, &config_path.display().to_string())?;
    let tokenizer = read_maybe_gz(Path::new(&args[2]))?;
    let template = std::fs::read(&args[3]).with_context(|| format!("reading {}", args[3]))?;
    let tokenizer_config = br#"{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>", "model_max_length": 131072}"#;
    let side: Vec<(&str, &[u8])> = vec![
        ("tokenizer.json", &tokenizer),
        ("tokenizer_config.json", tokenizer_config),
        ("chat_template.jinja", &template),
    ];
    let t0 = std::time::Instant::now();
    config.init_checkpoint(&json, &out, seed, &side, false)?;
    eprintln!(
        "random checkpoint written to {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
