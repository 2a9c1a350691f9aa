#!/usr/bin/env python3
"""Generate tests/fixtures/train/optim_golden.json: what torch + transformers compute for AdamW,
gradient-norm clipping and the learning-rate schedules, checked by tests/train_optim.rs.

Usage: .venv/bin/python scripts/gen_optim_golden.py [--out tests/fixtures/train/optim_golden.json]

Encoding: an f32 array is one string of 8 hex digits per value (the IEEE-754 bit pattern, most
significant digit first), concatenated; an f64 whose bits matter is a 16-hex-digit string.

- `adamw`: torch.optim.AdamW(foreach=False, fused=False), i.e. `_single_tensor_adam`, stepping
  three PEFT-named tensors five times with random gradients (fixed seed) and the learning rate
  that a transformers scheduler (`get_scheduler`, LambdaLR) gives at each step. Every step
  records the lr used, the gradients and the parameters after the step; the case ends with the
  moments (`exp_avg`, `exp_avg_sq`) and the step count.
- `clip`: torch.nn.utils.clip_grad_norm_ on gradient sets (above, below and right at max_norm):
  the returned total norm and the gradients after clipping.
- `schedules`: base_lr * lambda(k) for k = 0..=total as the optimizer sees it (the lr of the
  k-th optimizer.step(), 0-based), for each scheduler kind and warmup given in steps or as a ratio.
- `warmup_steps`: TrainingArguments.get_warmup_steps(total) for a few `warmup_steps` values
  (>= 1: a step count, truncated; < 1: ceil(total * ratio) in f64).

Determinism notes (why the environment below is pinned):
- torch's f32 `sqrt` on CPU goes through MKL VML (vmsSqrt, high-accuracy mode). MKL's AVX-512
  code path is NOT correctly rounded (about 0.6% of results are 1 ulp off); its AVX2 path is.
  MKL_ENABLE_INSTRUCTIONS=AVX2 is set before torch is imported so that the golden uses IEEE sqrt,
  the one the Rust side (and any IEEE machine) computes; the script asserts it.
- ATen's lerp_ and addcmul_ kernels (AVX2 and AVX-512 capability) compute with a fused
  multiply-add: lerp = fma(w, end - self, self) for |w| < 0.5, else fma(w - 1, end - self, end);
  addcmul = fma(value * t1, t2, self). The script asserts a capability that has FMA.
"""

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"  # must precede `import torch`, see above

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import TrainingArguments  # noqa: E402
from transformers.optimization import get_scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TENSORS = [
    # (PEFT name, shape, init scale; 0 = zeros like a fresh lora_B)
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", (4, 19), 0.05),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", (13, 4), 0.0),
    ("base_model.model.model.layers.1.mlp.experts.lora_A.weight", (8, 5), 0.02),
]
GRAD_SCALES = [1.0, 1e-3, 30.0]


def hex_f32(t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32).ravel())
    return "".join(f"{v:08x}" for v in a.view(np.uint32).tolist())


def hex_f64(x):
    return f"{np.float64(x).view(np.uint64):016x}"


def check_environment():
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        sys.exit(f"ATen CPU capability {cap}: lerp/addcmul would not use FMA; run on AVX2/AVX-512")
    x = torch.rand(1 << 20, generator=torch.Generator().manual_seed(1))
    if not np.array_equal(x.sqrt().numpy(), np.sqrt(x.numpy())):
        sys.exit("torch.sqrt is not IEEE-exact here (MKL dispatch?); the golden would not be either")
    return cap


def adamw_case(name, config, schedule, base_lr, seed):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _, shape, scale in TENSORS:
        init = torch.randn(shape, generator=gen) * scale if scale else torch.zeros(shape)
        params.append(torch.nn.Parameter(init.float()))
    opt = torch.optim.AdamW(
        params,
        lr=base_lr,
        betas=(config["beta1"], config["beta2"]),
        eps=config["eps"],
        weight_decay=config["weight_decay"],
        foreach=False,
        fused=False,
    )
    sched = get_scheduler(
        schedule["kind"],
        opt,
        num_warmup_steps=schedule["warmup"],
        num_training_steps=schedule["total"],
        scheduler_specific_kwargs=schedule.get("kwargs"),
    )
    case = {
        "name": name,
        "config": {k: hex_f64(v) for k, v in config.items()},
        "config_readable": config,
        "schedule": schedule,
        "base_lr": base_lr,
        "tensors": [
            {"name": n, "shape": list(s), "init": hex_f32(p)} for (n, s, _), p in zip(TENSORS, params)
        ],
        "steps": [],
    }
    for k in range(schedule["total"]):
        lr = opt.param_groups[0]["lr"]
        grads = []
        for p, gs in zip(params, GRAD_SCALES):
            g = (torch.randn(p.shape, generator=gen) * gs).float()
            if k == 0:
                g.view(-1)[:5] = 0.0  # exact zeros: exp_avg_sq = 0, denom = eps
            grads.append(g)
            p.grad = g.clone()
        opt.step()
        sched.step()
        case["steps"].append(
            {
                "lr": hex_f64(lr),
                "grads": [hex_f32(g) for g in grads],
                "params": [hex_f32(p) for p in params],
            }
        )
    states = [opt.state[p] for p in params]
    case["final"] = {
        "step": [int(s["step"].item()) for s in states],
        "exp_avg": [hex_f32(s["exp_avg"]) for s in states],
        "exp_avg_sq": [hex_f32(s["exp_avg_sq"]) for s in states],
    }
    return case


def clip_case(name, shapes, scale, max_norm, seed, target_norm=None):
    gen = torch.Generator().manual_seed(seed)
    grads = [(torch.randn(s, generator=gen) * scale).float() for s in shapes]
    if target_norm is not None:  # rescale (in f64) so the total is about target_norm
        total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        grads = [(g.double() * (target_norm / total)).float() for g in grads]
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return {
        "name": name,
        "max_norm": max_norm,
        "shapes": [list(s) for s in shapes],
        "grads": [hex_f32(g) for g in grads],
        "total_norm": hex_f32(total.reshape(1)),
        "total_norm_readable": float(total),
        "clipped": [hex_f32(p.grad) for p in params],
    }


def schedule_lrs(kind, base_lr, warmup_steps, total, kwargs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = get_scheduler(
        kind, opt, num_warmup_steps=warmup_steps, num_training_steps=total, scheduler_specific_kwargs=kwargs
    )
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def schedules():
    base_lr, total = 2e-4, 20
    kinds = [
        ("constant", {}),
        ("constant_with_warmup", {}),
        ("linear", {}),
        ("cosine", {}),
        ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
        ("cosine_with_min_lr", {"min_lr": 2e-5}),
    ]
    cases = []
    for warmup in [{"steps": 3}, {"ratio": 0.1}]:
        hf_value = warmup.get("steps", warmup.get("ratio"))
        resolved = TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=hf_value), total)
        for kind, kwargs in kinds:
            lrs = schedule_lrs(kind, base_lr, resolved, total, kwargs)
            cases.append(
                {
                    "kind": kind,
                    "warmup": warmup,
                    "resolved_warmup": resolved,
                    **kwargs,
                    "lrs": [hex_f64(x) for x in lrs],
                    "lrs_readable": lrs,
                }
            )
    return {"base_lr": base_lr, "total_steps": total, "cases": cases}


def warmup_table():
    rows = []
    for value, total in [(3, 20), (3.7, 20), (0, 20), (0.1, 20), (0.1, 30), (0.07, 100), (0.03, 1000), (0.5, 7)]:
        resolved = TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=value), total)
        rows.append({"warmup_steps": value, "total": total, "resolved": resolved})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/train/optim_golden.json")
    args = ap.parse_args()
    cap = check_environment()
    golden = {
        "generator": "scripts/gen_optim_golden.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "aten_cpu_capability": cap,
            "MKL_ENABLE_INSTRUCTIONS": os.environ["MKL_ENABLE_INSTRUCTIONS"],
        },
        "adamw": [
            adamw_case(
                "hf_defaults_linear_warmup",
                {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
                {"kind": "linear", "warmup": 1, "total": 5},
                1e-3,
                seed=11,
            ),
            adamw_case(
                "weight_decay_cosine_min_lr",
                {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.01},
                {"kind": "cosine_with_min_lr", "warmup": 2, "total": 5, "kwargs": {"min_lr_rate": 0.1}},
                2e-2,
                seed=12,
            ),
            adamw_case(  # 1 - beta1 >= 0.5 takes lerp's other branch
                "large_lerp_weight_constant",
                {"beta1": 0.4, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.1},
                {"kind": "constant", "warmup": 0, "total": 5},
                5e-3,
                seed=13,
            ),
        ],
        "clip": [
            clip_case("above", [s for _, s, _ in TENSORS], 1.0, 1.0, seed=21),
            clip_case("below", [s for _, s, _ in TENSORS], 1e-3, 1.0, seed=22),
            clip_case("large_tensor", [(300,), (7,)], 0.3, 0.5, seed=23),
            clip_case("at_max_norm", [(6, 5), (11,)], 1.0, 2.0, seed=24, target_norm=2.0),
        ],
        "schedules": schedules(),
        "warmup_steps": warmup_table(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
