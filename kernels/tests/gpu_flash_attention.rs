#![cfg(any(feature = "vulkan", feature = "cuda"))]
//! Flash attention's CubeCL kernels on the device backend of the build (`device_support`: burn's
//! `Vulkan`, Mesa's lavapipe on a CPU-only machine, or `Cuda`) against the CPU op on `Flex`: the
//! same cases as `ops_flash_attention.rs`. Tolerances: forward 2e-5 abs; gradients (through
//! `Autodiff<B>`) 1e-4 relative to the largest CPU value. Run with
//! `cargo test -p kernels --features vulkan --test gpu_flash_attention` (or `--features cuda`).

#[path = "device_support/mod.rs"]
mod device_support;
#[path = "flash_support/mod.rs"]
mod flash_support;

use burn::backend::Flex;
use device_support::{device, B};
use flash_support::{cases, forward, grads, max_abs, max_rel, wide};

#[test]
fn device_forward_matches_the_cpu() {
    let (cpu, gpu) = (Default::default(), device());
    for c in cases() {
        let want = wide(&forward::<Flex>(&c, &cpu));
        let err = max_abs(&forward::<B>(&c, &gpu), &want);
        eprintln!("{}: forward max abs {err:.2e}", c.name);
        assert!(err < 2e-5, "{}: forward max abs error {err}", c.name);
    }
}

#[test]
fn device_gradients_match_the_cpu() {
    let (cpu, gpu) = (Default::default(), device());
    for c in cases() {
        let want = grads::<Flex>(&c, &cpu);
        let got = grads::<B>(&c, &gpu);
        let err = max_abs(&got[0], &wide(&want[0]));
        assert!(
            err < 2e-5,
            "{}: autodiff forward max abs error {err}",
            c.name
        );
        for (i, what) in [(1, "dq"), (2, "dk"), (3, "dv")] {
            let err = max_rel(&got[i], &wide(&want[i]));
            eprintln!("{}: {what} max rel {err:.2e}", c.name);
            assert!(err < 1e-4, "{}: {what} max relative error {err}", c.name);
        }
    }
}
