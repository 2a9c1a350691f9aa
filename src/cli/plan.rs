//! `lora-qat plan`: per-device memory and the strategy (data parallel, layer placement, or both)
//! for a LoRA-QAT run on given devices; refuses, with what is needed and what would help, when
//! nothing fits. Reads only the base's `config.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::checkpoint::{parse_repo_id, resolve_model, GptOssConfig};
use crate::plan::{plan, Devices, PlanOptions};

/// The architecture configs shipped in the binary, by name.
const SHIPPED: [(&str, &str); 2] = [
    (
        "gpt-oss-20b",
        include_str!("../../configs/gpt-oss-20b.json"),
    ),
    (
        "gpt-oss-120b",
        include_str!("../../configs/gpt-oss-120b.json"),
    ),
];

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The base: `gpt-oss-20b` / `gpt-oss-120b` (shipped configs), a checkpoint directory, a
    /// `config.json`, or a hub repo id (from the local Hugging Face cache).
    #[arg(long, alias = "base-path", alias = "model_name_or_path")]
    pub base: String,
    /// Devices: `8x80GB`, `1x80GB`, `80GB`, `8x40GB`, `cpu:24GB` (GB = 10^9 bytes, GiB = 2^30).
    #[arg(long)]
    pub devices: String,
    /// Tokens per sequence.
    #[arg(
        long,
        alias = "max-length",
        alias = "max_length",
        default_value_t = 4096
    )]
    pub seq: usize,
    /// Sequences per micro-batch per device.
    #[arg(long, alias = "per_device_train_batch_size", default_value_t = 1)]
    pub batch: usize,
    /// `true` / `false`; when absent the planner uses it only if needed to fit.
    #[arg(long, alias = "gradient_checkpointing", num_args = 0..=1, default_missing_value = "true")]
    pub gradient_checkpointing: Option<bool>,
    /// LoRA rank.
    #[arg(long, alias = "lora_r", default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA targets as `train` reads them (`q_proj`, `self_attn`, `experts`, `all-linear`, paths,
    /// regexes); comma-separated or repeated. Default: attention q/k/v/o and both expert projections.
    #[arg(long, alias = "lora-target-modules", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// `train`'s `--quant-cfg`: `MXFP4_MLP_WEIGHT_ONLY_CFG` (QAT, default) or `NONE` (plain LoRA).
    #[arg(long, alias = "quant_cfg", default_value = "MXFP4_MLP_WEIGHT_ONLY_CFG")]
    pub quant_cfg: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The config named by `--base`, and how to name it.
pub fn load_base(spec: &str) -> Result<(String, GptOssConfig)> {
    if let Some((name, json)) = SHIPPED.iter().find(|(n, _)| *n == spec) {
        return Ok((name.to_string(), GptOssConfig::from_json_str(json, name)?));
    }
    let path = Path::new(spec);
    let file = if path.is_file() {
        path.to_path_buf()
    } else if path.is_dir() {
        path.join("config.json")
    } else if parse_repo_id(spec).is_some() {
        resolve_model(spec)?.join("config.json")
    } else {
        bail!(
            "unknown base {spec:?}: not a shipped config (gpt-oss-20b, gpt-oss-120b), a checkpoint \
             directory, a config.json file or a hub repo id (org/name)"
        );
    };
    let config = GptOssConfig::from_file(&file)
        .with_context(|| format!("base {spec}: reading its config"))?;
    Ok((spec.to_string(), config))
}

/// Runs `plan`: prints the plan; fails (after printing it) when nothing fits.
pub fn run(args: &PlanArgs) -> Result<()> {
    let devices: Devices = args.devices.parse()?;
    let (name, config) = load_base(&args.base)?;
    let qat = crate::train::config::QuantCfg::parse(&args.quant_cfg)?
        == crate::train::config::QuantCfg::Mxfp4MlpWeightOnly;
    let options = PlanOptions {
        devices,
        seq: args.seq,
        batch: args.batch,
        gradient_checkpointing: args.gradient_checkpointing,
        lora_r: args.lora_r,
        targets: (!args.targets.is_empty()).then(|| args.targets.clone()),
        layers_to_transform: None,
        qat,
    };
    let p = plan(&name, &config, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{p}");
    }
    if let Some(r) = &p.refusal {
        bail!(
            "{} does not fit on {}: needs {:.2} GB per device, {:.2} GB usable ({} dominate); try: {}",
            name,
            args.devices,
            r.needed as f64 / 1e9,
            r.available as f64 / 1e9,
            r.dominant.0,
            r.suggestions.join("; ")
        );
    }
    Ok(())
}
