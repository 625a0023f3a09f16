#!/usr/bin/env python3
"""How few levels per channel the OCR recognizer's layers survive, beyond sq's own quantizers.

Rewrites the recognizer's Conv and MatMul weights (ONNX Constant nodes or initializers
read as Conv input 1 / MatMul input 1) with a data-free per-output-channel quantizer and
saves an FP32 model holding the dequantized values, so that bench/ocr's `fp32` config
measures it like any artifact (`--models-dir`). Two quantizers:

  uniform  the plain asymmetric grid over [min(w, 0), max(w, 0)] with 2^b levels,
           round to nearest (what `--split off` stores, before balanced rounding);
  lloyd    a non-uniform codebook of 2^b levels per channel: Lloyd's algorithm (the
           Lloyd-Max iteration) started on the even grid over [min, max] and run to a fixed
           point. Each step lowers the weight error, so it ends below that uniform grid's;
           it is a local optimum, not necessarily the best codebook. Cluster means make
           each channel's error sum zero (no bias).
  lloyd-ends  the same with the two outer levels held at the channel's min and max.

Stored bits per weight are counted as codes plus, per channel, a float16 table of 2^b
values (lloyd) or a float16 scale and a b-bit zero point (uniform).

  codebook_probe.py IN.onnx OUT.onnx lloyd|uniform BITS [REGEX=BITS ...]

REGEX=BITS sets the bits of weights whose name matches (first match wins; 32 = leave FP32),
e.g. `linear_=32` keeps the MatMuls FP32, `conv2d_=32` the convolutions. Needs python3-onnx
(Debian). Used for docs/accuracy.md, "What a size budget can reach on the recognizer".
"""
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def lloyd_max(v, levels, keep_ends=False):
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return v.copy()
    c = np.linspace(lo, hi, levels)
    for _ in range(100):
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, v)
        count = np.bincount(idx, minlength=levels)
        total = np.bincount(idx, weights=v, minlength=levels)
        new = np.where(count > 0, total / np.maximum(count, 1), c)
        if keep_ends:
            new[0], new[-1] = lo, hi
        if np.array_equal(new, c):
            break
        c = new
    return c[np.searchsorted((c[1:] + c[:-1]) / 2, v)]


def uniform(v, levels):
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    if hi <= lo:
        return v.copy()
    s = (hi - lo) / (levels - 1)
    z = np.round(-lo / s)
    return (np.clip(np.round(v / s) + z, 0, levels - 1) - z) * s


def main():
    src, dst, mode, bits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode not in ("lloyd", "lloyd-ends", "uniform"):
        sys.exit(f"unknown quantizer '{mode}' (lloyd, lloyd-ends or uniform)")
    overrides = []
    for a in sys.argv[5:]:
        pattern, b = a.rsplit("=", 1)
        overrides.append((re.compile(pattern), int(b)))
    model = onnx.load(src)
    tensors = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    tensors[n.output[0]] = a.t
    weights = {}  # name -> output-channel axis
    for n in model.graph.node:
        if len(n.input) > 1 and n.input[1] in tensors:
            if n.op_type == "Conv":
                weights[n.input[1]] = 0
            elif n.op_type == "MatMul":
                weights[n.input[1]] = 1
    quantize = {"lloyd": lloyd_max, "uniform": uniform,
                "lloyd-ends": lambda v, n: lloyd_max(v, n, keep_ends=True)}[mode]
    count, stored_bits = 0, 0.0
    for name, axis in weights.items():
        w = numpy_helper.to_array(tensors[name]).astype(np.float64)
        b = next((ob for p, ob in overrides if p.search(name)), bits)
        if b >= 32:
            continue
        rows = np.moveaxis(w, axis, 0)
        flat = rows.reshape(rows.shape[0], -1)
        out = np.stack([quantize(ch, 2 ** b) for ch in flat])
        q = np.moveaxis(out.reshape(rows.shape), 0, axis).astype(np.float32)
        tensors[name].CopyFrom(numpy_helper.from_array(q, tensors[name].name))
        count += w.size
        per_channel = 16 + b if mode == "uniform" else (2 ** b) * 16
        stored_bits += w.size * b + flat.shape[0] * per_channel
    onnx.save(model, dst)
    bpw = stored_bits / count if count else 0.0
    print(f"{mode} {bits}-bit, overrides {[(p.pattern, b) for p, b in overrides]}: "
          f"{count} weights quantized, {bpw:.2f} stored bits per weight")


if __name__ == "__main__":
    main()
