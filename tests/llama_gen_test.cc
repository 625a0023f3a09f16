// Tests for the Llama-3.2-1B-shaped benchmark model generator (bench/llama/llama_model.h):
// layout and external data, a run in ONNX Runtime checked against a plain C++ reference of
// the Llama decoder, determinism (same config -> byte-identical files, whatever the thread
// count) and the weight distribution (heavy tails, per-channel outliers).
#include "bench/llama/llama_model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "onnx/checker.h"
#include "onnx/onnx_pb.h"
#include "tests/support/ort_runner.h"

namespace sq::bench {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("llama_gen_test_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string File(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

onnx::ModelProto LoadModel(const std::string& path) {
  onnx::ModelProto m;
  const std::string bytes = ReadAll(path);
  EXPECT_TRUE(m.ParseFromString(bytes)) << path;
  return m;
}

std::map<std::string, std::string> ExternalData(const onnx::TensorProto& t) {
  std::map<std::string, std::string> kv;
  for (const auto& e : t.external_data()) kv[e.key()] = e.value();
  return kv;
}

// Whole tensor, as the generator writes it.
std::vector<float> Tensor(const LlamaConfig& c, const std::vector<LlamaTensor>& ts,
                          const std::string& name) {
  for (int i = 0; i < static_cast<int>(ts.size()); ++i) {
    if (ts[i].name != name) continue;
    std::vector<float> v(static_cast<size_t>(ts[i].num_elements()));
    GenerateLlamaRows(c, ts[i], i, 0, ts[i].dims.size() == 1 ? 1 : ts[i].dims[0], v.data());
    return v;
  }
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

TEST(LlamaGenTest, FullConfigHasLlama32_1BShapes) {
  LlamaConfig c;  // defaults = Llama-3.2-1B
  auto ts = LlamaTensors(c);
  ASSERT_TRUE(ts.ok()) << ts.status();
  std::map<std::string, std::vector<int64_t>> dims;
  for (const auto& t : *ts) dims[t.name] = t.dims;
  EXPECT_THAT(dims["model.embed_tokens.weight"], ElementsAre(128256, 2048));
  EXPECT_THAT(dims["lm_head.weight"], ElementsAre(2048, 128256));
  EXPECT_THAT(dims["model.norm.weight"], ElementsAre(2048));
  for (int i : {0, 15}) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    EXPECT_THAT(dims[p + "self_attn.q_proj.weight"], ElementsAre(2048, 2048));
    EXPECT_THAT(dims[p + "self_attn.k_proj.weight"], ElementsAre(2048, 512));
    EXPECT_THAT(dims[p + "self_attn.v_proj.weight"], ElementsAre(2048, 512));
    EXPECT_THAT(dims[p + "self_attn.o_proj.weight"], ElementsAre(2048, 2048));
    EXPECT_THAT(dims[p + "mlp.gate_proj.weight"], ElementsAre(2048, 8192));
    EXPECT_THAT(dims[p + "mlp.up_proj.weight"], ElementsAre(2048, 8192));
    EXPECT_THAT(dims[p + "mlp.down_proj.weight"], ElementsAre(8192, 2048));
    EXPECT_THAT(dims[p + "input_layernorm.weight"], ElementsAre(2048));
    EXPECT_THAT(dims[p + "post_attention_layernorm.weight"], ElementsAre(2048));
  }
  EXPECT_EQ(dims.count("model.layers.16.self_attn.q_proj.weight"), 0u);
  EXPECT_EQ(ts->size(), 1u + 16 * 9 + 1 + 1);
  int64_t linear = 0;
  for (const auto& t : *ts) {
    if (t.name.rfind("model.layers.", 0) == 0 && t.dims.size() == 2) linear += t.num_elements();
    EXPECT_EQ(t.offset % 4096, 0u) << t.name;
    EXPECT_EQ(t.length, static_cast<uint64_t>(t.num_elements()) * 4);
  }
  EXPECT_EQ(linear, 973078528);  // ~0.97 B in the decoder blocks' linear layers
  auto params = LlamaParameterCount(c);
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(*params, 1498482688);  // + embedding, untied lm_head and the norms
  // Tied: no lm_head.weight.
  c.tied = true;
  auto tied = LlamaParameterCount(c);
  ASSERT_TRUE(tied.ok());
  EXPECT_EQ(*tied, 1498482688 - 2048 * 128256);
}

TEST(LlamaGenTest, RejectsInconsistentConfigs) {
  LlamaConfig c = TinyLlamaConfig();
  c.kv = 24;  // not a multiple of head_dim 16
  EXPECT_EQ(LlamaTensors(c).status().code(), absl::StatusCode::kInvalidArgument);
  c = TinyLlamaConfig();
  c.kv = 48;  // 4 query heads, 3 KV heads
  EXPECT_EQ(LlamaTensors(c).status().code(), absl::StatusCode::kInvalidArgument);
  c = TinyLlamaConfig();
  c.vocab = 0;
  TempDir dir;
  EXPECT_EQ(WriteLlamaModel(c, dir.File("model.onnx")).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LlamaGenTest, WritesAlignedExternalDataThatMatchesTheGenerator) {
  TempDir dir;
  const LlamaConfig c = TinyLlamaConfig();
  const std::string path = dir.File("model.onnx");
  LlamaWriteStats st;
  ASSERT_TRUE(WriteLlamaModel(c, path, &st).ok());
  ASSERT_TRUE(fs::exists(path));
  ASSERT_TRUE(fs::exists(path + ".data"));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  const std::string data = ReadAll(path + ".data");
  EXPECT_EQ(data.size(), st.data_bytes);

  auto ts = LlamaTensors(c);
  ASSERT_TRUE(ts.ok());
  EXPECT_EQ(st.parameters, *LlamaParameterCount(c));

  const onnx::ModelProto m = LoadModel(path);
  EXPECT_EQ(m.ir_version(), 8);
  ASSERT_EQ(m.opset_import_size(), 1);
  EXPECT_EQ(m.opset_import(0).version(), 17);
  int external = 0;
  for (const auto& init : m.graph().initializer()) {
    if (init.data_location() != onnx::TensorProto::EXTERNAL) {
      EXPECT_LE(init.ByteSizeLong(), 256u) << init.name() << ": only small constants inline";
      continue;
    }
    ++external;
    EXPECT_FALSE(init.has_raw_data()) << init.name();
    auto kv = ExternalData(init);
    EXPECT_EQ(kv["location"], "model.onnx.data") << init.name();
    const uint64_t off = std::stoull(kv["offset"]), len = std::stoull(kv["length"]);
    EXPECT_EQ(off % 4096, 0u) << init.name();
    int64_t n = 1;
    for (int64_t d : init.dims()) n *= d;
    EXPECT_EQ(len, static_cast<uint64_t>(n) * 4) << init.name();
    ASSERT_LE(off + len, data.size()) << init.name();
    // The bytes are the generator's values.
    const std::vector<float> want = Tensor(c, *ts, init.name());
    ASSERT_EQ(want.size(), static_cast<size_t>(n));
    EXPECT_EQ(std::memcmp(data.data() + off, want.data(), len), 0) << init.name();
  }
  EXPECT_EQ(external, static_cast<int>(ts->size()));
  EXPECT_EQ(external, 1 + 9 * c.blocks + 1 + 1);

  // Names follow the HF export.
  std::vector<std::string> matmul_weights;
  for (const auto& n : m.graph().node()) {
    if (n.op_type() == "MatMul" && n.input(1).find(".weight") != std::string::npos) {
      matmul_weights.push_back(n.input(1));
    }
  }
  EXPECT_EQ(matmul_weights.size(), 7u * c.blocks + 1);
  EXPECT_THAT(matmul_weights, ::testing::Contains("model.layers.1.mlp.down_proj.weight"));
  EXPECT_THAT(matmul_weights, ::testing::Contains("lm_head.weight"));

  try {
    onnx::checker::check_model(path);  // also checks the external data file is there
  } catch (const std::exception& e) {
    FAIL() << "onnx checker: " << e.what();
  }
}

// Plain C++ Llama decoder (no rotary embeddings, like the generated graph).
std::vector<float> ReferenceLogits(const LlamaConfig& c, const std::vector<int64_t>& ids) {
  auto ts = *LlamaTensors(c);
  const int64_t S = static_cast<int64_t>(ids.size()), H = c.hidden, hd = c.head_dim;
  const int64_t nh = H / hd, nkv = c.kv / hd, group = nh / nkv;
  auto matmul = [](const std::vector<float>& x, int64_t rows, const std::vector<float>& w,
                   int64_t K, int64_t N) {
    std::vector<float> y(static_cast<size_t>(rows * N), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) y[r * N + n] += x[r * K + k] * w[k * N + n];
    return y;
  };
  auto rms = [&](const std::vector<float>& x, const std::vector<float>& w) {
    std::vector<float> y(x.size());
    for (int64_t s = 0; s < S; ++s) {
      double ss = 0;
      for (int64_t i = 0; i < H; ++i) ss += double(x[s * H + i]) * x[s * H + i];
      const double r = std::sqrt(ss / H + c.rms_eps);
      for (int64_t i = 0; i < H; ++i) y[s * H + i] = float(x[s * H + i] / r) * w[i];
    }
    return y;
  };
  const std::vector<float> emb = Tensor(c, ts, "model.embed_tokens.weight");
  std::vector<float> h(static_cast<size_t>(S * H));
  for (int64_t s = 0; s < S; ++s)
    std::copy_n(emb.begin() + ids[s] * H, H, h.begin() + s * H);
  for (int b = 0; b < c.blocks; ++b) {
    const std::string p = "model.layers." + std::to_string(b) + ".";
    auto x = rms(h, Tensor(c, ts, p + "input_layernorm.weight"));
    auto q = matmul(x, S, Tensor(c, ts, p + "self_attn.q_proj.weight"), H, H);
    auto k = matmul(x, S, Tensor(c, ts, p + "self_attn.k_proj.weight"), H, c.kv);
    auto v = matmul(x, S, Tensor(c, ts, p + "self_attn.v_proj.weight"), H, c.kv);
    std::vector<float> ctx(static_cast<size_t>(S * H), 0.0f);
    for (int64_t head = 0; head < nh; ++head) {
      const int64_t kvh = head / group;  // HF repeat_kv
      for (int64_t s = 0; s < S; ++s) {
        std::vector<double> sc(static_cast<size_t>(s + 1));
        double mx = -1e300;
        for (int64_t t = 0; t <= s; ++t) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += double(q[s * H + head * hd + i]) * k[t * c.kv + kvh * hd + i];
          sc[t] = d / std::sqrt(double(hd));
          mx = std::max(mx, sc[t]);
        }
        double sum = 0;
        for (auto& e : sc) sum += (e = std::exp(e - mx));
        for (int64_t t = 0; t <= s; ++t)
          for (int64_t i = 0; i < hd; ++i)
            ctx[s * H + head * hd + i] += float(sc[t] / sum) * v[t * c.kv + kvh * hd + i];
      }
    }
    auto o = matmul(ctx, S, Tensor(c, ts, p + "self_attn.o_proj.weight"), H, H);
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    auto y = rms(h, Tensor(c, ts, p + "post_attention_layernorm.weight"));
    auto gate = matmul(y, S, Tensor(c, ts, p + "mlp.gate_proj.weight"), H, c.mlp);
    auto up = matmul(y, S, Tensor(c, ts, p + "mlp.up_proj.weight"), H, c.mlp);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    auto down = matmul(gate, S, Tensor(c, ts, p + "mlp.down_proj.weight"), c.mlp, H);
    for (size_t i = 0; i < h.size(); ++i) h[i] += down[i];
  }
  auto f = rms(h, Tensor(c, ts, "model.norm.weight"));
  std::vector<float> head;
  if (c.tied) {
    head.resize(static_cast<size_t>(H * c.vocab));
    for (int64_t v = 0; v < c.vocab; ++v)
      for (int64_t i = 0; i < H; ++i) head[i * c.vocab + v] = emb[v * H + i];
  } else {
    head = Tensor(c, ts, "lm_head.weight");
  }
  return matmul(f, S, head, H, c.vocab);
}

absl::StatusOr<std::vector<float>> OrtLogits(const std::string& path,
                                             const std::vector<int64_t>& ids,
                                             int64_t vocab) {
  testing::OrtTensor in;
  in.name = "input_ids";
  in.elem_type = 7;
  in.shape = {1, static_cast<int64_t>(ids.size())};
  in.i = ids;
  auto out = testing::RunOrt(path, {in});
  if (!out.ok()) return out.status();
  if (out->size() != 1 || (*out)[0].name != "logits") return absl::InternalError("outputs");
  const std::vector<int64_t> want = {1, static_cast<int64_t>(ids.size()), vocab};
  if ((*out)[0].shape != want) return absl::InternalError("logits shape");
  return (*out)[0].f;
}

double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

void ExpectRunsLikeLlama(const LlamaConfig& c) {
  TempDir dir;
  const std::string path = dir.File("model.onnx");
  ASSERT_TRUE(WriteLlamaModel(c, path).ok());
  ASSERT_TRUE(testing::LoadInOrt(path).ok()) << testing::LoadInOrt(path);

  const std::vector<int64_t> ids = {1, 517, 42, c.vocab - 1};
  auto logits = OrtLogits(path, ids, c.vocab);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), static_cast<size_t>(4 * c.vocab));
  for (float v : *logits) ASSERT_TRUE(std::isfinite(v));
  const auto [mn, mx] = std::minmax_element(logits->begin(), logits->end());
  EXPECT_LT(*mn, *mx) << "logits are constant";

  // Same numbers as a plain C++ Llama decoder: RMSNorm, grouped-query causal attention,
  // SwiGLU, residuals, final norm, lm_head.
  const std::vector<float> ref = ReferenceLogits(c, ids);
  EXPECT_LT(MaxRelDiff(*logits, ref), 1e-4);

  // Causal: position 0..1 logits do not depend on later tokens; position 3's do.
  auto other = OrtLogits(path, {1, 517, 7, 8}, c.vocab);
  ASSERT_TRUE(other.ok()) << other.status();
  for (int64_t i = 0; i < 2 * c.vocab; ++i) ASSERT_NEAR((*other)[i], (*logits)[i], 1e-5) << i;
  double diff = 0;
  for (int64_t i = 3 * c.vocab; i < 4 * c.vocab; ++i)
    diff = std::max(diff, double(std::fabs((*other)[i] - (*logits)[i])));
  EXPECT_GT(diff, 1e-3);
}

TEST(LlamaGenTest, TinyModelRunsInOrtLikeAReferenceDecoder) {
  ExpectRunsLikeLlama(TinyLlamaConfig());
}

// Full-width Llama-3.2-1B layers (32 query / 8 KV heads of 64, vocab 128256), one block:
// ~2.3 GB on disk and ~5 GB of memory, so only when asked: SQ_LLAMA_FULL_WIDTH=1.
TEST(LlamaGenTest, FullWidthOneBlockRunsInOrtLikeAReferenceDecoder) {
  if (std::getenv("SQ_LLAMA_FULL_WIDTH") == nullptr) {
    GTEST_SKIP() << "set SQ_LLAMA_FULL_WIDTH=1 to run (~2.3 GB, ~1 min)";
  }
  LlamaConfig c;
  c.blocks = 1;
  ExpectRunsLikeLlama(c);
}

TEST(LlamaGenTest, TiedTinyModelRunsInOrt) {
  LlamaConfig c = TinyLlamaConfig();
  c.tied = true;
  c.blocks = 1;
  ExpectRunsLikeLlama(c);
}

TEST(LlamaGenTest, SameConfigGivesByteIdenticalFilesWhateverTheThreads) {
  TempDir dir;
  LlamaConfig c = TinyLlamaConfig();
  c.mlp = 2048 + 64;  // several chunks per tensor, uneven last chunk
  c.vocab = 70001;
  c.threads = 1;
  ASSERT_TRUE(WriteLlamaModel(c, dir.File("a.onnx")).ok());
  c.threads = 3;
  c.direct_io = false;
  ASSERT_TRUE(WriteLlamaModel(c, dir.File("b.onnx")).ok());
  c.direct_io = true;
  ASSERT_TRUE(WriteLlamaModel(c, dir.File("c.onnx")).ok());
  const std::string a = ReadAll(dir.File("a.onnx.data"));
  EXPECT_GT(a.size(), 2u * 70001 * 64 * 4);
  EXPECT_TRUE(a == ReadAll(dir.File("b.onnx.data")));
  EXPECT_TRUE(a == ReadAll(dir.File("c.onnx.data")));
  // The graphs differ only in the data file's name.
  onnx::ModelProto ma = LoadModel(dir.File("a.onnx")), mb = LoadModel(dir.File("b.onnx"));
  for (auto* m : {&ma, &mb})
    for (auto& init : *m->mutable_graph()->mutable_initializer())
      for (auto& e : *init.mutable_external_data())
        if (e.key() == "location") e.set_value("x");
  EXPECT_EQ(ma.SerializeAsString(), mb.SerializeAsString());
  // Same name twice: byte-identical pair. Another seed: other weights.
  const std::string model_c = ReadAll(dir.File("c.onnx"));
  ASSERT_TRUE(WriteLlamaModel(c, dir.File("c.onnx")).ok());
  EXPECT_TRUE(model_c == ReadAll(dir.File("c.onnx")));
  EXPECT_TRUE(a == ReadAll(dir.File("c.onnx.data")));
  c.seed = 1;
  ASSERT_TRUE(WriteLlamaModel(c, dir.File("d.onnx")).ok());
  EXPECT_FALSE(a == ReadAll(dir.File("d.onnx.data")));
}

TEST(LlamaGenTest, RowRangesAreConsistent) {
  const LlamaConfig c;  // full width: a real k_proj, 2048 x 512
  auto ts = *LlamaTensors(c);
  const int idx = 3;
  ASSERT_EQ(ts[idx].name, "model.layers.0.self_attn.k_proj.weight");
  std::vector<float> whole(2048 * 512), parts(2048 * 512);
  GenerateLlamaRows(c, ts[idx], idx, 0, 2048, whole.data());
  for (int64_t r = 0; r < 2048;) {
    const int64_t n = std::min<int64_t>(2048 - r, 1 + r % 300);
    GenerateLlamaRows(c, ts[idx], idx, r, n, parts.data() + r * 512);
    r += n;
  }
  EXPECT_TRUE(whole == parts);
  // Arbitrary element ranges (partial rows), as the writer's byte-range chunks cut them.
  for (int64_t e = 0; e < 2048 * 512;) {
    const int64_t n = std::min<int64_t>(2048 * 512 - e, 1 + (e * 7919) % 40000);
    GenerateLlamaElements(c, ts[idx], idx, e, e + n, parts.data() + e);
    e += n;
  }
  EXPECT_TRUE(whole == parts);
  // The embedding (output channel = row) too.
  const LlamaConfig tiny = TinyLlamaConfig();
  auto tts = *LlamaTensors(tiny);
  std::vector<float> emb(1000 * 64), emb_parts(1000 * 64);
  GenerateLlamaRows(tiny, tts[0], 0, 0, 1000, emb.data());
  for (int64_t e = 0; e < 64000;) {
    const int64_t n = std::min<int64_t>(64000 - e, 1 + (e * 31) % 777);
    GenerateLlamaElements(tiny, tts[0], 0, e, e + n, emb_parts.data() + e);
    e += n;
  }
  EXPECT_TRUE(emb == emb_parts);
}

TEST(LlamaGenTest, WeightsAreHeavyTailedWithOutliersPerOutputChannel) {
  const LlamaConfig c;
  auto ts = *LlamaTensors(c);
  const int idx = 2;  // model.layers.0.self_attn.q_proj.weight, [2048, 2048]
  ASSERT_EQ(ts[idx].name, "model.layers.0.self_attn.q_proj.weight");
  const int64_t K = 2048, N = 2048;
  std::vector<float> w(K * N);
  GenerateLlamaRows(c, ts[idx], idx, 0, K, w.data());

  double m2 = 0, m4 = 0, mean = 0;
  for (float x : w) mean += x;
  mean /= w.size();
  for (float x : w) {
    const double d = x - mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m2 /= w.size();
  m4 /= w.size();
  EXPECT_NEAR(mean, 0.0, 1e-3);
  const double sd = std::sqrt(m2);
  EXPECT_GT(sd, 0.015);  // ~0.02 x sqrt(5/3) plus outliers
  EXPECT_LT(sd, 0.06);
  EXPECT_GT(m4 / (m2 * m2), 6.0) << "kurtosis: heavier tails than a Gaussian's 3";

  // Every output channel (column) has 2..4 values far beyond its bulk.
  int channels_with_outliers = 0;
  std::vector<float> col(K);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) col[k] = std::fabs(w[k * N + n]);
    std::vector<float> sorted = col;
    std::nth_element(sorted.begin(), sorted.begin() + K / 2, sorted.end());
    const float median = sorted[K / 2];  // ~0.727 x channel scale for t(5)
    int big = 0;
    for (float x : col) big += x > 12.0f * median;  // >= 10x scale = 13.7 x median
    // 2..4 planted, plus the t(5) bulk's own extremes (P(|t| > 8.7) ~ 3e-4, ~0.7 a column).
    channels_with_outliers += (big >= 2 && big <= 8);
  }
  EXPECT_GE(channels_with_outliers, N * 99 / 100);

  // RMSNorm weights around 1.
  std::vector<float> norm(2048);
  GenerateLlamaRows(c, ts[1], 1, 0, 1, norm.data());
  for (float x : norm) {
    ASSERT_GE(x, 0.75f);
    ASSERT_LT(x, 1.25f);
  }
}

}  // namespace
}  // namespace sq::bench
