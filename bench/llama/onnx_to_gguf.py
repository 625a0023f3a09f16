#!/usr/bin/env python3
"""Write an F32 GGUF with the same tensors as a bench/llama ONNX model.

The peer bench (scripts/bench_peer.sh) compares sq with llama.cpp's llama-quantize on the
same weights. This reads the ONNX graph written by sq_gen_llama (Hugging Face tensor names,
weights in external data) and writes the llama-architecture GGUF llama-quantize expects:

  model.embed_tokens.weight [V, H]            -> token_embd.weight      (ggml ne = [H, V])
  model.layers.i.input_layernorm.weight       -> blk.i.attn_norm.weight
  model.layers.i.self_attn.{q,k,v,o}_proj     -> blk.i.attn_{q,k,v,output}.weight
  model.layers.i.post_attention_layernorm     -> blk.i.ffn_norm.weight
  model.layers.i.mlp.{gate,up,down}_proj      -> blk.i.ffn_{gate,up,down}.weight
  model.norm.weight                           -> output_norm.weight
  lm_head.weight [H, V]                       -> output.weight          (ggml ne = [H, V])

ONNX MatMul weights are [in, out]; ggml stores a linear layer as ne = [in, out], i.e. a
row-major [out, in] array, so each MatMul weight is transposed on the way. Values are
copied unchanged (F32). Hyper-parameters come from the graph's shape constants.

Needs numpy and onnx (Debian: python3-numpy python3-onnx) and llama.cpp's gguf-py, whose
directory is passed with --gguf-py. Streams one tensor at a time (peak memory ~ the largest
tensor).
"""
import argparse
import os
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def fail(msg):
    print(f"onnx_to_gguf: {msg}", file=sys.stderr)
    sys.exit(1)


def external_view(model_dir, tensor):
    """A read-only memmap of an external-data FP32 initializer, in its ONNX shape."""
    ext = {e.key: e.value for e in tensor.external_data}
    if tensor.data_type != onnx.TensorProto.FLOAT:
        fail(f"{tensor.name}: expected FLOAT, got data type {tensor.data_type}")
    shape = tuple(int(d) for d in tensor.dims)
    if not ext:
        return numpy_helper.to_array(tensor).reshape(shape)
    path = os.path.join(model_dir, ext["location"])
    offset = int(ext.get("offset", "0"))
    count = int(np.prod(shape)) if shape else 1
    length = int(ext.get("length", str(count * 4)))
    if length != count * 4:
        fail(f"{tensor.name}: external length {length} != {count} floats")
    return np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape)


LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
PER_LAYER = {
    "input_layernorm": ("attn_norm", False),
    "self_attn.q_proj": ("attn_q", True),
    "self_attn.k_proj": ("attn_k", True),
    "self_attn.v_proj": ("attn_v", True),
    "self_attn.o_proj": ("attn_output", True),
    "post_attention_layernorm": ("ffn_norm", False),
    "mlp.gate_proj": ("ffn_gate", True),
    "mlp.up_proj": ("ffn_up", True),
    "mlp.down_proj": ("ffn_down", True),
}


def gguf_name(onnx_name):
    """(gguf name, transpose?) for a weight, or None for graph constants."""
    if onnx_name == "model.embed_tokens.weight":
        return "token_embd.weight", False
    if onnx_name == "model.norm.weight":
        return "output_norm.weight", False
    if onnx_name == "lm_head.weight":
        return "output.weight", True
    m = LAYER.match(onnx_name)
    if m and m.group(2) in PER_LAYER:
        name, transpose = PER_LAYER[m.group(2)]
        return f"blk.{m.group(1)}.{name}.weight", transpose
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="bench/llama ONNX model (weights in external data)")
    ap.add_argument("out", help="GGUF file to write")
    ap.add_argument("--gguf-py", required=True, help="llama.cpp's gguf-py directory")
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)
    import gguf  # noqa: E402  (from the llama.cpp source the bench built)

    model = onnx.load(args.model, load_external_data=False)
    model_dir = os.path.dirname(os.path.abspath(args.model))
    inits = {t.name: t for t in model.graph.initializer}

    def const(name):
        t = inits.get("/model/constants/" + name)
        if t is None:
            fail(f"constant {name} not found: not a bench/llama model")
        return numpy_helper.to_array(t)

    embed = inits.get("model.embed_tokens.weight")
    if embed is None:
        fail("model.embed_tokens.weight not found: not a bench/llama model")
    vocab, hidden = (int(d) for d in embed.dims)
    blocks = 1 + max(int(m.group(1)) for m in map(LAYER.match, inits) if m)
    ffn = int(inits["model.layers.0.mlp.gate_proj.weight"].dims[1])
    q_heads = const("q_heads_shape")
    kv_heads = const("kv_heads_shape")
    n_head, head_dim, n_head_kv = int(q_heads[2]), int(q_heads[3]), int(kv_heads[2])
    eps = float(const("rms_eps"))

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("sq bench/llama " + os.path.basename(model_dir))
    w.add_block_count(blocks)
    w.add_context_length(131072)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    plan = []
    for t in model.graph.initializer:
        mapped = gguf_name(t.name)
        if mapped is None:
            continue
        name, transpose = mapped
        shape = [int(d) for d in t.dims]
        if transpose:
            shape = shape[::-1]
        w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        plan.append((t, transpose))
    if not any(t.name == "lm_head.weight" for t, _ in plan):
        fail("lm_head.weight not found (tied models are not supported by this converter)")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, transpose in plan:
        view = external_view(model_dir, t)
        w.write_tensor_data(np.ascontiguousarray(view.T) if transpose else np.asarray(view))
    w.close()
    print(f"onnx_to_gguf: wrote {args.out}: {len(plan)} tensors, {blocks} blocks, "
          f"hidden {hidden}, ffn {ffn}, vocab {vocab}, heads {n_head}/{n_head_kv}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
