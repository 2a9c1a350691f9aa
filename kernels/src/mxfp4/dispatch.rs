//! Run-time CPU feature dispatch: one kernel set per feature level (`avx512`, `avx2`, portable
//! `generic`), the best one chosen once with `is_x86_feature_detected!`.

use super::generic;
use std::sync::OnceLock;

/// Quantize kernel on whole blocks: `Err(g)` is the first block holding a NaN/Inf.
pub(super) type QuantizeFn = fn(&[f32], &mut [u8], &mut [u8]) -> Result<(), usize>;

/// One set of single-threaded kernels on whole blocks (lengths already checked); errors are the
/// index of the first block holding a NaN/Inf.
pub(super) struct Kernels {
    /// name of the feature level, for logs and benchmarks
    pub name: &'static str,
    pub quantize: QuantizeFn,
    pub dequantize: fn(&[u8], &[u8], &mut [f32]),
    pub fake_quantize: fn(&[f32], &mut [f32]) -> Result<(), usize>,
    pub fake_quantize_in_place: fn(&mut [f32]) -> Result<(), usize>,
}

/// The portable kernels (whatever the compile-time target allows).
pub(super) const PORTABLE: Kernels = Kernels {
    name: "portable",
    quantize: |x, b, s| generic::quantize(x, b, s),
    dequantize: |b, s, out| generic::dequantize(b, s, out),
    fake_quantize: |x, out| generic::fake_quantize(x, out),
    fake_quantize_in_place: |x| generic::fake_quantize_in_place(x),
};

/// The best kernel set for this CPU, chosen on first use.
pub(super) fn kernels() -> &'static Kernels {
    static SELECTED: OnceLock<&'static Kernels> = OnceLock::new();
    SELECTED.get_or_init(select)
}

#[cfg(target_arch = "x86_64")]
fn select() -> &'static Kernels {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
    {
        &super::avx512::KERNELS
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        &super::avx2::KERNELS
    } else {
        &PORTABLE
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn select() -> &'static Kernels {
    &PORTABLE
}

#[cfg(test)]
/// Every kernel set this CPU can run (portable first), so tests can check each against the
/// reference, whatever `kernels()` picks.
pub(super) fn available() -> Vec<&'static Kernels> {
    let best = kernels();
    let mut all = vec![&PORTABLE];
    avx2_if_available(&mut all);
    if !std::ptr::eq(best, &PORTABLE) && !all.iter().any(|k| std::ptr::eq(*k, best)) {
        all.push(best);
    }
    all
}

#[cfg(all(test, target_arch = "x86_64"))]
fn avx2_if_available(all: &mut Vec<&'static Kernels>) {
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        all.push(&super::avx2::KERNELS);
    }
}

#[cfg(all(test, not(target_arch = "x86_64")))]
fn avx2_if_available(_all: &mut Vec<&'static Kernels>) {}
