// sq_bench_infer: runs one ONNX model in ONNX Runtime (CPU, all graph optimizations) the
// way a user deploys it and prints one JSON line:
//   session_ms      session creation (this is where weights decoded at load are folded)
//   p50_ms_t1/_t2   median latency over --runs runs after --warmup runs, 1 and 2 threads
//   rss_mb          process RSS after the 1-thread runs (the 1-thread session still open)
//   base_rss_mb     process RSS before the first session (ORT and the inputs)
//   rel_l2          ||y - y_ref|| / ||y_ref|| over every float output, vs --reference
// Inputs are deterministic: floats ~U(-1, 1), integers in [0, --int-high), unknown dims
// from --dim NAME=V (a symbolic dim's name or an input's name) or 1.
//
//   sq_bench_infer --model q.onnx [--reference fp32.onnx] [--runs 30] [--warmup 3]
//                  [--dim seq=16] [--int-high 8192] [--label text]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "onnxruntime_cxx_api.h"

namespace {

struct Input {
  std::string name;
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type;
  std::vector<float> f;
  std::vector<int64_t> i;
};

double RssMb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

Ort::Env& Env() {
  static Ort::Env* env = [] {
    // ONNX Runtime telemetry off, as in sq itself (core/verify/ort_runner.h).
    ::setenv("ORT_DISABLE_TELEMETRY", "1", /*overwrite=*/0);
    return new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "sq_bench_infer");
  }();
  return *env;
}

std::unique_ptr<Ort::Session> Open(const std::string& path, int threads) {
  Ort::SessionOptions so;
  so.SetIntraOpNumThreads(threads);
  so.SetInterOpNumThreads(1);
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  return std::make_unique<Ort::Session>(Env(), path.c_str(), so);
}

std::vector<Input> MakeInputs(Ort::Session& s, const std::map<std::string, int64_t>& dims,
                              int64_t int_high) {
  std::vector<Input> out;
  std::mt19937_64 rng(1234);
  Ort::AllocatorWithDefaultOptions alloc;
  for (size_t k = 0; k < s.GetInputCount(); ++k) {
    Input in;
    in.name = s.GetInputNameAllocated(k, alloc).get();
    Ort::TypeInfo type_info = s.GetInputTypeInfo(k);  // must outlive `info`
    auto info = type_info.GetTensorTypeAndShapeInfo();
    in.type = info.GetElementType();
    in.shape = info.GetShape();
    std::vector<const char*> sym(in.shape.size());
    info.GetSymbolicDimensions(sym.data(), sym.size());
    int64_t n = 1;
    for (size_t d = 0; d < in.shape.size(); ++d) {
      if (in.shape[d] < 0) {
        auto it = dims.find(sym[d] ? sym[d] : "");
        if (it == dims.end()) it = dims.find(in.name);
        in.shape[d] = it != dims.end() ? it->second : 1;
      }
      n *= in.shape[d];
    }
    if (in.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      std::uniform_real_distribution<float> u(-1, 1);
      for (int64_t j = 0; j < n; ++j) in.f.push_back(u(rng));
    } else {
      std::uniform_int_distribution<int64_t> u(0, int_high - 1);
      for (int64_t j = 0; j < n; ++j) in.i.push_back(u(rng));
    }
    out.push_back(std::move(in));
  }
  return out;
}

std::vector<std::vector<float>> Run(Ort::Session& s, std::vector<Input>& inputs) {
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> values;
  std::vector<const char*> in_names;
  std::vector<std::vector<int32_t>> i32;
  for (Input& in : inputs) {
    in_names.push_back(in.name.c_str());
    if (in.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      values.push_back(Ort::Value::CreateTensor<float>(mem, in.f.data(), in.f.size(), in.shape.data(), in.shape.size()));
    } else if (in.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
      i32.emplace_back(in.i.begin(), in.i.end());
      values.push_back(Ort::Value::CreateTensor<int32_t>(mem, i32.back().data(), i32.back().size(), in.shape.data(), in.shape.size()));
    } else {
      values.push_back(Ort::Value::CreateTensor<int64_t>(mem, in.i.data(), in.i.size(), in.shape.data(), in.shape.size()));
    }
  }
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> names;
  for (size_t k = 0; k < s.GetOutputCount(); ++k) names.push_back(s.GetOutputNameAllocated(k, alloc).get());
  std::vector<const char*> out_names;
  for (auto& n : names) out_names.push_back(n.c_str());
  auto outs = s.Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                    out_names.data(), out_names.size());
  std::vector<std::vector<float>> result;
  for (auto& v : outs) {
    auto info = v.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      result.emplace_back();
      continue;
    }
    const float* p = v.GetTensorData<float>();
    result.emplace_back(p, p + info.GetElementCount());
  }
  return result;
}

double P50(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<double> Time(Ort::Session& s, std::vector<Input>& inputs, int warmup, int runs,
                         std::vector<std::vector<float>>* first) {
  for (int k = 0; k < warmup; ++k) {
    auto o = Run(s, inputs);
    if (k == 0 && first) *first = std::move(o);
  }
  std::vector<double> ms;
  for (int k = 0; k < runs; ++k) {
    auto t0 = std::chrono::steady_clock::now();
    Run(s, inputs);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, reference, label;
  int runs = 30, warmup = 3;
  int64_t int_high = 16;
  std::map<std::string, int64_t> dims;
  for (int k = 1; k < argc; ++k) {
    std::string a = argv[k];
    auto next = [&]() -> std::string {
      if (k + 1 >= argc) {
        std::fprintf(stderr, "sq_bench_infer: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--model") model = next();
    else if (a == "--reference") reference = next();
    else if (a == "--label") label = next();
    else if (a == "--runs") runs = std::stoi(next());
    else if (a == "--warmup") warmup = std::max(1, std::stoi(next()));
    else if (a == "--int-high") int_high = std::stoll(next());
    else if (a == "--dim") {
      std::string v = next();
      auto eq = v.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "sq_bench_infer: --dim wants NAME=VALUE\n");
        return 2;
      }
      dims[v.substr(0, eq)] = std::stoll(v.substr(eq + 1));
    } else {
      std::fprintf(stderr, "usage: sq_bench_infer --model M [--reference R] [--runs N] "
                           "[--warmup N] [--dim NAME=V] [--int-high N] [--label L]\n");
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "sq_bench_infer: --model is required\n");
    return 2;
  }
  try {
    nlohmann::json j;
    j["label"] = label;
    j["model"] = model;
    std::ifstream f(model, std::ios::binary | std::ios::ate);
    int64_t bytes = f ? static_cast<int64_t>(f.tellg()) : 0;
    std::ifstream d(model + ".data", std::ios::binary | std::ios::ate);
    if (d) bytes += static_cast<int64_t>(d.tellg());
    j["disk_mb"] = bytes / 1e6;
    Env();
    auto t0 = std::chrono::steady_clock::now();
    auto s1 = Open(model, 1);
    j["session_ms"] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::vector<Input> inputs = MakeInputs(*s1, dims, int_high);
    for (const Input& in : inputs) j["inputs"][in.name] = in.shape;
    j["base_rss_mb"] = RssMb();  // (after the session: inputs are sized from it)
    std::vector<std::vector<float>> y;
    j["p50_ms_t1"] = P50(Time(*s1, inputs, warmup, runs, &y));
    j["rss_mb"] = RssMb();
    s1.reset();
    auto s2 = Open(model, 2);
    j["p50_ms_t2"] = P50(Time(*s2, inputs, warmup, runs, nullptr));
    s2.reset();
    if (!reference.empty()) {
      auto r = Open(reference, 2);
      auto yr = Run(*r, inputs);
      double num = 0, den = 0;
      for (size_t o = 0; o < std::min(y.size(), yr.size()); ++o) {
        if (y[o].size() != yr[o].size()) {
          num = INFINITY;
          break;
        }
        for (size_t e = 0; e < y[o].size(); ++e) {
          num += double(y[o][e] - yr[o][e]) * (y[o][e] - yr[o][e]);
          den += double(yr[o][e]) * yr[o][e];
        }
      }
      j["rel_l2"] = den > 0 ? std::sqrt(num / den) : 0;
    }
    std::printf("%s\n", j.dump().c_str());
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "sq_bench_infer: %s: %s\n", model.c_str(), e.what());
    return 1;
  }
  return 0;
}
