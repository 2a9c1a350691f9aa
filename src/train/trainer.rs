//! The training run: data, adapter, model, then optimizer steps with logs, evals and checkpoints.
//! Generic over the autodiff backend (CPU `Autodiff<Flex>`; CUDA in `cuda` builds).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use adapters::provenance::{self, Provenance, PROVENANCE_FILE, SIGNATURES_FILE};
use anyhow::{anyhow, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use kernels::ops::LoraLinearBackend;
use serde_json::json;

use super::batch::{collate, Batch};
use super::config::{QuantCfg, TrainConfig};
use super::eval::eval_loss;
use super::nodes::{run_fingerprint, NodeGroup};
use super::optim::{AdamW, AdamWConfig};
use super::parallel::Replicas;
use super::report;
use super::schedule::{LrSchedule, MinLr, ScheduleConfig};
use super::setup::Setup;
use super::state::{self, TrainerState, OPTIMIZER_FILE, STATE_FILE};
use super::step::StepGrads;
use super::trainable::{Stepped, Trainable};
use crate::data::Sampler;
use crate::model::{ForwardMode, GptOssForCausalLM, GradPath, QuantMode};

/// Set by Ctrl-C: the loop saves a checkpoint and stops after the current step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: TrainerState,
    pub output_dir: PathBuf,
    /// Stopped by Ctrl-C before `max_steps`.
    pub interrupted: bool,
}

/// Runs training on backend `B` over `devices` (rank order; `setup.layout` says how they are cut
/// into replicas and stages).
pub fn run<B>(setup: Setup, devices: &[B::Device]) -> Result<Outcome>
where
    B: AutodiffBackend + LoraLinearBackend,
    B::InnerBackend: LoraLinearBackend,
{
    let Setup {
        layout,
        stages,
        cfg,
        ckpt,
        data,
        adapter_config,
        initial,
        resume,
        output_dir,
        coverage,
        pad_id,
        total_steps,
        steps_per_epoch,
        provenance,
    } = setup;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    INTERRUPTED.store(false, Ordering::SeqCst);

    let base_config = ckpt.config().clone();
    let opt_cfg = AdamWConfig {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
    let (start, adamw, mut st) = match &resume {
        Some(dir) => {
            let a = adapters::LoraAdapter::load(dir)
                .with_context(|| format!("resuming from {}", dir.display()))?;
            let opt = AdamW::load(&dir.join(OPTIMIZER_FILE), opt_cfg)?;
            let st = TrainerState::load(&dir.join(STATE_FILE))?;
            tracing::info!("resuming from {} (step {})", dir.display(), st.global_step);
            (a, opt, st)
        }
        None => (
            initial,
            AdamW::new(opt_cfg)?,
            TrainerState {
                max_steps: total_steps,
                seed: cfg.seed,
                ..Default::default()
            },
        ),
    };
    st.max_steps = total_steps;
    let schedule = LrSchedule::new(&ScheduleConfig {
        kind: cfg.lr_scheduler_type.parse()?,
        base_lr: cfg.learning_rate,
        warmup: cfg.warmup,
        total_steps,
        min_lr: MinLr::from_kwargs(cfg.min_lr_rate, cfg.min_lr)?,
    })?;
    let quant = match cfg.quant_cfg {
        QuantCfg::Mxfp4MlpWeightOnly => QuantMode::Mxfp4,
        QuantCfg::None => QuantMode::None,
    };
    let mode = ForwardMode {
        quant,
        path: GradPath::CustomOp,
    };
    ensure!(
        devices.len() == layout.devices,
        "{} devices given, the layout has {}",
        devices.len(),
        layout.devices
    );
    let mut replicas =
        Replicas::<B>::new(&ckpt, devices, stages)?.with_adapter(&start, &base_config)?;
    let mut trainable = Trainable::new(layout.optimizer, &start, adamw, replicas.first())?;
    drop(start);
    tracing::info!("LoRA factors and AdamW state on the {:?}", layout.optimizer);
    if devices.len() > 1 {
        tracing::info!(
            "{} devices: {} data-parallel replica(s) of {} stage(s), layers per stage {:?}",
            devices.len(),
            replicas.len(),
            layout.stages,
            replicas.ranges()
        );
    }
    let leader = layout.nodes.is_leader();
    let global_replicas = replicas.len() * layout.nodes.nnodes;
    let first_replica = layout.nodes.rank * replicas.len();
    let run_id = run_fingerprint(&cfg, &provenance, total_steps, st.global_step, &layout)?;
    let mut group = NodeGroup::connect(&layout.nodes, &run_id)?;
    if group.is_some() {
        tracing::info!(
            "node {} of {}: replicas {}..{} of {global_replicas}",
            layout.nodes.rank,
            layout.nodes.nnodes,
            first_replica,
            first_replica + replicas.len()
        );
    }
    let micro_per_step = cfg.gradient_accumulation_steps * global_replicas;
    let mut sampler = Sampler::new(data.train.len(), cfg.seed, true, st.data_position);
    let n_train = data.train.len();

    eprintln!("{coverage}");
    tracing::info!(
        "{} training sequences, {} steps ({} per epoch), batch {} × accumulation {}, quantization {}",
        n_train,
        total_steps,
        steps_per_epoch,
        cfg.per_device_train_batch_size,
        cfg.gradient_accumulation_steps,
        cfg.quant_cfg.name()
    );

    let evaluate = |model: &GptOssForCausalLM<B>, st: &mut TrainerState| -> Result<()> {
        let Some(eval) = data.eval.as_ref().filter(|_| leader) else {
            return Ok(());
        };
        let m = model.valid();
        let bs = cfg.per_device_eval_batch_size;
        let deployed = eval_loss(&m, eval, bs, pad_id, quant)?;
        let other_mode = match quant {
            QuantMode::Mxfp4 => QuantMode::None,
            _ => QuantMode::Mxfp4,
        };
        let other = eval_loss(&m, eval, bs, pad_id, other_mode)?;
        let (k1, k2) = match quant {
            QuantMode::Mxfp4 => ("eval_loss", "eval_loss_unquantized"),
            _ => ("eval_loss", "eval_loss_quantized"),
        };
        let entry = json!({"step": st.global_step, "epoch": st.epoch, k1: deployed, k2: other});
        tracing::info!(
            "step {}: {k1} {deployed:.5}, {k2} {other:.5}",
            st.global_step
        );
        report::append_log(&output_dir, &entry)?;
        st.log_history.push(entry);
        Ok(())
    };

    let eval_every = match cfg.eval_strategy.as_str() {
        "steps" => cfg.eval_steps.unwrap_or(cfg.logging_steps),
        "epoch" => steps_per_epoch,
        _ => 0,
    };
    let save_every = match cfg.save_strategy.as_str() {
        "steps" => cfg.save_steps,
        "epoch" => steps_per_epoch,
        _ => 0,
    };
    if cfg.eval_on_start && st.global_step == 0 {
        evaluate(replicas.first(), &mut st)?;
    }

    let bar = match leader {
        true => ProgressBar::new(total_steps as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(st.global_step as u64);
    let (mut window_loss, mut window_steps) = (0f64, 0usize);
    let mut window_start = Instant::now();
    let mut window_tokens = 0usize;
    let mut interrupted = false;

    while st.global_step < total_steps {
        // gather the step's micro-batches (skipping those with no counted token)
        let mut batches: Vec<Batch> = Vec::new();
        while batches.len() < micro_per_step {
            let seqs: Vec<_> = (0..cfg.per_device_train_batch_size)
                .filter_map(|_| sampler.next_index().map(|(i, _)| data.train.sequence(i)))
                .collect();
            let b = collate(&seqs, pad_id);
            window_tokens += seqs.iter().map(|s| s.input_ids.len()).sum::<usize>();
            st.num_input_tokens_seen += seqs.iter().map(|s| s.input_ids.len()).sum::<usize>();
            if b.counted() == 0 {
                st.skipped_batches += 1;
                tracing::warn!(
                    "a micro-batch with no trained token was skipped ({} so far)",
                    st.skipped_batches
                );
                continue;
            }
            batches.push(b);
        }
        let step = st.global_step;
        let last_good = || -> String {
            match state::checkpoints(&output_dir)
                .ok()
                .and_then(|mut c| c.pop())
            {
                Some((_, p)) => p.display().to_string(),
                None => "none (no checkpoint was saved yet)".into(),
            }
        };
        let stopped = || {
            format!(
                "step {}: training stopped; the last good checkpoint is {}",
                step + 1,
                last_good()
            )
        };
        let g = replicas
            .step_grads(
                &batches,
                first_replica,
                global_replicas,
                mode,
                cfg.gradient_checkpointing,
            )
            .with_context(stopped)?;
        let lr = schedule.lr_at(step);
        let multi_node = group.is_some();
        let mut reduce = |h| match group.as_mut() {
            Some(group) => group.all_reduce(step + 1, h),
            None => Ok(h),
        };
        let reduce: Option<&mut dyn FnMut(StepGrads) -> Result<StepGrads>> = match multi_node {
            true => Some(&mut reduce),
            false => None,
        };
        let Stepped {
            loss,
            counted,
            grad_norm,
        } = trainable
            .update(g, reduce, lr, cfg.max_grad_norm)
            .map_err(|e| {
                anyhow!(
                    "step {}: {e:#}; training stopped. The last good checkpoint is {}",
                    step + 1,
                    last_good()
                )
            })?;
        replicas = trainable.load_into(replicas, &adapter_config, &base_config)?;
        st.global_step += 1;
        st.num_trained_tokens += counted;
        st.data_position = sampler.position();
        st.epoch = st.global_step as f64 / steps_per_epoch.max(1) as f64;
        window_loss += loss;
        window_steps += 1;
        bar.set_position(st.global_step as u64);
        let tokens_per_s = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} grad_norm {grad_norm:.3} {tokens_per_s:.0} tok/s"
        ));

        if st.global_step % cfg.logging_steps == 0 || st.global_step == total_steps {
            let secs = window_start.elapsed().as_secs_f64();
            let entry = json!({
                "step": st.global_step,
                "epoch": st.epoch,
                "loss": window_loss / window_steps as f64,
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": window_tokens as f64 / secs.max(1e-9),
                "num_input_tokens_seen": st.num_input_tokens_seen,
            });
            if leader {
                bar.suspend(|| tracing::info!("{entry}"));
                report::append_log(&output_dir, &entry)?;
            }
            st.log_history.push(entry);
            (window_loss, window_steps, window_tokens) = (0.0, 0, 0);
            window_start = Instant::now();
        }
        if eval_every > 0 && (st.global_step % eval_every == 0 || st.global_step == total_steps) {
            bar.suspend(|| evaluate(replicas.first(), &mut st))?;
        }
        interrupted = INTERRUPTED.load(Ordering::SeqCst) && st.global_step < total_steps;
        if leader && ((save_every > 0 && st.global_step % save_every == 0) || interrupted) {
            save_checkpoint(
                &output_dir,
                &trainable.adapter(&adapter_config)?,
                &*trainable.optimizer()?,
                &st,
                cfg.save_total_limit,
                &provenance,
            )?;
        }
        if interrupted {
            tracing::warn!(
                "interrupted: checkpoint-{} saved; resume with --resume_from_checkpoint latest",
                st.global_step
            );
            break;
        }
    }
    bar.finish_and_clear();
    if eval_every == 0 && data.eval.is_some() && !interrupted {
        evaluate(replicas.first(), &mut st)?;
    }
    if !leader {
        return Ok(Outcome {
            state: st,
            output_dir,
            interrupted,
        });
    }
    finish(
        &output_dir,
        &cfg,
        &trainable.adapter(&adapter_config)?,
        &st,
        &coverage,
        interrupted,
        &provenance,
    )?;
    Ok(Outcome {
        state: st,
        output_dir,
        interrupted,
    })
}

/// The provenance of the adapter at `st`'s step: the run's, with the step and origin.
fn provenance_at(run: &Provenance, origin: &str, st: &TrainerState) -> Provenance {
    let mut p = run.clone();
    p.origin = origin.into();
    p.created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let Some(obj) = p.training.as_object_mut() {
        obj.insert("global_step".into(), json!(st.global_step));
        obj.insert("epoch".into(), json!(st.epoch));
    }
    p
}

/// Writes `checkpoint-N` (adapter, optimizer, state, sealed with the provenance) through a
/// temporary directory.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    dir: &Path,
    adapter: &adapters::LoraAdapter,
    adamw: &AdamW,
    st: &TrainerState,
    limit: Option<usize>,
    run: &Provenance,
) -> Result<()> {
    let name = format!("checkpoint-{}", st.global_step);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    adapter.save(&tmp, false)?;
    adamw.save(&tmp.join(OPTIMIZER_FILE))?;
    st.save(&tmp.join(STATE_FILE))?;
    provenance::seal(&tmp, &mut provenance_at(run, "checkpoint", st))?;
    let target = dir.join(&name);
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&tmp, &target)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))?;
    tracing::info!("saved {}", target.display());
    state::prune(dir, limit)
}

/// The final adapter (sealed with its provenance), state, plot and model card in `dir`.
#[allow(clippy::too_many_arguments)]
fn finish(
    dir: &Path,
    cfg: &TrainConfig,
    adapter: &adapters::LoraAdapter,
    st: &TrainerState,
    coverage: &str,
    interrupted: bool,
    run: &Provenance,
) -> Result<()> {
    st.save(&dir.join(STATE_FILE))?;
    report::plot(&st.log_history, &dir.join("loss.svg"))?;
    let last_eval = st
        .log_history
        .iter()
        .rev()
        .find(|e| e.get("eval_loss").is_some());
    let last_train = st
        .log_history
        .iter()
        .rev()
        .find(|e| e.get("loss").is_some());
    let mut last = last_eval.cloned().unwrap_or_default();
    if let (Some(obj), Some(t)) = (last.as_object_mut(), last_train.and_then(|t| t.get("loss"))) {
        obj.insert("loss".into(), t.clone());
    }
    let prov = provenance_at(run, "train", st);
    let card = report::model_card(&report::CardFacts {
        base: cfg.model_name_or_path.as_deref().unwrap_or("?"),
        fingerprint: prov.base.fingerprint.as_deref(),
        quant: cfg.quant_cfg.name(),
        coverage,
        config_json: &serde_json::to_value(cfg)?,
        last: Some(&last),
        steps: st.global_step,
        tokens_seen: st.num_input_tokens_seen,
    });
    if interrupted {
        // no final adapter: the card describes the run, the checkpoint holds the adapter
        return std::fs::write(dir.join("README.md"), card)
            .with_context(|| format!("cannot write {}/README.md", dir.display()));
    }
    let tmp = dir.join(".final.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    adapter.save(&tmp, false)?;
    std::fs::write(tmp.join("README.md"), card)
        .with_context(|| format!("cannot write {}/README.md", tmp.display()))?;
    provenance::seal(&tmp, &mut prov.clone())?;
    // signatures of an earlier adapter in this directory do not cover this one
    let stale = dir.join(SIGNATURES_FILE);
    if stale.exists() {
        std::fs::remove_file(&stale)?;
    }
    for f in [
        adapters::CONFIG_FILE,
        adapters::WEIGHTS_FILE,
        "README.md",
        PROVENANCE_FILE,
    ] {
        std::fs::rename(tmp.join(f), dir.join(f))
            .with_context(|| format!("cannot move {f} into {}", dir.display()))?;
    }
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}
