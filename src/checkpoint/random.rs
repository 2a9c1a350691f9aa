//! A random gpt-oss in the release format, from a config: the `Config::init` of this crate
//! (burn's convention: a config builds the module with fresh weights). Weights follow
//! transformers' `_init_weights` for gpt-oss: normal(0, initializer_range) for matrices,
//! embeddings and sinks, ones for the RMSNorm weights, zeros for biases; experts drawn in f32 and
//! quantized to MXFP4 with the codec. Deterministic given the seed.

use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::GptOssConfig;
use super::spec::TensorSpec;
use super::writer::{ShardedWriter, WriterOptions};
use super::Dtype;

/// `n` draws of normal(0, std) (Box–Muller).
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

fn bf16_bytes(values: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; values.len() * 2];
    kernels::bf16::encode_le(values, &mut out)?;
    Ok(out)
}

/// The values of a BF16 tensor of the release format, by its role.
fn bf16_values(spec: &TensorSpec, rng: &mut ChaCha8Rng, std: f32) -> Vec<f32> {
    let n = spec.numel() as usize;
    let name = spec.name.as_str();
    if name.ends_with("norm.weight") {
        vec![1.0; n]
    } else if name.ends_with("bias") {
        vec![0.0; n]
    } else {
        normal(rng, n, std)
    }
}

impl GptOssConfig {
    /// Writes a checkpoint with random weights for this config into `dir` (`config_json` is
    /// written as its `config.json`; `side_files` are copied in, e.g. a tokenizer), atomically;
    /// an existing `dir` is only replaced with `overwrite`.
    pub fn init_checkpoint(
        &self,
        config_json: &str,
        dir: &Path,
        seed: u64,
        side_files: &[(&str, &[u8])],
        overwrite: bool,
    ) -> Result<()> {
        // `initializer_range` is not part of the architecture: read it from the JSON (0.02 default)
        let std = serde_json::from_str::<serde_json::Value>(config_json)
            .ok()
            .and_then(|v| v.get("initializer_range")?.as_f64())
            .unwrap_or(0.02) as f32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // shards of at most 4 GiB, as the release's are (a shard is assembled beside its data
        // file, so writing needs the shard's size again in free disk, not the checkpoint's)
        let mut w = ShardedWriter::create(
            dir,
            WriterOptions {
                overwrite,
                max_shard_bytes: 4 << 30,
                ..Default::default()
            },
        )?;
        let mut scales_of: Option<(String, Vec<u8>)> = None;
        for spec in self.expected_tensors() {
            let data = match spec.dtype {
                Dtype::U8 if spec.name.ends_with("_blocks") => {
                    // [E, rows, cols/32, 16]: draw every expert in f32, quantize
                    let n = spec.numel() as usize * 2;
                    let values = normal(&mut rng, n, std);
                    let mut blocks = vec![0u8; n / 2];
                    let mut scales = vec![0u8; n / 32];
                    kernels::mxfp4::quantize(&values, &mut blocks, &mut scales)?;
                    let stem = spec.name.trim_end_matches("_blocks");
                    scales_of = Some((format!("{stem}_scales"), scales));
                    blocks
                }
                Dtype::U8 => match scales_of.take() {
                    Some((name, scales)) if name == spec.name => scales,
                    _ => anyhow::bail!("{}: scales without their blocks", spec.name),
                },
                _ => bf16_bytes(&bf16_values(&spec, &mut rng, std))?,
            };
            w.add_tensor(&spec.name, spec.dtype, &spec.shape, &data)?;
        }
        w.write_file("config.json", config_json.as_bytes())?;
        for (name, bytes) in side_files {
            w.write_file(name, bytes)?;
        }
        w.finish()
            .with_context(|| format!("writing the random checkpoint {}", dir.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    #[test]
    fn random_checkpoint_opens_and_is_deterministic() {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-gpt-oss/base/config.json"
        ))
        .unwrap();
        let cfg = GptOssConfig::from_json_str(&json, "config.json").unwrap();
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        cfg.init_checkpoint(&json, &a, 7, &[], false).unwrap();
        cfg.init_checkpoint(&json, &b, 7, &[], false).unwrap();
        let ck = Checkpoint::open(&a).unwrap();
        assert!(ck.unexpected_tensors().is_empty());
        let norm = ck.bf16_to_f32("model.norm.weight").unwrap();
        assert!(norm.iter().all(|&v| v == 1.0));
        let q = ck
            .bf16_to_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        let std = (q.iter().map(|v| v * v).sum::<f32>() / q.len() as f32).sqrt();
        assert!((0.015..0.025).contains(&std), "std {std}");
        assert_eq!(
            std::fs::read(a.join("model.safetensors")).unwrap(),
            std::fs::read(b.join("model.safetensors")).unwrap()
        );
    }
}
