//! The elementwise AdamW update of one tensor (the arithmetic is documented in `optim.rs`): the
//! per-step scalars as torch computes them, one body compiled as AVX-512, AVX2+FMA and portable
//! copies (same bits: IEEE `sqrt` and division, true `fma`), run in fixed chunks on rayon.

use rayon::prelude::*;

use super::AdamWConfig;

/// Elements per rayon task (the arithmetic is per element, so the chunking never changes a bit).
const CHUNK: usize = 1 << 14;

/// The per-tensor scalars of one update, computed as torch does (f64, then cast to f32 where a
/// kernel takes them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Coeffs {
    pub(super) decay: f32,
    pub(super) lerp_small: bool,
    pub(super) lerp_w: f32,
    pub(super) lerp_w_minus_1: f32,
    pub(super) beta2: f32,
    pub(super) one_minus_beta2: f32,
    pub(super) bc2_sqrt: f32,
    pub(super) eps: f32,
    pub(super) neg_step_size: f32,
}

impl Coeffs {
    pub(super) fn new(c: &AdamWConfig, lr: f64, step: u64) -> Self {
        let decay = if c.weight_decay != 0.0 {
            (1.0 - lr * c.weight_decay) as f32
        } else {
            1.0
        };
        let w = (1.0 - c.beta1) as f32;
        let step = step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(step);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = bias_correction2_sqrt(c.beta2, step);
        Self {
            decay,
            lerp_small: w.abs() < 0.5,
            lerp_w: w,
            lerp_w_minus_1: w - 1.0,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: c.eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }
}

/// Python's `(1 - beta2 ** step) ** 0.5`: libm `pow` both times. glibc's `pow(x, 0.5)` is not
/// always `sqrt(x)`, so the exponent is hidden from LLVM, which would rewrite the call to `sqrt`.
fn bias_correction2_sqrt(beta2: f64, step: f64) -> f64 {
    (1.0 - beta2.powf(step)).powf(std::hint::black_box(0.5))
}

type Kernel = fn(&Coeffs, &mut [f32], &[f32], &mut [f32], &mut [f32]);

/// The update of one tensor: chunks on rayon when large, each through the best kernel.
pub(super) fn update(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let kernel = kernel();
    if p.len() <= CHUNK {
        kernel(c, p, g, m, v);
        return;
    }
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| kernel(c, p, g, m, v));
}

/// The arithmetic, one element at a time (see the module docs); `SMALL` is lerp's branch.
#[inline(always)]
fn body<const SMALL: bool>(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let diff = g - *m;
        *m = if SMALL {
            c.lerp_w.mul_add(diff, *m)
        } else {
            c.lerp_w_minus_1.mul_add(diff, g)
        };
        *v = (c.one_minus_beta2 * g).mul_add(g, *v * c.beta2);
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        *p = *p * c.decay + (c.neg_step_size * *m) / denom;
    }
}

#[inline(always)]
fn body_dispatch(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    if c.lerp_small {
        body::<true>(c, p, g, m, v)
    } else {
        body::<false>(c, p, g, m, v)
    }
}

fn kernel_portable(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    body_dispatch(c, p, g, m, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_avx512_tf(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    body_dispatch(c, p, g, m, v)
}

#[cfg(target_arch = "x86_64")]
fn kernel_avx512(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    // SAFETY: only selected after `is_x86_feature_detected!` confirmed avx512f, avx2 and fma.
    unsafe { kernel_avx512_tf(c, p, g, m, v) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_tf(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    body_dispatch(c, p, g, m, v)
}

#[cfg(target_arch = "x86_64")]
fn kernel_avx2(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    // SAFETY: only selected after `is_x86_feature_detected!` confirmed avx2 and fma.
    unsafe { kernel_avx2_tf(c, p, g, m, v) }
}

/// The widest kernel this CPU runs, chosen once.
#[cfg(target_arch = "x86_64")]
fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            kernel_avx512
        } else if avx2 {
            kernel_avx2
        } else {
            kernel_portable
        }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel() -> Kernel {
    kernel_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU can run.
    fn variants() -> Vec<(&'static str, Kernel)> {
        let mut v: Vec<(&'static str, Kernel)> = vec![("portable", kernel_portable)];
        v.extend(simd_variants());
        v
    }

    #[cfg(target_arch = "x86_64")]
    fn simd_variants() -> Vec<(&'static str, Kernel)> {
        let mut v: Vec<(&'static str, Kernel)> = Vec::new();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(("avx2", kernel_avx2));
            if is_x86_feature_detected!("avx512f") {
                v.push(("avx512", kernel_avx512));
            }
        }
        v
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn simd_variants() -> Vec<(&'static str, Kernel)> {
        Vec::new()
    }

    fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn every_kernel_and_chunking_gives_the_same_bits() {
        for (beta1, wd) in [(0.9, 0.0), (0.3, 0.01)] {
            let cfg = AdamWConfig {
                beta1,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: wd,
            };
            for n in [1usize, 15, 17, 33, 1000, CHUNK + 7] {
                let g = noise(n, n as u64, 2.0);
                let mut results = Vec::new();
                for (name, k) in variants() {
                    let (mut p, mut m, mut v) =
                        (noise(n, 1, 0.1), noise(n, 2, 0.1), noise(n, 3, 0.01));
                    v.iter_mut().for_each(|x| *x = x.abs());
                    for step in 1..=3 {
                        k(&Coeffs::new(&cfg, 1e-3, step), &mut p, &g, &mut m, &mut v);
                    }
                    results.push((name, p, m, v));
                }
                let (mut p, mut m, mut v) = (noise(n, 1, 0.1), noise(n, 2, 0.1), noise(n, 3, 0.01));
                v.iter_mut().for_each(|x| *x = x.abs());
                for step in 1..=3 {
                    update(&Coeffs::new(&cfg, 1e-3, step), &mut p, &g, &mut m, &mut v);
                }
                results.push(("update", p, m, v));
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let (_, p0, m0, v0) = &results[0];
                for (name, p, m, v) in &results[1..] {
                    let same = bits(p) == bits(p0) && bits(m) == bits(m0) && bits(v) == bits(v0);
                    assert!(same, "{name} differs from portable, n={n}, beta1={beta1}");
                }
            }
        }
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn pow_half_is_glibc_pow_like_python() {
        // Python 3.11 on glibc 2.36: (1 - 0.999 ** 1270.0) ** 0.5 is 0x3feb23fd0f9774ca, while
        // math.sqrt of the same value is 0x3feb23fd0f9774c9.
        assert_eq!(
            bias_correction2_sqrt(0.999, 1270.0).to_bits(),
            0x3feb_23fd_0f97_74ca
        );
    }
}
