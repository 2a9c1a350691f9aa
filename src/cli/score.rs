//! `lora-qat score`: one forward pass on given token ids; writes the logits and the mean loss.
//!
//! Input: a safetensors file with `input_ids` (I64 `[batch, seq]`) and optionally `labels` (I64,
//! same shape, `-100` = ignored) and `position_ids` (I64, same shape). Labels are shifted like
//! transformers (`logits[:, :-1]` predict `labels[:, 1:]`). Without `labels`, the input ids are
//! the labels (what the benchmark scripts do: `model(input_ids=ids, labels=ids)`), except at the
//! first token of each packed example, which is -100 (no prediction across an example boundary).
//! `position_ids` describe packed rows (padding-free packing): they restart at 0 at each example,
//! which then attends only to itself (see [`PositionIds`]); without them every row is `0..seq`.
//! Output: `logits` (F32 `[batch, seq, vocab]`) and `loss` (F32 `[1]`, mean over the counted
//! tokens; NaN when none is counted), metadata `{"format": "pt"}`, written to a temporary file
//! beside `--out` and renamed into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use kernels::ops::LoraLinearBackend;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::checkpoint::{resolve_model, Checkpoint};
use crate::device::{self, DeviceSet, Job};
use crate::model::loss::shifted_targets;
use crate::model::placement::{even_ranges, LayerPlacement};
use crate::model::{
    causal_lm_loss, ForwardMode, GptOssForCausalLM, GradPath, PositionIds, QuantMode, IGNORE_INDEX,
};

/// Arguments of `lora-qat score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// Base checkpoint: a local directory or a hub repo id (resolved in the Hugging Face cache).
    #[arg(long)]
    pub base: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long, alias = "lora-path", alias = "lora_path")]
    pub adapter: Option<PathBuf>,
    /// `mxfp4`: the deployed weights (QAT forward); `none`: plain LoRA (PEFT's forward).
    #[arg(long, default_value = "mxfp4", value_parser = ["mxfp4", "none"])]
    pub quant: String,
    /// safetensors file with `input_ids` (I64 [batch, seq]), optional `labels` and optional
    /// `position_ids` (packed examples, restarting at 0).
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors file (`logits`, `loss`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute device: `cpu`, `cuda[:N]` (builds with the `cuda` feature) or `vulkan` (builds
    /// with the `vulkan` feature; Mesa's lavapipe runs it on a CPU); several (`cuda:0-1`) hold
    /// equal contiguous ranges of the layers (layer placement).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSet,
}

/// The token ids, labels and positions read from `--input`.
#[derive(Debug)]
struct Inputs {
    file: PathBuf,
    ids: Vec<i64>,
    labels: Vec<i64>,
    positions: PositionIds,
    batch: usize,
    seq: usize,
    labels_given: bool,
}

/// What the forward produced, on the host.
struct Scored {
    logits: Vec<f32>,
    shape: [usize; 3],
    loss: f32,
    counted: usize,
}

/// Runs `lora-qat score`.
pub fn run(args: &ScoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.out.exists() && !args.overwrite {
        bail!(
            "{} exists; pass --overwrite to replace it",
            args.out.display()
        );
    }
    let quant: QuantMode = args.quant.parse()?;
    let inputs = read_inputs(&args.input)?;
    let dir = resolve_model(&args.base)?;
    let ckpt = Arc::new(Checkpoint::open(&dir)?);
    let adapter = args
        .adapter
        .as_deref()
        .map(adapters::LoraAdapter::load)
        .transpose()?;
    let job = ScoreJob {
        ckpt,
        adapter: adapter.as_ref(),
        quant,
        inputs: &inputs,
    };
    let scored = device::dispatch(&args.device, job)?;
    write_outputs(&args.out, &scored)?;
    let examples = inputs
        .positions
        .values()
        .iter()
        .filter(|&&p| p == 0)
        .count();
    tracing::info!(
        "scored {} tokens ({} × {}, {examples} examples): loss {:.6} over {} counted{}, {:.2}s, \
         wrote {}",
        inputs.batch * inputs.seq,
        inputs.batch,
        inputs.seq,
        scored.loss,
        scored.counted,
        if inputs.labels_given {
            ""
        } else {
            " (labels = input_ids)"
        },
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// The forward, on the backend of `--device`.
struct ScoreJob<'a> {
    ckpt: Arc<Checkpoint>,
    adapter: Option<&'a adapters::LoraAdapter>,
    quant: QuantMode,
    inputs: &'a Inputs,
}

impl Job for ScoreJob<'_> {
    type Output = Scored;

    fn run<B>(self, devices: &[B::Device]) -> anyhow::Result<Scored>
    where
        B: AutodiffBackend + LoraLinearBackend,
        B::InnerBackend: LoraLinearBackend,
    {
        score_on::<B::InnerBackend>(devices, self.ckpt, self.adapter, self.quant, self.inputs)
    }
}

/// The forward on backend `B`.
fn score_on<B: LoraLinearBackend>(
    devices: &[B::Device],
    ckpt: Arc<Checkpoint>,
    adapter: Option<&adapters::LoraAdapter>,
    quant: QuantMode,
    inputs: &Inputs,
) -> anyhow::Result<Scored> {
    let config = ckpt.config().clone();
    let dir = ckpt.dir().display().to_string();
    let layers = config.num_hidden_layers;
    let placement = LayerPlacement::stages(&even_ranges(layers, devices.len())?, devices, layers)?;
    let mut model = GptOssForCausalLM::<B>::from_checkpoint_placed(ckpt, &placement)
        .with_context(|| format!("loading the base model from {dir}"))?;
    if let Some(a) = adapter {
        model = model.with_adapter(a, &config)?;
    }
    let ids = model
        .input_ids(&inputs.ids, inputs.batch, inputs.seq, &model.embed_device())
        .with_context(|| format!("--input {}", inputs.file.display()))?;
    let vocab = model.vocab_size();
    let (rows, _) =
        shifted_targets(&inputs.labels, inputs.batch, inputs.seq, vocab).with_context(|| {
            let tensor = if inputs.labels_given {
                "labels"
            } else {
                "input_ids"
            };
            format!("--input {}: tensor `{tensor}`", inputs.file.display())
        })?;
    let mode = ForwardMode {
        quant,
        path: GradPath::CustomOp,
    };
    let logits = model.forward_at(ids, &inputs.positions, mode)?;
    let loss = if rows.is_empty() {
        tracing::warn!("no label is counted after the shift: the loss is NaN");
        f32::NAN
    } else {
        causal_lm_loss(logits.clone(), &inputs.labels)?
            .loss
            .into_scalar()
            .elem()
    };
    let shape = logits.dims();
    Ok(Scored {
        logits: logits.into_data().iter::<f32>().collect(),
        shape,
        loss,
        counted: rows.len(),
    })
}

/// An I64 tensor of rank 2 from the input file, named in errors.
fn i64_matrix(
    st: &SafeTensors,
    file: &Path,
    name: &str,
) -> anyhow::Result<Option<(Vec<i64>, [usize; 2])>> {
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => bail!("{}: tensor `{name}`: {e}", file.display()),
    };
    ensure!(
        view.dtype() == Dtype::I64,
        "{}: tensor `{name}` is {:?}, expected I64",
        file.display(),
        view.dtype()
    );
    let &[batch, seq] = view.shape() else {
        bail!(
            "{}: tensor `{name}` has shape {:?}, expected [batch, seq]",
            file.display(),
            view.shape()
        );
    };
    let values = view
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Some((values, [batch, seq])))
}

fn read_inputs(file: &Path) -> anyhow::Result<Inputs> {
    let bytes =
        std::fs::read(file).with_context(|| format!("reading --input {}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", file.display()))?;
    let (ids, [batch, seq]) = i64_matrix(&st, file, "input_ids")?
        .with_context(|| format!("{}: no tensor `input_ids`", file.display()))?;
    ensure!(
        batch > 0 && seq > 0,
        "{}: tensor `input_ids` is empty ([{batch}, {seq}])",
        file.display()
    );
    let (labels, labels_given) = match i64_matrix(&st, file, "labels")? {
        Some((labels, shape)) => {
            ensure!(
                shape == [batch, seq],
                "{}: tensor `labels` has shape {shape:?}, but `input_ids` is [{batch}, {seq}]",
                file.display()
            );
            (labels, true)
        }
        None => (ids.clone(), false),
    };
    let positions = match i64_matrix(&st, file, "position_ids")? {
        Some((values, shape)) => {
            ensure!(
                shape == [batch, seq],
                "{}: tensor `position_ids` has shape {shape:?}, but `input_ids` is [{batch}, {seq}]",
                file.display()
            );
            PositionIds::from_i64(&values, batch, seq)
                .with_context(|| format!("{}: tensor `position_ids`", file.display()))?
        }
        None => PositionIds::contiguous(batch, seq),
    };
    let mut labels = labels;
    if !labels_given {
        // the first token of a packed example is not predicted from the previous example
        for (label, &pos) in labels.iter_mut().zip(positions.values()) {
            if pos == 0 {
                *label = IGNORE_INDEX;
            }
        }
    }
    Ok(Inputs {
        file: file.to_path_buf(),
        ids,
        labels,
        positions,
        batch,
        seq,
        labels_given,
    })
}

/// Writes `logits` and `loss` to a temporary sibling of `out`, then renames it into place.
fn write_outputs(out: &Path, scored: &Scored) -> anyhow::Result<()> {
    let logits_bytes: Vec<u8> = scored.logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let loss_bytes = scored.loss.to_le_bytes();
    let views = [
        (
            "logits",
            TensorView::new(Dtype::F32, scored.shape.to_vec(), &logits_bytes)?,
        ),
        ("loss", TensorView::new(Dtype::F32, vec![1], &loss_bytes)?),
    ];
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let name = out
        .file_name()
        .with_context(|| format!("--out {} has no file name", out.display()))?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
