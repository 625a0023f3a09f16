#!/usr/bin/env python3
"""What decoding a compact split at session creation costs ONNX Runtime (#14's probe).

Writes a model of L layers, each a 2048 x 8192 MatMul held as three 4-bit
com.microsoft.MatMulNBits branches (block 128) whose outputs are summed, in one of two ways:

  stored  each branch's B (12 stored bits per weight in all): what `--form branches` writes
          under `--target ort-cpu`, and as dense per kernel as outer8;
  fold    one 4-bit code per weight in B's layout plus a cluster id per weight, pairs of
          ids packed base 9 (2 bits per weight; sq's base-3 ids would need more decoding),
          and the leanest chain of ordinary ops we found that ORT constant-folds into the
          three B inputs at session creation: Cast of the ids to int32, then per branch a
          Gather of a 81-entry mask table, BitwiseAnd with the codes, a Gather of the
          complement, BitwiseAnd with the branch's zero point, BitwiseOr, Reshape.

Codes, ids and scales are random: this measures memory and time, not values. Run each file
with bench/infer's sq_bench_infer under /usr/bin/time -v (docs/benchmarks.md, "A compact
split that runs in MatMulNBits").

  fold_probe.py stored|fold LAYERS OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

K, N, BLOCK = 2048, 8192, 128
ZERO_POINTS = (0xFF, 0x77, 0x00)  # lower cluster at 15, middle at 7, upper at 0 (both nibbles)


def mask_tables(branch):
    """For an index pp = p0 * 9 + p1 over two bytes (p = id_low_nibble * 3 + id_high_nibble),
    the two bytes' nibble masks of `branch`, and their complements."""
    masks = np.zeros((81, 2), np.uint8)
    for pp in range(81):
        for j, p in enumerate((pp // 9, pp % 9)):
            masks[pp, j] = (0x0F if p // 3 == branch else 0) | (0xF0 if p % 3 == branch else 0)
    return masks, np.bitwise_not(masks)


def main():
    mode, layers, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode not in ("stored", "fold"):
        sys.exit("mode: stored or fold")
    blocks, blob = K // BLOCK, BLOCK // 2
    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(array, name))
        return name

    tables = [mask_tables(b) for b in range(3)]
    for l in range(layers):
        codes = rng.integers(0, 256, size=(N, blocks, blob), dtype=np.uint8)
        scales = (rng.random(N * blocks, dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
        if mode == "fold":
            c = const(f"codes{l}", codes.reshape(N, blocks, blob // 2, 2))
            ids = const(f"ids{l}", rng.integers(0, 81, size=(N, blocks, blob // 2), dtype=np.uint8))
            nodes.append(helper.make_node("Cast", [ids], [f"idx{l}"], to=TensorProto.INT32))
            shape = const(f"shape{l}", np.array([N, blocks, blob], np.int64))
        branches = []
        for b in range(3):
            if mode == "fold":
                tm = const(f"mask{l}_{b}", tables[b][0])
                tn = const(f"notmask{l}_{b}", tables[b][1])
                zb = const(f"zpbyte{l}_{b}", np.full((N, 1, 1, 1), ZERO_POINTS[b], np.uint8))
                nodes += [
                    helper.make_node("Gather", [tm, f"idx{l}"], [f"m{l}_{b}"]),
                    helper.make_node("BitwiseAnd", [c, f"m{l}_{b}"], [f"a{l}_{b}"]),
                    helper.make_node("Gather", [tn, f"idx{l}"], [f"n{l}_{b}"]),
                    helper.make_node("BitwiseAnd", [f"n{l}_{b}", zb], [f"z{l}_{b}"]),
                    helper.make_node("BitwiseOr", [f"a{l}_{b}", f"z{l}_{b}"], [f"o{l}_{b}"]),
                    helper.make_node("Reshape", [f"o{l}_{b}", shape], [f"B{l}_{b}"]),
                ]
                weight = f"B{l}_{b}"
            else:
                weight = const(f"B{l}_{b}", codes)
            s = const(f"scales{l}_{b}", scales)
            z = const(f"zp{l}_{b}", np.full(N * blocks // 2, ZERO_POINTS[b], np.uint8))
            nodes.append(helper.make_node("MatMulNBits", ["x", weight, s, z], [f"y{l}_{b}"],
                                          domain="com.microsoft", K=K, N=N, bits=4,
                                          block_size=BLOCK, accuracy_level=4))
            branches.append(f"y{l}_{b}")
        nodes.append(helper.make_node("Add", branches[:2], [f"sum{l}"]))
        nodes.append(helper.make_node("Add", [f"sum{l}", branches[2]], [f"out{l}"]))
        outputs.append(helper.make_tensor_value_info(f"out{l}", TensorProto.FLOAT, [1, N]))
    graph = helper.make_graph(nodes, "fold_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    onnx.save(model, out, save_as_external_data=True, location=out.split("/")[-1] + ".data")


if __name__ == "__main__":
    main()
