"""Makes the second fixture adapter `adapter_b/` (written by PEFT) and the golden logits of PEFT with the two
fixture adapters active at once, for `lora-qat combine` (tests/combine_cli.rs, adapters/tests/combine.rs).

Usage (the repository's venv: transformers 5.24, peft 0.21, torch):
    .venv/bin/python scripts/gen_combine_golden.py [--fixture tests/fixtures/tiny-gpt-oss]

Writes, under the fixture directory:
  adapter_b/                 PEFT LoRA on base/: r=2, lora_alpha=3, use_rslora=True, rank_pattern/alpha_pattern
                             giving model.layers.1.self_attn.q_proj rank 3 / alpha 5, target_modules q_proj + v_proj,
                             target_parameters: both expert weights of layer 0 and only gate_up_proj of layer 3
                             (a subset of adapter/'s: a layer with one expert projection, whose key in adapter_b is
                             `experts.lora_*` while in the combination it is `experts.base_layer.lora_*`); random
                             non-zero float32 factors
  golden_combine.safetensors input_ids, labels (copied from golden.safetensors) and
                             logits_two_adapters_f32 / loss_two_adapters_f32: PEFT forward with both adapters active
                               (`load_adapter` twice, `base_model.set_adapter(["a", "b"])`), float32 compute,
                             logits_two_adapters_f64 / loss_two_adapters_f64: the same in float64 compute (stored as
                               float32), no quantization (dequantized MXFP4 base, like golden.json's logits_lora)
  golden_combine.json        what each tensor is, and the checks this script ran

PEFT 0.21 refuses two adapters whose `target_parameters` differ ("all adapters must target the same set of
parameters"), so adapter "b" is loaded as `adapter_b` padded to adapter/'s expert targets: the same factors for
what adapter_b adapts, and lora_B = 0 (an exact zero delta) for the expert weights only adapter/ adapts. The
script checks that this is adapter_b exactly: its float64 logits equal those of a model whose weights are
W + dW_a + dW_b, each dW from PEFT's `get_delta_weight` of the adapter loaded alone (max abs diff < 1e-9; it
comes out 0 because transformers' GptOssRMSNorm rounds its input to float32 even in a float64 model).
"""

import argparse
import json
import os
import shutil
import tempfile
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 14


def load_base(base_dir, dtype):
    """The tiny base, experts dequantized from MXFP4 (as ../shared/reference/make_fixture.py loads it)."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    m = GptOssForCausalLM.from_pretrained(
        base_dir, quantization_config=Mxfp4Config(dequantize=True), dtype=dtype,
        attn_implementation="eager", experts_implementation="eager",
    )
    m.eval()
    return m


def param_wrappers(model):
    """{(layer, parameter name): ParamWrapper} of a PEFT model."""
    from peft.tuners.lora.layer import ParamWrapper

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, ParamWrapper):
            layer = int(name.split("layers.")[1].split(".")[0])
            out[(layer, mod.parameter_name)] = mod
    return out


def lora_linears(model):
    """{module path: lora.Linear} of a PEFT model (attention projections)."""
    from peft.tuners.lora.layer import Linear

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, Linear):
            out[name.split("base_model.model.", 1)[-1]] = mod
    return out


def save_f32(pm, out_dir, base_name):
    """save_pretrained, then the tensors as float32 and base_model_name_or_path set (like make_fixture.py)."""
    from safetensors.torch import load_file, save_file

    pm.save_pretrained(out_dir)
    path = os.path.join(out_dir, "adapter_model.safetensors")
    ad = load_file(path)
    save_file({k: v.float().contiguous() for k, v in ad.items()}, path, metadata={"format": "pt"})
    cpath = os.path.join(out_dir, "adapter_config.json")
    cfg = json.load(open(cpath))
    cfg["base_model_name_or_path"] = base_name
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set: make the file reproducible
    with open(cpath, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def two_adapter_logits(base_dir, a_dir, b_dir, dtype, input_ids, labels):
    from peft import PeftModel

    m = PeftModel.from_pretrained(load_base(base_dir, dtype), a_dir, adapter_name="a")
    m.load_adapter(b_dir, adapter_name="b")
    m.base_model.set_adapter(["a", "b"])
    assert sorted(m.active_adapters) == ["a", "b"], m.active_adapters
    with torch.no_grad():
        o = m(input_ids=input_ids, labels=labels)
    return o.logits, o.loss


def delta_sum_logits(base_dir, adapter_dirs, input_ids, labels):
    """float64 logits of W + sum of each adapter's delta (PEFT's get_delta_weight, each adapter loaded alone)."""
    from peft import PeftModel

    deltas = {}
    for d in adapter_dirs:
        pm = PeftModel.from_pretrained(load_base(base_dir, torch.float64), d)
        for path, mod in lora_linears(pm).items():
            deltas[path + ".weight"] = deltas.get(path + ".weight", 0) + mod.get_delta_weight("default").double()
        for (layer, pname), mod in param_wrappers(pm).items():
            key = f"model.layers.{layer}.mlp.experts.{pname}"
            deltas[key] = deltas.get(key, 0) + mod.get_delta_weight("default").double()
    merged = load_base(base_dir, torch.float64)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for k, d in deltas.items():
            params[k].add_(d)
        o = merged(input_ids=input_ids, labels=labels)
    return o.logits, o.loss, sorted(deltas)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default=os.path.join(HERE, "..", "tests", "fixtures", "tiny-gpt-oss"))
    a = ap.parse_args()
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    fx = os.path.abspath(a.fixture)
    base_dir, a_dir, b_dir = (os.path.join(fx, d) for d in ("base", "adapter", "adapter_b"))
    a_cfg = json.load(open(os.path.join(a_dir, "adapter_config.json")))
    golden = load_file(os.path.join(fx, "golden.safetensors"))
    input_ids, labels = golden["input_ids"], golden["labels"]
    gen = torch.Generator().manual_seed(SEED)
    warnings.filterwarnings("ignore", category=FutureWarning)

    # ---- adapter_b, written by PEFT
    b_targets = ["layers.0.mlp.experts.gate_up_proj", "layers.0.mlp.experts.down_proj",
                 "layers.3.mlp.experts.gate_up_proj"]
    b_lcfg = dict(r=2, lora_alpha=3, use_rslora=True, lora_dropout=0.0, bias="none",
                  target_modules=["q_proj", "v_proj"],
                  rank_pattern={"model.layers.1.self_attn.q_proj": 3},
                  alpha_pattern={"model.layers.1.self_attn.q_proj": 5})
    pm_b = get_peft_model(load_base(base_dir, torch.float64), LoraConfig(**b_lcfg, target_parameters=b_targets))
    with torch.no_grad():
        for n, p in pm_b.named_parameters():
            if "lora_" in n:
                # float32 values (exact in the float64 model and in the float32 file)
                p.copy_((0.03 * torch.randn(p.shape, generator=gen, dtype=torch.float32)).double())
    if os.path.exists(b_dir):
        shutil.rmtree(b_dir)
    save_f32(pm_b, b_dir, a_cfg["base_model_name_or_path"])

    # ---- adapter_b padded to adapter/'s expert targets (PEFT needs equal target_parameters sets)
    a_targets = a_cfg["target_parameters"]
    assert set(b_targets) <= set(a_targets), "adapter_b's expert targets must be a subset of adapter/'s"
    pm_pad = get_peft_model(load_base(base_dir, torch.float64), LoraConfig(**b_lcfg, target_parameters=a_targets))
    src_w, dst_w = param_wrappers(pm_b), param_wrappers(pm_pad)
    src_l, dst_l = lora_linears(pm_b), lora_linears(pm_pad)
    assert set(src_l) == set(dst_l)
    with torch.no_grad():
        for k, dst in list(dst_w.items()) + list(dst_l.items()):
            src = src_w.get(k) if isinstance(k, tuple) else src_l[k]
            if src is None:
                dst.lora_A["default"].weight.copy_(0.03 * torch.randn(dst.lora_A["default"].weight.shape,
                                                                      generator=gen, dtype=torch.float64))
                dst.lora_B["default"].weight.zero_()
            else:
                dst.lora_A["default"].weight.copy_(src.lora_A["default"].weight)
                dst.lora_B["default"].weight.copy_(src.lora_B["default"].weight)
    tmp = tempfile.mkdtemp(prefix="adapter_b_padded.")
    try:
        save_f32(pm_pad, tmp, a_cfg["base_model_name_or_path"])
        out = {"input_ids": input_ids, "labels": labels}
        results = {}
        for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            logits, loss = two_adapter_logits(base_dir, a_dir, tmp, dtype, input_ids, labels)
            out[f"logits_two_adapters_{tag}"] = logits.float().contiguous()
            out[f"loss_two_adapters_{tag}"] = loss.float().reshape(1)
            results[tag] = (logits, loss)
    finally:
        shutil.rmtree(tmp)

    # ---- checks: the padded two-adapter forward is adapter/ + adapter_b exactly
    ref_logits, ref_loss, delta_keys = delta_sum_logits(base_dir, [a_dir, b_dir], input_ids, labels)
    d64 = (results["f64"][0] - ref_logits).abs().max().item()
    assert d64 < 1e-9, f"two-adapter float64 logits vs W + dW_a + dW_b: {d64}"
    d32 = (results["f32"][0].double() - results["f64"][0]).abs().max().item()
    lora_a = load_file(os.path.join(fx, "golden.safetensors"))["logits_lora"]
    moved = (results["f64"][0].float() - lora_a).abs().max().item()
    assert moved > 1e-2, f"adapter_b barely changes the logits ({moved}); the test would not see it"

    save_file(out, os.path.join(fx, "golden_combine.safetensors"), metadata={"format": "pt"})
    meta = {
        "script": "scripts/gen_combine_golden.py",
        "seed": SEED,
        "adapter_b": {"peft_config": {**b_lcfg, "target_parameters": b_targets},
                      "note": "layer 3 adapts only gate_up_proj: its key here is mlp.experts.lora_*, in a "
                              "combination with adapter/ it is mlp.experts.base_layer.lora_*"},
        "tensors": {
            "input_ids / labels": "copied from golden.safetensors",
            "logits_two_adapters_f32 / loss_two_adapters_f32": "PEFT forward, adapter/ and adapter_b/ both active "
            "(load_adapter twice, base_model.set_adapter(['a', 'b'])), float32 compute, dequantized base (no "
            "quantization)",
            "logits_two_adapters_f64 / loss_two_adapters_f64": "the same in float64 compute, stored as float32 "
            "(transformers' GptOssRMSNorm computes in float32 even in a float64 model, as for golden.json's "
            "logits_lora)",
        },
        "peft_limitation": "PEFT 0.21 refuses to load two adapters whose target_parameters differ; adapter 'b' is "
        "adapter_b/ padded to adapter/'s target_parameters with lora_B = 0 for the expert weights it does not adapt "
        "(an exact zero delta)",
        "checks": {
            "max abs diff, float64 two-adapter logits vs base + dW_a + dW_b (get_delta_weight, float64)": d64,
            "max abs diff, float32 vs float64 two-adapter logits": d32,
            "max abs diff, float64 two-adapter logits vs golden logits_lora (adapter/ alone)": moved,
            "deltas summed": len(delta_keys),
        },
        "tolerances": {
            "combined adapter, --quant none, vs logits_two_adapters_f64": "max abs diff <= 2e-3 (golden.json's "
            "float32-implementation tolerance)",
        },
    }
    with open(os.path.join(fx, "golden_combine.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"adapter_b and golden_combine written under {fx}")
    print(f"  two-adapter f64 vs W + dW_a + dW_b: max abs diff {d64:.3e}")
    print(f"  two-adapter f32 vs f64:             max abs diff {d32:.3e}")
    print(f"  two adapters vs adapter/ alone:     max abs diff {moved:.3e}")
    print(f"  loss f32 {results['f32'][1].item():.6f}  f64 {results['f64'][1].item():.6f}")


if __name__ == "__main__":
    main()
