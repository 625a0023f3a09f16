#include "core/verify/verify.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <set>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/file_util.h"
#include "core/verify/tensor_file.h"

namespace sq {
namespace {

constexpr char kVerificationFailedUrl[] = "type.sq/verification-failed";

absl::Status Failed(absl::string_view message) {
  absl::Status s = absl::FailedPreconditionError(message);
  s.SetPayload(kVerificationFailedUrl, absl::Cord("1"));
  return s;
}

// Open dims: {first axis, other axes}.
struct DimPolicy {
  int64_t batch, other;
};

// What MakeRandomInputs needs of `graph` (inputs, Gather nodes, initializer names and dims;
// no weight bytes), with every open dim of the inputs set by `policy`.
onnx::GraphProto InputSkeleton(const onnx::GraphProto& graph, DimPolicy policy) {
  onnx::GraphProto g;
  for (const onnx::TensorProto& t : graph.initializer()) {
    onnx::TensorProto* h = g.add_initializer();
    h->set_name(t.name());
    *h->mutable_dims() = t.dims();
  }
  for (const onnx::NodeProto& n : graph.node()) {
    if (n.op_type() == "Gather") *g.add_node() = n;
  }
  for (const onnx::ValueInfoProto& vi : graph.input()) {
    onnx::ValueInfoProto* v = g.add_input();
    *v = vi;
    if (!v->type().has_tensor_type() || !v->type().tensor_type().has_shape()) continue;
    auto* dims = v->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim();
    for (int k = 0; k < dims->size(); ++k) {
      onnx::TensorShapeProto::Dimension* d = dims->Mutable(k);
      if (d->has_dim_value() && d->dim_value() > 0) continue;
      d->set_dim_value(k == 0 ? policy.batch : policy.other);
    }
  }
  return g;
}

std::vector<std::string> FeedNames(const onnx::GraphProto& graph) {
  std::set<std::string> inits;
  for (const auto& t : graph.initializer()) inits.insert(t.name());
  std::vector<std::string> names;
  for (const auto& vi : graph.input()) {
    if (!inits.count(vi.name())) names.push_back(vi.name());
  }
  return names;
}

// A folder beside the output holding the artifact under its final names (the model written
// out, the data file hard-linked to its temporary), removed on destruction.
class PrivateDir {
 public:
  // nullptr when the folder, the link or the write fails (the caller loads from memory).
  static std::unique_ptr<PrivateDir> LinkArtifact(const ArtifactImage& a) {
    if (a.data_location.empty() || a.data_location.find('/') != std::string::npos) return nullptr;
    std::string tmpl = DirName(a.data_path) + "/.sq-verify-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return nullptr;
    std::unique_ptr<PrivateDir> d(new PrivateDir(tmpl, a.name, a.data_location));
    if (::link(a.data_path.c_str(), (tmpl + "/" + a.data_location).c_str()) != 0) return nullptr;
    if (!WriteFileAtomically(d->model_path(), std::string(a.model_bytes)).ok()) return nullptr;
    return d;
  }
  ~PrivateDir() {
    ::unlink(model_path().c_str());
    ::unlink((path_ + "/" + data_name_).c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string model_path() const { return path_ + "/" + model_name_; }

 private:
  PrivateDir(std::string path, std::string model_name, std::string data_name)
      : path_(std::move(path)), model_name_(std::move(model_name)), data_name_(std::move(data_name)) {}
  std::string path_, model_name_, data_name_;
};

bool IsFloat(const OrtTensor& t) { return t.elem_type == 1 || t.elem_type == 10 || t.elem_type == 11 || t.elem_type == 16; }

absl::StatusOr<OutputAgreement> CompareOne(const OrtTensor& a, const OrtTensor& r) {
  OutputAgreement o;
  o.name = r.name;
  o.shape = r.shape;
  if (a.shape != r.shape) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", r.name, " has shape [", absl::StrJoin(a.shape, ","),
                     "] in the artifact but [", absl::StrJoin(r.shape, ","), "] in the FP32 model"));
  }
  if (IsFloat(r) != IsFloat(a)) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", r.name, " changed element type (", r.elem_type, " -> ", a.elem_type, ")"));
  }
  if (!IsFloat(r)) {
    const size_t n = r.i.size();
    size_t equal = 0;
    double max_abs = 0, diff2 = 0, ref2 = 0;
    for (size_t k = 0; k < n && k < a.i.size(); ++k) {
      const double d = static_cast<double>(a.i[k]) - static_cast<double>(r.i[k]);
      equal += d == 0;
      max_abs = std::max(max_abs, std::fabs(d));
      diff2 += d * d;
      ref2 += static_cast<double>(r.i[k]) * static_cast<double>(r.i[k]);
    }
    o.max_abs = max_abs;
    o.rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
    o.agreement = n == 0 ? 1.0 : static_cast<double>(equal) / static_cast<double>(n);
    o.agreement_kind = "equal";
    return o;
  }
  const size_t n = r.f.size();
  double diff2 = 0, ref2 = 0, max_abs = 0;
  int64_t bad = 0;
  for (size_t k = 0; k < n; ++k) {
    const double x = a.f[k], y = r.f[k];
    if (!std::isfinite(y)) continue;  // where the FP32 model is not finite, nothing to compare
    if (!std::isfinite(x)) {
      ++bad;
      continue;
    }
    const double d = x - y;
    diff2 += d * d;
    ref2 += y * y;
    max_abs = std::max(max_abs, std::fabs(d));
  }
  if (bad > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "output ", r.name, " of the artifact holds ", bad,
        " NaN/Inf values where the FP32 model's are finite"));
  }
  o.max_abs = max_abs;
  o.rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  const int64_t last = r.shape.empty() ? 0 : r.shape.back();
  if (last > 1 && n > 0) {
    const size_t rows = n / static_cast<size_t>(last);
    size_t agree = 0;
    for (size_t row = 0; row < rows; ++row) {
      const float* pa = a.f.data() + row * last;
      const float* pr = r.f.data() + row * last;
      agree += (std::max_element(pa, pa + last) - pa) == (std::max_element(pr, pr + last) - pr);
    }
    o.agreement = static_cast<double>(agree) / static_cast<double>(rows);
    o.agreement_kind = "argmax";
  }
  return o;
}

// The artifact's outputs must be finite (used when there is no reference to compare with).
absl::Status CheckFinite(const std::vector<OrtTensor>& outputs) {
  for (const OrtTensor& t : outputs) {
    int64_t bad = 0;
    for (float x : t.f) bad += !std::isfinite(x);
    if (bad > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("output ", t.name, " of the artifact holds ", bad, " NaN/Inf values"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VerifyInputs> PrepareVerifyInputs(const onnx::GraphProto& graph,
                                                 const QuantizeOptions& options) {
  VerifyInputs inputs;
  if (!options.verify) return inputs;
  if (!options.verify_input.empty()) {
    absl::StatusOr<std::vector<OrtTensor>> read = ReadTensorFile(options.verify_input);
    if (!read.ok()) return read.status();
    const std::vector<std::string> feeds = FeedNames(graph);
    std::vector<OrtTensor> tensors = std::move(*read);
    // A .npy carries no name (its stem stands in): it feeds a single-input model.
    const bool unnamed = absl::EndsWith(absl::AsciiStrToLower(options.verify_input), ".npy");
    if (unnamed && feeds.size() == 1 && tensors.size() == 1) tensors[0].name = feeds[0];
    std::set<std::string> given;
    for (const OrtTensor& t : tensors) {
      if (std::find(feeds.begin(), feeds.end(), t.name) == feeds.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--verify-input holds tensor '", t.name, "', which is not an input of the model (inputs: ",
            absl::StrJoin(feeds, ", "), ")"));
      }
      given.insert(t.name);
    }
    for (const std::string& f : feeds) {
      if (!given.count(f)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--verify-input lacks the model's input '", f, "'"));
      }
    }
    inputs.sets.push_back({std::move(tensors), absl::StrCat("file ", BaseName(options.verify_input))});
    return inputs;
  }
  for (DimPolicy policy : {DimPolicy{1, 32}, DimPolicy{1, 1}}) {
    absl::StatusOr<std::vector<OrtTensor>> t =
        MakeRandomInputs(InputSkeleton(graph, policy), kVerifySeed);
    if (!t.ok()) {
      // An input type the generator cannot make (a sequence, a string): nothing to run with.
      inputs.sets.clear();
      return inputs;
    }
    inputs.sets.push_back({std::move(*t), absl::StrCat("seeded (seed ", kVerifySeed, "; open dims ",
                                                        policy.batch, "/", policy.other, ")")});
  }
  return inputs;
}

bool IsVerificationFailure(const absl::Status& status) {
  return status.GetPayload(kVerificationFailedUrl).has_value();
}

absl::StatusOr<std::vector<OutputAgreement>> CompareOutputs(const std::vector<OrtTensor>& artifact,
                                                            const std::vector<OrtTensor>& reference) {
  std::unordered_map<std::string, const OrtTensor*> by_name;
  for (const OrtTensor& t : artifact) by_name[t.name] = &t;
  std::vector<OutputAgreement> out;
  for (const OrtTensor& r : reference) {
    auto it = by_name.find(r.name);
    if (it == by_name.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("output ", r.name, " of the FP32 model is missing from the artifact"));
    }
    absl::StatusOr<OutputAgreement> o = CompareOne(*it->second, r);
    if (!o.ok()) return o.status();
    out.push_back(std::move(*o));
  }
  return out;
}

absl::Status VerifyArtifact(const std::string& input_path, int64_t input_bytes,
                            const ArtifactImage& artifact, const VerifyInputs& inputs,
                            int threads, Verification* out) {
  const auto start = std::chrono::steady_clock::now();
  *out = Verification{};
  out->status = "skipped";
  out->runtime = absl::StrCat("onnxruntime ", OrtVersion());
  auto done = [&](absl::Status s) {
    out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return s;
  };
  if (inputs.sets.empty()) {
    out->note = "the graph takes inputs no generator can make (not tensors of numbers); pass "
                "--verify-input";
    return done(absl::OkStatus());
  }
  if (artifact.total_bytes > kVerifyArtifactMaxBytes) {
    out->note = absl::StrCat("the artifact (", artifact.total_bytes, " bytes) is larger than ",
                             kVerifyArtifactMaxBytes, " bytes: not loaded");
    return done(absl::OkStatus());
  }
  OrtRunOptions run;
  run.intra_op_threads = std::max(1, threads);
  const std::string input_name = BaseName(input_path);

  // The FP32 reference, with the first input set it runs on.
  const VerifyInputs::Set* chosen = &inputs.sets.front();
  std::vector<OrtTensor> reference;
  std::string reference_error;
  if (input_bytes > kVerifyReferenceMaxBytes) {
    reference_error = absl::StrCat("the FP32 model (", input_bytes, " bytes) is larger than ",
                                   kVerifyReferenceMaxBytes, " bytes: not run");
  } else {
    OrtModelSource source;
    source.path = input_path;
    for (const VerifyInputs::Set& set : inputs.sets) {
      absl::StatusOr<std::vector<OrtTensor>> r = RunOrt(source, set.tensors, run);
      if (r.ok()) {
        reference = std::move(*r);
        chosen = &set;
        out->reference_ran = true;
        break;
      }
      if (reference_error.empty()) {
        // Users see the input's name, never where the server keeps it.
        reference_error = absl::StrReplaceAll(r.status().message(), {{input_path, input_name}});
      }
    }
    if (out->reference_ran) {
      reference_error.clear();
    } else {
      reference_error = absl::StrCat("the FP32 model does not run in ONNX Runtime: ", reference_error);
    }
  }

  // The artifact, before anything is visible under the output names. With a data file:
  // the model and a hard link to the data file's temporary in a private folder beside it,
  // loaded by path so that ONNX Runtime maps the weights instead of copying them (on the
  // 1B scale model: 2.3 GB peak instead of 5.9 GB from memory); the folder goes when done.
  // Without one, or where links are refused, from memory.
  std::unique_ptr<MappedFile> data;
  std::unique_ptr<PrivateDir> dir;
  OrtModelSource source;
  source.path = artifact.name;
  source.bytes = artifact.model_bytes;
  if (!artifact.data_path.empty()) {
    dir = PrivateDir::LinkArtifact(artifact);
    if (dir != nullptr) {
      source.path = dir->model_path();
      source.bytes = {};
    } else {
      absl::StatusOr<std::unique_ptr<MappedFile>> mapped = MappedFile::Open(artifact.data_path);
      if (!mapped.ok()) return done(mapped.status());
      data = std::move(*mapped);
      source.external_files.push_back(OrtModelSource::WholeFile(
          artifact.data_location, data->data(), static_cast<size_t>(data->size()), artifact.data_path));
    }
  }
  auto run_artifact = [&](const std::vector<OrtTensor>& tensors) -> absl::StatusOr<std::vector<OrtTensor>> {
    absl::StatusOr<std::vector<OrtTensor>> r = RunOrt(source, tensors, run);
    if (!r.ok() && dir != nullptr) {
      // Users see the artifact's name, not the private folder's path.
      return absl::Status(r.status().code(),
                          absl::StrReplaceAll(r.status().message(), {{dir->path() + "/", ""}}));
    }
    return r;
  };
  absl::StatusOr<std::vector<OrtTensor>> got = run_artifact(chosen->tensors);
  if (!got.ok() && !out->reference_ran) {
    // Without a reference run, another input set may be the one the graph accepts.
    for (const VerifyInputs::Set& set : inputs.sets) {
      if (&set == chosen) continue;
      got = run_artifact(set.tensors);
      if (got.ok()) {
        chosen = &set;
        break;
      }
    }
  }
  out->inputs = chosen->description;
  if (!got.ok()) {
    if (!out->reference_ran) {
      out->note = absl::StrCat(reference_error, "; the artifact does not either: ", got.status().message());
      return done(absl::OkStatus());
    }
    return done(Failed(absl::StrCat(
        "verification: the FP32 model runs in ONNX Runtime ", OrtVersion(), " but the artifact does not: ",
        got.status().message())));
  }
  if (!out->reference_ran) {
    if (absl::Status s = CheckFinite(*got); !s.ok()) {
      return done(Failed(absl::StrCat("verification: ", s.message())));
    }
    out->status = "passed";
    out->note = absl::StrCat(reference_error, "; the artifact loads, runs and gives finite outputs");
    for (const OrtTensor& t : *got) out->outputs.push_back({t.name, t.shape, -1, -1, -1, ""});
    return done(absl::OkStatus());
  }
  absl::StatusOr<std::vector<OutputAgreement>> cmp = CompareOutputs(*got, reference);
  if (!cmp.ok()) {
    return done(Failed(absl::StrCat("verification: ", cmp.status().message())));
  }
  out->outputs = std::move(*cmp);
  out->status = "passed";
  return done(absl::OkStatus());
}

}  // namespace sq
