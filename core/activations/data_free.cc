#include "core/activations/data_free.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <set>

#include "core/activations/node_util.h"
#include "absl/strings/str_cat.h"

namespace sq {
namespace {

using activations::Attr;
using activations::FloatAttr;
using activations::IntAttr;
using activations::IsDefaultDomain;

using Range = TensorRange;

Range Span(float lo, float hi) {
  Range r;
  r.lo = lo;
  r.hi = hi;
  return r;
}

Range FromChannels(std::vector<float> lo, std::vector<float> hi) {
  Range r = Span(*std::min_element(lo.begin(), lo.end()), *std::max_element(hi.begin(), hi.end()));
  r.channel_lo = std::move(lo);
  r.channel_hi = std::move(hi);
  return r;
}

// f applied to a range: monotone f plus an optional interior minimum (value at x = at).
Range Apply(const Range& in, const std::function<float(float)>& f, float min_at = NAN) {
  auto one = [&](float lo, float hi, float* olo, float* ohi) {
    float a = f(lo), b = f(hi);
    *olo = std::min(a, b);
    *ohi = std::max(a, b);
    if (std::isfinite(min_at) && lo < min_at && min_at < hi) *olo = std::min(*olo, f(min_at));
  };
  Range r;
  one(in.lo, in.hi, &r.lo, &r.hi);
  if (!in.channel_lo.empty()) {
    r.channel_lo.resize(in.channel_lo.size());
    r.channel_hi.resize(in.channel_lo.size());
    for (size_t c = 0; c < in.channel_lo.size(); ++c) {
      one(in.channel_lo[c], in.channel_hi[c], &r.channel_lo[c], &r.channel_hi[c]);
    }
  }
  return r;
}

Range Interval(const Range& a, const Range& b, char op) {
  auto combine = [&](float a0, float a1, float b0, float b1, float* lo, float* hi) {
    float c[4];
    if (op == '+') { *lo = a0 + b0; *hi = a1 + b1; return; }
    if (op == '-') { *lo = a0 - b1; *hi = a1 - b0; return; }
    c[0] = a0 * b0; c[1] = a0 * b1; c[2] = a1 * b0; c[3] = a1 * b1;
    *lo = *std::min_element(c, c + 4);
    *hi = *std::max_element(c, c + 4);
  };
  Range r;
  combine(a.lo, a.hi, b.lo, b.hi, &r.lo, &r.hi);
  return r;
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

double NormalQuantile(double percentile, double fallback) {
  if (!(percentile < 100) || !(percentile > 50)) return fallback;
  const double p = percentile / 100.0;
  // Bisection on the upper tail 0.5 erfc(z / sqrt 2) = 1 - p.
  double lo = 0, hi = 10;
  for (int i = 0; i < 100; ++i) {
    const double mid = (lo + hi) / 2;
    if (0.5 * std::erfc(mid / std::sqrt(2.0)) > 1 - p) lo = mid; else hi = mid;
  }
  return (lo + hi) / 2;
}

std::map<std::string, TensorRange> EstimateRanges(const onnx::GraphProto& graph,
                                                  const std::vector<QuantizeOptions::InputRange>& inputs,
                                                  double k, ConstantTable* constants,
                                                  const std::map<std::string, TensorRange>& seeds) {
  std::map<std::string, Range> known;
  for (const QuantizeOptions::InputRange& r : inputs) known[r.name] = Span(r.lo, r.hi);
  // A constant's range: its values' span.
  auto get = [&](const std::string& name) -> const Range* {
    auto it = known.find(name);
    if (it != known.end()) return &it->second;
    const ConstantValue* c = name.empty() ? nullptr : constants->Get(name);
    if (!c || c->values.empty()) return nullptr;
    auto mm = std::minmax_element(c->values.begin(), c->values.end());
    known[name] = Span(*mm.first, *mm.second);
    return &known[name];
  };
  // BatchNormalization's statistics describe its input.
  std::map<std::string, Range> bn_input(seeds.begin(), seeds.end());
  for (const auto& n : graph.node()) {
    if (n.op_type() != "BatchNormalization" || !IsDefaultDomain(n) || n.input_size() < 5) continue;
    const ConstantValue* mean = constants->Get(n.input(3));
    const ConstantValue* var = constants->Get(n.input(4));
    if (!mean || !var || mean->values.size() != var->values.size() || mean->values.empty()) continue;
    const float eps = FloatAttr(n, "epsilon", 1e-5f);
    std::vector<float> lo(mean->values.size()), hi(mean->values.size());
    for (size_t c = 0; c < lo.size(); ++c) {
      const double sd = std::sqrt(std::max(0.0f, var->values[c]) + eps);
      lo[c] = static_cast<float>(mean->values[c] - k * sd);
      hi[c] = static_cast<float>(mean->values[c] + k * sd);
    }
    bn_input[n.input(0)] = FromChannels(lo, hi);
  }

  for (const auto& n : graph.node()) {
    if (n.output_size() < 1 || !IsDefaultDomain(n)) continue;
    const std::string& op = n.op_type();
    const std::string& y = n.output(0);
    if (known.count(y)) continue;
    if (auto s = bn_input.find(y); s != bn_input.end()) {
      known[y] = s->second;
      continue;
    }
    const Range* x = n.input_size() > 0 ? get(n.input(0)) : nullptr;
    std::optional<Range> out;
    if (op == "BatchNormalization" && n.input_size() >= 3) {
      const ConstantValue* g = constants->Get(n.input(1));
      const ConstantValue* b = constants->Get(n.input(2));
      if (g && b && g->values.size() == b->values.size() && !g->values.empty()) {
        std::vector<float> lo(g->values.size()), hi(g->values.size());
        for (size_t c = 0; c < lo.size(); ++c) {
          lo[c] = static_cast<float>(b->values[c] - k * std::abs(g->values[c]));
          hi[c] = static_cast<float>(b->values[c] + k * std::abs(g->values[c]));
        }
        out = FromChannels(lo, hi);
      }
    } else if (!x) {
      continue;
    } else if (op == "Conv" || op == "ConvTranspose" || op == "MatMul" || op == "Gemm") {
      if (n.input_size() < 2) continue;
      const ConstantValue* w = constants->Get(n.input(1));
      if (!w || w->values.empty()) continue;
      const std::vector<int64_t>& d = w->dims;
      // Channel c's weights: a strided set of W's elements.
      int64_t channels = 0, per = 0, stride_c = 0, stride_e = 0;
      bool ok = true;
      if (op == "Conv" && d.size() >= 3) {
        channels = d[0];
        per = static_cast<int64_t>(w->values.size()) / channels;
        stride_c = per;
        stride_e = 1;
      } else if (op == "ConvTranspose" && d.size() >= 3 && IntAttr(n, "group", 1) == 1) {
        channels = d[1];
        int64_t inner = 1;
        for (size_t i = 2; i < d.size(); ++i) inner *= d[i];
        // W[:, c, ...]: elements (i * channels + c) * inner + j; handled below.
        per = d[0] * inner;
        stride_c = inner;
        stride_e = -inner;  // marker: two-level walk
      } else if ((op == "MatMul" || op == "Gemm") && d.size() == 2) {
        const bool trans_b = op == "Gemm" && IntAttr(n, "transB", 0) != 0;
        if (op == "Gemm" && IntAttr(n, "transA", 0) != 0) ok = false;
        channels = trans_b ? d[0] : d[1];
        per = trans_b ? d[1] : d[0];
        stride_c = trans_b ? d[1] : 1;
        stride_e = trans_b ? 1 : d[1];
      } else {
        ok = false;
      }
      if (!ok || channels <= 0) continue;
      const float alpha = op == "Gemm" ? FloatAttr(n, "alpha", 1.0f) : 1.0f;
      const float beta = op == "Gemm" ? FloatAttr(n, "beta", 1.0f) : 1.0f;
      const ConstantValue* bias = n.input_size() > 2 && !n.input(2).empty() ? constants->Get(n.input(2)) : nullptr;
      const double m = (static_cast<double>(x->lo) + x->hi) / 2;
      const double v = std::pow(static_cast<double>(x->hi) - x->lo, 2) / 12;
      std::vector<float> lo(channels), hi(channels);
      for (int64_t c = 0; c < channels; ++c) {
        double sum = 0, sum2 = 0, blo = 0, bhi = 0;
        auto add = [&](float wv) {
          const double a = static_cast<double>(wv) * alpha;
          sum += a;
          sum2 += a * a;
          blo += std::min(a * x->lo, a * x->hi);
          bhi += std::max(a * x->lo, a * x->hi);
        };
        if (stride_e < 0) {
          const int64_t inner = -stride_e;
          for (int64_t i = 0; i < d[0]; ++i) {
            for (int64_t j = 0; j < inner; ++j) add(w->values[(i * channels + c) * inner + j]);
          }
        } else {
          for (int64_t e = 0; e < per; ++e) add(w->values[c * stride_c + e * stride_e]);
        }
        double b = 0;
        if (bias && bias->values.size() == static_cast<size_t>(channels)) b = beta * bias->values[c];
        if (bias && bias->values.size() == 1) b = beta * bias->values[0];
        const double mean = m * sum + b, sd = std::sqrt(v * sum2);
        lo[c] = static_cast<float>(std::max(mean - k * sd, blo + b));
        hi[c] = static_cast<float>(std::min(mean + k * sd, bhi + b));
      }
      Range r = FromChannels(lo, hi);
      if (op == "MatMul") {  // channels are the last axis, not axis 1
        r.channel_lo.clear();
        r.channel_hi.clear();
      }
      out = r;
    } else if (op == "Relu") {
      out = Apply(*x, [](float v) { return std::max(v, 0.0f); });
    } else if (op == "LeakyRelu") {
      const float a = FloatAttr(n, "alpha", 0.01f);
      out = Apply(*x, [a](float v) { return v >= 0 ? v : a * v; });
    } else if (op == "PRelu" && n.input_size() > 1) {
      const Range* s = get(n.input(1));
      if (!s) continue;
      const float s0 = s->lo, s1 = s->hi;
      Range a = Apply(*x, [s0](float v) { return v >= 0 ? v : s0 * v; });
      Range b = Apply(*x, [s1](float v) { return v >= 0 ? v : s1 * v; });
      out = Span(std::min(a.lo, b.lo), std::max(a.hi, b.hi));
    } else if (op == "Clip") {
      float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
      if (Attr(n, "min")) lo = FloatAttr(n, "min", lo);
      if (Attr(n, "max")) hi = FloatAttr(n, "max", hi);
      bool ok = true;
      if (n.input_size() > 1 && !n.input(1).empty()) {
        const ConstantValue* c = constants->Get(n.input(1));
        if (c && c->values.size() == 1) lo = c->values[0]; else ok = false;
      }
      if (n.input_size() > 2 && !n.input(2).empty()) {
        const ConstantValue* c = constants->Get(n.input(2));
        if (c && c->values.size() == 1) hi = c->values[0]; else ok = false;
      }
      if (!ok) continue;
      out = Apply(*x, [lo, hi](float v) { return std::clamp(v, lo, hi); });
    } else if (op == "Sigmoid") {
      out = Apply(*x, Sigmoid);
    } else if (op == "Tanh") {
      out = Apply(*x, [](float v) { return std::tanh(v); });
    } else if (op == "Erf") {
      out = Apply(*x, [](float v) { return std::erf(v); });
    } else if (op == "Exp") {
      out = Apply(*x, [](float v) { return std::exp(v); });
    } else if (op == "Softplus") {
      out = Apply(*x, [](float v) { return std::log1p(std::exp(v)); });
    } else if (op == "Elu") {
      const float a = FloatAttr(n, "alpha", 1.0f);
      out = Apply(*x, [a](float v) { return v >= 0 ? v : a * (std::exp(v) - 1); });
    } else if (op == "HardSigmoid") {
      const float a = FloatAttr(n, "alpha", 0.2f), b = FloatAttr(n, "beta", 0.5f);
      out = Apply(*x, [a, b](float v) { return std::clamp(a * v + b, 0.0f, 1.0f); });
    } else if (op == "HardSwish") {
      out = Apply(*x, [](float v) { return v * std::clamp(v / 6 + 0.5f, 0.0f, 1.0f); }, -3.0f / 2);
    } else if (op == "Gelu") {
      out = Apply(*x, [](float v) { return 0.5f * v * (1 + std::erf(v / std::sqrt(2.0f))); }, -0.7518f);
    } else if ((op == "Add" || op == "Sub" || op == "Mul") && n.input_size() == 2) {
      const Range* b = get(n.input(1));
      if (!b) continue;
      out = Interval(*x, *b, op == "Add" ? '+' : op == "Sub" ? '-' : '*');
    } else if (op == "Div" && n.input_size() == 2) {
      const Range* b = get(n.input(1));
      if (!b || (b->lo <= 0 && b->hi >= 0)) continue;
      out = Interval(*x, Span(1.0f / b->hi, 1.0f / b->lo), '*');
    } else if (op == "Concat") {
      Range r = *x;
      r.channel_lo.clear();
      r.channel_hi.clear();
      bool ok = true;
      for (int i = 1; i < n.input_size() && ok; ++i) {
        const Range* o = get(n.input(i));
        if (!o) { ok = false; break; }
        r.lo = std::min(r.lo, o->lo);
        r.hi = std::max(r.hi, o->hi);
      }
      if (!ok) continue;
      out = r;
    } else if (op == "Pad") {
      float value = 0;
      if (n.input_size() > 2 && !n.input(2).empty()) {
        const ConstantValue* c = constants->Get(n.input(2));
        if (c && c->values.size() == 1) value = c->values[0];
      } else if (Attr(n, "value")) {
        value = FloatAttr(n, "value", 0);
      }
      out = Span(std::min(x->lo, value), std::max(x->hi, value));
    } else if (op == "Identity" || op == "Dropout" || op == "MaxPool" || op == "AveragePool" ||
               op == "GlobalAveragePool" || op == "GlobalMaxPool" || op == "Resize" ||
               op == "Upsample") {
      out = *x;  // channels (axis 1) stay where they are
    } else if (op == "Reshape" || op == "Flatten" || op == "Transpose" || op == "Squeeze" ||
               op == "Unsqueeze" || op == "Slice" || op == "Split" || op == "Gather" ||
               op == "ReduceMean" || op == "ReduceMax" || op == "ReduceMin" ||
               op == "DepthToSpace" || op == "SpaceToDepth" || op == "Expand" || op == "Tile" ||
               (op == "Cast" && IntAttr(n, "to", 0) == onnx::TensorProto::FLOAT)) {
      out = Span(x->lo, x->hi);
      if (op == "Split") {
        for (int i = 1; i < n.output_size(); ++i) known[n.output(i)] = *out;
      }
    }
    if (out && std::isfinite(out->lo) && std::isfinite(out->hi)) known[y] = std::move(*out);
  }
  return known;
}

absl::Status RequireRanges(const onnx::GraphProto& graph, const std::vector<std::string>& needed,
                           const std::map<std::string, TensorRange>& ranges) {
  std::map<std::string, const onnx::NodeProto*> producer;
  for (const auto& n : graph.node()) {
    for (const auto& o : n.output()) producer[o] = &n;
  }
  std::set<std::string> constants;
  for (const auto& t : graph.initializer()) constants.insert(t.name());
  for (const std::string& t : needed) {
    if (ranges.count(t)) continue;
    // Walk back to the first tensor whose own rule fails.
    std::string cur = t;
    std::set<std::string> seen;
    while (seen.insert(cur).second) {
      auto p = producer.find(cur);
      if (p == producer.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data-free activation ranges: graph input '", cur, "' has no declared range (needed for '", t,
            "'); give --input-range ", cur, "=LO:HI (e.g. 0:1 for images scaled to [0,1]) or --calibration DIR"));
      }
      std::string next;
      for (const auto& in : p->second->input()) {
        if (!in.empty() && !ranges.count(in) && !constants.count(in) && producer.count(in) + 1 > 0) {
          // Constants produced by Constant nodes have no range entry until read; skip them.
          auto q = producer.find(in);
          if (q != producer.end() && q->second->op_type() == "Constant") continue;
          next = in;
          break;
        }
      }
      if (next.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data-free activation ranges: no estimate for tensor '", cur, "' (made by ", p->second->op_type(),
            " node '", p->second->name(), "'), needed for '", t,
            "'; give calibration inputs (--calibration DIR) for this model"));
      }
      cur = next;
    }
    return absl::InvalidArgumentError(absl::StrCat("data-free activation ranges: no estimate for tensor '", t, "'"));
  }
  return absl::OkStatus();
}

}  // namespace sq
