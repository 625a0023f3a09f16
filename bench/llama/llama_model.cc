#include "bench/llama/llama_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "onnx/onnx_pb.h"

namespace sq::bench {
namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int64_t kChunkElements = int64_t{2} << 20;  // 8 MiB of float32 per write

// ---------------------------------------------------------------------------------------
// Deterministic randomness. Every value is a pure function of (seed, tensor index, element
// index), via the splitmix64 finalizer used as a counter-based hash: no generator state, so
// chunks can be produced in any order by any number of threads.

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 24 bits (exact in float).
inline float Unit24(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

struct TensorKeys {
  uint64_t values;    // per element
  uint64_t scales;    // per output channel
  uint64_t outliers;  // per output channel
};

TensorKeys KeysFor(uint64_t seed, int tensor_index) {
  const uint64_t base = Mix64(Mix64(seed ^ 0x5A17C0DE5EEDull) + kGolden * (tensor_index + 1));
  return {Mix64(base + 1), Mix64(base + 2), Mix64(base + 3)};
}

// Student-t (nu = 5) inverse CDF, tabulated once. For nu = 5 the CDF has a closed form:
//   F(t) = 1/2 + (theta + sin(theta) cos(theta) (1 + 2/3 cos^2(theta))) / pi,
//   theta = atan(t / sqrt(5)),
// so F^-1(u) = sqrt(5) tan(theta) where G(theta) = pi (u - 1/2), solved by bisection (G is
// increasing on (-pi/2, pi/2)). The table holds the quantiles at u_j = (j + 1/2) / (kT + 1),
// j = 0..kT; a sample takes 32 random bits: the top 16 pick j, the low 16 interpolate
// linearly to j + 1. Extreme tail: |t| <= ~21 (u = 0.5 / 65537), beyond which the explicit
// outliers take over. Built with plain double arithmetic and symmetric by construction.
constexpr int kTBits = 16;
constexpr int kT = 1 << kTBits;

struct TTable {
  float value[kT + 1];
  float delta[kT];  // value[j + 1] - value[j]
};

double T5Quantile(double u) {
  const double target = M_PI * (u - 0.5);
  auto g = [](double th) {
    const double s = std::sin(th), c = std::cos(th);
    return th + s * c * (1.0 + (2.0 / 3.0) * c * c);
  };
  double lo = -M_PI / 2, hi = M_PI / 2;
  for (int it = 0; it < 60; ++it) {
    const double mid = 0.5 * (lo + hi);
    (g(mid) < target ? lo : hi) = mid;
  }
  return std::sqrt(5.0) * std::tan(0.5 * (lo + hi));
}

const TTable& StudentT5Table() {
  static const TTable* table = [] {
    auto* t = new TTable;
    for (int j = 0; j <= kT / 2; ++j) {
      const double u = (j + 0.5) / (kT + 1.0);
      const float q = static_cast<float>(T5Quantile(u));
      t->value[j] = q;
      t->value[kT - j] = -q;
    }
    for (int j = 0; j < kT; ++j) t->delta[j] = t->value[j + 1] - t->value[j];
    return t;
  }();
  return *table;
}

inline float TSample(const TTable& t, uint32_t r) {
  const uint32_t j = r >> (32 - kTBits);
  const float frac = static_cast<float>(r & 0xFFFFu) * (1.0f / 65536.0f);
  return t.value[j] + frac * t.delta[j];
}

// Per-output-channel scale factor in [0.5, 1.5).
inline float ChannelFactor(const TensorKeys& k, int64_t channel) {
  return 0.5f + Unit24(Mix64(k.scales + kGolden * static_cast<uint64_t>(channel)));
}

// The outliers of one output channel: 2..4 positions along the input axis (length `len`),
// magnitude 10..30 x the channel's scale, random sign. Positions may repeat (the last wins).
struct Outlier {
  int64_t pos;
  float multiple;
};

inline int ChannelOutliers(const TensorKeys& k, int64_t channel, int64_t len, Outlier out[4]) {
  const uint64_t h = Mix64(k.outliers + kGolden * static_cast<uint64_t>(channel));
  const int count = 2 + static_cast<int>(h % 3);
  for (int i = 0; i < count; ++i) {
    const uint64_t hi = Mix64(h + kGolden * static_cast<uint64_t>(i + 1));
    out[i].pos = static_cast<int64_t>((hi >> 32) % static_cast<uint64_t>(len));
    const float mag = 10.0f + 20.0f * Unit24(hi);
    out[i].multiple = (hi & 1) ? -mag : mag;
  }
  return count;
}

// ---------------------------------------------------------------------------------------
// Graph construction helpers.

using onnx::AttributeProto;
using onnx::GraphProto;
using onnx::NodeProto;
using onnx::TensorProto;

class GraphBuilder {
 public:
  explicit GraphBuilder(GraphProto* g) : g_(g) {}

  // Adds a node `name` of `op` with one output named `<name>_output_0`; returns the output.
  std::string Op(const std::string& op, const std::string& name,
                 const std::vector<std::string>& inputs,
                 const std::vector<AttributeProto>& attrs = {}) {
    NodeProto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& in : inputs) n->add_input(in);
    std::string out = name + "_output_0";
    n->add_output(out);
    for (const auto& a : attrs) *n->add_attribute() = a;
    return out;
  }

  std::string Int64s(const std::string& name, const std::vector<int64_t>& v) {
    TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(TensorProto::INT64);
    t->add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) t->add_int64_data(x);
    return name;
  }

  std::string Scalar(const std::string& name, float v) {
    TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(TensorProto::FLOAT);
    t->add_float_data(v);
    return name;
  }

 private:
  GraphProto* g_;
};

AttributeProto IntAttr(const std::string& name, int64_t v) {
  AttributeProto a;
  a.set_name(name);
  a.set_type(AttributeProto::INT);
  a.set_i(v);
  return a;
}

AttributeProto IntsAttr(const std::string& name, const std::vector<int64_t>& v) {
  AttributeProto a;
  a.set_name(name);
  a.set_type(AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
  return a;
}

AttributeProto FloatTensorAttr(const std::string& name, float v) {
  AttributeProto a;
  a.set_name(name);
  a.set_type(AttributeProto::TENSOR);
  TensorProto* t = a.mutable_t();
  t->set_data_type(TensorProto::FLOAT);
  t->add_dims(1);
  t->add_float_data(v);
  return a;
}

void SetValueInfo(onnx::ValueInfoProto* vi, const std::string& name, int elem_type,
                  const std::vector<std::string>& dims) {
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  for (const auto& d : dims) tt->mutable_shape()->add_dim()->set_dim_param(d);
}

absl::Status ValidateConfig(const LlamaConfig& c) {
  if (c.blocks < 0) return absl::InvalidArgumentError("blocks must be >= 0");
  if (c.hidden <= 0 || c.kv <= 0 || c.mlp <= 0 || c.vocab <= 0 || c.head_dim <= 0) {
    return absl::InvalidArgumentError("hidden, kv, mlp, vocab and head_dim must be > 0");
  }
  if (c.hidden % c.head_dim != 0 || c.kv % c.head_dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden (", c.hidden, ") and kv (", c.kv,
                                                   ") must be multiples of head_dim (",
                                                   c.head_dim, ")"));
  }
  if ((c.hidden / c.head_dim) % (c.kv / c.head_dim) != 0) {
    return absl::InvalidArgumentError(
        "query heads (hidden/head_dim) must be a multiple of KV heads (kv/head_dim)");
  }
  if (!(c.weight_scale > 0) || !(c.rms_eps > 0)) {
    return absl::InvalidArgumentError("weight_scale and rms_eps must be > 0");
  }
  return absl::OkStatus();
}

std::string ErrnoText(const std::string& what, const std::string& path) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno));
}

}  // namespace

LlamaConfig TinyLlamaConfig() {
  LlamaConfig c;
  c.blocks = 2;
  c.hidden = 64;
  c.kv = 32;
  c.mlp = 256;
  c.vocab = 1000;
  c.head_dim = 16;
  return c;
}

int64_t LlamaTensor::num_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

absl::StatusOr<std::vector<LlamaTensor>> LlamaTensors(const LlamaConfig& c) {
  if (absl::Status s = ValidateConfig(c); !s.ok()) return s;
  std::vector<LlamaTensor> t;
  auto add = [&t](std::string name, std::vector<int64_t> dims, int channel_axis) {
    LlamaTensor x;
    x.name = std::move(name);
    x.dims = std::move(dims);
    x.channel_axis = channel_axis;
    t.push_back(std::move(x));
  };
  add("model.embed_tokens.weight", {c.vocab, c.hidden}, 0);
  for (int i = 0; i < c.blocks; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {c.hidden}, 0);
    add(p + "self_attn.q_proj.weight", {c.hidden, c.hidden}, 1);
    add(p + "self_attn.k_proj.weight", {c.hidden, c.kv}, 1);
    add(p + "self_attn.v_proj.weight", {c.hidden, c.kv}, 1);
    add(p + "self_attn.o_proj.weight", {c.hidden, c.hidden}, 1);
    add(p + "post_attention_layernorm.weight", {c.hidden}, 0);
    add(p + "mlp.gate_proj.weight", {c.hidden, c.mlp}, 1);
    add(p + "mlp.up_proj.weight", {c.hidden, c.mlp}, 1);
    add(p + "mlp.down_proj.weight", {c.mlp, c.hidden}, 1);
  }
  add("model.norm.weight", {c.hidden}, 0);
  if (!c.tied) add("lm_head.weight", {c.hidden, c.vocab}, 1);
  uint64_t off = 0;
  for (auto& x : t) {
    x.offset = off;
    x.length = static_cast<uint64_t>(x.num_elements()) * sizeof(float);
    off = (off + x.length + kAlign - 1) / kAlign * kAlign;
  }
  return t;
}

absl::StatusOr<int64_t> LlamaParameterCount(const LlamaConfig& c) {
  auto t = LlamaTensors(c);
  if (!t.ok()) return t.status();
  int64_t n = 0;
  for (const auto& x : *t) n += x.num_elements();
  return n;
}

void GenerateLlamaElements(const LlamaConfig& c, const LlamaTensor& tensor, int tensor_index,
                           int64_t e_begin, int64_t e_end, float* out) {
  if (e_end <= e_begin) return;
  const TensorKeys keys = KeysFor(c.seed, tensor_index);
  if (tensor.dims.size() == 1) {
    // RMSNorm weights: positive, around 1 (0.75 .. 1.25).
    for (int64_t e = e_begin; e < e_end; ++e) {
      out[e - e_begin] =
          0.75f + 0.5f * Unit24(Mix64(keys.values + kGolden * static_cast<uint64_t>(e)));
    }
    return;
  }
  const TTable& tt = StudentT5Table();
  const int64_t cols = tensor.dims[1];
  const int64_t r_first = e_begin / cols, r_last = (e_end - 1) / cols;
  const float scale = c.weight_scale;
  // The bulk: t(5) x channel scale. Element e = row * cols + col.
  auto fill = [&](int64_t row, int64_t e0, int64_t e1, const float* col_scale, float s) {
    float* dst = out + (e0 - e_begin);
    const int64_t n0 = e0 - row * cols;
    for (int64_t e = e0; e < e1; ++e) {
      const uint32_t bits =
          static_cast<uint32_t>(Mix64(keys.values + kGolden * static_cast<uint64_t>(e)) >> 32);
      const float t = TSample(tt, bits);
      dst[e - e0] = col_scale != nullptr ? t * col_scale[n0 + (e - e0)] : t * s;
    }
  };
  Outlier o[4];
  if (tensor.channel_axis == 1) {
    // [K, N], output channel = column; its outliers sit at 2..4 rows.
    const int64_t n_lo = r_first == r_last ? e_begin - r_first * cols : 0;
    const int64_t n_hi = r_first == r_last ? e_end - r_first * cols : cols;
    std::vector<float> col_scale(static_cast<size_t>(cols));
    for (int64_t n = n_lo; n < n_hi; ++n) col_scale[n] = scale * ChannelFactor(keys, n);
    for (int64_t r = r_first; r <= r_last; ++r) {
      fill(r, std::max(e_begin, r * cols), std::min(e_end, (r + 1) * cols), col_scale.data(),
           0.0f);
    }
    const int64_t in_len = tensor.dims[0];
    for (int64_t n = n_lo; n < n_hi; ++n) {
      const int count = ChannelOutliers(keys, n, in_len, o);
      for (int i = 0; i < count; ++i) {
        const int64_t e = o[i].pos * cols + n;
        if (e >= e_begin && e < e_end) out[e - e_begin] = o[i].multiple * col_scale[n];
      }
    }
  } else {
    // [rows, cols], output channel = row (the embedding: one row per token).
    for (int64_t r = r_first; r <= r_last; ++r) {
      const float s = scale * ChannelFactor(keys, r);
      fill(r, std::max(e_begin, r * cols), std::min(e_end, (r + 1) * cols), nullptr, s);
      const int count = ChannelOutliers(keys, r, cols, o);
      for (int i = 0; i < count; ++i) {
        const int64_t e = r * cols + o[i].pos;
        if (e >= e_begin && e < e_end) out[e - e_begin] = o[i].multiple * s;
      }
    }
  }
}

void GenerateLlamaRows(const LlamaConfig& c, const LlamaTensor& tensor, int tensor_index,
                       int64_t row_begin, int64_t rows, float* out) {
  const int64_t cols = tensor.dims.size() == 1 ? tensor.dims[0] : tensor.dims[1];
  GenerateLlamaElements(c, tensor, tensor_index, row_begin * cols, (row_begin + rows) * cols,
                        out);
}

namespace {

// The decoder graph. Rotary position embeddings are omitted on purpose: they carry no
// weights and do not change any linear layer's shape, and leaving them out keeps the graph
// small and opset-17 plain. Everything else follows HF Llama: RMSNorm, grouped-query
// attention with a causal mask, SwiGLU MLP, residual adds, final norm, untied lm_head.
onnx::ModelProto BuildGraph(const LlamaConfig& c, const std::vector<LlamaTensor>& tensors,
                            const std::string& data_location) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.set_producer_name("sq_gen_llama");
  model.set_producer_version("1");
  model.set_doc_string(absl::StrCat(
      "Synthetic Llama-3.2-1B-shaped decoder (no rotary embeddings): blocks=", c.blocks,
      " hidden=", c.hidden, " kv=", c.kv, " mlp=", c.mlp, " vocab=", c.vocab,
      " head_dim=", c.head_dim, " seed=", c.seed, " tied=", c.tied ? "true" : "false"));
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  GraphProto* g = model.mutable_graph();
  g->set_name("llama");

  for (const auto& t : tensors) {
    TensorProto* init = g->add_initializer();
    init->set_name(t.name);
    for (int64_t d : t.dims) init->add_dims(d);
    init->set_data_type(TensorProto::FLOAT);
    init->set_data_location(TensorProto::EXTERNAL);
    auto kv = [init](const std::string& k, const std::string& v) {
      auto* e = init->add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    kv("location", data_location);
    kv("offset", std::to_string(t.offset));
    kv("length", std::to_string(t.length));
  }

  SetValueInfo(g->add_input(), "input_ids", TensorProto::INT64,
               {"batch_size", "sequence_length"});
  SetValueInfo(g->add_output(), "logits", TensorProto::FLOAT,
               {"batch_size", "sequence_length", "vocab_size"});

  GraphBuilder b(g);
  const int64_t nh = c.hidden / c.head_dim, nkv = c.kv / c.head_dim, group = nh / nkv;
  const std::string k = "/model/constants/";
  const std::string q_heads = b.Int64s(k + "q_heads_shape", {0, 0, nh, c.head_dim});
  const std::string kv_heads = b.Int64s(k + "kv_heads_shape", {0, 0, nkv, c.head_dim});
  const std::string q_groups = b.Int64s(k + "q_groups_shape", {0, nkv, group, -1, c.head_dim});
  const std::string merged_heads = b.Int64s(k + "merged_heads_shape", {0, nh, -1, c.head_dim});
  const std::string hidden_shape = b.Int64s(k + "hidden_shape", {0, 0, c.hidden});
  const std::string axis2 = b.Int64s(k + "axis_2", {2});
  const std::string eps = b.Scalar(k + "rms_eps", c.rms_eps);
  const std::string one = b.Scalar(k + "one", 1.0f);
  const std::string big = b.Scalar(k + "mask_magnitude", 1e9f);
  const std::string attn_scale =
      b.Scalar(k + "attn_scale", static_cast<float>(1.0 / std::sqrt(double(c.head_dim))));

  // Causal mask [S, S]: 0 on and below the diagonal, -1e9 above. Built once from the input's
  // sequence length: Trilu(ones) - 1, times 1e9.
  const std::string seq = b.Op("Shape", "/model/mask/Shape", {"input_ids"},
                               {IntAttr("start", 1), IntAttr("end", 2)});
  const std::string ss = b.Op("Concat", "/model/mask/Concat", {seq, seq}, {IntAttr("axis", 0)});
  const std::string ones = b.Op("ConstantOfShape", "/model/mask/ConstantOfShape", {ss},
                                {FloatTensorAttr("value", 1.0f)});
  const std::string tril = b.Op("Trilu", "/model/mask/Trilu", {ones}, {IntAttr("upper", 0)});
  const std::string m1 = b.Op("Sub", "/model/mask/Sub", {tril, one});
  const std::string mask = b.Op("Mul", "/model/mask/Mul", {m1, big});

  auto rms_norm = [&](const std::string& prefix, const std::string& x,
                      const std::string& weight) {
    const std::string sq = b.Op("Mul", prefix + "/Mul", {x, x});
    const std::string mean = b.Op("ReduceMean", prefix + "/ReduceMean", {sq},
                                  {IntsAttr("axes", {-1}), IntAttr("keepdims", 1)});
    const std::string var = b.Op("Add", prefix + "/Add", {mean, eps});
    const std::string rms = b.Op("Sqrt", prefix + "/Sqrt", {var});
    const std::string normed = b.Op("Div", prefix + "/Div", {x, rms});
    return b.Op("Mul", prefix + "/Mul_1", {normed, weight});
  };
  auto transpose = [&](const std::string& name, const std::string& x,
                       const std::vector<int64_t>& perm) {
    return b.Op("Transpose", name, {x}, {IntsAttr("perm", perm)});
  };

  std::string h = b.Op("Gather", "/model/embed_tokens/Gather",
                       {"model.embed_tokens.weight", "input_ids"}, {IntAttr("axis", 0)});
  for (int i = 0; i < c.blocks; ++i) {
    const std::string p = absl::StrCat("/model/layers.", i);
    const std::string w = absl::StrCat("model.layers.", i, ".");
    const std::string a = p + "/self_attn";
    const std::string x = rms_norm(p + "/input_layernorm", h, w + "input_layernorm.weight");
    const std::string q = b.Op("MatMul", a + "/q_proj/MatMul", {x, w + "self_attn.q_proj.weight"});
    const std::string kk = b.Op("MatMul", a + "/k_proj/MatMul", {x, w + "self_attn.k_proj.weight"});
    const std::string v = b.Op("MatMul", a + "/v_proj/MatMul", {x, w + "self_attn.v_proj.weight"});
    // q: [B,S,H] -> [B,S,nh,hd] -> [B,nh,S,hd] -> [B,nkv,group,S,hd] (query head
    // kvh*group + j uses KV head kvh, as HF's repeat_kv).
    std::string qh = b.Op("Reshape", a + "/q/Reshape", {q, q_heads});
    qh = transpose(a + "/q/Transpose", qh, {0, 2, 1, 3});
    qh = b.Op("Reshape", a + "/q/Reshape_1", {qh, q_groups});
    // k: [B,S,kv] -> [B,S,nkv,hd] -> [B,nkv,hd,S] -> [B,nkv,1,hd,S] (broadcast over group).
    std::string kh = b.Op("Reshape", a + "/k/Reshape", {kk, kv_heads});
    kh = transpose(a + "/k/Transpose", kh, {0, 2, 3, 1});
    kh = b.Op("Unsqueeze", a + "/k/Unsqueeze", {kh, axis2});
    // v: [B,S,kv] -> [B,nkv,S,hd] -> [B,nkv,1,S,hd].
    std::string vh = b.Op("Reshape", a + "/v/Reshape", {v, kv_heads});
    vh = transpose(a + "/v/Transpose", vh, {0, 2, 1, 3});
    vh = b.Op("Unsqueeze", a + "/v/Unsqueeze", {vh, axis2});
    // scores [B,nkv,group,S,S] = q.k^T / sqrt(hd) + mask; softmax over keys.
    std::string s = b.Op("MatMul", a + "/scores/MatMul", {qh, kh});
    s = b.Op("Mul", a + "/scores/Mul", {s, attn_scale});
    s = b.Op("Add", a + "/scores/Add", {s, mask});
    s = b.Op("Softmax", a + "/Softmax", {s}, {IntAttr("axis", -1)});
    // context [B,nkv,group,S,hd] -> [B,nh,S,hd] -> [B,S,nh,hd] -> [B,S,H].
    std::string ctx = b.Op("MatMul", a + "/context/MatMul", {s, vh});
    ctx = b.Op("Reshape", a + "/context/Reshape", {ctx, merged_heads});
    ctx = transpose(a + "/context/Transpose", ctx, {0, 2, 1, 3});
    ctx = b.Op("Reshape", a + "/context/Reshape_1", {ctx, hidden_shape});
    const std::string o = b.Op("MatMul", a + "/o_proj/MatMul", {ctx, w + "self_attn.o_proj.weight"});
    h = b.Op("Add", p + "/Add", {h, o});
    // SwiGLU MLP.
    const std::string m = p + "/mlp";
    const std::string y =
        rms_norm(p + "/post_attention_layernorm", h, w + "post_attention_layernorm.weight");
    const std::string gate = b.Op("MatMul", m + "/gate_proj/MatMul", {y, w + "mlp.gate_proj.weight"});
    const std::string sig = b.Op("Sigmoid", m + "/act_fn/Sigmoid", {gate});
    const std::string act = b.Op("Mul", m + "/act_fn/Mul", {gate, sig});
    const std::string up = b.Op("MatMul", m + "/up_proj/MatMul", {y, w + "mlp.up_proj.weight"});
    const std::string prod = b.Op("Mul", m + "/Mul", {act, up});
    const std::string down = b.Op("MatMul", m + "/down_proj/MatMul", {prod, w + "mlp.down_proj.weight"});
    h = b.Op("Add", p + "/Add_1", {h, down});
  }
  const std::string final_norm = rms_norm("/model/norm", h, "model.norm.weight");
  std::string head_weight = "lm_head.weight";
  if (c.tied) {
    head_weight = transpose("/lm_head/Transpose", "model.embed_tokens.weight", {1, 0});
  }
  NodeProto* head = g->add_node();
  head->set_op_type("MatMul");
  head->set_name("/lm_head/MatMul");
  head->add_input(final_norm);
  head->add_input(head_weight);
  head->add_output("logits");
  return model;
}

// On failure *err holds the errno.
absl::Status PwriteAll(int fd, const void* data, size_t n, uint64_t offset,
                       const std::string& path, int* err) {
  const char* p = static_cast<const char*>(data);
  *err = 0;
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return absl::InternalError(ErrnoText("write", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteLlamaModel(const LlamaConfig& c, const std::string& model_path,
                             LlamaWriteStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  auto tensors_or = LlamaTensors(c);
  if (!tensors_or.ok()) return tensors_or.status();
  const std::vector<LlamaTensor>& tensors = *tensors_or;
  const std::string data_path = model_path + ".data";
  const std::string location = std::filesystem::path(data_path).filename().string();
  const uint64_t total = tensors.back().offset + tensors.back().length;
  const uint64_t padded = (total + kAlign - 1) / kAlign * kAlign;
  const uint64_t chunk_bytes = static_cast<uint64_t>(kChunkElements) * sizeof(float);
  const size_t num_tasks = static_cast<size_t>((padded + chunk_bytes - 1) / chunk_bytes);

  // A model file must never point at a half-written data file: drop it first, write it last.
  std::remove(model_path.c_str());
  const int fd = ::open(data_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(ErrnoText("open", data_path));
  // O_DIRECT where the file system allows it: gigabytes of buffered writes hit the kernel's
  // dirty-page throttling (measured here: 6 GB buffered ~35 s, direct ~6 s). Same bytes.
  int direct_fd = -1;
  if (c.direct_io) direct_fd = ::open(data_path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  std::atomic<bool> use_direct{direct_fd >= 0};

  StudentT5Table();  // build once before the workers start
  // Default: two threads a core, so that one generates while the other waits on its write.
  int threads = c.threads > 0 ? c.threads
                              : 2 * std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  threads = std::max(1, std::min<int>(threads, static_cast<int>(num_tasks)));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  absl::Status first_error;
  // Each task fills one 4096-aligned byte range of the file (alignment gaps as zeros) and
  // writes it with one pwrite: tasks are independent, so any thread count gives the same file.
  auto worker = [&] {
    std::unique_ptr<float, decltype(&std::free)> buf(
        static_cast<float*>(std::aligned_alloc(kAlign, chunk_bytes)), &std::free);
    if (buf == nullptr) {
      failed = true;
      return;
    }
    size_t ti = 0;  // first tensor that may overlap the task (tasks ascend per thread)
    for (size_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < num_tasks;) {
      const uint64_t b = i * chunk_bytes, b_end = std::min(padded, b + chunk_bytes);
      char* bytes = reinterpret_cast<char*>(buf.get());
      uint64_t cursor = b;  // bytes before it are filled
      while (ti < tensors.size() && tensors[ti].offset + tensors[ti].length <= b) ++ti;
      for (size_t t = ti; t < tensors.size() && tensors[t].offset < b_end; ++t) {
        const LlamaTensor& x = tensors[t];
        const uint64_t lo = std::max(b, x.offset), hi = std::min(b_end, x.offset + x.length);
        if (lo >= hi) continue;
        if (lo > cursor) std::memset(bytes + (cursor - b), 0, lo - cursor);
        cursor = hi;
        GenerateLlamaElements(c, x, static_cast<int>(t),
                              static_cast<int64_t>((lo - x.offset) / sizeof(float)),
                              static_cast<int64_t>((hi - x.offset) / sizeof(float)),
                              buf.get() + (lo - b) / sizeof(float));
      }
      if (b_end > cursor) std::memset(bytes + (cursor - b), 0, b_end - cursor);
      absl::Status s;
      int err = 0;
      if (use_direct.load(std::memory_order_relaxed)) {
        s = PwriteAll(direct_fd, buf.get(), b_end - b, b, data_path, &err);
        if (!s.ok() && err == EINVAL) {  // O_DIRECT accepted at open, refused at write
          use_direct = false;
          s = absl::OkStatus();
        }
      }
      if (!use_direct.load(std::memory_order_relaxed)) {
        s = PwriteAll(fd, buf.get(), b_end - b, b, data_path, &err);
      }
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(err_mu);
        if (first_error.ok()) first_error = s;
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (failed && first_error.ok()) first_error = absl::ResourceExhaustedError("out of memory");
  if (first_error.ok() && ::ftruncate(fd, static_cast<off_t>(total)) != 0) {
    first_error = absl::InternalError(ErrnoText("truncate", data_path));
  }
  if (direct_fd >= 0) ::close(direct_fd);
  if (::close(fd) != 0 && first_error.ok()) {
    first_error = absl::InternalError(ErrnoText("close", data_path));
  }
  if (!first_error.ok()) return first_error;

  const onnx::ModelProto model = BuildGraph(c, tensors, location);
  std::string bytes;
  if (!model.SerializeToString(&bytes)) return absl::InternalError("cannot serialize model");
  const std::string tmp = model_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), model_path.c_str()) != 0) {
    return absl::InternalError(ErrnoText("rename to", model_path));
  }
  if (stats != nullptr) {
    stats->parameters = 0;
    for (const auto& t : tensors) stats->parameters += t.num_elements();
    stats->data_bytes = total;
    stats->seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return absl::OkStatus();
}

}  // namespace sq::bench
