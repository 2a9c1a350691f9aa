//! AdamW on host f32 buffers keyed by PEFT tensor names, bit-identical to
//! `torch.optim.AdamW(foreach=False, fused=False)` on CPU (`_single_tensor_adam` with decoupled
//! weight decay), and its state file.
//!
//! Per tensor and step (scalars in f64 like Python floats, cast to f32 where torch's kernels take
//! them; tensors in f32; `fma` is a fused multiply-add, which ATen's AVX2/AVX-512 `lerp_` and
//! `addcmul_` kernels compute):
//! ```text
//! step += 1                                  (per tensor, like torch's state["step"])
//! p  = p · f32(1 - lr·wd)                    (skipped when wd = 0; ·1 is exact anyway)
//! m  = fma(w, g - m, m)       w = f32(1 - beta1), |w| < 0.5   (torch lerp_)
//!    = fma(w - 1, g - m, g)   otherwise
//! v  = fma(f32(1 - beta2)·g, g, v·f32(beta2))                   (mul_ then addcmul_)
//! bc1 = 1 - beta1^step, bc2 = 1 - beta2^step                     (f64, libm pow like Python)
//! d  = sqrt(v) / f32(bc2^0.5) + f32(eps)
//! p  = p + (f32(-lr/bc1)·m) / d                                  (addcdiv_)
//! ```
//! `bc2 ** 0.5` is Python's `pow(x, 0.5)`, which is not always `sqrt(x)` (glibc's pow is not
//! correctly rounded); it is computed with libm `pow` too, the exponent hidden from LLVM so that
//! it does not rewrite the call into `sqrt`. Elementwise work runs in fixed chunks on rayon and in
//! an AVX-512 / AVX2+FMA / portable copy of one body; every variant gives the same bits (IEEE
//! `sqrt` and division, true `fma`).
//!
//! Torch's own CPU results are machine-dependent in one op: its f32 `sqrt` goes through MKL,
//! whose AVX-512 path is not correctly rounded (~0.6% of values 1 ulp off); the golden is made
//! with MKL's AVX2 path, which is (see `scripts/gen_optim_golden.py`).
//!
//! State file (safetensors): F32 1-D tensors `{name}.exp_avg`, `{name}.exp_avg_sq`; metadata
//! `optimizer = "adamw"`, `step` (completed [`AdamW::step`] calls), `param_steps` (JSON map name →
//! per-tensor step) and `config` (JSON, informational: [`AdamW::load`] takes the run's config).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

mod device;
mod kernel;

pub use device::DeviceAdamW;

use kernel::{update, Coeffs};

/// AdamW hyper-parameters; defaults are HF `TrainingArguments`' (`adam_beta1` 0.9, `adam_beta2`
/// 0.999, `adam_epsilon` 1e-8, `weight_decay` 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// torch's constructor checks.
    pub fn validate(&self) -> Result<()> {
        let Self {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = *self;
        ensure!(
            (0.0..1.0).contains(&beta1),
            "adam_beta1 {beta1}: must be in [0, 1)"
        );
        ensure!(
            (0.0..1.0).contains(&beta2),
            "adam_beta2 {beta2}: must be in [0, 1)"
        );
        ensure!(
            eps.is_finite() && eps >= 0.0,
            "adam_epsilon {eps}: must be finite and >= 0"
        );
        ensure!(
            weight_decay.is_finite() && weight_decay >= 0.0,
            "weight_decay {weight_decay}: must be finite and >= 0"
        );
        Ok(())
    }
}

/// The checks every step starts with (host or device): a usable learning rate and as many
/// gradients as parameters.
fn check_step(lr: f64, params: usize, grads: usize) -> Result<()> {
    ensure!(
        lr.is_finite() && lr >= 0.0,
        "learning rate {lr}: must be finite and >= 0"
    );
    ensure!(
        params == grads,
        "optimizer step: {params} parameters but {grads} gradients"
    );
    Ok(())
}

/// One tensor's optimizer state (torch's `state[p]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    /// Updates applied to this tensor.
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

impl ParamState {
    fn zeros(len: usize) -> Self {
        Self {
            step: 0,
            exp_avg: vec![0.0; len],
            exp_avg_sq: vec![0.0; len],
        }
    }
}

/// AdamW over named host tensors. State is created (zeros) the first time a name is stepped.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    steps: u64,
    state: BTreeMap<String, ParamState>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            steps: 0,
            state: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Completed [`AdamW::step`] calls.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn state(&self, name: &str) -> Option<&ParamState> {
        self.state.get(name)
    }

    /// Names with state, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// One optimizer step at learning rate `lr` over `params` (name, values) with `grads[i]` the
    /// gradient of `params[i]`. Everything is checked before anything changes: equal counts,
    /// distinct names, each gradient and existing state as long as its parameter. Names not passed
    /// keep their state untouched (torch skips parameters without a gradient).
    pub fn step(
        &mut self,
        lr: f64,
        params: &mut [(&str, &mut [f32])],
        grads: &[&[f32]],
    ) -> Result<()> {
        check_step(lr, params.len(), grads.len())?;
        let mut seen = HashSet::with_capacity(params.len());
        for ((name, p), g) in params.iter().zip(grads) {
            ensure!(
                seen.insert(*name),
                "{name}: passed twice to one optimizer step"
            );
            ensure!(
                p.len() == g.len(),
                "{name}: parameter has {} elements but its gradient {}",
                p.len(),
                g.len()
            );
            if let Some(s) = self.state.get(*name) {
                ensure!(
                    s.exp_avg.len() == p.len(),
                    "{name}: optimizer state has {} elements but the parameter {}",
                    s.exp_avg.len(),
                    p.len()
                );
            }
        }
        for ((name, p), g) in params.iter_mut().zip(grads) {
            if !self.state.contains_key(*name) {
                self.state
                    .insert((*name).to_owned(), ParamState::zeros(p.len()));
            }
            let st = self.state.get_mut(*name).expect("inserted above");
            st.step += 1;
            let c = Coeffs::new(&self.config, lr, st.step);
            update(&c, p, g, &mut st.exp_avg, &mut st.exp_avg_sq);
        }
        self.steps += 1;
        Ok(())
    }

    /// The moments as named flat tensors, `{name}.exp_avg` and `{name}.exp_avg_sq`, sorted.
    pub fn state_tensors(&self) -> Vec<(String, &[f32])> {
        let mut out = Vec::with_capacity(2 * self.state.len());
        for (name, s) in &self.state {
            out.push((format!("{name}.exp_avg"), s.exp_avg.as_slice()));
            out.push((format!("{name}.exp_avg_sq"), s.exp_avg_sq.as_slice()));
        }
        out
    }

    /// Writes the state to `path` (safetensors), through a temporary file beside it that is
    /// synced and renamed over `path`, so a crash never leaves a half-written file there.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file_name = path
            .file_name()
            .with_context(|| format!("optimizer state {}: not a file path", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp.{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let param_steps: BTreeMap<&str, u64> = self
            .state
            .iter()
            .map(|(n, s)| (n.as_str(), s.step))
            .collect();
        let metadata = BTreeMap::from([
            ("optimizer".to_owned(), "adamw".to_owned()),
            ("step".to_owned(), self.steps.to_string()),
            (
                "param_steps".to_owned(),
                serde_json::to_string(&param_steps)?,
            ),
            ("config".to_owned(), serde_json::to_string(&self.config)?),
        ]);
        // metadata in key order: a resumed run writes the same bytes as an uninterrupted one
        let tensors = self.state_tensors();
        let write = || -> Result<()> {
            let mut f = std::io::BufWriter::new(fs::File::create(&tmp)?);
            crate::checkpoint::write_f32_tensors(&mut f, &tensors, &metadata)?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        };
        let written = write().and_then(|()| Ok(fs::rename(&tmp, path)?));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("writing optimizer state {}", path.display())));
        }
        Ok(())
    }

    /// Reads a state written by [`AdamW::save`]; `config` is the run's (a different saved config
    /// is logged, not an error). Errors name the file and, where one is at fault, the tensor.
    pub fn load(path: &Path, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let at = || format!("optimizer state {}", path.display());
        let bytes = fs::read(path).with_context(|| format!("reading {}", at()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", at()))?;
        let tensors = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", at()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key)
                .with_context(|| format!("{}: metadata has no {key:?}", at()))
        };
        ensure!(
            get("optimizer")? == "adamw",
            "{}: optimizer {:?}, expected \"adamw\"",
            at(),
            get("optimizer")?
        );
        let steps: u64 = get("step")?
            .parse()
            .with_context(|| format!("{}: metadata step is not a count", at()))?;
        let param_steps: BTreeMap<String, u64> = serde_json::from_str(get("param_steps")?)
            .with_context(|| format!("{}: metadata param_steps", at()))?;
        if let Some(saved) = meta
            .get("config")
            .and_then(|c| serde_json::from_str::<AdamWConfig>(c).ok())
        {
            if saved != config {
                tracing::warn!("{}: saved with {saved:?}, resuming with {config:?}", at());
            }
        }

        // Per parameter: (exp_avg, exp_avg_sq) as they are found.
        type Moments = (Option<Vec<f32>>, Option<Vec<f32>>);
        let mut moments: BTreeMap<String, Moments> = BTreeMap::new();
        for (tname, view) in tensors.tensors() {
            let (param, is_sq) = if let Some(p) = tname.strip_suffix(".exp_avg_sq") {
                (p, true)
            } else if let Some(p) = tname.strip_suffix(".exp_avg") {
                (p, false)
            } else {
                bail!("{}: tensor {tname}: not an AdamW moment (<param>.exp_avg or <param>.exp_avg_sq)", at());
            };
            ensure!(
                view.dtype() == Dtype::F32,
                "{}: tensor {tname}: dtype {:?}, expected F32",
                at(),
                view.dtype()
            );
            ensure!(
                view.shape().len() == 1,
                "{}: tensor {tname}: shape {:?}, expected 1-D",
                at(),
                view.shape()
            );
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            ensure!(
                data.iter().all(|v| v.is_finite()),
                "{}: tensor {tname}: non-finite values",
                at()
            );
            let slot = moments.entry(param.to_owned()).or_default();
            if is_sq {
                slot.1 = Some(data);
            } else {
                slot.0 = Some(data);
            }
        }

        let mut state = BTreeMap::new();
        for (name, (m, v)) in moments {
            let m = m.with_context(|| format!("{}: tensor {name}.exp_avg is missing", at()))?;
            let v = v.with_context(|| format!("{}: tensor {name}.exp_avg_sq is missing", at()))?;
            ensure!(
                m.len() == v.len(),
                "{}: tensor {name}.exp_avg has {} elements but {name}.exp_avg_sq {}",
                at(),
                m.len(),
                v.len()
            );
            let step = *param_steps
                .get(&name)
                .with_context(|| format!("{}: param_steps has no {name}", at()))?;
            ensure!(step >= 1, "{}: param_steps[{name}] is 0", at());
            state.insert(
                name,
                ParamState {
                    step,
                    exp_avg: m,
                    exp_avg_sq: v,
                },
            );
        }
        if let Some(extra) = param_steps.keys().find(|n| !state.contains_key(*n)) {
            bail!(
                "{}: param_steps names {extra} but the file has no moments for it",
                at()
            );
        }
        Ok(Self {
            config,
            steps,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused() {
        for cfg in [
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            AdamWConfig {
                beta2: -0.1,
                ..Default::default()
            },
            AdamWConfig {
                eps: f64::NAN,
                ..Default::default()
            },
            AdamWConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
        ] {
            assert!(AdamW::new(cfg).is_err(), "{cfg:?}");
        }
    }
}
