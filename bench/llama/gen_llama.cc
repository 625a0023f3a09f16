// sq_gen_llama: writes a Llama-3.2-1B-shaped ONNX model with synthetic heavy-tailed weights
// as external data (model.onnx + model.onnx.data). See bench/llama/llama_model.h.
//
//   sq_gen_llama --out /tmp/sq-bench/llama-16/model.onnx --blocks 16
//   sq_gen_llama --out /tmp/tiny/model.onnx --blocks 2 --hidden 64 --kv 32 --head_dim 16
//                --mlp 256 --vocab 1000
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/llama/llama_model.h"

ABSL_FLAG(std::string, out, "", "output model path (the data goes to <out>.data)");
ABSL_FLAG(int, blocks, 16, "decoder blocks (Llama-3.2-1B: 16)");
ABSL_FLAG(int64_t, hidden, 2048, "hidden width");
ABSL_FLAG(int64_t, kv, 512, "k_proj/v_proj output width (KV heads x head_dim)");
ABSL_FLAG(int64_t, mlp, 8192, "MLP width");
ABSL_FLAG(int64_t, vocab, 128256, "vocabulary size");
ABSL_FLAG(int64_t, head_dim, 64, "attention head width");
ABSL_FLAG(uint64_t, seed, 0, "weight seed");
ABSL_FLAG(bool, tied, false, "tie lm_head to the embedding (no lm_head.weight)");
ABSL_FLAG(int, threads, 0, "generation threads (0 = two per core)");
ABSL_FLAG(bool, direct_io, true, "write the data with O_DIRECT where the file system can");
ABSL_FLAG(double, weight_scale, 0.02, "Student-t scale of the weights");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a Llama-3.2-1B-shaped ONNX model with synthetic weights as external data.\n"
      "  sq_gen_llama --out DIR/model.onnx --blocks N [--hidden 2048 --kv 512 --mlp 8192 "
      "--vocab 128256 --head_dim 64 --seed S --tied=false --threads T]");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "sq_gen_llama: --out is required\n");
    return 2;
  }
  sq::bench::LlamaConfig c;
  c.blocks = absl::GetFlag(FLAGS_blocks);
  c.hidden = absl::GetFlag(FLAGS_hidden);
  c.kv = absl::GetFlag(FLAGS_kv);
  c.mlp = absl::GetFlag(FLAGS_mlp);
  c.vocab = absl::GetFlag(FLAGS_vocab);
  c.head_dim = absl::GetFlag(FLAGS_head_dim);
  c.seed = absl::GetFlag(FLAGS_seed);
  c.tied = absl::GetFlag(FLAGS_tied);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.direct_io = absl::GetFlag(FLAGS_direct_io);
  c.weight_scale = static_cast<float>(absl::GetFlag(FLAGS_weight_scale));

  std::error_code ec;
  const auto parent = std::filesystem::path(out).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) {
    std::fprintf(stderr, "sq_gen_llama: cannot create %s: %s\n", parent.c_str(),
                 ec.message().c_str());
    return 1;
  }
  sq::bench::LlamaWriteStats st;
  if (absl::Status s = sq::bench::WriteLlamaModel(c, out, &st); !s.ok()) {
    std::fprintf(stderr, "sq_gen_llama: %s\n", s.ToString().c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("sq_gen_llama: wrote %s (+ .data): blocks=%d params=%.4g data=%.3f GB in %.2f s "
              "(%.2f GB/s)\n",
              out.c_str(), c.blocks, static_cast<double>(st.parameters),
              static_cast<double>(st.data_bytes) / 1e9, st.seconds,
              static_cast<double>(st.data_bytes) / 1e9 / st.seconds);
  return 0;
}
