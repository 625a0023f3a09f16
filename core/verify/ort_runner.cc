#include "core/verify/ort_runner.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "core/verify/ort_worker.h"
#include "onnx/onnx_pb.h"
#include "onnxruntime_cxx_api.h"

namespace sq {
namespace {

Ort::Env& GlobalEnv() {
  // Function-local static: thread-safe lazy init (C++11 magic statics). Never destroyed, so
  // sessions living in other statics cannot outlive it.
  static Ort::Env* env = [] {
    KeepOrtTelemetryOff();  // read by ONNX Runtime when the first Env is created
    auto* e = new Ort::Env(ORT_LOGGING_LEVEL_FATAL, "sq");
    e->DisableTelemetryEvents();
    return e;
  }();
  return *env;
}

absl::Status FromOrt(const Ort::Exception& e, const std::string& what) {
  std::string msg = absl::StrCat(what, ": ", e.what());
  switch (e.GetOrtErrorCode()) {
    case ORT_INVALID_ARGUMENT:
    case ORT_INVALID_GRAPH:
    case ORT_INVALID_PROTOBUF:
    case ORT_NO_SUCHFILE:
    case ORT_NO_MODEL:
    case ORT_NOT_IMPLEMENTED:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

Ort::SessionOptions MakeSessionOptions(const OrtRunOptions& opts) {
  Ort::SessionOptions so;
  so.SetIntraOpNumThreads(std::max(1, opts.intra_op_threads));
  so.SetInterOpNumThreads(1);
  so.SetGraphOptimizationLevel(opts.disable_optimizations ? GraphOptimizationLevel::ORT_DISABLE_ALL
                                                          : GraphOptimizationLevel::ORT_ENABLE_ALL);
  return so;
}

size_t NumElements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(std::max<int64_t>(d, 0));
  return n;
}

template <typename T>
void CopyToI(const Ort::Value& v, size_t n, std::vector<int64_t>* out) {
  const T* p = v.GetTensorData<T>();
  out->resize(n);
  for (size_t k = 0; k < n; ++k) (*out)[k] = static_cast<int64_t>(p[k]);
}

absl::Status ToOrtTensor(const std::string& name, Ort::Value& v, OrtTensor* t) {
  t->name = name;
  if (!v.IsTensor()) {
    return absl::UnimplementedError(absl::StrCat("output ", name, " is not a tensor"));
  }
  auto info = v.GetTensorTypeAndShapeInfo();
  t->shape = info.GetShape();
  t->elem_type = static_cast<int32_t>(info.GetElementType());
  size_t n = info.GetElementCount();
  switch (info.GetElementType()) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: {
      const float* p = v.GetTensorData<float>();
      t->f.assign(p, p + n);
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: {
      const double* p = v.GetTensorData<double>();
      t->f.resize(n);
      for (size_t k = 0; k < n; ++k) t->f[k] = static_cast<float>(p[k]);
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: {
      const Ort::Float16_t* p = v.GetTensorData<Ort::Float16_t>();
      t->f.resize(n);
      for (size_t k = 0; k < n; ++k) t->f[k] = p[k].ToFloat();
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: {
      const int64_t* p = v.GetTensorData<int64_t>();
      t->i.assign(p, p + n);
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: CopyToI<bool>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: CopyToI<int32_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: CopyToI<uint32_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: CopyToI<uint64_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: CopyToI<int8_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: CopyToI<uint8_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: CopyToI<int16_t>(v, n, &t->i); break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: CopyToI<uint16_t>(v, n, &t->i); break;
    default:
      return absl::UnimplementedError(
          absl::StrCat("output ", name, " has unsupported element type ", t->elem_type));
  }
  return absl::OkStatus();
}

// Input buffers must outlive Run(); Ort::Value wraps them without copying.
struct InputBuffers {
  std::vector<std::unique_ptr<int32_t[]>> i32;
  std::vector<std::unique_ptr<double[]>> f64;
  std::vector<std::unique_ptr<bool[]>> b;
};

absl::StatusOr<Ort::Value> MakeInputValue(const OrtTensor& t, const Ort::MemoryInfo& mem,
                                          InputBuffers* bufs) {
  const size_t n = NumElements(t.shape);
  auto check = [&](size_t have) -> absl::Status {
    if (have != n) {
      return absl::InvalidArgumentError(absl::StrCat("input ", t.name, ": shape has ", n,
                                                     " elements but data has ", have));
    }
    return absl::OkStatus();
  };
  const int64_t* shape = t.shape.data();
  const size_t rank = t.shape.size();
  switch (t.elem_type) {
    case 1: {
      absl::Status s = check(t.f.size());
      if (!s.ok()) return s;
      return Ort::Value::CreateTensor<float>(mem, const_cast<float*>(t.f.data()), n, shape, rank);
    }
    case 11: {
      absl::Status s = check(t.f.size());
      if (!s.ok()) return s;
      bufs->f64.emplace_back(new double[std::max<size_t>(n, 1)]);
      for (size_t k = 0; k < n; ++k) bufs->f64.back()[k] = t.f[k];
      return Ort::Value::CreateTensor<double>(mem, bufs->f64.back().get(), n, shape, rank);
    }
    case 7: {
      absl::Status s = check(t.i.size());
      if (!s.ok()) return s;
      return Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(t.i.data()), n, shape,
                                               rank);
    }
    case 6: {
      absl::Status s = check(t.i.size());
      if (!s.ok()) return s;
      bufs->i32.emplace_back(new int32_t[std::max<size_t>(n, 1)]);
      for (size_t k = 0; k < n; ++k) bufs->i32.back()[k] = static_cast<int32_t>(t.i[k]);
      return Ort::Value::CreateTensor<int32_t>(mem, bufs->i32.back().get(), n, shape, rank);
    }
    case 9: {
      absl::Status s = check(t.i.size());
      if (!s.ok()) return s;
      bufs->b.emplace_back(new bool[std::max<size_t>(n, 1)]);
      for (size_t k = 0; k < n; ++k) bufs->b.back()[k] = t.i[k] != 0;
      return Ort::Value::CreateTensor<bool>(mem, bufs->b.back().get(), n, shape, rank);
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("input ", t.name, ": unsupported elem_type ", t.elem_type));
  }
}

// Creates a session for `model`; ORT errors become a Status naming what was loaded.
absl::StatusOr<std::unique_ptr<Ort::Session>> OpenSession(const OrtModelSource& model,
                                                          const OrtRunOptions& opts) {
  const std::string what = absl::StrCat("loading ", model.path, " in ONNX Runtime");
  try {
    Ort::SessionOptions so = MakeSessionOptions(opts);
    if (model.bytes.empty()) {
      return std::make_unique<Ort::Session>(GlobalEnv(), model.path.c_str(), so);
    }
    if (!model.external_files.empty()) {
      std::vector<std::string> names;
      std::vector<char*> buffers;
      std::vector<size_t> lengths;
      for (const OrtModelSource::File& f : model.external_files) {
        names.push_back(f.location);
        buffers.push_back(const_cast<char*>(f.data));
        lengths.push_back(f.size);
      }
      so.AddExternalInitializersFromFilesInMemory(names, buffers, lengths);
    }
    return std::make_unique<Ort::Session>(GlobalEnv(), model.bytes.data(), model.bytes.size(), so);
  } catch (const Ort::Exception& e) {
    return FromOrt(e, what);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

}  // namespace

void KeepOrtTelemetryOff() { ::setenv("ORT_DISABLE_TELEMETRY", "1", /*overwrite=*/0); }

std::string OrtVersion() { return Ort::GetVersionString(); }

absl::Status LoadInOrt(const std::string& model_path, const OrtRunOptions& opts) {
  OrtModelSource source;
  source.path = model_path;
  if (!OrtWorker().empty()) return OrtWorkerSession::Open(OrtWorker(), source, opts).status();
  return OpenSession(source, opts).status();
}

absl::StatusOr<std::vector<OrtTensor>> RunOrt(const std::string& model_path,
                                              const std::vector<OrtTensor>& inputs,
                                              const OrtRunOptions& opts) {
  OrtModelSource source;
  source.path = model_path;
  return RunOrt(source, inputs, opts);
}

struct OrtSession::Impl {
  std::string name;
  std::unique_ptr<Ort::Session> session;
  std::vector<std::string> output_names;
  std::unique_ptr<OrtWorkerSession> remote;  // set: the session lives in a worker process
};

OrtSession::OrtSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OrtSession::~OrtSession() = default;

absl::StatusOr<std::unique_ptr<OrtSession>> OrtSession::Open(const OrtModelSource& model,
                                                             const OrtRunOptions& opts) {
  if (!OrtWorker().empty()) {
    absl::StatusOr<std::unique_ptr<OrtWorkerSession>> remote = OrtWorkerSession::Open(OrtWorker(), model, opts);
    if (!remote.ok()) return remote.status();
    auto impl = std::make_unique<Impl>();
    impl->name = model.path;
    impl->remote = std::move(*remote);
    return std::unique_ptr<OrtSession>(new OrtSession(std::move(impl)));
  }
  absl::StatusOr<std::unique_ptr<Ort::Session>> opened = OpenSession(model, opts);
  if (!opened.ok()) return opened.status();
  auto impl = std::make_unique<Impl>();
  impl->name = model.path;
  impl->session = std::move(*opened);
  try {
    Ort::AllocatorWithDefaultOptions alloc;
    const size_t n_out = impl->session->GetOutputCount();
    for (size_t k = 0; k < n_out; ++k) {
      impl->output_names.push_back(impl->session->GetOutputNameAllocated(k, alloc).get());
    }
  } catch (const Ort::Exception& e) {
    return FromOrt(e, absl::StrCat("loading ", model.path, " in ONNX Runtime"));
  }
  return std::unique_ptr<OrtSession>(new OrtSession(std::move(impl)));
}

absl::StatusOr<std::vector<OrtTensor>> OrtSession::Run(const std::vector<OrtTensor>& inputs) {
  if (impl_->remote) return impl_->remote->Run(inputs);
  const std::string& model_path = impl_->name;
  try {
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    InputBuffers bufs;
    std::vector<Ort::Value> in_values;
    std::vector<const char*> in_names;
    in_values.reserve(inputs.size());
    for (const OrtTensor& t : inputs) {
      absl::StatusOr<Ort::Value> v = MakeInputValue(t, mem, &bufs);
      if (!v.ok()) return v.status();
      in_values.push_back(std::move(*v));
      in_names.push_back(t.name.c_str());
    }
    std::vector<const char*> out_names;
    for (const auto& s : impl_->output_names) out_names.push_back(s.c_str());
    Ort::RunOptions run_opts;
    std::vector<Ort::Value> outs =
        impl_->session->Run(run_opts, in_names.data(), in_values.data(), in_values.size(),
                            out_names.data(), out_names.size());
    std::vector<OrtTensor> result(outs.size());
    for (size_t k = 0; k < outs.size(); ++k) {
      absl::Status s = ToOrtTensor(impl_->output_names[k], outs[k], &result[k]);
      if (!s.ok()) return s;
    }
    return result;
  } catch (const Ort::Exception& e) {
    return FromOrt(e, absl::StrCat("running ", model_path, " in ONNX Runtime"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("running ", model_path, ": ", e.what()));
  }
}

absl::StatusOr<std::vector<OrtTensor>> RunOrt(const OrtModelSource& model,
                                              const std::vector<OrtTensor>& inputs,
                                              const OrtRunOptions& opts) {
  absl::StatusOr<std::unique_ptr<OrtSession>> session = OrtSession::Open(model, opts);
  if (!session.ok()) return session.status();
  return (*session)->Run(inputs);
}

absl::StatusOr<std::vector<OrtTensor>> MakeRandomInputs(
    const std::string& model_path, uint64_t seed, int64_t default_dim,
    const std::map<std::string, int64_t>& dim_overrides, int64_t int_high) {
  onnx::ModelProto model;
  {
    std::ifstream in(model_path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", model_path));
    if (!model.ParseFromIstream(&in)) {
      return absl::InvalidArgumentError(absl::StrCat("cannot parse ", model_path, " as ONNX"));
    }
  }
  return MakeRandomInputs(model.graph(), seed, default_dim, dim_overrides, int_high);
}

absl::StatusOr<std::vector<OrtTensor>> MakeRandomInputs(
    const onnx::GraphProto& g, uint64_t seed, int64_t default_dim,
    const std::map<std::string, int64_t>& dim_overrides, int64_t int_high) {
  std::set<std::string> inits;
  std::unordered_map<std::string, const onnx::TensorProto*> tables;
  for (const auto& t : g.initializer()) {
    inits.insert(t.name());
    tables[t.name()] = &t;
  }
  for (const auto& t : g.sparse_initializer()) inits.insert(t.values().name());
  // Ids for a graph input that indexes a constant table stay inside the table.
  std::unordered_map<std::string, int64_t> id_limit;
  for (const auto& node : g.node()) {
    if (node.op_type() != "Gather" || node.input_size() < 2) continue;
    auto table = tables.find(node.input(0));
    if (table == tables.end()) continue;
    int64_t axis = 0;
    for (const auto& a : node.attribute()) {
      if (a.name() == "axis") axis = a.i();
    }
    const int rank = table->second->dims_size();
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) continue;
    const int64_t size = table->second->dims(static_cast<int>(axis));
    if (size <= 0) continue;
    auto [it, inserted] = id_limit.emplace(node.input(1), size);
    if (!inserted) it->second = std::min(it->second, size);
  }

  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uf(-1.0f, 1.0f);
  std::vector<OrtTensor> out;
  for (const auto& vi : g.input()) {
    if (inits.count(vi.name())) continue;
    if (!vi.type().has_tensor_type()) {
      return absl::UnimplementedError(absl::StrCat("input ", vi.name(), " is not a tensor"));
    }
    const auto& tt = vi.type().tensor_type();
    OrtTensor t;
    t.name = vi.name();
    t.elem_type = tt.elem_type();
    for (const auto& d : tt.shape().dim()) {
      if (d.has_dim_value() && d.dim_value() > 0) {
        t.shape.push_back(d.dim_value());
        continue;
      }
      int64_t v = default_dim;
      if (d.has_dim_param()) {
        auto it = dim_overrides.find(d.dim_param());
        if (it != dim_overrides.end()) {
          v = it->second;
        } else if ((it = dim_overrides.find(vi.name())) != dim_overrides.end()) {
          v = it->second;
        }
      } else {
        auto it = dim_overrides.find(vi.name());
        if (it != dim_overrides.end()) v = it->second;
      }
      t.shape.push_back(v);
    }
    const size_t n = NumElements(t.shape);
    switch (t.elem_type) {
      case 1:
      case 11:
        t.f.resize(n);
        for (auto& x : t.f) x = uf(rng);
        break;
      case 6:
      case 7: {
        int64_t high = int_high;
        if (auto lim = id_limit.find(vi.name()); lim != id_limit.end()) {
          high = std::min(high, lim->second);
        }
        const uint64_t hi = static_cast<uint64_t>(std::max<int64_t>(high, 1));
        t.i.resize(n);
        for (auto& x : t.i) x = static_cast<int64_t>(rng() % hi);
        break;
      }
      case 9:
        t.i.resize(n);
        for (auto& x : t.i) x = static_cast<int64_t>(rng() & 1);
        break;
      default:
        return absl::UnimplementedError(absl::StrCat("input ", vi.name(),
                                                     ": unsupported elem_type ", t.elem_type));
    }
    out.push_back(std::move(t));
  }
  return out;
}

namespace {

// Returns {max|a-b|, max|b|} for one pair, or +inf diff when incomparable.
std::pair<double, double> Diff(const OrtTensor& a, const OrtTensor& b) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (a.shape != b.shape) return {kInf, 0.0};
  const bool af = !a.f.empty() || a.i.empty();
  const bool bf = !b.f.empty() || b.i.empty();
  auto get = [](const OrtTensor& t, bool is_f, size_t k) -> double {
    return is_f ? static_cast<double>(t.f[k]) : static_cast<double>(t.i[k]);
  };
  const size_t na = af ? a.f.size() : a.i.size();
  const size_t nb = bf ? b.f.size() : b.i.size();
  if (na != nb) return {kInf, 0.0};
  double max_diff = 0.0, max_b = 0.0;
  for (size_t k = 0; k < na; ++k) {
    double x = get(a, af, k), y = get(b, bf, k);
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) max_diff = kInf;
      continue;
    }
    if (std::isinf(x) || std::isinf(y)) {
      if (x != y) max_diff = kInf;
      continue;
    }
    max_diff = std::max(max_diff, std::fabs(x - y));
    max_b = std::max(max_b, std::fabs(y));
  }
  return {max_diff, max_b};
}

template <typename F>
double Reduce(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b, F f) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::unordered_map<std::string, const OrtTensor*> by_name;
  for (const auto& t : b) by_name[t.name] = &t;
  if (a.size() != b.size()) return kInf;
  double worst = 0.0;
  for (const auto& t : a) {
    auto it = by_name.find(t.name);
    if (it == by_name.end()) return kInf;
    worst = std::max(worst, f(Diff(t, *it->second)));
  }
  return worst;
}

}  // namespace

double MaxRelativeError(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b) {
  return Reduce(a, b, [](std::pair<double, double> d) {
    return d.first / std::max(d.second, 1e-30);
  });
}

double MaxAbsError(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b) {
  return Reduce(a, b, [](std::pair<double, double> d) { return d.first; });
}

}  // namespace sq
