#include "client/remote_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/quantize_command.h"
#include "core/file_util.h"
#include "core/options.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "client/lib/client.h"

namespace sq::cli {
namespace {

using ::sq::client::IsTerminal;
using ::sq::client::StateName;

using client::SqClient;

const std::set<std::string>& ValueFlags() {
  static const auto* flags = new std::set<std::string>{
      "server", "token", "tls-ca", "tls-cert", "tls-key", "o", "output", "bits", "granularity", "block-size", "split",
      "form", "format", "target", "ort-accuracy-level", "nbits-min-elements", "cluster-scope", "kmeans", "boundaries", "rounding", "scale-type", "exclude", "exclude-op", "layer", "initializer-inputs", "quantize-gather", "bpw-budget", "min-elements",
      "target-opset", "threads", "idempotency-key", "verify", "verify-input", "activations", "calibration",
      "calibration-method", "calibration-percentile", "input-range", "split-activations", "limit", "state", "timeout"};
  return *flags;
}
const std::set<std::string>& BoolFlags() {
  static const auto* flags = new std::set<std::string>{
      "json", "detach", "symmetric", "external-data", "tls", "help", "h", "quiet", "q"};
  return *flags;
}

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> values;
  std::set<std::string> bools;

  bool Has(const std::string& f) const { return bools.count(f) || values.count(f); }
  std::string Get(const std::string& f, const std::string& fallback = "") const {
    auto it = values.find(f);
    return it == values.end() || it->second.empty() ? fallback : it->second.back();
  }
};

// --flag value, --flag=value, -o value, booleans, positionals; "--" ends flags.
absl::Status Parse(const std::vector<std::string>& in, Args* out) {
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& a = in[i];
    if (a == "--") {
      out->positional.insert(out->positional.end(), in.begin() + i + 1, in.end());
      break;
    }
    if (a.size() < 2 || a[0] != '-') {
      out->positional.push_back(a);
      continue;
    }
    std::string name = a.substr(a[1] == '-' ? 2 : 1);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    for (char& c : name) c = c == '_' ? '-' : c;
    if (ValueFlags().count(name)) {
      if (!has_value) {
        if (i + 1 >= in.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = in[++i];
      }
      out->values[name].push_back(value);
    } else if (BoolFlags().count(name)) {
      if (has_value && value != "true" && value != "1") {
        if (value == "false" || value == "0") continue;
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      out->bools.insert(name);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", a, "' (see sqctl --help)"));
    }
  }
  return absl::OkStatus();
}

int ExitCodeFor(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kOk: return kExitRemoteOk;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: return kExitAuth;
    case absl::StatusCode::kNotFound: return kExitNotFound;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return kExitRemoteUsage;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted: return kExitJobFailed;
    default: return kExitUnavailable;  // UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...
  }
}

const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable: return "server unavailable";
    case absl::StatusCode::kUnauthenticated: return "not authenticated";
    case absl::StatusCode::kNotFound: return "not found";
    case absl::StatusCode::kResourceExhausted: return "server at capacity";
    case absl::StatusCode::kDeadlineExceeded: return "timed out";
    default: return nullptr;
  }
}

int Fail(const absl::Status& st) {
  std::string msg(st.message());
  const char* what = CodeName(st.code());
  if (what && msg.find(what) == std::string::npos) msg = absl::StrCat(what, ": ", msg);
  std::fprintf(stderr, "sqctl: %s\n", msg.c_str());
  return ExitCodeFor(st);
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "sqctl: %s\n", msg.c_str());
  return kExitRemoteUsage;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;  // stable keys for scripts
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}



std::string Human(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string Progress(const v1::Job& j) {
  std::string s = StateName(j.state());
  if (j.state() == v1::JOB_STATE_RUNNING) {
    absl::StrAppend(&s, " ", j.progress().stage());
    if (j.progress().layer_count() > 0) {
      absl::StrAppend(&s, " ", j.progress().layer_index(), "/", j.progress().layer_count());
    }
  }
  return s;
}

void PrintJob(const v1::Job& j) {
  std::printf("job       %s\nstate     %s\nmodel     %s\ncreated   %s\n", j.job_id().c_str(),
              Progress(j).c_str(), j.model_id().c_str(),
              google::protobuf::util::TimeUtil::ToString(j.create_time()).c_str());
  if (j.has_end_time()) {
    std::printf("ended     %s\n", google::protobuf::util::TimeUtil::ToString(j.end_time()).c_str());
  }
  if (j.has_error() && !j.error().message().empty()) std::printf("error     %s\n", j.error().message().c_str());
  if (j.state() == v1::JOB_STATE_SUCCEEDED) {
    const auto& s = j.summary();
    std::printf("size      %s -> %s (%.2fx)\nlayers    %d found, %d quantized, %d split\n"
                "sqnr      %.2f dB plain, %.2f dB split (mean)\n"
                "bpw       %.2f stored bits per weight in the quantized layers, %.2f over the artifact\n",
                Human(s.input_bytes()).c_str(), Human(s.output_bytes()).c_str(), s.compression_ratio(),
                s.layers_found(), s.layers_quantized(), s.layers_split(), s.mean_sqnr_plain_db(),
                s.mean_sqnr_split_db(), s.quantized_bits_per_weight(), s.artifact_bits_per_weight());
    for (const auto& f : j.artifacts()) {
      std::printf("artifact  %s (%s, sha256 %s)\n", f.name().c_str(), Human(f.size()).c_str(), f.sha256().c_str());
    }
  }
}

// A progress bar on stderr, only when stderr is a terminal.
client::ProgressFn Bar(const std::string& label, bool quiet) {
  if (quiet || !isatty(STDERR_FILENO)) return nullptr;
  return [label](int64_t done, int64_t total) {
    int pct = total > 0 ? static_cast<int>(100 * done / total) : 100;
    int filled = pct * 30 / 100;
    std::fprintf(stderr, "\r%-9s [%s%s] %3d%% %s / %s\033[K", label.c_str(), std::string(filled, '#').c_str(),
                 std::string(30 - filled, '.').c_str(), pct, Human(done).c_str(), Human(total).c_str());
    if (done >= total) std::fputc('\n', stderr);
    std::fflush(stderr);
  };
}

// --timeout: "90s", "10m", "1h30m" or plain seconds; zero = none. The deadline of every
// unary call, and how long submit and watch wait for the job (which goes on on the server
// regardless). Downloads are not bounded (they resume).
absl::StatusOr<absl::Duration> Timeout(const Args& a) {
  if (!a.Has("timeout")) return absl::ZeroDuration();
  const std::string v = a.Get("timeout");
  absl::Duration d;
  double seconds;
  if (absl::SimpleAtod(v, &seconds) && seconds >= 0 && seconds < 1e9) return absl::Seconds(seconds);
  if (absl::ParseDuration(v, &d) && d >= absl::ZeroDuration()) return d;
  return absl::InvalidArgumentError(
      absl::StrCat("--timeout wants a duration such as 90s or 10m, got '", v, "'"));
}

absl::StatusOr<std::unique_ptr<SqClient>> Connect(const Args& a) {
  client::ClientOptions o;
  auto timeout = Timeout(a);
  if (!timeout.ok()) return timeout.status();
  if (*timeout > absl::ZeroDuration()) o.unary_timeout = *timeout;
  const char* env_server = std::getenv("SQ_SERVER");
  const char* env_token = std::getenv("SQ_TOKEN");
  o.target = a.Get("server", env_server && *env_server ? env_server : "127.0.0.1:50051");
  o.token = a.Get("token", env_token ? env_token : "");
  o.tls_ca_file = a.Get("tls-ca");
  o.tls_cert_file = a.Get("tls-cert");
  o.tls_key_file = a.Get("tls-key");
  o.tls = a.Has("tls") || !o.tls_ca_file.empty();
  return SqClient::Create(o);
}

// submit's --calibration: a file is one sample; a directory gives its .npy/.npz/.pb files in
// name order (what the engine reads of a directory). Each is uploaded with the model under
// its file name. A subdirectory (the ONNX test-data layout, one sample of .pb files) cannot
// be named as one uploaded file and is refused; sqctl quantize reads it locally.
absl::StatusOr<std::vector<client::LocalFile>> CalibrationFiles(const Args& a) {
  namespace fs = std::filesystem;
  std::vector<client::LocalFile> out;
  auto it = a.values.find("calibration");
  if (it == a.values.end()) return out;
  auto is_tensor_file = [](const fs::path& p) {
    const std::string ext = absl::AsciiStrToLower(p.extension().string());
    return ext == ".npy" || ext == ".npz" || ext == ".pb";
  };
  for (const std::string& path : it->second) {
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {
      if (!fs::is_regular_file(path, ec)) {
        return absl::NotFoundError(absl::StrCat("--calibration ", path, " does not exist"));
      }
      out.push_back({path, BaseName(path)});
      continue;
    }
    std::vector<fs::path> inside;
    for (fs::directory_iterator d(path, ec), end; !ec && d != end; d.increment(ec)) {
      if (d->is_directory()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--calibration ", path, ": ", d->path().filename().string(),
            " is a directory; sqctl submit uploads one sample per file (.npy, .npz, .pb), so "
            "samples of .pb files in subdirectories need sqctl quantize"));
      }
      if (d->is_regular_file() && is_tensor_file(d->path())) inside.push_back(d->path());
    }
    if (ec) return absl::InvalidArgumentError(absl::StrCat("--calibration: cannot list ", path, ": ", ec.message()));
    if (inside.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--calibration ", path, " holds no .npy, .npz or .pb file"));
    }
    std::sort(inside.begin(), inside.end());
    for (const fs::path& f : inside) out.push_back({f.string(), f.filename().string()});
  }
  return out;
}

absl::Status BuildOptions(const Args& a, v1::QuantizeOptions* o) {
  auto integer = [&](const char* flag, int64_t lo, int64_t hi, int64_t* out) -> absl::Status {
    std::string v = a.Get(flag);
    if (!absl::SimpleAtoi(v, out) || *out < lo || *out > hi) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " wants an integer in [", lo, ", ", hi,
                                                     "], got '", v, "'"));
    }
    return absl::OkStatus();
  };
  int64_t n = 0;
  if (a.Has("bits")) {
    if (auto st = integer("bits", 2, 8, &n); !st.ok()) return st;
    o->set_bits(static_cast<int>(n));
  }
  if (a.Has("granularity")) {
    std::string g = a.Get("granularity");
    if (g == "tensor") o->set_granularity(v1::GRANULARITY_TENSOR);
    else if (g == "channel") o->set_granularity(v1::GRANULARITY_CHANNEL);
    else if (g == "block") o->set_granularity(v1::GRANULARITY_BLOCK);
    else return absl::InvalidArgumentError("--granularity wants tensor, channel or block, got '" + g + "'");
  }
  if (a.Has("block-size")) {
    if (auto st = integer("block-size", 2, 1 << 16, &n); !st.ok()) return st;
    o->set_block_size(static_cast<int>(n));
  }
  if (a.Has("symmetric")) o->set_symmetric(true);
  if (a.Has("split")) {
    std::string s = a.Get("split");
    if (s == "on" || s == "true") o->set_split_mode(v1::SPLIT_MODE_ON);
    else if (s == "off" || s == "false") o->set_split_mode(v1::SPLIT_MODE_OFF);
    else if (s == "auto") o->set_split_mode(v1::SPLIT_MODE_AUTO);
    else return absl::InvalidArgumentError("--split wants on, off or auto, got '" + s + "'");
  }
  if (a.Has("form")) {
    std::string f = a.Get("form");
    if (f == "auto") o->set_form(v1::SPLIT_FORM_UNSPECIFIED);
    else if (f == "branches") o->set_form(v1::SPLIT_FORM_BRANCHES);
    else if (f == "folded") o->set_form(v1::SPLIT_FORM_FOLDED);
    else if (f == "compact") o->set_form(v1::SPLIT_FORM_COMPACT);
    else if (f == "outer8") o->set_form(v1::SPLIT_FORM_OUTER8);
    else return absl::InvalidArgumentError("--form wants auto, branches, folded, compact or outer8, got '" + f + "'");
  }
  {
    // Same rules as sqctl quantize: --format qdq is --target qdq; both given must agree.
    std::optional<std::string> format, target;
    if (a.Has("format")) format = a.Get("format");
    if (a.Has("target")) target = a.Get("target");
    QuantizeOptions resolved;
    // --activations alone means --target qdq, as for sqctl quantize.
    if (!format && !target && a.Has("activations") && a.Get("activations") != "off") target = "qdq";
    if (absl::Status s = ResolveTargetFlags(target, format, &resolved); !s.ok()) return s;
    if (format || target) {
      switch (resolved.format) {
        case OutputFormat::kQdq: o->set_format(v1::OUTPUT_FORMAT_QDQ); break;
        case OutputFormat::kFake: o->set_format(v1::OUTPUT_FORMAT_FAKE); break;
        case OutputFormat::kSplit: o->set_format(v1::OUTPUT_FORMAT_SPLIT); break;
      }
      if (resolved.format == OutputFormat::kQdq) {
        o->set_target(resolved.target == Target::kOrtCpu    ? v1::TARGET_ORT_CPU
                      : resolved.target == Target::kPortable ? v1::TARGET_PORTABLE
                                                             : v1::TARGET_QDQ);
      }
    }
  }
  if (a.Has("nbits-min-elements")) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(a.Get("nbits-min-elements"), &v)) {
      return absl::InvalidArgumentError("--nbits-min-elements wants a count");
    }
    o->set_nbits_min_elements(v);
  }
  if (a.Has("ort-accuracy-level")) {
    int level = 0;
    if (!absl::SimpleAtoi(a.Get("ort-accuracy-level"), &level)) {
      return absl::InvalidArgumentError("--ort-accuracy-level wants 0, 1 or 4");
    }
    o->set_ort_accuracy_level(level);
  }
  if (a.Has("cluster-scope")) {
    std::string c = a.Get("cluster-scope");
    if (c == "auto") o->set_cluster_scope(v1::CLUSTER_SCOPE_AUTO);
    else if (c == "tensor") o->set_cluster_scope(v1::CLUSTER_SCOPE_TENSOR);
    else if (c == "channel") o->set_cluster_scope(v1::CLUSTER_SCOPE_CHANNEL);
    else return absl::InvalidArgumentError("--cluster-scope wants auto, tensor or channel, got '" + c + "'");
  }
  if (auto it = a.values.find("exclude"); it != a.values.end()) {
    for (const auto& v : it->second) o->add_exclude_name_patterns(v);
  }
  if (a.Has("initializer-inputs")) {
    std::string v = a.Get("initializer-inputs");
    if (v != "weights" && v != "inputs") {
      return absl::InvalidArgumentError("--initializer-inputs wants weights or inputs, got '" + v + "'");
    }
    o->set_initializer_inputs_are_weights(v == "weights");
  }
  if (a.Has("bpw-budget")) {
    double v = 0;
    if (!absl::SimpleAtod(a.Get("bpw-budget"), &v)) {
      return absl::InvalidArgumentError("--bpw-budget wants bits per weight, e.g. 2.5");
    }
    o->set_bpw_budget(v);
  }
  if (a.Has("quantize-gather")) {
    std::string v = a.Get("quantize-gather");
    if (v != "on" && v != "off") {
      return absl::InvalidArgumentError("--quantize-gather wants on or off, got '" + v + "'");
    }
    o->set_quantize_gather(v == "on");
  }
  if (auto it = a.values.find("layer"); it != a.values.end()) {
    for (const auto& v : it->second) {
      // Checked here for a clear CLI error; the server validates again at submit.
      if (auto lo = ParseLayerOverride(v); !lo.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--layer: ", lo.status().message()));
      }
      o->add_layer_overrides(v);
    }
  }
  if (auto it = a.values.find("exclude-op"); it != a.values.end()) {
    for (const auto& v : it->second) o->add_exclude_op_types(v);
  }
  if (a.Has("min-elements")) {
    if (auto st = integer("min-elements", 0, int64_t{1} << 40, &n); !st.ok()) return st;
    o->set_min_weight_elements(n);
  }
  if (a.Has("target-opset")) {
    if (auto st = integer("target-opset", 0, 1000, &n); !st.ok()) return st;
    o->set_target_opset(static_cast<int>(n));
  }
  if (a.Has("threads")) {
    if (auto st = integer("threads", 0, 1024, &n); !st.ok()) return st;
    o->set_threads(static_cast<int>(n));
  }
  if (a.Has("external-data")) o->set_external_data(true);
  if (a.Has("verify")) {
    std::string v = a.Get("verify");
    if (v != "on" && v != "off") return absl::InvalidArgumentError("--verify wants on or off, got '" + v + "'");
    o->set_verify(v == "on");
  }
  if (a.Has("verify-input")) {
    if (o->has_verify() && !o->verify()) {
      return absl::InvalidArgumentError("--verify-input is given but --verify is off");
    }
    // Uploaded beside the model under its file name (RunSubmit).
    o->set_verify_input(BaseName(a.Get("verify-input")));
  }
  if (a.Has("activations")) {
    auto t = ParseActivationType(a.Get("activations"));
    if (!t.ok()) return t.status();
    o->set_activations(*t == ActivationType::kInt8    ? v1::ACTIVATION_TYPE_INT8
                       : *t == ActivationType::kUint8 ? v1::ACTIVATION_TYPE_UINT8
                                                      : v1::ACTIVATION_TYPE_UNSPECIFIED);
  }
  if (a.Has("calibration-method")) {
    auto m = ParseCalibrationMethod(a.Get("calibration-method"));
    if (!m.ok()) return m.status();
    o->set_calibration_method(*m == CalibrationMethod::kMinMax ? v1::CALIBRATION_METHOD_MINMAX
                                                               : v1::CALIBRATION_METHOD_PERCENTILE);
  }
  if (a.Has("calibration-percentile")) {
    double p = 0;
    if (!absl::SimpleAtod(a.Get("calibration-percentile"), &p)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--calibration-percentile wants a percentile in (50, 100], e.g. 99.99, got '", a.Get("calibration-percentile"), "'"));
    }
    o->set_calibration_percentile(p);
  }
  if (auto it = a.values.find("input-range"); it != a.values.end()) {
    for (const auto& v : it->second) {
      // Checked here for a clear CLI error; the server validates again at submit.
      if (auto r = ParseInputRange(v); !r.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--input-range: ", r.status().message()));
      }
      o->add_input_ranges(v);
    }
  }
  if (a.Has("split-activations")) {
    auto m = ParseActivationSplit(a.Get("split-activations"));
    if (!m.ok()) return m.status();
    o->set_split_activations(*m == ActivationSplit::kRange        ? v1::ACTIVATION_SPLIT_RANGE
                             : *m == ActivationSplit::kPositional ? v1::ACTIVATION_SPLIT_POSITIONAL
                                                                  : v1::ACTIVATION_SPLIT_UNSPECIFIED);
  }
  if (a.Has("calibration")) {
    // Refused before anything is uploaded (the server would refuse it at submit).
    if (o->activations() == v1::ACTIVATION_TYPE_UNSPECIFIED &&
        o->split_activations() != v1::ACTIVATION_SPLIT_RANGE) {
      return absl::InvalidArgumentError(
          "--calibration is given but nothing reads it (--activations is off and --split-activations is not range)");
    }
    // Uploaded beside the model under their file names (RunSubmit).
    auto files = CalibrationFiles(a);
    if (!files.ok()) return files.status();
    for (const client::LocalFile& f : *files) o->add_calibration_inputs(f.name);
  }
  if (a.Has("kmeans")) {
    std::string k = a.Get("kmeans");
    if (k != "exact" && k != "reference") {
      return absl::InvalidArgumentError("--kmeans wants exact or reference, got '" + k + "'");
    }
    o->set_reference_kmeans(k == "reference");
  }
  if (a.Has("boundaries")) {
    std::string b = a.Get("boundaries");
    if (b != "kmeans" && b != "quant" && b != "auto") {
      return absl::InvalidArgumentError("--boundaries wants auto, kmeans or quant, got '" + b + "'");
    }
    if (b != "auto") o->set_quant_aware_boundaries(b == "quant");
  }
  if (a.Has("rounding")) {
    auto r = ParseRounding(a.Get("rounding"));
    if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat("--rounding: ", r.status().message()));
    o->set_rounding(*r == Rounding::kBalanced ? v1::ROUNDING_BALANCED : v1::ROUNDING_NEAREST);
  }
  if (a.Has("scale-type")) {
    auto t = ParseScaleType(a.Get("scale-type"));
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("--scale-type: ", t.status().message()));
    o->set_scale_type(*t == ScaleType::kAuto      ? v1::SCALE_TYPE_AUTO
                      : *t == ScaleType::kFloat16 ? v1::SCALE_TYPE_FLOAT16
                                                  : v1::SCALE_TYPE_FLOAT32);
  }
  return absl::OkStatus();
}

// Follows a job to its end, showing progress on a terminal (one line per change otherwise).
absl::StatusOr<v1::Job> Follow(SqClient& c, const std::string& id, bool quiet,
                               absl::Duration timeout) {
  const bool tty = isatty(STDERR_FILENO);
  std::string last;
  auto job = c.Watch(id, [&](const v1::Job& j) {
    if (quiet) return;
    std::string line = Progress(j);
    if (line == last) return;
    last = line;
    if (tty) {
      std::fprintf(stderr, "\r%s\033[K", line.c_str());
      if (IsTerminal(j.state())) std::fputc('\n', stderr);
    } else if (j.state() != v1::JOB_STATE_RUNNING || j.progress().layer_count() == 0 ||
               j.progress().stage() != "transform") {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }, timeout);
  if (absl::IsDeadlineExceeded(job.status())) {
    if (tty && !quiet) std::fputc('\n', stderr);
    return absl::DeadlineExceededError(absl::StrCat(
        "job ", id, " did not finish within --timeout; it goes on on the server (sqctl watch ", id, ")"));
  }
  return job;
}

int JobOutcome(const v1::Job& j) {
  if (j.state() == v1::JOB_STATE_SUCCEEDED) return kExitRemoteOk;
  std::fprintf(stderr, "sqctl: job %s %s: %s\n", j.job_id().c_str(),
               j.state() == v1::JOB_STATE_CANCELLED ? "was cancelled" : "failed", j.error().message().c_str());
  return kExitJobFailed;
}

int NeedPositional(const Args& a, size_t n, const char* what) {
  if (a.positional.size() != n) return Usage(absl::StrCat("expected ", what));
  return -1;
}

int RunSubmit(SqClient& c, const Args& a) {
  if (int rc = NeedPositional(a, 1, "one model file: sqctl submit MODEL.onnx [options]"); rc >= 0) return rc;
  v1::SubmitJobRequest req;
  if (absl::Status st = BuildOptions(a, req.mutable_options()); !st.ok()) {
    return absl::IsNotFound(st) ? Fail(st) : Usage(std::string(st.message()));  // a missing file: exit 4
  }
  std::string output = a.Get("o", a.Get("output"));
  bool quiet = a.Has("quiet") || a.Has("q") || a.Has("json");
  auto files = SqClient::ModelFiles(a.positional[0]);
  if (!files.ok()) return Fail(files.status());
  if (a.Has("verify-input")) {
    // The verification inputs travel with the model, as one more file of the upload.
    client::LocalFile in{a.Get("verify-input"), req.options().verify_input()};
    for (const client::LocalFile& f : *files) {
      if (f.name == in.name) {
        return Usage("--verify-input " + in.name + " has the name of a file of the model; rename it");
      }
    }
    files->push_back(std::move(in));
  }
  {
    // The calibration samples travel with the model too, each under its file name. A name
    // met twice is one upload only when both are the same file (say, also --verify-input).
    auto calibration = CalibrationFiles(a);
    if (!calibration.ok()) return Fail(calibration.status());
    const size_t model_files = files->size() - (a.Has("verify-input") ? 1 : 0);
    for (client::LocalFile& f : *calibration) {
      bool duplicate = false;
      for (size_t k = 0; k < files->size(); ++k) {
        if ((*files)[k].name != f.name) continue;
        std::error_code ec;
        if (k < model_files || !std::filesystem::equivalent((*files)[k].path, f.path, ec)) {
          return Usage("--calibration " + f.path + ": its name " + f.name + " is taken by " + (*files)[k].path +
                       " in the same upload; rename one");
        }
        duplicate = true;
      }
      if (!duplicate) files->push_back(std::move(f));
    }
  }
  auto up = c.Upload(*files, Bar("upload", quiet));
  if (!up.ok()) return Fail(up.status());
  req.set_model(up->name());
  req.set_idempotency_key(a.Get("idempotency-key"));
  auto job = c.Submit(req);
  if (!job.ok()) return Fail(job.status());
  if (a.Has("detach")) {
    if (a.Has("json")) std::printf("%s\n", ToJson(*job).c_str());
    else std::printf("%s\n", job->job_id().c_str());
    return kExitRemoteOk;
  }
  if (!quiet) std::fprintf(stderr, "job %s\n", job->job_id().c_str());
  auto done = Follow(c, job->job_id(), quiet, *Timeout(a));
  if (!done.ok()) return Fail(done.status());
  if (int rc = JobOutcome(*done); rc != kExitRemoteOk) return rc;
  if (!output.empty()) {
    if (absl::Status st = c.DownloadAll(*done, output, Bar("download", quiet)); !st.ok()) return Fail(st);
  }
  if (a.Has("json")) {
    std::printf("%s\n", ToJson(*done).c_str());
  } else if (!a.Has("quiet") && !a.Has("q")) {
    PrintJob(*done);
    if (!output.empty()) std::printf("saved     %s\n", output.c_str());
    else std::printf("download with: sqctl download %s -o OUT.onnx\n", done->job_id().c_str());
  }
  return kExitRemoteOk;
}

int RunInspect(SqClient& c, const Args& a) {
  if (int rc = NeedPositional(a, 1, "one model file: sqctl inspect MODEL.onnx"); rc >= 0) return rc;
  auto up = c.UploadModel(a.positional[0], Bar("upload", a.Has("json")));
  if (!up.ok()) return Fail(up.status());
  auto info = c.Inspect(up->model_id());
  if (!info.ok()) return Fail(info.status());
  if (a.Has("json")) {
    std::printf("%s\n", ToJson(*info).c_str());
    return kExitRemoteOk;
  }
  std::printf("model     %s\nir        %lld\nopset     %d\nsize      %s (weights %s)%s\n", up->model_id().c_str(),
              static_cast<long long>(info->ir_version()), info->opset(), Human(info->model_bytes()).c_str(),
              Human(info->weight_bytes()).c_str(), info->uses_external_data() ? ", external data" : "");
  std::vector<std::string> ops;
  for (const auto& [op, n] : info->op_histogram()) ops.push_back(absl::StrCat(op, "=", n));
  std::sort(ops.begin(), ops.end());
  std::printf("ops       %s\n", absl::StrJoin(ops, " ").c_str());
  if (info->unsupported_ops_size() > 0) {
    std::printf("unsupported (qdq) %s\n", absl::StrJoin(info->unsupported_ops(), " ").c_str());
  }
  std::map<int, int64_t> est(info->estimated_output_bytes().begin(), info->estimated_output_bytes().end());
  for (const auto& [bits, bytes] : est) std::printf("estimate  %d-bit -> %s\n", bits, Human(bytes).c_str());
  std::printf("layers    %d quantizable\n", info->layers_size());
  for (const auto& l : info->layers()) {
    std::vector<std::string> dims;
    for (int64_t d : l.shape()) dims.push_back(std::to_string(d));
    std::printf("  %-40s %-14s [%s]\n", l.name().c_str(), l.op_type().c_str(), absl::StrJoin(dims, "x").c_str());
  }
  return kExitRemoteOk;
}

int RunList(SqClient& c, const Args& a) {
  if (int rc = NeedPositional(a, 0, "no arguments: sqctl list"); rc >= 0) return rc;
  std::vector<v1::JobState> states;
  if (auto it = a.values.find("state"); it != a.values.end()) {
    for (const std::string& name : it->second) {
      v1::JobState s;
      if (!v1::JobState_Parse("JOB_STATE_" + absl::AsciiStrToUpper(name), &s) ||
          s == v1::JOB_STATE_UNSPECIFIED) {
        return Usage("--state wants queued, running, succeeded, failed or cancelled, got '" + name + "'");
      }
      states.push_back(s);
    }
  }
  int64_t limit = 0;
  if (a.Has("limit") && (!absl::SimpleAtoi(a.Get("limit"), &limit) || limit < 1)) {
    return Usage("--limit wants a positive count, got '" + a.Get("limit") + "'");
  }
  auto jobs = c.List(states, static_cast<int>(limit));
  if (!jobs.ok()) return Fail(jobs.status());
  if (a.Has("json")) {
    v1::ListJobsResponse r;
    for (const auto& j : *jobs) *r.add_jobs() = j;
    std::printf("%s\n", ToJson(r).c_str());
    return kExitRemoteOk;
  }
  std::printf("%-32s  %-24s  %-20s  %s\n", "JOB", "STATE", "CREATED", "MODEL");
  for (const auto& j : *jobs) {
    std::string created = google::protobuf::util::TimeUtil::ToString(j.create_time()).substr(0, 19);
    std::printf("%-32s  %-24s  %-20s  %s\n", j.job_id().c_str(), Progress(j).c_str(), created.c_str(),
                j.model_id().substr(0, 12).c_str());
  }
  return kExitRemoteOk;
}

int RunModels(SqClient& c, const Args& a) {
  if (int rc = NeedPositional(a, 0, "no arguments: sqctl models"); rc >= 0) return rc;
  int64_t limit = 0;
  if (a.Has("limit") && (!absl::SimpleAtoi(a.Get("limit"), &limit) || limit < 1)) {
    return Usage("--limit wants a positive count, got '" + a.Get("limit") + "'");
  }
  auto models = c.ListModels(static_cast<int>(limit));
  if (!models.ok()) return Fail(models.status());
  if (a.Has("json")) {
    v1::ListModelsResponse r;
    for (const auto& m : *models) *r.add_models() = m;
    std::printf("%s\n", ToJson(r).c_str());
    return kExitRemoteOk;
  }
  std::printf("%-64s  %10s  %-20s  %s\n", "MODEL", "MB", "LAST USED", "FILE");
  for (const auto& m : *models) {
    std::string used = google::protobuf::util::TimeUtil::ToString(m.last_use_time()).substr(0, 19);
    std::printf("%-64s  %10.1f  %-20s  %s\n", m.model_id().c_str(), m.size_bytes() / 1e6, used.c_str(),
                m.files_size() > 0 ? m.files(0).name().c_str() : "");
  }
  return kExitRemoteOk;
}

}  // namespace

bool IsRemoteCommand(const std::string& command) {
  static const std::set<std::string> kCommands{"submit", "status", "watch", "list", "cancel", "delete",
                                               "models", "delete-model", "download", "report", "inspect", "health"};
  return kCommands.count(command) > 0;
}

std::string RemoteUsage() {
  return R"(  submit MODEL [options] [-o OUT] [--detach]   upload, quantize on the server, download
                                    (engine options as for quantize: --bits --granularity
                                    --block-size --symmetric --split --layer --target --form --format --ort-accuracy-level --nbits-min-elements --quantize-gather --bpw-budget --exclude
                                    --exclude-op --min-elements --target-opset --threads
                                    --cluster-scope --kmeans --boundaries --rounding --scale-type
                                    --external-data
                                    --verify --verify-input (the file is uploaded with the
                                    model) --activations --calibration (files, or a directory's
                                    files, uploaded with the model; no subdirectories)
                                    --calibration-method --calibration-percentile
                                    --input-range --split-activations; --idempotency-key K)
  status JOB                        a job's state, progress, error, sizes
  watch JOB                         follow a job until it ends
  list                              all jobs, newest first
  cancel JOB                        stop a queued or running job
  delete JOB                        remove a finished job and its artifacts
  models [--limit N]                stored models: id, size, last use, file
  delete-model MODEL_ID             remove an uploaded model (finished jobs keep their output)
  download JOB -o FILE              fetch the output (resumes from FILE.partial)
  report JOB [--json]               the per-layer report
  inspect MODEL                     upload and describe a model (ops, layers, estimates)
  health                            SERVING / NOT_SERVING
  JOB: a job id or its resource name jobs/ID; MODEL_ID: a model id or models/ID
  common: --server HOST:PORT --token T (or $SQ_TOKEN) --tls --tls-ca FILE
          --tls-cert FILE --tls-key FILE (a client certificate, for mutual TLS) --json
          --timeout D (90s, 10m: each call, and how long submit/watch wait for the job)
  exit codes: 0 ok, 1 job failed/cancelled, 2 usage, 3 server unavailable, 4 not found, 5 auth
)";
}

std::string RemoteCommandHelp(const std::string& command) {
  static const auto* kHelp = new std::map<std::string, std::string>{
      {"submit",
       "usage: sqctl submit MODEL.onnx [options] [-o OUT.onnx] [--detach] [--idempotency-key K]\n\n"
       "Uploads MODEL and the external data files it references (refusing any outside its\n"
       "folder), submits a job, follows it and downloads the output to -o. --detach prints the\n"
       "job id and returns at once. --idempotency-key K: a second submit with K returns the\n"
       "first job. --verify-input FILE is uploaded with the model, and so is each --calibration\n"
       "file (a directory: its .npy/.npz/.pb files, by name; subdirectories of .pb files are\n"
       "refused here: use sqctl quantize for them).\n\n"
       "Engine options (the same as sqctl quantize):\n"},
      {"status", "usage: sqctl status JOB [--json]\n\nA job's state, progress, error and sizes.\n"},
      {"watch", "usage: sqctl watch JOB [--json]\n\nFollows a job until it ends; exit 1 if it failed or was cancelled.\n"},
      {"list",
       "usage: sqctl list [--state S]... [--limit N] [--json]\n\nJobs this token may see, newest "
       "first (all pages); --state queued|running|succeeded|failed|cancelled (repeatable)\n"
       "filters, --limit N stops after N.\n"},
      {"cancel", "usage: sqctl cancel JOB [--json]\n\nStops a queued or running job.\n"},
      {"delete", "usage: sqctl delete JOB [--json]\n\nRemoves a finished job and its artifacts.\n"},
      {"models",
       "usage: sqctl models [--limit N] [--json]\n\nThe stored models you may use (under per-tenant "
       "tokens: those you uploaded),\nby id: size, last use (retention counts a model's age from it), "
       "main file.\n"},
      {"delete-model",
       "usage: sqctl delete-model MODEL_ID [--json]\n\nRemoves an uploaded model (the id submit and "
       "inspect print,\nor its resource name models/ID). Refused while a queued or running job of yours "
       "uses it;\nfinished jobs keep their artifacts. Under per-tenant tokens it removes your access; "
       "the\nfiles go once no tenant holds the model.\n"},
      {"download",
       "usage: sqctl download JOB -o OUT.onnx [--json]\n\nFetches a succeeded job's output and its "
       "external data beside it; resumes from OUT.onnx.partial and checks SHA-256.\n"},
      {"report", "usage: sqctl report JOB [--json]\n\nThe per-layer report (--json: the full JSON).\n"},
      {"inspect",
       "usage: sqctl inspect MODEL.onnx [--json]\n\nUploads a model and describes it: ops, "
       "quantizable layers, estimated output sizes.\n"},
      {"health", "usage: sqctl health [--json]\n\nSERVING (exit 0) or NOT_SERVING (exit 3).\n"},
  };
  auto it = kHelp->find(command);
  std::string text = it == kHelp->end() ? RemoteUsage() : it->second;
  if (it != kHelp->end() && absl::StrContains(it->second, " JOB ")) {
    text += "JOB: the job id (as submit prints it) or its resource name jobs/ID.\n";
  }
  if (command == "submit") {
    // The engine options block of `sqctl quantize --help`, from its first option line on.
    const std::string q = QuantizeUsage();
    const size_t from = q.find("  --bits");
    if (from != std::string::npos) text += q.substr(from);
  }
  return text +
         "\nConnection: --server HOST:PORT (default $SQ_SERVER or 127.0.0.1:50051), --token T (or\n"
         "$SQ_TOKEN), --tls, --tls-ca FILE, --tls-cert FILE --tls-key FILE (mutual TLS),\n"
         "--timeout D (90s, 10m; each call's deadline, and how long submit/watch wait for the job,\n"
         "which goes on on the server; past it: exit 3).\n"
         "Exit codes: 0 ok, 1 job failed/cancelled, 2 usage, 3 server unavailable, 4 not found, 5 auth.\n";
}

int RunRemoteCommand(const std::string& command, const std::vector<std::string>& argv) {
  // --help first: it must work whatever else is on the line.
  for (const std::string& arg : argv) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(RemoteCommandHelp(command).c_str(), stdout);
      return kExitRemoteOk;
    }
  }
  Args a;
  if (absl::Status st = Parse(argv, &a); !st.ok()) return Usage(std::string(st.message()));
  auto connected = Connect(a);
  if (!connected.ok()) return Fail(connected.status());
  SqClient& c = **connected;
  const bool json = a.Has("json");

  if (command == "submit") return RunSubmit(c, a);
  if (command == "inspect") return RunInspect(c, a);
  if (command == "list") return RunList(c, a);
  if (command == "models") return RunModels(c, a);
  if (command == "health") {
    auto serving = c.Health();
    if (!serving.ok()) return Fail(serving.status());
    std::printf("%s\n", json ? (*serving ? "{\"status\": \"SERVING\"}" : "{\"status\": \"NOT_SERVING\"}")
                             : (*serving ? "SERVING" : "NOT_SERVING"));
    return *serving ? kExitRemoteOk : kExitUnavailable;
  }
  if (command == "delete-model") {
    if (int rc = NeedPositional(a, 1, "one model id: sqctl delete-model MODEL_ID"); rc >= 0) return rc;
    if (absl::Status st = c.DeleteModel(a.positional[0]); !st.ok()) return Fail(st);
    if (json) std::printf("{\"deleted_model\": \"%s\"}\n", a.positional[0].c_str());
    else std::printf("deleted model %s\n", a.positional[0].c_str());
    return kExitRemoteOk;
  }
  if (int rc = NeedPositional(a, 1, absl::StrCat("one job id: sqctl ", command, " JOB").c_str()); rc >= 0) return rc;
  const std::string& id = a.positional[0];
  if (command == "status") {
    auto job = c.Get(id);
    if (!job.ok()) return Fail(job.status());
    if (json) std::printf("%s\n", ToJson(*job).c_str());
    else PrintJob(*job);
    return kExitRemoteOk;
  }
  if (command == "watch") {
    auto job = Follow(c, id, json, *Timeout(a));
    if (!job.ok()) return Fail(job.status());
    if (json) std::printf("%s\n", ToJson(*job).c_str());
    return JobOutcome(*job);
  }
  if (command == "cancel") {
    auto job = c.Cancel(id);
    if (!job.ok()) return Fail(job.status());
    if (json) std::printf("%s\n", ToJson(*job).c_str());
    else std::printf("%s %s\n", id.c_str(), Progress(*job).c_str());
    return kExitRemoteOk;
  }
  if (command == "delete") {
    if (absl::Status st = c.Delete(id); !st.ok()) return Fail(st);
    if (!json) std::printf("deleted %s\n", id.c_str());
    return kExitRemoteOk;
  }
  if (command == "download") {
    std::string output = a.Get("o", a.Get("output"));
    if (output.empty()) return Usage("download needs -o FILE");
    auto job = c.Get(id);
    if (!job.ok()) return Fail(job.status());
    if (job->state() != v1::JOB_STATE_SUCCEEDED) {
      return Fail(absl::FailedPreconditionError(
          absl::StrCat("job ", id, " is ", StateName(job->state()), "; nothing to download yet")));
    }
    if (absl::Status st = c.DownloadAll(*job, output, Bar("download", json)); !st.ok()) return Fail(st);
    if (!json) std::printf("saved %s\n", output.c_str());
    return kExitRemoteOk;
  }
  if (command == "report") {
    auto report = c.Report(id);
    if (!report.ok()) return Fail(report.status());
    std::fputs(json ? report->json().c_str() : report->summary().c_str(), stdout);
    if (json) std::fputc('\n', stdout);
    return kExitRemoteOk;
  }
  return Usage("unknown command '" + command + "'");
}

}  // namespace sq::cli
