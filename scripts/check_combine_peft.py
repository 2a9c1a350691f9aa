"""Shows that PEFT loads a combined adapter written by `lora-qat combine` and computes what the parts compute
together: loads C with `PeftModel.from_pretrained` on the tiny base (dequantized, no quantization), checks that
every tensor of C's file landed in the model (values equal) and that every LoRA module has scaling 1 and the
rank of its factors, then compares C's logits with PEFT's two-adapter logits (golden_combine.safetensors, made
by scripts/gen_combine_golden.py from adapter/ and adapter_b/) in float32 and float64.

Usage (the repository's venv):
    cargo run --release -- combine tests/fixtures/tiny-gpt-oss/adapter tests/fixtures/tiny-gpt-oss/adapter_b \
        --output-path /tmp/combined
    .venv/bin/python scripts/check_combine_peft.py /tmp/combined [--fixture tests/fixtures/tiny-gpt-oss]

Exits non-zero when a check fails (logits vs the two-adapter logits of the same compute dtype: max abs diff
<= 1e-5 in float64, <= 1e-4 in float32). The float64 bound is not 1e-12 because C's s·B is rounded to float32
once and transformers' GptOssRMSNorm computes in float32 even in a float64 model, which turns tiny weight
differences into float32 rounding flips; the script prints, for scale, how far the float64 logits move when
every lora_B of C is perturbed by one float32 rounding (relative 2^-24).
"""

import argparse
import os
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_base(base_dir, dtype):
    from transformers import GptOssForCausalLM, Mxfp4Config

    m = GptOssForCausalLM.from_pretrained(
        base_dir, quantization_config=Mxfp4Config(dequantize=True), dtype=dtype,
        attn_implementation="eager", experts_implementation="eager",
    )
    m.eval()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("combined")
    ap.add_argument("--fixture", default=os.path.join(HERE, "..", "tests", "fixtures", "tiny-gpt-oss"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    from peft import PeftModel
    from peft.tuners.lora.layer import LoraLayer
    from safetensors.torch import load_file

    fx = os.path.abspath(a.fixture)
    golden = load_file(os.path.join(fx, "golden_combine.safetensors"))
    ids, labels = golden["input_ids"], golden["labels"]
    file_tensors = load_file(os.path.join(a.combined, "adapter_model.safetensors"))
    ok = True
    tol = {"f32": 1e-4, "f64": 1e-5}
    for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = PeftModel.from_pretrained(load_base(os.path.join(fx, "base"), dtype), a.combined)
        for w in caught:
            msg = str(w.message)
            if "missing" in msg.lower() or "unexpected" in msg.lower():
                print(f"[{tag}] PEFT warned: {msg[:500]}")
                ok = False
        # every tensor of the file is in the model, with its value
        params = {n.replace(".default", ""): p for n, p in m.named_parameters() if "lora_" in n}
        missing = sorted(set(file_tensors) - set(params))
        extra = sorted(set(params) - set(file_tensors))
        worst_param = max((params[k].double() - v.double()).abs().max().item()
                          for k, v in file_tensors.items() if k in params)
        # scaling 1 and the factors' rank in every LoRA layer
        layers, bad_scaling = 0, []
        for name, mod in m.named_modules():
            if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
                layers += 1
                r = mod.r["default"]
                rows = mod.lora_A["default"].weight.shape[0]
                experts = getattr(mod, "num_experts", 1)
                if mod.scaling["default"] != 1.0 or rows != r * experts:
                    bad_scaling.append((name, mod.scaling["default"], r, rows))
        with torch.no_grad():
            o = m(input_ids=ids, labels=labels)
        d32 = (o.logits.double() - golden["logits_two_adapters_f32"].double()).abs().max().item()
        d64 = (o.logits.double() - golden["logits_two_adapters_f64"].double()).abs().max().item()
        own = golden[f"logits_two_adapters_{tag}"].double()
        d_own = (o.logits.double() - own).abs().max().item()
        loss_own = golden[f"loss_two_adapters_{tag}"].item()
        print(f"[{tag}] PEFT loaded {len(file_tensors)} tensors into {layers} LoRA layers "
              f"(missing from the model: {len(missing)}, LoRA parameters not in the file: {len(extra)}, "
              f"max |model - file| {worst_param:.1e}); modules with scaling != 1 or rank != rows/experts: "
              f"{len(bad_scaling)}")
        print(f"[{tag}] combined C, {tag} compute: max abs diff of logits vs PEFT two-adapter float32: {d32:.3e}, "
              f"vs float64: {d64:.3e}; loss {o.loss.item():.7f} vs two-adapter {tag} {loss_own:.7f}")
        if tag == "f64":
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for n, p in m.named_parameters():
                    if "lora_B" in n:
                        p.mul_(1 + 2.0**-24 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
                moved = (m(input_ids=ids).logits - o.logits).abs().max().item()
            print(f"[{tag}] for scale: perturbing every lora_B of C by one float32 rounding moves these logits by "
                  f"{moved:.3e}")
        if missing or extra or worst_param != 0 or bad_scaling or d_own > tol[tag]:
            print(f"[{tag}] FAILED: missing={missing[:4]} extra={extra[:4]} bad={bad_scaling[:4]} "
                  f"diff vs two-adapter {tag} {d_own:.3e} > {tol[tag]}")
            ok = False
    print("OK: PEFT loads the combined adapter and computes the two adapters' sum" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
