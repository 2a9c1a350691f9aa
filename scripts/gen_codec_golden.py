#!/usr/bin/env python3
"""Generate kernels/tests/data/mxfp4_golden.safetensors from the reference MXFP4 codec.

Usage: python scripts/gen_codec_golden.py --ref /work/shared/reference \
           [--out kernels/tests/data/mxfp4_golden.safetensors]

Every case `<name>` stores `<name>.x` (f32, flat, length a multiple of 32) with the reference's
`<name>.blocks` (u8 [n/2]), `<name>.scales` (u8 [n/32]) and `<name>.fake` (f32 [n],
dequantize(quantize(x))). The `decode.*` case stores arbitrary packed bytes and every scale byte
0..255 with the reference's `decode.out`. The numbers come only from mxfp4_ref.py.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

F32 = np.float32
BOUNDS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def up(v):
    return np.nextafter(F32(v), F32(np.inf))


def down(v):
    return np.nextafter(F32(v), F32(-np.inf))


def random_normal(rng):
    """Random normal data at several scales (one scale per 1024 elements)."""
    parts = []
    for scale in [1e-38, 1e-20, 1e-6, 1e-3, 0.02, 1.0, 7.0, 1e3, 1e20, 1e37]:
        parts.append(rng.standard_normal(1024) * scale)
    return np.concatenate(parts).astype(F32)


def log_uniform(rng):
    """Magnitudes spread over the whole f32 range (subnormal to near max), random signs."""
    n = 4096
    exps = rng.uniform(-149, 127.99, size=n)
    v = (2.0 ** exps) * rng.choice([-1.0, 1.0], size=n)
    v = v.astype(F32)
    # per block, a narrower spread too (so that many elements are not rounded to zero)
    blocks = v.reshape(-1, 32)
    centre = rng.uniform(-140, 120, size=(blocks.shape[0], 1))
    narrow = (2.0 ** (centre + rng.uniform(-4, 3, size=blocks.shape))).astype(F32)
    narrow *= rng.choice([-1.0, 1.0], size=narrow.shape).astype(F32)
    return np.concatenate([v, narrow.reshape(-1)]).astype(F32)


def ties(rng):
    """For every exponent e the spec can produce from a normal amax (6*2^e representable):
    a block with amax = 6*2^e (scale e), holding every bound exactly (a tie), one ulp above and
    below, and grid values; random signs and order."""
    blocks = []
    for e in range(-127, 126):
        s = 2.0**e
        vals = [F32(6.0 * s)]
        for b in BOUNDS:
            t = F32(b * s)
            vals += [t, up(t), down(t)]
        vals += [F32(g * s) for g in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)]
        vals += [down(F32(6.0 * s)), F32(-0.0), F32(0.0)]
        v = np.array(vals[:32], dtype=F32)
        assert v.size == 32, v.size
        sign = rng.choice([-1.0, 1.0], size=32).astype(F32)
        sign[0] = 1.0
        v = v * sign
        rng.shuffle(v)
        blocks.append(v)
    return np.concatenate(blocks)


def scale_edges(rng):
    """amax/6 an exact power of two, one ulp above and below; amax values whose r rounds."""
    blocks = []
    for e in list(range(-130, -120)) + list(range(-20, 20)) + list(range(118, 126)):
        base = F32(6.0 * 2.0**e)
        if not np.isfinite(base) or base == 0:
            continue
        for amax in (base, up(base), down(base), up(up(base)), down(down(base))):
            if not np.isfinite(amax) or amax == 0:
                continue
            v = rng.uniform(-1.0, 1.0, size=32).astype(F32) * amax
            v[rng.integers(0, 32)] = amax * rng.choice([-1.0, 1.0])
            blocks.append(v.astype(F32))
    return np.concatenate(blocks)


def subnormal(rng):
    """Subnormal and tiny magnitudes (amax/6 subnormal or rounding to zero, clamp at -127)."""
    tiny = np.float32(2.0**-149)
    blocks = []
    for k in [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 24, 25, 96, 97, 1000, 2**20, 2**22, 2**23 - 1]:
        amax = F32(k) * tiny
        v = (rng.integers(0, k + 1, size=32).astype(np.float64) * float(tiny)).astype(F32)
        v *= rng.choice([-1.0, 1.0], size=32).astype(F32)
        v[rng.integers(0, 32)] = amax
        blocks.append(v)
    # 2^-126 (smallest normal) region and around it
    for base in [F32(2.0**-126), up(F32(2.0**-126)), down(F32(2.0**-126)), F32(1e-39), F32(3e-38)]:
        v = (rng.uniform(-1, 1, size=32) * float(base)).astype(F32)
        v[0] = base
        blocks.append(v)
    return np.concatenate(blocks)


def huge(rng):
    """Magnitudes near f32 max: scale 126, codes whose decoded value overflows to +-Inf."""
    fmax = np.finfo(F32).max
    blocks = []
    for amax in [fmax, down(fmax), F32(3e38), F32(2.0**127), F32(1.5 * 2.0**127), F32(1.7e38), F32(1e38)]:
        v = (rng.uniform(-1, 1, size=32) * float(amax)).astype(F32)
        v[rng.integers(0, 32)] = amax
        v[rng.integers(0, 32)] = -amax
        blocks.append(v)
    return np.concatenate(blocks)


def zeros_and_signs(rng):
    """All-zero blocks, -0.0 blocks, mixed zeros with one value, mixed signs."""
    z = np.zeros(32, dtype=F32)
    nz = -np.zeros(32, dtype=F32)
    mixed = np.where(rng.random(32) < 0.5, F32(0.0), F32(-0.0)).astype(F32)
    one = mixed.copy()
    one[5] = F32(-3.0)
    small_neg = np.full(32, F32(-0.01), dtype=F32)
    small_neg[0] = F32(6.0)  # tiny negatives round to code 0 -> nibble 0x0
    signs = (rng.standard_normal(32) * 2).astype(F32)
    return np.concatenate([z, nz, mixed, one, small_neg, signs]).astype(F32)


def decode_case(rng, ref):
    """Arbitrary packed bytes with every scale byte 0..255 (255 decodes 6.0 to Inf)."""
    scales = np.arange(256, dtype=np.uint8)
    blocks = rng.integers(0, 256, size=(256, 16), dtype=np.uint8)
    # the first 8 bytes of every block hold the nibbles 0..15 in order
    blocks[:, :8] = np.array([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE], dtype=np.uint8)
    out = ref.dequantize(blocks.reshape(1, 256, 16), scales.reshape(1, 256)).reshape(-1)
    return blocks.reshape(-1), scales, out.astype(F32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="directory holding mxfp4_ref.py")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "kernels/tests/data/mxfp4_golden.safetensors"))
    ap.add_argument("--seed", type=int, default=20260101)
    args = ap.parse_args()
    sys.path.insert(0, args.ref)
    import mxfp4_ref as ref

    rng = np.random.default_rng(args.seed)
    cases = {
        "random_normal": random_normal(rng),
        "log_uniform": log_uniform(rng),
        "ties": ties(rng),
        "scale_edges": scale_edges(rng),
        "subnormal": subnormal(rng),
        "huge": huge(rng),
        "zeros_signs": zeros_and_signs(rng),
    }
    tensors = {}
    with np.errstate(over="ignore"):
        for name, x in cases.items():
            x = np.ascontiguousarray(x, dtype=F32)
            assert x.size % 32 == 0 and np.all(np.isfinite(x)), name
            blocks, scales = ref.quantize(x[None])
            fake = ref.dequantize(blocks, scales).reshape(-1)
            tensors[f"{name}.x"] = x
            tensors[f"{name}.blocks"] = np.ascontiguousarray(blocks.reshape(-1))
            tensors[f"{name}.scales"] = np.ascontiguousarray(scales.reshape(-1))
            tensors[f"{name}.fake"] = np.ascontiguousarray(fake, dtype=F32)
        b, s, out = decode_case(rng, ref)
    tensors["decode.blocks"] = b
    tensors["decode.scales"] = s
    tensors["decode.out"] = out
    save_file(tensors, args.out, metadata={"generator": "scripts/gen_codec_golden.py", "seed": str(args.seed)})
    n = sum(v.size for k, v in tensors.items() if k.endswith(".x"))
    print(f"wrote {args.out}: {len(cases)} cases, {n} elements, "
          f"{sum(np.isinf(v).sum() for k, v in tensors.items() if k.endswith('.fake'))} Inf in fake-quant outputs")


if __name__ == "__main__":
    main()
