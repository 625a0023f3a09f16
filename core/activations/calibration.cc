#include "core/activations/calibration.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/verify/tensor_file.h"

namespace sq {
namespace {

namespace fs = std::filesystem;

const char* DtypeName(int32_t t) {
  switch (t) {
    case 1: return "float32";
    case 6: return "int32";
    case 7: return "int64";
    case 9: return "bool";
    case 10: return "float16";
    case 11: return "float64";
    default: return "another type";
  }
}

// A graph input a sample must give.
struct Feed {
  std::string name;
  int32_t elem_type = 0;              // 0 = not declared
  std::vector<int64_t> dims;          // -1 = open
  bool has_shape = false;
};

std::vector<Feed> Feeds(const onnx::GraphProto& graph) {
  std::set<std::string> inits;
  for (const auto& t : graph.initializer()) inits.insert(t.name());
  std::vector<Feed> feeds;
  for (const auto& vi : graph.input()) {
    if (inits.count(vi.name())) continue;
    Feed f;
    f.name = vi.name();
    if (vi.type().has_tensor_type()) {
      const auto& tt = vi.type().tensor_type();
      f.elem_type = tt.elem_type();
      if (tt.has_shape()) {
        f.has_shape = true;
        for (const auto& d : tt.shape().dim()) f.dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
      }
    }
    feeds.push_back(std::move(f));
  }
  return feeds;
}

std::string ShapeText(const std::vector<int64_t>& dims) {
  std::vector<std::string> parts;
  for (int64_t d : dims) parts.push_back(d < 0 ? "?" : absl::StrCat(d));
  return absl::StrCat("[", absl::StrJoin(parts, ","), "]");
}

// Checks one sample against the graph's inputs; names a lone unnamed tensor.
absl::Status CheckSample(const std::vector<Feed>& feeds, bool unnamed, CalibrationSample* s) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("calibration sample ", s->source, ": ", why));
  };
  if (unnamed && feeds.size() == 1 && s->tensors.size() == 1) s->tensors[0].name = feeds[0].name;
  std::vector<std::string> feed_names;
  for (const Feed& f : feeds) feed_names.push_back(f.name);
  std::set<std::string> given;
  for (OrtTensor& t : s->tensors) {
    auto it = std::find_if(feeds.begin(), feeds.end(), [&](const Feed& f) { return f.name == t.name; });
    if (it == feeds.end()) {
      return bad(absl::StrCat("holds tensor '", t.name, "', which is not an input of the model (inputs: ",
                              absl::StrJoin(feed_names, ", "), ")"));
    }
    if (!given.insert(t.name).second) return bad(absl::StrCat("gives input '", t.name, "' twice"));
    if (it->elem_type != 0 && it->elem_type != t.elem_type) {
      return bad(absl::StrCat("input '", t.name, "' is ", DtypeName(t.elem_type), " but the model takes ",
                              DtypeName(it->elem_type), absl::StrContains(DtypeName(t.elem_type), "float")
                                                            ? " (save it with that dtype, e.g. astype)"
                                                            : ""));
    }
    if (it->has_shape) {
      bool fits = it->dims.size() == t.shape.size();
      for (size_t k = 0; fits && k < t.shape.size(); ++k) {
        fits = it->dims[k] < 0 || it->dims[k] == t.shape[k];
      }
      if (!fits) {
        return bad(absl::StrCat("input '", t.name, "' has shape ", ShapeText(t.shape),
                                " but the model takes ", ShapeText(it->dims)));
      }
    }
    for (size_t k = 0; k < t.f.size(); ++k) {
      if (!std::isfinite(t.f[k])) {
        return bad(absl::StrCat("input '", t.name, "' holds ", std::isnan(t.f[k]) ? "NaN" : "an infinity",
                                " at flat index ", k));
      }
    }
  }
  for (const Feed& f : feeds) {
    if (!given.count(f.name)) return bad(absl::StrCat("lacks the model's input '", f.name, "'"));
  }
  return absl::OkStatus();
}

bool IsTensorFile(const fs::path& p) {
  const std::string ext = absl::AsciiStrToLower(p.extension().string());
  return ext == ".npy" || ext == ".npz" || ext == ".pb";
}

// One sample from a file, or from a directory of .pb files.
absl::StatusOr<CalibrationSample> ReadSample(const fs::path& p, const std::vector<Feed>& feeds) {
  CalibrationSample s;
  s.source = p.string();
  std::error_code ec;
  bool unnamed = false;
  if (fs::is_directory(p, ec)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(p, ec)) {
      if (e.is_regular_file() && absl::AsciiStrToLower(e.path().extension().string()) == ".pb") {
        files.push_back(e.path());
      }
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration sample ", s.source, ": a sample directory must hold .pb tensors"));
    }
    for (const fs::path& f : files) {
      SQ_ASSIGN_OR_RETURN(std::vector<OrtTensor> t, ReadTensorFile(f.string()));
      for (OrtTensor& x : t) s.tensors.push_back(std::move(x));
    }
    // input_0.pb, input_1.pb, ... without names inside: the graph's inputs in order.
    bool named = true;
    for (const OrtTensor& t : s.tensors) {
      named = named && std::any_of(feeds.begin(), feeds.end(), [&](const Feed& f) { return f.name == t.name; });
    }
    if (!named && s.tensors.size() == feeds.size()) {
      for (size_t k = 0; k < feeds.size(); ++k) s.tensors[k].name = feeds[k].name;
    }
  } else {
    SQ_ASSIGN_OR_RETURN(s.tensors, ReadTensorFile(p.string()));
    unnamed = absl::AsciiStrToLower(p.extension().string()) == ".npy" ||
              (absl::AsciiStrToLower(p.extension().string()) == ".pb" && s.tensors.size() == 1);
  }
  SQ_RETURN_IF_ERROR(CheckSample(feeds, unnamed, &s));
  return s;
}

// Per-tensor running state.
struct Acc {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  std::vector<float> ch_lo, ch_hi;
  std::vector<int64_t> hist;
  bool channels_vary = false;
};

constexpr int kBins = 2048;

}  // namespace

float HistogramQuantile(const std::vector<int64_t>& counts, float lo, float hi, double fraction,
                        bool upper) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  if (total == 0 || counts.empty() || !(hi > lo)) return upper ? hi : lo;
  const double width = (static_cast<double>(hi) - lo) / static_cast<double>(counts.size());
  const double target = fraction * static_cast<double>(total);
  if (upper) {
    // The smallest edge with at least `fraction` of the mass below it.
    double below = 0;
    for (size_t b = 0; b < counts.size(); ++b) {
      below += static_cast<double>(counts[b]);
      if (below >= target) return static_cast<float>(lo + width * static_cast<double>(b + 1));
    }
    return hi;
  }
  // The largest edge with at most `fraction` of the mass below it.
  double below = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    if (below + static_cast<double>(counts[b]) > target) return static_cast<float>(lo + width * static_cast<double>(b));
    below += static_cast<double>(counts[b]);
  }
  return lo;
}

absl::StatusOr<std::vector<CalibrationSample>> ReadCalibrationSet(
    const std::vector<std::string>& paths, const onnx::GraphProto& graph) {
  const std::vector<Feed> feeds = Feeds(graph);
  std::vector<fs::path> entries;
  for (const std::string& path : paths) {
    std::error_code ec;
    const fs::path p(path);
    if (!fs::exists(p, ec)) return absl::NotFoundError(absl::StrCat("calibration input ", path, " does not exist"));
    if (!fs::is_directory(p, ec)) {
      entries.push_back(p);
      continue;
    }
    // A directory of .pb files only (no subdirectories) whose model has several inputs is one
    // sample in the ONNX layout only when it holds input_*.pb; otherwise each file is one.
    std::vector<fs::path> inside;
    for (const auto& e : fs::directory_iterator(p, ec)) {
      if (e.is_directory() || (e.is_regular_file() && IsTensorFile(e.path()))) inside.push_back(e.path());
    }
    if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot list calibration directory ", path, ": ", ec.message()));
    std::sort(inside.begin(), inside.end());
    if (inside.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("calibration directory ", path,
                                                     " holds no .npy, .npz or .pb file"));
    }
    for (const fs::path& q : inside) entries.push_back(q);
    if (entries.size() > static_cast<size_t>(kMaxCalibrationSamples)) break;
  }
  if (entries.empty()) return absl::InvalidArgumentError("no calibration samples given");
  if (entries.size() > static_cast<size_t>(kMaxCalibrationSamples)) {
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxCalibrationSamples,
                                                   " calibration samples; a few dozen are enough"));
  }
  std::vector<CalibrationSample> samples;
  for (const fs::path& e : entries) {
    SQ_ASSIGN_OR_RETURN(CalibrationSample s, ReadSample(e, feeds));
    samples.push_back(std::move(s));
  }
  return samples;
}

absl::StatusOr<std::map<std::string, TensorRange>> CollectRanges(
    const onnx::ModelProto& model_in, const std::vector<OrtModelSource::File>& external_files,
    const std::vector<CalibrationSample>& samples, const CalibrationRequest& request) {
  if (samples.empty()) return absl::InvalidArgumentError("no calibration samples");
  onnx::ModelProto model = model_in;
  onnx::GraphProto* g = model.mutable_graph();
  std::set<std::string> produced, outputs;
  for (const auto& vi : g->input()) produced.insert(vi.name());
  for (const auto& n : g->node()) {
    for (const auto& o : n.output()) produced.insert(o);
  }
  for (const auto& vi : g->output()) outputs.insert(vi.name());
  std::vector<std::string> wanted = request.tensors;
  for (const std::string& t : request.channel_tensors) {
    if (std::find(wanted.begin(), wanted.end(), t) == wanted.end()) wanted.push_back(t);
  }
  const std::set<std::string> per_channel(request.channel_tensors.begin(), request.channel_tensors.end());
  for (const std::string& t : wanted) {
    if (!produced.count(t)) {
      return absl::InvalidArgumentError(absl::StrCat("calibration: the model computes no tensor '", t, "'"));
    }
    if (outputs.count(t)) continue;
    onnx::ValueInfoProto* vi = g->add_output();
    vi->set_name(t);
    vi->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  std::string bytes;
  if (!model.SerializeToString(&bytes)) {
    return absl::InternalError("calibration: the model does not serialise (over 2 GB inline?)");
  }
  OrtModelSource source;
  source.path = "the model with its quantized weights";
  source.bytes = bytes;
  source.external_files = external_files;
  OrtRunOptions opts;
  opts.intra_op_threads = std::max(1, request.threads);
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<OrtSession> session, OrtSession::Open(source, opts));

  std::map<std::string, Acc> acc;
  for (const std::string& t : wanted) acc[t];
  const bool percentile = request.method == CalibrationMethod::kPercentile && request.percentile < 100;
  for (int pass = 0; pass < (percentile ? 2 : 1); ++pass) {
    for (const CalibrationSample& s : samples) {
      absl::StatusOr<std::vector<OrtTensor>> out = session->Run(s.tensors);
      if (!out.ok()) {
        return absl::Status(out.status().code(),
                            absl::StrCat("calibration sample ", s.source, ": ", out.status().message()));
      }
      for (const OrtTensor& t : *out) {
        auto it = acc.find(t.name);
        if (it == acc.end()) continue;
        Acc& a = it->second;
        if (t.f.empty() && !t.i.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("calibration: tensor '", t.name, "' is not a float tensor"));
        }
        if (pass == 0) {
          for (float v : t.f) {
            if (!std::isfinite(v)) continue;
            a.lo = std::min(a.lo, v);
            a.hi = std::max(a.hi, v);
          }
          if (per_channel.count(t.name) && t.shape.size() >= 2) {
            const int64_t c = t.shape[1];
            int64_t inner = 1;
            for (size_t k = 2; k < t.shape.size(); ++k) inner *= t.shape[k];
            if (a.ch_lo.empty()) {
              a.ch_lo.assign(c, std::numeric_limits<float>::infinity());
              a.ch_hi.assign(c, -std::numeric_limits<float>::infinity());
            }
            if (a.channels_vary || static_cast<int64_t>(a.ch_lo.size()) != c) {
              // Axis 1 is not channels here (a sequence length that varies): no per-channel ranges.
              a.channels_vary = true;
              continue;
            }
            const int64_t outer = c * inner == 0 ? 0 : static_cast<int64_t>(t.f.size()) / (c * inner);
            for (int64_t o = 0; o < outer; ++o) {
              for (int64_t ch = 0; ch < c; ++ch) {
                const float* p = t.f.data() + (o * c + ch) * inner;
                for (int64_t k = 0; k < inner; ++k) {
                  if (!std::isfinite(p[k])) continue;
                  a.ch_lo[ch] = std::min(a.ch_lo[ch], p[k]);
                  a.ch_hi[ch] = std::max(a.ch_hi[ch], p[k]);
                }
              }
            }
          }
        } else {
          if (a.hist.empty()) a.hist.assign(kBins, 0);
          if (!(a.hi > a.lo)) continue;
          const double scale = kBins / (static_cast<double>(a.hi) - a.lo);
          for (float v : t.f) {
            if (!std::isfinite(v)) continue;
            int b = static_cast<int>((static_cast<double>(v) - a.lo) * scale);
            a.hist[std::clamp(b, 0, kBins - 1)]++;
          }
        }
      }
    }
  }
  std::map<std::string, TensorRange> ranges;
  for (auto& [name, a] : acc) {
    TensorRange r;
    if (a.lo > a.hi) {  // never a finite value
      a.lo = a.hi = 0;
    }
    r.lo = a.lo;
    r.hi = a.hi;
    if (percentile && !a.hist.empty()) {
      const double tail = (100.0 - request.percentile) / 100.0;
      r.lo = std::max(a.lo, HistogramQuantile(a.hist, a.lo, a.hi, tail, false));
      r.hi = std::min(a.hi, HistogramQuantile(a.hist, a.lo, a.hi, 1.0 - tail, true));
    }
    r.lo = std::min(r.lo, 0.0f);
    r.hi = std::max(r.hi, 0.0f);
    if (per_channel.count(name) && !a.channels_vary) {
      r.channel_lo = std::move(a.ch_lo);
      r.channel_hi = std::move(a.ch_hi);
      for (size_t c = 0; c < r.channel_lo.size(); ++c) {
        if (r.channel_lo[c] > r.channel_hi[c]) r.channel_lo[c] = r.channel_hi[c] = 0;
      }
    }
    ranges[name] = std::move(r);
  }
  return ranges;
}

}  // namespace sq
