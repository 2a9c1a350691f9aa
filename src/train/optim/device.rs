//! AdamW whose moments live where the parameters do (a GPU), as burn tensor ops: the same
//! per-step scalars as the host kernel ([`Coeffs`], torch's f64-then-f32 arithmetic) and the same
//! elementwise formula, except that the two fused multiply-adds of the host kernel (torch's
//! `lerp_` and `addcmul_`) are a multiply then an add here (burn has no fused op; a GPU compiler
//! may fuse them again). The host [`AdamW`] stays the exact reference, the checkpoint format and
//! the state file: this one converts to and from it ([`DeviceAdamW::from_host`],
//! [`DeviceAdamW::to_host`]). Parity with the host kernel is tested with a tolerance.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::kernel::Coeffs;
use super::{check_step, AdamW, AdamWConfig, ParamState};

/// One tensor's moments on its device.
#[derive(Debug)]
struct Moments<B: Backend> {
    step: u64,
    exp_avg: Tensor<B, 2>,
    exp_avg_sq: Tensor<B, 2>,
}

/// AdamW over named device tensors (each tensor's moments on that tensor's device).
#[derive(Debug)]
pub struct DeviceAdamW<B: Backend> {
    config: AdamWConfig,
    steps: u64,
    state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> DeviceAdamW<B> {
    /// The host optimizer's state uploaded beside `params` (each moment on its parameter's
    /// device, in its shape). State for a name not in `params` is refused.
    pub fn from_host(host: &AdamW, params: &BTreeMap<String, Tensor<B, 2>>) -> Result<Self> {
        let mut state = BTreeMap::new();
        for (name, s) in &host.state {
            let Some(p) = params.get(name) else {
                bail!("optimizer state for {name}, which the adapter does not have");
            };
            let shape = p.dims();
            ensure!(
                s.exp_avg.len() == shape[0] * shape[1],
                "{name}: optimizer state has {} elements but the parameter {}",
                s.exp_avg.len(),
                shape[0] * shape[1]
            );
            let up = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), shape), &p.device());
            state.insert(
                name.clone(),
                Moments {
                    step: s.step,
                    exp_avg: up(&s.exp_avg),
                    exp_avg_sq: up(&s.exp_avg_sq),
                },
            );
        }
        Ok(Self {
            config: host.config,
            steps: host.steps,
            state,
        })
    }

    /// The host copy (what is saved in a checkpoint).
    pub fn to_host(&self) -> Result<AdamW> {
        let down = |name: &str, t: &Tensor<B, 2>| -> Result<Vec<f32>> {
            t.clone()
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{name}: reading the optimizer state: {e:?}"))
        };
        let mut state = BTreeMap::new();
        for (name, m) in &self.state {
            state.insert(
                name.clone(),
                ParamState {
                    step: m.step,
                    exp_avg: down(name, &m.exp_avg)?,
                    exp_avg_sq: down(name, &m.exp_avg_sq)?,
                },
            );
        }
        Ok(AdamW {
            config: self.config,
            steps: self.steps,
            state,
        })
    }

    /// Completed steps.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One step at learning rate `lr`: every tensor of `params` with `grads[name]` (every
    /// parameter must have its gradient, of its shape, on its device). Checked before anything
    /// changes.
    pub fn step(
        &mut self,
        lr: f64,
        params: &mut BTreeMap<String, Tensor<B, 2>>,
        grads: &BTreeMap<String, Tensor<B, 2>>,
    ) -> Result<()> {
        check_step(lr, params.len(), grads.len())?;
        for (name, p) in params.iter() {
            let Some(g) = grads.get(name) else {
                bail!("{name}: no gradient for this parameter");
            };
            ensure!(
                p.dims() == g.dims(),
                "{name}: parameter is {:?} but its gradient {:?}",
                p.dims(),
                g.dims()
            );
            if let Some(s) = self.state.get(name) {
                ensure!(
                    s.exp_avg.dims() == p.dims(),
                    "{name}: optimizer state is {:?} but the parameter {:?}",
                    s.exp_avg.dims(),
                    p.dims()
                );
            }
        }
        for (name, p) in params.iter_mut() {
            let g = grads[name].clone();
            let s = self.state.entry(name.clone()).or_insert_with(|| Moments {
                step: 0,
                exp_avg: p.zeros_like(),
                exp_avg_sq: p.zeros_like(),
            });
            s.step += 1;
            let c = Coeffs::new(&self.config, lr, s.step);
            let (new_p, m, v) = update(&c, p.clone(), g, s.exp_avg.clone(), s.exp_avg_sq.clone());
            *p = new_p;
            s.exp_avg = m;
            s.exp_avg_sq = v;
        }
        self.steps += 1;
        Ok(())
    }
}

/// The host kernel's formula as tensor ops (see `optim.rs`; the two `fma`s are a multiply and
/// an add here): returns the new parameter and moments.
fn update<B: Backend>(
    c: &Coeffs,
    p: Tensor<B, 2>,
    g: Tensor<B, 2>,
    m: Tensor<B, 2>,
    v: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let diff = g.clone() - m.clone();
    let m = match c.lerp_small {
        true => m + diff.mul_scalar(c.lerp_w),
        false => g.clone() + diff.mul_scalar(c.lerp_w_minus_1),
    };
    let v = v.mul_scalar(c.beta2) + g.clone().mul_scalar(c.one_minus_beta2) * g;
    let denom = v.clone().sqrt().div_scalar(c.bc2_sqrt).add_scalar(c.eps);
    let p = p.mul_scalar(c.decay) + m.clone().mul_scalar(c.neg_step_size) / denom;
    (p, m, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::{Rng, SeedableRng};

    /// Largest elementwise difference of the device update from the host kernel, relative to the
    /// parameter's scale, after several steps: the moments differ only by the rounding of the
    /// two unfused multiply-adds (~1 ulp), which AdamW's `m / sqrt(v)` carries to the update
    /// (measured 7.5e-7).
    const REL_TOL: f32 = 4e-6;

    fn tensors(
        rng: &mut rand_chacha::ChaCha8Rng,
        shapes: &[(&str, [usize; 2])],
    ) -> BTreeMap<String, (Vec<f32>, [usize; 2])> {
        shapes
            .iter()
            .map(|&(n, s)| {
                let v = (0..s[0] * s[1])
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect();
                (n.to_string(), (v, s))
            })
            .collect()
    }

    fn upload(
        host: &BTreeMap<String, (Vec<f32>, [usize; 2])>,
    ) -> BTreeMap<String, Tensor<Flex, 2>> {
        let dev = Default::default();
        host.iter()
            .map(|(k, (v, s))| {
                (
                    k.clone(),
                    Tensor::from_data(TensorData::new(v.clone(), *s), &dev),
                )
            })
            .collect()
    }

    #[test]
    fn the_device_update_follows_the_host_kernel() {
        let shapes = [("a", [4usize, 300usize]), ("b", [37, 3])];
        for (beta1, wd) in [(0.9, 0.0), (0.3, 0.1), (0.9, 0.01)] {
            let config = AdamWConfig {
                beta1,
                weight_decay: wd,
                ..Default::default()
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let mut host_p = tensors(&mut rng, &shapes);
            let mut dev_p = upload(&host_p);
            let mut host = AdamW::new(config).unwrap();
            let mut dev = DeviceAdamW::from_host(&host, &dev_p).unwrap();
            for step in 0..6 {
                let lr = 1e-2 / (1 + step) as f64;
                let g = tensors(&mut rng, &shapes);
                let mut views: Vec<(&str, &mut [f32])> = host_p
                    .iter_mut()
                    .map(|(k, (v, _))| (k.as_str(), v.as_mut_slice()))
                    .collect();
                let gv: Vec<&[f32]> = g.values().map(|(v, _)| v.as_slice()).collect();
                host.step(lr, &mut views, &gv).unwrap();
                dev.step(lr, &mut dev_p, &upload(&g)).unwrap();
            }
            let mut worst = 0f32;
            for (k, (want, _)) in &host_p {
                let got = dev_p[k].clone().into_data().to_vec::<f32>().unwrap();
                for (a, b) in got.iter().zip(want) {
                    worst = worst.max((a - b).abs() / b.abs().max(1e-3));
                }
            }
            eprintln!("beta1 {beta1}, weight decay {wd}: worst relative difference {worst:e}");
            assert!(worst <= REL_TOL, "beta1 {beta1}, wd {wd}: {worst:e}");
            // the state comes back to the host with its step counts, and goes back unchanged
            let back = dev.to_host().unwrap();
            assert_eq!(back.steps(), 6);
            assert_eq!(back.state("a").unwrap().step, 6);
            let again = DeviceAdamW::from_host(&back, &dev_p)
                .unwrap()
                .to_host()
                .unwrap();
            assert_eq!(again, back);
        }
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p = tensors(&mut rng, &[("a", [2, 3])]);
        let mut dp = upload(&p);
        let mut dev =
            DeviceAdamW::from_host(&AdamW::new(Default::default()).unwrap(), &dp).unwrap();
        let wrong = upload(&tensors(&mut rng, &[("a", [3, 2])]));
        let e = dev.step(1e-3, &mut dp, &wrong).unwrap_err().to_string();
        assert!(
            e.contains("a: parameter is [2, 3] but its gradient [3, 2]"),
            "{e}"
        );
        let other = upload(&tensors(&mut rng, &[("b", [2, 3])]));
        let e = dev.step(1e-3, &mut dp, &other).unwrap_err().to_string();
        assert!(e.contains("a: no gradient"), "{e}");
        assert!(dev.step(f64::NAN, &mut dp, &upload(&p)).is_err());
        // state for a tensor the adapter does not have
        let mut host = AdamW::new(Default::default()).unwrap();
        let mut hp = p.clone();
        let mut views: Vec<(&str, &mut [f32])> = hp
            .iter_mut()
            .map(|(k, (v, _))| (k.as_str(), v.as_mut_slice()))
            .collect();
        host.step(1e-3, &mut views, &[&[0.5; 6]]).unwrap();
        let e = DeviceAdamW::from_host(&host, &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optimizer state for a"), "{e}");
    }
}
