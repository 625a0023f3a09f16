// Writes a Llama-3.2-1B-shaped ONNX decoder with synthetic heavy-tailed weights, for speed
// and memory benchmarks at LLM scale (see docs: evaluation.md, "Speed and scale").
//
// The model is a valid, runnable decoder graph (opset 17, IR 8) whose linear layers have the
// exact shapes of Llama-3.2-1B. All weights live as EXTERNAL DATA in one file next to the
// model (`<model>.data`), each tensor at a 4096-aligned offset. Weights are a pure function
// of (config, seed, tensor, element index): the file is byte-identical for the same config
// whatever the thread count, and is generated in parallel 8 MiB chunks streamed straight to
// the file with pwrite, O_DIRECT where possible (memory: 8 MiB per thread, never the model).
#ifndef SQ_BENCH_LLAMA_LLAMA_MODEL_H_
#define SQ_BENCH_LLAMA_LLAMA_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sq::bench {

struct LlamaConfig {
  int blocks = 16;
  int64_t hidden = 2048;    // model width; q_proj/o_proj are hidden x hidden
  int64_t kv = 512;         // k_proj/v_proj output width = kv_heads * head_dim
  int64_t mlp = 8192;       // gate/up output width, down input width
  int64_t vocab = 128256;
  int64_t head_dim = 64;    // 32 query heads / 8 KV heads at the defaults
  uint64_t seed = 0;
  bool tied = false;        // true: lm_head = Transpose(embed_tokens), no lm_head.weight
  int threads = 0;          // generation threads; 0 = 2 x hardware concurrency
  bool direct_io = true;    // write the data file with O_DIRECT where the file system can
  float rms_eps = 1e-5f;
  // Weight distribution: Student-t (nu = 5) times `weight_scale` times a per-output-channel
  // factor in [0.5, 1.5), plus 2..4 outliers per output channel at 10..30x that channel's
  // scale (random sign). Output channel = column of a MatMul weight [K, N] (y = x.W), row of
  // the embedding [vocab, hidden].
  float weight_scale = 0.02f;
};

// Tiny config for CI tests: 2 blocks, hidden 64, kv 32, head_dim 16 (4 query heads, 2 KV
// heads: still grouped-query), mlp 256, vocab 1000.
LlamaConfig TinyLlamaConfig();

// One weight tensor of the model, in the order it is laid out in the data file.
struct LlamaTensor {
  std::string name;             // HF-style, e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<int64_t> dims;    // [K, N] for MatMul weights, [vocab, hidden], or [hidden]
  int channel_axis = 1;         // axis of the output channel (see LlamaConfig)
  uint64_t offset = 0;          // byte offset in the data file (multiple of 4096)
  uint64_t length = 0;          // bytes (float32)
  int64_t num_elements() const;
};

// Tensors with their data-file offsets. Checks the config (InvalidArgument).
absl::StatusOr<std::vector<LlamaTensor>> LlamaTensors(const LlamaConfig& config);

// Number of parameters (all weight tensors) and the data file's size in bytes.
absl::StatusOr<int64_t> LlamaParameterCount(const LlamaConfig& config);

// Fills out[0 .. rows*cols) with rows [row_begin, row_begin+rows) of `tensor` (tensor index
// `tensor_index` in LlamaTensors order) exactly as they are written to the data file. For
// 1-D tensors (RMSNorm weights) pass row_begin = 0, rows = 1. Exposed for tests.
void GenerateLlamaRows(const LlamaConfig& config, const LlamaTensor& tensor, int tensor_index,
                       int64_t row_begin, int64_t rows, float* out);
// Same, for the flat (row-major) element range [e_begin, e_end).
void GenerateLlamaElements(const LlamaConfig& config, const LlamaTensor& tensor,
                           int tensor_index, int64_t e_begin, int64_t e_end, float* out);

struct LlamaWriteStats {
  int64_t parameters = 0;
  uint64_t data_bytes = 0;
  double seconds = 0;
};

// Writes `model_path + ".data"` (the weights) and then `model_path` (the graph, ~tens of
// KiB; written to a temporary name and renamed, so an existing model file means a complete
// pair). The data file's `location` in the model is its base name, so the pair can be moved
// together. Overwrites existing files. `stats`, if given, receives sizes and wall time.
absl::Status WriteLlamaModel(const LlamaConfig& config, const std::string& model_path,
                             LlamaWriteStats* stats = nullptr);

}  // namespace sq::bench

#endif  // SQ_BENCH_LLAMA_LLAMA_MODEL_H_
