#include "core/options.h"

#include <cmath>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"
#include "re2/re2.h"

namespace sq {
namespace {

absl::Status Invalid(absl::string_view option, absl::string_view detail) {
  return absl::InvalidArgumentError(absl::StrCat("option ", option, ": ", detail));
}

absl::Status ValidateActivationOptions(const QuantizeOptions& options) {
  if (ToString(options.activations)[0] == '?') return Invalid("activations", "unknown value");
  if (ToString(options.calibration_method)[0] == '?') {
    return Invalid("calibration_method", "unknown value");
  }
  if (ToString(options.split_activations)[0] == '?') {
    return Invalid("split_activations", "unknown value");
  }
  if (!(options.calibration_percentile > 50 && options.calibration_percentile <= 100)) {
    return Invalid("calibration_percentile",
                   absl::StrCat("must be in (50, 100], got ", options.calibration_percentile));
  }
  if (options.activations != ActivationType::kOff) {
    if (options.format != OutputFormat::kQdq || options.target != Target::kQdq) {
      return Invalid("activations", absl::StrCat(
          ToString(options.activations), " writes a full-integer QDQ model: it needs --target qdq, not ",
          options.format == OutputFormat::kQdq
              ? absl::StrCat("--target ", ToString(options.target))
              : absl::StrCat("--format ", ToString(options.format))));
    }
    const SplitForm form = EffectiveForm(options);
    if (form != SplitForm::kBranches) {
      return Invalid("activations", absl::StrCat("integer kernels need each branch as its own op: --form ",
                                                 ToString(form), " cannot be used with --activations"));
    }
  }
  const bool uses_calibration = options.activations != ActivationType::kOff ||
                                options.split_activations == ActivationSplit::kRange;
  if (!options.calibration_inputs.empty() && !uses_calibration) {
    return Invalid("calibration_inputs",
                   "are given but nothing reads them (--activations is off and --split-activations is not range)");
  }
  std::set<std::string> seen;
  for (const QuantizeOptions::InputRange& r : options.input_ranges) {
    if (!std::isfinite(r.lo) || !std::isfinite(r.hi) || !(r.lo < r.hi)) {
      return Invalid("input_ranges", absl::StrCat("range of '", r.name, "' must be finite with LO < HI, got ",
                                                  r.lo, ":", r.hi));
    }
    if (r.name.empty()) return Invalid("input_ranges", "an entry has no tensor name");
    if (!seen.insert(r.name).second) {
      return Invalid("input_ranges", absl::StrCat("'", r.name, "' is given twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateOptions(const QuantizeOptions& options) {
  if (options.bits < 2 || options.bits > 8) {
    return Invalid("bits", absl::StrCat("must be in 2..8, got ", options.bits));
  }
  if (!options.verify && !options.verify_input.empty()) {
    return Invalid("verify_input", "is given but verify is off");
  }
  // Checked here, at submit, not when the job reaches layer discovery.
  for (size_t i = 0; i < options.exclude_name_patterns.size(); ++i) {
    RE2 re(options.exclude_name_patterns[i], RE2::Quiet);
    if (!re.ok()) {
      return Invalid(absl::StrCat("exclude_name_patterns[", i, "]"),
                     absl::StrCat("bad regex '", options.exclude_name_patterns[i], "': ", re.error()));
    }
  }
  // Enum fields can carry any integer when built from a wire message by a cast.
  if (ToString(options.granularity)[0] == '?') return Invalid("granularity", "unknown value");
  if (ToString(options.format)[0] == '?') return Invalid("format", "unknown value");
  if (ToString(options.form)[0] == '?') return Invalid("form", "unknown value");
  if (ToString(options.target)[0] == '?') return Invalid("target", "unknown value");
  if (options.ort_accuracy_level != 0 && options.ort_accuracy_level != 1 &&
      options.ort_accuracy_level != 4) {
    return Invalid("ort_accuracy_level",
                   absl::StrCat("must be 0, 1 (float compute) or 4 (int8 compute), got ",
                                options.ort_accuracy_level));
  }
  {
    const SplitForm form = EffectiveForm(options);
    const bool decoded = options.format == OutputFormat::kQdq && options.target != Target::kQdq;
    if (form == SplitForm::kCompact && !decoded) {
      return Invalid("form", absl::StrCat(
          "form compact needs target ort-cpu or portable (format ", ToString(options.format),
          options.format == OutputFormat::kQdq ? ", target qdq" : "",
          " stores branches; DequantizeLinear cannot read a cluster id)"));
    }
    if (decoded && options.target == Target::kPortable && form != SplitForm::kCompact) {
      return Invalid("form", absl::StrCat("target portable stores split layers compact; form ",
                                          ToString(form), " needs target qdq or ort-cpu"));
    }
    if (decoded && options.target == Target::kOrtCpu && form == SplitForm::kFolded) {
      return Invalid("form", "target ort-cpu takes form auto, branches, compact or outer8; form folded needs target qdq");
    }
    if (form == SplitForm::kOuter8 && !(decoded && options.target == Target::kOrtCpu)) {
      return Invalid("form", "form outer8 (two MatMulNBits) needs target ort-cpu");
    }
  }
  if (ToString(options.scale_type)[0] == '?') return Invalid("scale_type", "unknown value");
  if (ToString(options.rounding)[0] == '?') return Invalid("rounding", "unknown value");
  if (ToString(options.cluster_scope)[0] == '?') {
    return Invalid("cluster_scope", "unknown value");
  }
  // block_size only means something for blocked granularity; other granularities ignore
  // it, so a caller that leaves it unset (0) with per-channel scales is not rejected.
  if (options.granularity == Granularity::kBlock &&
      (options.block_size < 2 || options.block_size > 65536)) {
    return Invalid("block_size", absl::StrCat("must be in 2..65536, got ", options.block_size));
  }
  if (options.threads < 0 || options.threads > 1024) {
    return Invalid("threads", absl::StrCat("must be in 0..1024, got ", options.threads));
  }
  if (!(options.bpw_budget >= 0) || options.bpw_budget > 32) {
    return Invalid("bpw_budget", absl::StrCat("must be 0 (off) or a size in (0, 32] bits per weight, got ",
                                              options.bpw_budget));
  }
  if (options.bpw_budget > 0 && options.format != OutputFormat::kQdq) {
    return Invalid("bpw_budget", absl::StrCat("counts stored bits: format ", ToString(options.format),
                                              " writes FP32 weights"));
  }
  if (options.nbits_min_elements < 0) {
    return Invalid("nbits_min_elements", absl::StrCat("must be >= 0, got ", options.nbits_min_elements));
  }
  if (options.min_weight_elements < 0) {
    return Invalid("min_weight_elements",
                   absl::StrCat("must be >= 0, got ", options.min_weight_elements));
  }
  if (options.target_opset != 0 &&
      (options.target_opset < 13 || options.target_opset > 25)) {
    return Invalid("target_opset",
                   absl::StrCat("must be 0 (auto) or in 13..25, got ", options.target_opset));
  }
  if (ToString(options.split)[0] == '?') return Invalid("split", "unknown value");
  if (options.format == OutputFormat::kSplit && options.split != SplitMode::kOn) {
    return Invalid("format", "format split needs split on");
  }
  for (size_t i = 0; i < options.layer_overrides.size(); ++i) {
    const LayerOverride& o = options.layer_overrides[i];
    const std::string name = absl::StrCat("layer_overrides[", i, "] '", ToString(o), "'");
    RE2 re(o.pattern, RE2::Quiet);
    if (!re.ok()) return Invalid(name, absl::StrCat("bad regex: ", re.error()));
    if (o.bits && (*o.bits < 2 || *o.bits > 8)) {
      return Invalid(name, absl::StrCat("bits must be in 2..8, got ", *o.bits));
    }
    if (o.block_size && (*o.block_size < 2 || *o.block_size > 65536)) {
      return Invalid(name, absl::StrCat("block_size must be in 2..65536, got ", *o.block_size));
    }
    if (o.granularity && ToString(*o.granularity)[0] == '?') return Invalid(name, "unknown granularity");
    if (o.split && ToString(*o.split)[0] == '?') return Invalid(name, "unknown split mode");
    if (o.split && options.format == OutputFormat::kSplit && *o.split != SplitMode::kOn) {
      return Invalid(name, "format split needs split on");
    }
  }
  SQ_RETURN_IF_ERROR(ValidateActivationOptions(options));
  return absl::OkStatus();
}

absl::StatusOr<SplitMode> ParseSplitMode(absl::string_view s) {
  if (s == "on" || s == "true") return SplitMode::kOn;
  if (s == "off" || s == "false") return SplitMode::kOff;
  if (s == "auto") return SplitMode::kAuto;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split mode '", s, "'; accepted: on, off, auto"));
}

absl::StatusOr<LayerOverride> ParseLayerOverride(absl::string_view spec) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("layer override '", spec, "': ", why));
  };
  const size_t eq = spec.rfind('=');
  if (eq == absl::string_view::npos) return bad("expected REGEX=key:value[,key:value...]");
  LayerOverride o;
  o.pattern = std::string(spec.substr(0, eq));
  if (o.pattern.empty()) return bad("empty regex");
  RE2 re(o.pattern, RE2::Quiet);
  if (!re.ok()) return bad(absl::StrCat("bad regex '", o.pattern, "': ", re.error()));
  const absl::string_view settings = spec.substr(eq + 1);
  if (settings.empty()) return bad("no settings after '='");
  for (absl::string_view item : absl::StrSplit(settings, ',')) {
    const size_t colon = item.find(':');
    if (colon == absl::string_view::npos) return bad(absl::StrCat("'", item, "' is not key:value"));
    const absl::string_view key = item.substr(0, colon), value = item.substr(colon + 1);
    int v = 0;
    if (key == "bits") {
      if (!absl::SimpleAtoi(value, &v) || v < 2 || v > 8) return bad("bits wants 2..8");
      o.bits = v;
    } else if (key == "block_size") {
      if (!absl::SimpleAtoi(value, &v) || v < 2 || v > 65536) return bad("block_size wants 2..65536");
      o.block_size = v;
    } else if (key == "granularity") {
      auto g = ParseGranularity(value);
      if (!g.ok()) return bad(std::string(g.status().message()));
      o.granularity = *g;
    } else if (key == "symmetric") {
      if (value == "on" || value == "true") {
        o.symmetric = true;
      } else if (value == "off" || value == "false") {
        o.symmetric = false;
      } else {
        return bad("symmetric wants on or off");
      }
    } else if (key == "split") {
      auto m = ParseSplitMode(value);
      if (!m.ok()) return bad(std::string(m.status().message()));
      o.split = *m;
    } else {
      return bad(absl::StrCat("unknown key '", key,
                              "'; accepted: bits, granularity, block_size, symmetric, split"));
    }
  }
  return o;
}

std::string ToString(const LayerOverride& o) {
  std::vector<std::string> items;
  if (o.bits) items.push_back(absl::StrCat("bits:", *o.bits));
  if (o.granularity) items.push_back(absl::StrCat("granularity:", ToString(*o.granularity)));
  if (o.block_size) items.push_back(absl::StrCat("block_size:", *o.block_size));
  if (o.symmetric) items.push_back(absl::StrCat("symmetric:", *o.symmetric ? "on" : "off"));
  if (o.split) items.push_back(absl::StrCat("split:", ToString(*o.split)));
  return absl::StrCat(o.pattern, "=", absl::StrJoin(items, ","));
}

LayerSettings SettingsForLayer(const QuantizeOptions& options, absl::string_view layer_name) {
  LayerSettings s;
  s.bits = options.bits;
  s.granularity = options.granularity;
  s.block_size = options.block_size;
  s.symmetric = options.symmetric;
  s.split = options.split;
  for (size_t i = 0; i < options.layer_overrides.size(); ++i) {
    const LayerOverride& o = options.layer_overrides[i];
    if (!RE2::PartialMatch(std::string(layer_name), o.pattern)) continue;
    if (o.bits) s.bits = *o.bits;
    if (o.granularity) s.granularity = *o.granularity;
    if (o.block_size) s.block_size = *o.block_size;
    if (o.symmetric) s.symmetric = *o.symmetric;
    if (o.split) s.split = *o.split;
    s.override_index = static_cast<int>(i);
    break;
  }
  return s;
}

absl::StatusOr<Granularity> ParseGranularity(absl::string_view s) {
  if (s == "tensor") return Granularity::kTensor;
  if (s == "channel") return Granularity::kChannel;
  if (s == "block") return Granularity::kBlock;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown granularity '", s, "'; accepted: tensor, channel, block"));
}

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view s) {
  if (s == "qdq") return OutputFormat::kQdq;
  if (s == "fake") return OutputFormat::kFake;
  if (s == "split") return OutputFormat::kSplit;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown format '", s, "'; accepted: qdq, fake, split"));
}

absl::StatusOr<SplitForm> ParseSplitForm(absl::string_view s) {
  if (s == "auto") return SplitForm::kAuto;
  if (s == "branches") return SplitForm::kBranches;
  if (s == "folded") return SplitForm::kFolded;
  if (s == "compact") return SplitForm::kCompact;
  if (s == "outer8") return SplitForm::kOuter8;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown split form '", s, "'; accepted: auto, branches, folded, compact, outer8"));
}

absl::StatusOr<Target> ParseTarget(absl::string_view s) {
  if (s == "ort-cpu") return Target::kOrtCpu;
  if (s == "qdq") return Target::kQdq;
  if (s == "portable") return Target::kPortable;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown target '", s, "'; accepted: ort-cpu, qdq, portable"));
}

absl::Status ResolveTargetFlags(const std::optional<std::string>& target,
                                const std::optional<std::string>& format, QuantizeOptions* o) {
  if (format) {
    auto f = ParseOutputFormat(*format);
    if (!f.ok()) return f.status();
    o->format = *f;
    if (*f == OutputFormat::kQdq) o->target = Target::kQdq;
  }
  if (target) {
    auto t = ParseTarget(*target);
    if (!t.ok()) return t.status();
    if (format && (o->format != OutputFormat::kQdq || *t != Target::kQdq)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--target ", *target, " and --format ", *format,
          " conflict: --format qdq is --target qdq, and --format fake/split write FP32 "
          "weights for no runtime target; give one of them"));
    }
    o->format = OutputFormat::kQdq;
    o->target = *t;
  }
  return absl::OkStatus();
}

SplitForm EffectiveForm(const QuantizeOptions& options) {
  if (options.form != SplitForm::kAuto) return options.form;
  if (options.format == OutputFormat::kQdq && options.target == Target::kPortable) {
    return SplitForm::kCompact;
  }
  // ort-cpu keeps kAuto: decided per layer (rewrite.h).
  if (options.format == OutputFormat::kQdq && options.target == Target::kOrtCpu) return SplitForm::kAuto;
  return SplitForm::kBranches;
}

absl::StatusOr<ClusterScope> ParseClusterScope(absl::string_view s) {
  if (s == "auto") return ClusterScope::kAuto;
  if (s == "tensor") return ClusterScope::kTensor;
  if (s == "channel") return ClusterScope::kChannel;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown cluster scope '", s, "'; accepted: auto, tensor, channel"));
}

absl::StatusOr<Rounding> ParseRounding(absl::string_view s) {
  if (s == "balanced") return Rounding::kBalanced;
  if (s == "nearest") return Rounding::kNearest;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown rounding '", s, "'; accepted: balanced, nearest"));
}

bool BalancedRounding(const QuantizeOptions& options, Granularity granularity,
                      const std::string& op_type, bool split) {
  // Scope as measured (docs/accuracy.md): a convolution's inputs follow non-negative
  // activations (ReLU, hard-swish, sigmoid gates), whose mean carries the channel's summed
  // rounding error to every output; there the split at <= 4 bits gained (bench/ocr INT4:
  // 74.0 -> 80.7 % exact). The recognizer's MatMuls (inputs after LayerNorm, zero-mean per
  // token), plain layers and 8-bit splits gained nothing measurable, and the offsets' pass
  // costs about three times the quantize pass, so they round to nearest. (Under
  // --bpw-budget the allocator ranks layers on round-to-nearest's error: core/plan.cc.)
  return options.rounding == Rounding::kBalanced && granularity == Granularity::kChannel &&
         split && options.bits <= 4 &&
         (op_type == "Conv" || op_type == "ConvTranspose");
}

bool QuantAwareBoundaries(const QuantizeOptions& options, Granularity granularity) {
  if (granularity == Granularity::kBlock) return false;
  // Unset (auto): quantization-aware cuts everywhere. Under balanced rounding the
  // transform keeps min/max ranges (ShrinksRanges): a shrunk range saturates the
  // extremes, a one-sided error no rounding offset can balance. Measured on bench/ocr
  // (docs/accuracy.md) against the paper's k-means cuts there: 80.7 / 98.1 / 89.0 vs
  // 81.3 / 98.1 / 87.3 (300 lines), 78.1 / 97.8 / 85.9 vs 80.8 / 98.2 / 84.8 (1000) at
  // 1.1 dB more weight SQNR; k-means clusters a MatMul per tensor, which on heavy-tailed
  // weights costs ~10 dB (engine_test), and per channel ~4 dB.
  return options.quant_aware_boundaries.value_or(true);
}

absl::StatusOr<ScaleType> ParseScaleType(absl::string_view s) {
  if (s == "auto") return ScaleType::kAuto;
  if (s == "float16") return ScaleType::kFloat16;
  if (s == "float32") return ScaleType::kFloat32;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown scale type '", s, "'; accepted: auto, float16, float32"));
}

const char* ToString(Granularity g) {
  switch (g) {
    case Granularity::kTensor: return "tensor";
    case Granularity::kChannel: return "channel";
    case Granularity::kBlock: return "block";
  }
  return "?";
}

const char* ToString(OutputFormat f) {
  switch (f) {
    case OutputFormat::kQdq: return "qdq";
    case OutputFormat::kFake: return "fake";
    case OutputFormat::kSplit: return "split";
  }
  return "?";
}

const char* ToString(SplitForm f) {
  switch (f) {
    case SplitForm::kAuto: return "auto";
    case SplitForm::kBranches: return "branches";
    case SplitForm::kFolded: return "folded";
    case SplitForm::kCompact: return "compact";
    case SplitForm::kOuter8: return "outer8";
  }
  return "?";
}

const char* ToString(Target t) {
  switch (t) {
    case Target::kOrtCpu: return "ort-cpu";
    case Target::kQdq: return "qdq";
    case Target::kPortable: return "portable";
  }
  return "?";
}

const char* ToString(SplitMode m) {
  switch (m) {
    case SplitMode::kOff: return "off";
    case SplitMode::kOn: return "on";
    case SplitMode::kAuto: return "auto";
  }
  return "?";
}

const char* ToString(ActivationType a) {
  switch (a) {
    case ActivationType::kOff: return "off";
    case ActivationType::kInt8: return "int8";
    case ActivationType::kUint8: return "uint8";
  }
  return "?";
}

const char* ToString(CalibrationMethod m) {
  switch (m) {
    case CalibrationMethod::kMinMax: return "minmax";
    case CalibrationMethod::kPercentile: return "percentile";
  }
  return "?";
}

const char* ToString(ActivationSplit a) {
  switch (a) {
    case ActivationSplit::kOff: return "off";
    case ActivationSplit::kRange: return "range";
    case ActivationSplit::kPositional: return "positional";
  }
  return "?";
}

absl::StatusOr<ActivationType> ParseActivationType(absl::string_view s) {
  if (s == "off") return ActivationType::kOff;
  if (s == "int8") return ActivationType::kInt8;
  if (s == "uint8") return ActivationType::kUint8;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activation type '", s, "'; accepted: off, int8, uint8"));
}

absl::StatusOr<CalibrationMethod> ParseCalibrationMethod(absl::string_view s) {
  if (s == "minmax") return CalibrationMethod::kMinMax;
  if (s == "percentile") return CalibrationMethod::kPercentile;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown calibration method '", s, "'; accepted: minmax, percentile"));
}

absl::StatusOr<ActivationSplit> ParseActivationSplit(absl::string_view s) {
  if (s == "off" || s == "false") return ActivationSplit::kOff;
  // "on": the grouping that measured better on bench/ocr (docs/accuracy.md, full-integer).
  if (s == "range" || s == "on" || s == "true") return ActivationSplit::kRange;
  if (s == "positional") return ActivationSplit::kPositional;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activation split '", s, "'; accepted: off, range, positional"));
}

absl::StatusOr<QuantizeOptions::InputRange> ParseInputRange(absl::string_view spec) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("input range '", spec, "': ", why));
  };
  const size_t eq = spec.rfind('=');
  if (eq == absl::string_view::npos || eq == 0) return bad("expected NAME=LO:HI");
  QuantizeOptions::InputRange r;
  r.name = std::string(spec.substr(0, eq));
  std::vector<absl::string_view> lh = absl::StrSplit(spec.substr(eq + 1), ':');
  if (lh.size() != 2) return bad("expected NAME=LO:HI");
  if (!absl::SimpleAtof(lh[0], &r.lo) || !absl::SimpleAtof(lh[1], &r.hi)) return bad("LO and HI must be numbers");
  if (!std::isfinite(r.lo) || !std::isfinite(r.hi) || !(r.lo < r.hi)) return bad("needs finite LO < HI");
  return r;
}

const char* ToString(Rounding r) {
  switch (r) {
    case Rounding::kBalanced: return "balanced";
    case Rounding::kNearest: return "nearest";
  }
  return "?";
}

const char* ToString(ScaleType t) {
  switch (t) {
    case ScaleType::kAuto: return "auto";
    case ScaleType::kFloat16: return "float16";
    case ScaleType::kFloat32: return "float32";
  }
  return "?";
}

const char* ToString(ClusterScope c) {
  switch (c) {
    case ClusterScope::kAuto: return "auto";
    case ClusterScope::kTensor: return "tensor";
    case ClusterScope::kChannel: return "channel";
  }
  return "?";
}

}  // namespace sq
