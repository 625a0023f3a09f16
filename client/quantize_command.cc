#include "client/quantize_command.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "core/file_util.h"

namespace sq::cli {
namespace {

// Splits "--name=value" / "--name value"; returns false when a value is missing.
bool TakeValue(const std::vector<std::string>& args, size_t* i, const std::string& inline_value,
               bool has_inline, std::string* value) {
  if (has_inline) {
    *value = inline_value;
    return true;
  }
  if (*i + 1 >= args.size()) return false;
  *value = args[++*i];
  return true;
}

absl::Status ParseInt(const std::string& flag, const std::string& text, int64_t lo, int64_t hi,
                      int64_t* out) {
  if (!absl::SimpleAtoi(text, out) || *out < lo || *out > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " wants an integer in [", lo, ", ", hi, "], got '", text, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string QuantizeUsage() {
  return R"(usage: sqctl quantize MODEL.onnx -o OUT.onnx [options]

Splits each linear/conv layer into three by 1-D k-means (SplitQuant) and quantizes the
weights, locally. Prints a summary; --report writes the full per-layer JSON report.

  -o, --output FILE          output model (required); external data goes to FILE.data
  --bits N                   weight bits, 2..8 (default 4)
  --granularity G            tensor | channel | block (default channel)
  --block-size N             block length along the reduction axis (default 32)
  --symmetric                symmetric signed codes (default: asymmetric, integer zero point)
  --split on|off|auto        SplitQuant on (default), plain linear quantization, or per
                             layer only where it gains >= 6.02 dB weight SQNR (one bit's
                             worth); the report says what was chosen and why
  --initializer-inputs M     weights (default: initializers also listed as graph inputs,
                             as IR < 4 models do, are weights and leave the inputs) |
                             inputs (keep them as run-time inputs; their layers are skipped)
  --bpw-budget B             mixed precision: each layer's bits (2/3/4/8) and split chosen
                             so the quantized layers' stored bits per weight (codes, ids,
                             scales, zero points, in the target's form) are <= B; --bits is
                             then ignored; the report lists each layer's choice
  --quantize-gather on|off   embedding tables (a Gather on a constant 2-D FP32 table) are
                             quantized per row and split like any weight (default on;
                             ort-cpu: com.microsoft.GatherBlockQuantized)
  --layer 'REGEX=K:V,...'    settings for layers whose node name matches (repeatable, first
                             match wins); keys bits, granularity, block_size, symmetric
                             (on|off), split (on|off|auto). E.g. --layer 'head=bits:8'
  --target T                 where the model runs: ort-cpu (default: ONNX Runtime on CPU;
                             MatMul as com.microsoft.MatMulNBits, other weights decoded at
                             load) | qdq (standard weight-only QDQ: integer codes +
                             DequantizeLinear) | portable (standard ops only, decoded at load)
  --form F                   how a split layer is stored: auto (default: compact for
                             ort-cpu/portable, branches otherwise) | branches (3 ops + Adds) |
                             folded (weights added, 1 op) | compact (one code + a cluster
                             id of 1.6 bits per weight; ort-cpu/portable)
  --ort-accuracy-level N     MatMulNBits compute (ort-cpu): 4 (default, int8) | 0 (float)
  --nbits-min-elements N     ort-cpu: smaller MatMul weights are decoded at load instead of
                             MatMulNBits (default 1048576, 4 MiB of FP32: cache-resident
                             weights run faster as FP32)
  --format F                 qdq (= --target qdq) | fake (FP32 dequantized weights) |
                             split (FP32, split only)
  --rounding R               balanced (default: split Conv/ConvTranspose layers at <= 4
                             bits, channel granularity: one rounding offset per output
                             channel keeps its rounding errors from adding up; else
                             nearest) |
                             nearest (round half to even everywhere, the paper's)
  --boundaries B             auto (default) = quant: cuts and per-branch ranges chosen
                             for the branches' quantization error (tensor/channel
                             granularity; min/max ranges where balanced rounding applies) |
                             kmeans (the paper: k-means midpoints, min/max ranges)
  --scale-type T             auto (default: per-channel and blocked scales rounded up to
                             float16 values, by at most 2^-10, so compact layers store them
                             in 16 bits; per-tensor scales float32) | float16 | float32
  --cluster-scope S          auto (default: the quantization slice with quant boundaries;
                             else tensor for MatMul/Gemm, channel for Conv) | tensor | channel
  --kmeans M                 k-means for --boundaries kmeans and blocks: exact (default, the
                             optimal 1-D 3-clustering) | reference (the paper's greedy
                             k-means++ + Lloyd, fixed seed)
  --exclude REGEX            skip layers whose node name matches (repeatable)
  --exclude-op OP            skip an op type, e.g. Conv (repeatable)
  --min-elements N           skip weights with fewer elements (default 64)
  --target-opset N           output opset of a quantized model (default: the lowest that
                             works: 13, or 21 for packed INT4 / blocks under qdq)
  --threads N                worker threads (default: all cores); output is identical for any N
  --external-data            always write weights to an external data file
  --verify on|off            before the output appears, load and run it in ONNX Runtime
                             beside the FP32 model on the same inputs and report how close
                             they are (default on); an artifact that does not run is not
                             written (exit 1)
  --verify-input FILE        inputs for --verify: .npy (single-input models), .npz (arrays
                             named as the inputs) or .pb (ONNX TensorProto); default: seeded
                             random inputs shaped by the graph
  --activations T            off (default) | int8 | uint8: full-integer QDQ output (for NPUs
                             and integer kernels): static per-tensor activation ranges around
                             every quantized layer; needs --target qdq (implied when neither
                             --target nor --format is given)
  --calibration PATH         a calibration sample for --activations: .npy (single-input
                             models), .npz (arrays named as the inputs) or .pb, or a
                             directory of them (one sample per file in name order, or per
                             subdirectory of .pb files); repeatable; default: data-free
                             ranges (give --input-range for the graph inputs)
  --calibration-method M     percentile (default) | minmax
  --calibration-percentile P percentile of --calibration-method percentile, in (50, 100]
                             (default 99.99)
  --input-range NAME=LO:HI   the value range of graph input NAME, for data-free ranges
                             (repeatable)
  --split-activations S      off (default) | on = range (channels grouped by their range;
                             measured best) | positional (three equal runs): each elementwise activation
                             (Relu, Clip, Sigmoid, ...) runs on three channel groups, each
                             with its own scale; the FP32 function is unchanged
  --report FILE              write the JSON report
  --json                     print the JSON report instead of the summary
  --quiet                    print nothing on success

Exit codes: 0 success, 1 the model could not be quantized, 2 bad command line.
)";
}

absl::StatusOr<QuantizeArgs> ParseQuantizeArgs(const std::vector<std::string>& args) {
  QuantizeArgs out;
  QuantizeOptions& o = out.options;
  std::vector<std::string> positional;
  std::optional<std::string> target_flag, format_flag;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      for (++i; i < args.size(); ++i) positional.push_back(args[i]);
      break;
    }
    if (a.size() < 2 || a[0] != '-') {
      positional.push_back(a);
      continue;
    }
    std::string name = a, inline_value;
    bool has_inline = false;
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      name = a.substr(0, eq);
      inline_value = a.substr(eq + 1);
      has_inline = true;
    }
    std::string flag = name.substr(name[1] == '-' ? 2 : 1);
    for (char& c : flag) c = c == '_' ? '-' : c;
    auto value = [&]() -> absl::StatusOr<std::string> {
      std::string v;
      if (!TakeValue(args, &i, inline_value, has_inline, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs a value"));
      }
      return v;
    };
    auto boolean = [&](bool* target) -> absl::Status {
      if (!has_inline) {
        *target = true;
      } else if (inline_value == "true" || inline_value == "1") {
        *target = true;
      } else if (inline_value == "false" || inline_value == "0") {
        *target = false;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", flag, " takes no value"));
      }
      return absl::OkStatus();
    };
    absl::Status s;
    int64_t n = 0;
    if (flag == "h" || flag == "help") {
      out.help = true;
    } else if (flag == "o" || flag == "output") {
      auto v = value();
      if (!v.ok()) return v.status();
      out.output = *v;
    } else if (flag == "report") {
      auto v = value();
      if (!v.ok()) return v.status();
      out.report_path = *v;
    } else if (flag == "bits") {
      auto v = value();
      if (!v.ok()) return v.status();
      s = ParseInt(flag, *v, 2, 8, &n);
      o.bits = static_cast<int>(n);
    } else if (flag == "granularity") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto g = ParseGranularity(*v);
      if (!g.ok()) return g.status();
      o.granularity = *g;
    } else if (flag == "block-size") {
      auto v = value();
      if (!v.ok()) return v.status();
      s = ParseInt(flag, *v, 2, 1 << 16, &n);
      o.block_size = static_cast<int>(n);
    } else if (flag == "symmetric") {
      s = boolean(&o.symmetric);
    } else if (flag == "split") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto m = ParseSplitMode(*v);
      if (!m.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--split wants on, off or auto, got '", *v, "'"));
      }
      o.split = *m;
    } else if (flag == "initializer-inputs") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (*v != "weights" && *v != "inputs") {
        return absl::InvalidArgumentError(
            absl::StrCat("--initializer-inputs wants weights or inputs, got '", *v, "'"));
      }
      o.initializer_inputs_are_weights = *v == "weights";
    } else if (flag == "bpw-budget") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtod(*v, &o.bpw_budget)) {
        return absl::InvalidArgumentError(absl::StrCat("--bpw-budget wants bits per weight, e.g. 2.5, got '", *v, "'"));
      }
    } else if (flag == "quantize-gather") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (*v != "on" && *v != "off") {
        return absl::InvalidArgumentError(absl::StrCat("--quantize-gather wants on or off, got '", *v, "'"));
      }
      o.quantize_gather = *v == "on";
    } else if (flag == "layer") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto lo = ParseLayerOverride(*v);
      if (!lo.ok()) return absl::InvalidArgumentError(absl::StrCat("--layer: ", lo.status().message()));
      o.layer_overrides.push_back(*std::move(lo));
    } else if (flag == "form") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto f = ParseSplitForm(*v);
      if (!f.ok()) return f.status();
      o.form = *f;
    } else if (flag == "format") {
      auto v = value();
      if (!v.ok()) return v.status();
      format_flag = *v;
    } else if (flag == "target") {
      auto v = value();
      if (!v.ok()) return v.status();
      target_flag = *v;
    } else if (flag == "nbits-min-elements") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &o.nbits_min_elements)) {
        return absl::InvalidArgumentError(absl::StrCat("--nbits-min-elements wants a count, got '", *v, "'"));
      }
    } else if (flag == "ort-accuracy-level") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &o.ort_accuracy_level)) {
        return absl::InvalidArgumentError(absl::StrCat("--ort-accuracy-level wants 0, 1 or 4, got '", *v, "'"));
      }
    } else if (flag == "cluster-scope") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto c = ParseClusterScope(*v);
      if (!c.ok()) return c.status();
      o.cluster_scope = *c;
    } else if (flag == "kmeans") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (*v != "exact" && *v != "reference") {
        return absl::InvalidArgumentError(absl::StrCat("--kmeans wants exact or reference, got '", *v, "'"));
      }
      o.reference_kmeans = *v == "reference";
    } else if (flag == "boundaries") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (*v != "kmeans" && *v != "quant" && *v != "auto") {
        return absl::InvalidArgumentError(absl::StrCat("--boundaries wants auto, kmeans or quant, got '", *v, "'"));
      }
      if (*v == "auto") {
        o.quant_aware_boundaries.reset();
      } else {
        o.quant_aware_boundaries = *v == "quant";
      }
    } else if (flag == "rounding") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto r = ParseRounding(*v);
      if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat("--rounding: ", r.status().message()));
      o.rounding = *r;
    } else if (flag == "scale-type") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto t = ParseScaleType(*v);
      if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("--scale-type: ", t.status().message()));
      o.scale_type = *t;
    } else if (flag == "exclude") {
      auto v = value();
      if (!v.ok()) return v.status();
      o.exclude_name_patterns.push_back(*v);
    } else if (flag == "exclude-op") {
      auto v = value();
      if (!v.ok()) return v.status();
      o.exclude_op_types.push_back(*v);
    } else if (flag == "min-elements") {
      auto v = value();
      if (!v.ok()) return v.status();
      s = ParseInt(flag, *v, 0, int64_t{1} << 40, &n);
      o.min_weight_elements = n;
    } else if (flag == "target-opset") {
      auto v = value();
      if (!v.ok()) return v.status();
      s = ParseInt(flag, *v, 0, 1000, &n);
      o.target_opset = static_cast<int>(n);
    } else if (flag == "threads") {
      auto v = value();
      if (!v.ok()) return v.status();
      s = ParseInt(flag, *v, 0, 1024, &n);
      o.threads = static_cast<int>(n);
    } else if (flag == "external-data") {
      s = boolean(&o.external_data);
    } else if (flag == "verify") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (*v != "on" && *v != "off") {
        return absl::InvalidArgumentError(absl::StrCat("--verify wants on or off, got '", *v, "'"));
      }
      o.verify = *v == "on";
    } else if (flag == "verify-input") {
      auto v = value();
      if (!v.ok()) return v.status();
      o.verify_input = *v;
    } else if (flag == "activations") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto t = ParseActivationType(*v);
      if (!t.ok()) return t.status();
      o.activations = *t;
    } else if (flag == "calibration") {
      // A file or a directory, passed through: the engine expands directories.
      auto v = value();
      if (!v.ok()) return v.status();
      o.calibration_inputs.push_back(*v);
    } else if (flag == "calibration-method") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto m = ParseCalibrationMethod(*v);
      if (!m.ok()) return m.status();
      o.calibration_method = *m;
    } else if (flag == "calibration-percentile") {
      auto v = value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtod(*v, &o.calibration_percentile)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--calibration-percentile wants a percentile in (50, 100], e.g. 99.99, got '", *v, "'"));
      }
    } else if (flag == "input-range") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto r = ParseInputRange(*v);
      if (!r.ok()) return absl::InvalidArgumentError(absl::StrCat("--input-range: ", r.status().message()));
      o.input_ranges.push_back(*std::move(r));
    } else if (flag == "split-activations") {
      auto v = value();
      if (!v.ok()) return v.status();
      auto m = ParseActivationSplit(*v);
      if (!m.ok()) return m.status();
      o.split_activations = *m;
    } else if (flag == "json") {
      s = boolean(&out.json);
    } else if (flag == "quiet" || flag == "q") {
      s = boolean(&out.quiet);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", name, "' (see sqctl quantize --help)"));
    }
    if (!s.ok()) return s;
  }
  if (out.help) return out;
  // A full-integer model is a QDQ model: --activations alone means --target qdq. With an
  // explicit other target or format ValidateOptions refuses the pair, naming both.
  if (o.activations != ActivationType::kOff && !target_flag && !format_flag) target_flag = "qdq";
  if (absl::Status s = ResolveTargetFlags(target_flag, format_flag, &o); !s.ok()) return s;
  if (positional.size() != 1) {
    return absl::InvalidArgumentError(positional.empty() ? "no input model given"
                                                         : "more than one input model given");
  }
  out.input = positional[0];
  if (out.output.empty()) return absl::InvalidArgumentError("no output given (-o OUT.onnx)");
  absl::Status valid = ValidateOptions(o);
  if (!valid.ok()) return valid;
  return out;
}

int RunQuantize(const std::vector<std::string>& args) {
  auto parsed = ParseQuantizeArgs(args);
  if (!parsed.ok()) {
    std::fprintf(stderr, "sqctl quantize: %s\n", std::string(parsed.status().message()).c_str());
    return kExitUsage;
  }
  if (parsed->help) {
    std::fputs(QuantizeUsage().c_str(), stdout);
    return kExitOk;
  }
  const bool tty = isatty(STDERR_FILENO) && !parsed->quiet && !parsed->json;
  RunHooks hooks;
  if (tty) {
    hooks.on_progress = [](const Progress& p) {
      if (p.stage == "transform" && p.layer_count > 0) {
        std::fprintf(stderr, "\r  %-9s %d/%d layers", p.stage.c_str(), p.layer_index, p.layer_count);
      } else {
        std::fprintf(stderr, "\r  %-9s                    ", p.stage.c_str());
      }
      if (p.stage == "done") std::fputs("\r\033[K", stderr);
      std::fflush(stderr);
    };
  }
  auto report = QuantizeModelFile(parsed->input, parsed->output, parsed->options, hooks);
  if (tty) std::fputs("\r\033[K", stderr);
  if (!report.ok()) {
    std::fprintf(stderr, "sqctl quantize: %s: %s\n",
                 absl::StatusCodeToString(report.status().code()).c_str(),
                 std::string(report.status().message()).c_str());
    return kExitFailed;
  }
  if (!parsed->report_path.empty()) {
    absl::Status s = WriteFileAtomically(parsed->report_path, ReportToJson(*report));
    if (!s.ok()) {
      std::fprintf(stderr, "sqctl quantize: cannot write the report: %s\n", std::string(s.message()).c_str());
      return kExitFailed;
    }
  }
  if (parsed->json) {
    std::fputs(ReportToJson(*report).c_str(), stdout);
  } else if (!parsed->quiet) {
    std::fputs(ReportSummary(*report).c_str(), stdout);
  }
  return kExitOk;
}

}  // namespace sq::cli
