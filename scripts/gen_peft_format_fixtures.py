#!/usr/bin/env python3
"""Generate adapters/tests/fixtures/peft/<case>/ with PEFT itself, for adapters/tests/peft_format.rs.

Usage: .venv/bin/python scripts/gen_peft_format_fixtures.py [--out adapters/tests/fixtures/peft]

For every case: build the tiny gpt-oss of tests/fixtures/tiny-gpt-oss/base/config.json with random
weights (`GptOssForCausalLM(config)`, experts are plain 3-D parameters there), apply
`peft.get_peft_model` with the case's LoraConfig (init_lora_weights=False so no factor is all zero),
`save_pretrained` into <out>/<case>/, then load that directory back with `PeftModel.from_pretrained`
on a fresh base and write `expected.json`: every LoRA layer PEFT created on reload (module path, or
for a ParamWrapper the parameter path `<module>.<parameter_name>`), its rank, alpha and scaling as
the PEFT layer objects hold them, and the safetensors keys of its factors. The reload must give the
same layers, ranks, scalings and tensors as the model that was saved (asserted here), so the golden
is both "what PEFT created" and "what PEFT reads from these files".

Two cases rewrite PEFT's adapter_config.json on purpose (recorded in expected.json under
"config_rewritten"):
- `all_linear_string`: target_modules back to the literal string "ALL-Linear" (PEFT saves the
  expanded module list; a config holding the string is still valid and PEFT expands it on load).
- `patterns_order`: rank_pattern/alpha_pattern written in the order the LoraConfig was given
  (PEFT's save sorts every key, which changes which pattern wins; see `patterns_peft_sorted`).
`patterns_peft_sorted` is the same adapter exactly as PEFT saved it: PEFT itself cannot load it
back (the sorted pattern order gives other ranks), expected.json records that error.

Nothing here is computed by the Rust code under test; the numbers come from PEFT and transformers.
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "tests/fixtures/tiny-gpt-oss/base"

# target_modules as a list is a Python set inside LoraConfig; the order PEFT writes depends on string
# hashing, so pin it for reproducible files.
if os.environ.get("PYTHONHASHSEED") != "0":
    env = dict(os.environ, PYTHONHASHSEED="0")
    sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))

import torch  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402

warnings.filterwarnings("ignore")

PREFIX = "base_model.model."

CASES = {
    # "all-linear" (any case): every nn.Linear but the output head = q/k/v/o of every layer
    "all_linear": dict(r=1, target_modules="all-linear"),
    "all_linear_string": dict(r=1, target_modules="all-linear"),
    # a string is a regex that must match the whole module path
    "regex": dict(target_modules=r".*layers\.[13]\.self_attn\.(q|o)_proj"),
    # list entries: exact path or `.`-suffix
    "list_paths_suffixes": dict(
        target_modules=["model.layers.0.self_attn.q_proj", "layers.2.self_attn.k_proj", "v_proj", "self_attn.o_proj"]
    ),
    # layers_to_transform as an int, default layer pattern
    "layers_int": dict(target_modules=["q_proj", "v_proj"], layers_to_transform=1),
    # an int with layers_pattern
    "layers_int_pattern": dict(target_modules=["v_proj"], layers_to_transform=2, layers_pattern="layers"),
    # a list with layers_pattern; the exact path of layer 0 is NOT filtered (PEFT applies the layer
    # filter only to suffix matches)
    "layers_list_pattern": dict(
        target_modules=["k_proj", "o_proj", "model.layers.0.self_attn.q_proj"],
        layers_to_transform=[1, 3],
        layers_pattern="layers",
    ),
    # a list of patterns, first that matches gives the index; target_parameters ignore the layer filter
    "layers_list_patterns": dict(
        r=1,
        target_modules=["q_proj"],
        layers_to_transform=[0, 2],
        layers_pattern=["blocks", "layers"],
        target_parameters=["mlp.experts.down_proj"],
    ),
    # layers_to_transform without layers_pattern, list form
    "layers_list": dict(target_modules=["q_proj", "model.layers.1.self_attn.v_proj"], layers_to_transform=[0, 2]),
    "exclude_list": dict(
        target_modules=["q_proj", "k_proj"],
        exclude_modules=["layers.0.self_attn.q_proj", "model.layers.3.self_attn.k_proj"],
    ),
    "exclude_regex": dict(r=1, target_modules=r".*_proj", exclude_modules=r".*\.[02]\.self_attn\.[qv]_proj"),
    # overlapping pattern keys in non-sorted order: the first key (in the file's order) wins
    "patterns_order": dict(
        target_modules=["q_proj", "k_proj", "v_proj"],
        rank_pattern={"self_attn.q_proj": 3, r"layers\.0\..*": 5},
        alpha_pattern={"q_proj": 16, "model.layers.0.self_attn.q_proj": 1},
    ),
    "patterns_peft_sorted": dict(
        target_modules=["q_proj", "k_proj", "v_proj"],
        rank_pattern={"self_attn.q_proj": 3, r"layers\.0\..*": 5},
        alpha_pattern={"q_proj": 16, "model.layers.0.self_attn.q_proj": 1},
    ),
    "rslora": dict(
        r=4,
        lora_alpha=6,
        use_rslora=True,
        target_modules=["q_proj", "o_proj"],
        rank_pattern={"o_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
    ),
    # one expert projection per layer: saved under mlp.experts.lora_* whichever it is
    "experts_single": dict(
        r=1,
        target_modules=["q_proj"],
        target_parameters=[
            "layers.0.mlp.experts.gate_up_proj",
            "layers.1.mlp.experts.down_proj",
            "model.layers.2.mlp.experts.gate_up_proj",
            "layers.3.mlp.experts.down_proj",
        ],
    ),
    # both: gate_up nested under experts.base_layer, down under experts
    "experts_both": dict(
        r=1,
        lora_alpha=2,
        target_modules=[],
        target_parameters=["layers.1.mlp.experts.gate_up_proj", "layers.1.mlp.experts.down_proj",
                           "layers.3.mlp.experts.gate_up_proj", "layers.3.mlp.experts.down_proj"],
        rank_pattern={"layers.3.mlp.experts.gate_up_proj": 2},
        alpha_pattern={"down_proj": 3},
    ),
}

REWRITES = {
    "all_linear_string": "target_modules set back to the string \"ALL-Linear\" (PEFT saves the expanded list)",
    "patterns_order": "rank_pattern and alpha_pattern written in the LoraConfig's order (PEFT's save sorts them)",
}


def base_model(cfg):
    torch.manual_seed(1234)
    return GptOssForCausalLM(cfg)


def layers_of(model):
    """LoRA layers as {path: (r, alpha, scaling, key_prefix, module)}; ParamWrapper paths name the parameter."""
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, LoraLayer) or "default" not in mod.r:
            continue
        module = name.removeprefix(PREFIX)
        unwrapped = module.replace(".base_layer", "")
        pname = getattr(mod, "parameter_name", None)
        path = f"{unwrapped}.{pname}" if pname else unwrapped
        assert path not in out, path
        out[path] = dict(
            r=int(mod.r["default"]),
            alpha=mod.lora_alpha["default"],
            scaling=float(mod.scaling["default"]),
            kind="parameter" if pname else "module",
            key_a=f"{PREFIX}{module}.lora_A.weight",
            key_b=f"{PREFIX}{module}.lora_B.weight",
            a=mod.lora_A["default"].weight.detach().clone(),
            b=mod.lora_B["default"].weight.detach().clone(),
        )
    return out


def dump_config_in_order(path, given):
    """PEFT's own text (indent 2, keys sorted) except that rank/alpha patterns keep the given order."""
    cfg = json.loads(path.read_text())
    ordered = {k: cfg[k] for k in sorted(cfg)}
    for key in ("rank_pattern", "alpha_pattern"):
        ordered[key] = dict(given[key])
    path.write_text(json.dumps(ordered, indent=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "adapters/tests/fixtures/peft"))
    args = ap.parse_args()
    out = Path(args.out)
    cfg = GptOssConfig.from_pretrained(BASE_CONFIG)
    # built directly (not from_pretrained), the experts are plain 3-D parameters even though the config
    # names an mxfp4 quantization: what PEFT's target_parameters wraps
    total = 0
    for case, kw in CASES.items():
        d = out / case
        if d.exists():
            shutil.rmtree(d)
        kwargs = dict(r=2, lora_alpha=4, init_lora_weights=False)
        kwargs.update(kw)
        pm = get_peft_model(base_model(cfg), LoraConfig(**copy.deepcopy(kwargs)))
        created = layers_of(pm)
        pm.save_pretrained(str(d))
        (d / "README.md").unlink(missing_ok=True)
        cfg_path = d / "adapter_config.json"
        if case == "all_linear_string":
            c = json.loads(cfg_path.read_text())
            c["target_modules"] = "ALL-Linear"
            cfg_path.write_text(json.dumps(c, indent=2, sort_keys=True))
        if case == "patterns_order":
            dump_config_in_order(cfg_path, kwargs)
        # written without sort_keys: lora_config keeps the order its patterns were given in
        expected = dict(
            case=case,
            peft_version=peft.__version__,
            transformers_version=transformers.__version__,
            lora_config={k: kwargs[k] for k in sorted(kwargs)},
        )
        if case in REWRITES:
            expected["config_rewritten"] = REWRITES[case]
        try:
            loaded = PeftModel.from_pretrained(base_model(cfg), str(d))
        except Exception as e:  # noqa: BLE001 - the error is the golden here
            assert case == "patterns_peft_sorted", (case, e)
            expected["peft_load_error"] = f"{type(e).__name__}: {e}"
            expected["modules"] = []
        else:
            assert case != "patterns_peft_sorted", "PEFT was expected to refuse its own sorted patterns"
            reloaded = layers_of(loaded)
            assert reloaded.keys() == created.keys(), (case, sorted(reloaded), sorted(created))
            with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
                keys = set(f.keys())
                for path, m in reloaded.items():
                    c = created[path]
                    assert (m["r"], m["alpha"], m["scaling"]) == (c["r"], c["alpha"], c["scaling"]), (case, path)
                    assert torch.equal(m["a"], c["a"]) and torch.equal(m["b"], c["b"]), (case, path)
                    assert torch.equal(f.get_tensor(m["key_a"]), c["a"]), (case, path)
                    assert torch.equal(f.get_tensor(m["key_b"]), c["b"]), (case, path)
                want_keys = {m[k] for m in reloaded.values() for k in ("key_a", "key_b")}
                assert keys == want_keys, (case, sorted(keys ^ want_keys))
            expected["modules"] = [
                dict(path=path, kind=m["kind"], r=m["r"], alpha=m["alpha"], scaling=m["scaling"],
                     # repr: the exact float for readers whose JSON parser rounds (serde_json's default)
                     scaling_repr=repr(m["scaling"]), key_a=m["key_a"], key_b=m["key_b"])
                for path, m in sorted(reloaded.items())
            ]
        (d / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        size = sum(p.stat().st_size for p in d.iterdir())
        total += size
        print(f"{case}: {len(expected['modules'])} LoRA layers, {size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
