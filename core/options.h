// QuantizeOptions: every user-visible knob of the engine, with its default. One struct is
// shared by the library, `sqctl quantize` and the gRPC service (which translates its wire
// message into this struct and nothing else).
#ifndef SQ_CORE_OPTIONS_H_
#define SQ_CORE_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sq {

// Which values share one (scale, zero point).
enum class Granularity {
  kTensor,   // one pair per tensor (per branch)
  kChannel,  // one pair per output channel
  kBlock,    // one pair per output channel per `block_size` run along the reduction axis
};

// What the output model contains.
enum class OutputFormat {
  kQdq,    // quantized weights, stored as `target` says (the CLI's --format qdq is
           // --target qdq)
  kFake,   // FP32 weights holding the dequantized values (runs anywhere; for evaluation)
  kSplit,  // FP32, split only, no quantization (for NPU vendors' own quantizers)
};

// The runtime family a quantized model (format kQdq) is written for.
enum class Target {
  kOrtCpu,    // ONNX Runtime on CPU: MatMul weights as com.microsoft.MatMulNBits (4/8-bit)
              // where the kernel can carry them; everything else decoded at session
              // creation by standard ops ORT constant-folds (FP32 compute)
  kQdq,       // standard weight-only QDQ: integer codes + DequantizeLinear per branch
  kPortable,  // standard ONNX ops only, weights decoded at load (no DequantizeLinear,
              // which ORT does not fold)
};

// How a split layer is laid out in the graph.
enum class SplitForm {
  kAuto,      // the target's default: per layer for ort-cpu (MatMul weights MatMulNBits
              // carries: outer8 at <= 4 bits, branches at 8; compact elsewhere), compact
              // for portable, branches otherwise
  kBranches,  // three copies of the op, outputs summed with Add (the paper's structure)
  kFolded,    // the three weights are added first, then one op runs (1x compute)
  kCompact,   // one code + a cluster id (1.6 bits) per weight, decoded into one weight at load
              // (ort-cpu / portable); dequantizes bit-identically to the branches
  kOuter8,    // ort-cpu, MatMul: the middle branch at `bits` plus both outer clusters in
              // one 8-bit branch, two MatMulNBits (an accuracy variant: lower weight error
              // than three branches at <= 6 bits, and two kernels instead of three)
};

// Static activation quantization (full-integer QDQ models for NPUs; core/activations/).
enum class ActivationType {
  kOff,    // weights only (default)
  kInt8,   // per-tensor int8 activations, asymmetric (zero point in the range)
  kUint8,  // per-tensor uint8 activations, asymmetric
};
// How a tensor's activation range is read off the calibration values.
enum class CalibrationMethod {
  kMinMax,      // the smallest and largest value seen
  kPercentile,  // the `calibration_percentile` and 100 - it percentiles of every value seen
};
// SplitQuant's activation split: each elementwise activation (Relu, Clip, Sigmoid, Tanh,
// LeakyRelu, HardSigmoid, HardSwish, SiLU and GELU patterns) runs on three channel groups
// whose results are joined again, so that a per-tensor quantizer gives each group its own
// scale. The FP32 function is unchanged.
enum class ActivationSplit {
  kOff,
  kRange,       // channels grouped by their range (calibration, or the data-free estimate);
                // "on" picks it: it measured better than kPositional on bench/ocr
  kPositional,  // three equal runs of channels in order (the paper's V1 code)
};
// Whether a layer is split.
enum class SplitMode {
  kOff,   // plain linear quantization
  kOn,    // SplitQuant wherever the weight has 3 distinct values (per unit)
  kAuto,  // per layer: split only where it lowers the weight error by at least
          // kAutoSplitMinGainDb (see engine.h); the report says what was chosen and why
};

// Weight scales. Rounding each scale up to a float16 value times a power of two chosen per
// layer (core/quantizer.h: by at most 2^-10 of it) keeps every quantizer guarantee and lets
// the compact form store it in 16 bits instead of 32 (decoded by a Cast and one multiply at
// load); every form dequantizes to the same values. MatMulNBits and GatherBlockQuantized
// store float scales; the re-quantized outer branch of outer8 keeps float scales.
enum class ScaleType {
  kAuto,     // float16 for per-channel and blocked scales of layers at <= 4 bits, where the
             // rounding is under 2^-14 of a code step and parameters are a large share of
             // the bytes; float32 per tensor (three scales: nothing to save), above 4 bits
             // (a depthwise conv lost 0.5-1.7 dB of weight SQNR at 8 bits: its few weights
             // per branch are mostly range ends, exact with float scales) and under
             // --bpw-budget (its per-channel proxy, normalised by the median weight, reads
             // the 2^-10 error float16 puts on a channel's lone outlier as large)
  kFloat16,  // float16 for every layer
  kFloat32,  // float32 (the paper's)
};

// How codes are rounded (core/transform/rounding.h).
enum class Rounding {
  kBalanced,  // default: split Conv/ConvTranspose layers at <= 4 bits under channel
              // granularity get one rounding offset per output channel, which keeps the
              // channel's rounding errors from adding up (the error a non-negative input's
              // mean carries to every output); elsewhere (MatMul/Gemm, plain layers, 8 bits,
              // tensor and block granularity, Gather tables) round to nearest
  kNearest,   // round half to even everywhere (the paper's)
};

// Which values one 1-D k-means sees.
enum class ClusterScope {
  kAuto,     // the quantization slice's unit (channel; tensor under tensor granularity);
             // with --boundaries kmeans the paper's: tensor for MatMul/Gemm, channel for Conv
  kTensor,   // whole tensor for every layer kind
  kChannel,  // per output channel for every layer kind
};

// Settings for the layers whose node name matches `pattern` (RE2, partial match), given
// on the command line as 'REGEX=key:value,...' (keys: bits, granularity, block_size,
// symmetric, split). Unset fields keep the global option. The first matching override
// wins.
struct LayerOverride {
  std::string pattern;
  std::optional<int> bits;
  std::optional<Granularity> granularity;
  std::optional<int> block_size;
  std::optional<bool> symmetric;
  std::optional<SplitMode> split;
};

// The settings one layer is quantized with: the global options, overridden.
struct LayerSettings {
  int bits = 4;
  Granularity granularity = Granularity::kChannel;
  int block_size = 32;
  bool symmetric = false;
  SplitMode split = SplitMode::kOn;
  int override_index = -1;  // index into QuantizeOptions::layer_overrides, or -1
};

struct QuantizeOptions {
  int bits = 4;                                   // 2..8
  Granularity granularity = Granularity::kChannel;
  int block_size = 32;                            // kBlock only; >= 2
  bool symmetric = false;                         // asymmetric with integer zero point by default
  SplitMode split = SplitMode::kOn;               // SplitQuant on / off (plain linear) / auto
  SplitForm form = SplitForm::kAuto;
  OutputFormat format = OutputFormat::kQdq;
  // ort-cpu by default: what users deploy on, and the form that costs least there
  // (docs/benchmarks.md, inference table).
  Target target = Target::kOrtCpu;
  // MatMulNBits `accuracy_level` under Target::kOrtCpu: 0 = float compute (dequantized
  // weights, exact to the fake-quant model), 4 = int8 compute (activations quantized per
  // block; faster, its own accuracy cost).
  int ort_accuracy_level = 4;
  // Under Target::kOrtCpu, MatMul weights with fewer elements are decoded at load (compact)
  // instead of running in MatMulNBits: a weight of up to 4 MiB in FP32 fits a CPU's
  // last-level cache, where ORT's FP32 GEMM outruns the low-bit kernels (which pay off when
  // weights stream from memory), and folding it at session creation stays cheap.
  int64_t nbits_min_elements = int64_t{1} << 20;
  ClusterScope cluster_scope = ClusterScope::kAuto;
  // The paper's k-means (greedy k-means++ with a fixed seed, then Lloyd) instead of the
  // default exact 1-D optimum: for reproducing the paper; slower, inertia never lower.
  bool reference_kmeans = false;
  // Quantization-aware split (core/transform/cuts.h), under tensor and channel
  // granularity: cuts placed to minimise the branches' estimated quantization error and
  // each branch's range shrunk where that lowers its actual error (`--boundaries quant`);
  // false = the paper's k-means boundaries and min/max ranges (`--boundaries kmeans`).
  // Unset (default, `auto`) = quantization-aware; where balanced rounding applies the
  // ranges are not shrunk (a saturated extreme is an error no offset can balance) — see
  // QuantAwareBoundaries and docs/accuracy.md. Blocked granularity always uses k-means.
  std::optional<bool> quant_aware_boundaries;
  Rounding rounding = Rounding::kBalanced;
  // How weight scales are kept (ScaleType): by default per-channel and blocked scales are
  // rounded up to float16 values, so that the compact form stores them in 16 bits.
  ScaleType scale_type = ScaleType::kAuto;

  // IR < 4 models list every initializer among the graph inputs (what older exporters and
  // many published models still carry); ONNX Runtime treats such a weight as overridable,
  // so it is not a constant. true (default): initializers that are also main-graph inputs
  // are weights: they leave the graph inputs (the output's IR version becomes >= 4) and the
  // report names them. false: they stay inputs and their layers are not quantized.
  bool initializer_inputs_are_weights = true;

  // Embedding tables: a Gather whose data is a constant 2-D FP32 tensor (gathered along
  // axis 0) is a layer like any other, quantized per row (the channel axis is the row) and
  // split; under Target::kOrtCpu it runs in com.microsoft.GatherBlockQuantized, which keeps
  // the table low-bit in memory. A table shared with MatMul/Gemm layers (tied embeddings)
  // is quantized once. false: Gather tables stay FP32.
  bool quantize_gather = true;

  // Mixed precision under a size budget (> 0): each layer's bits (2, 3, 4, 8) and split
  // (on / off; off only with split off) are chosen (core/transform/budget.h) so that the
  // quantized layers' stored bits per weight, in the form the target writes, are <= this.
  // `bits` is then ignored; layers matching a --layer override keep its settings and count
  // against the budget. 0 = off. Format qdq only (fake and split outputs are FP32).
  double bpw_budget = 0;

  // Layer selection. A layer is skipped when its node name matches any regex (RE2, full
  // match not required), when its op type is listed, or when its weight has fewer elements.
  std::vector<std::string> exclude_name_patterns;
  std::vector<std::string> exclude_op_types;
  int64_t min_weight_elements = 64;

  // Output opset for kQdq; 0 picks the lowest opset that the chosen bits need (13 for
  // 8-bit/containers, 21 for packed int4). Ignored for kFake/kSplit, which keep the model's.
  int target_opset = 0;
  // Per-layer settings, first match wins (see LayerOverride).
  std::vector<LayerOverride> layer_overrides;

  // Worker threads for tensor processing; 0 = hardware concurrency. Output is identical
  // whatever the value.
  int threads = 0;
  // Force weights into an external data file ("<output>.data") even below 2 GB.
  bool external_data = false;

  // Stage "verify" (core/verify/verify.h): load and run the artifact in ONNX Runtime before
  // it becomes visible, beside the FP32 model, and record how close they are. On by default.
  bool verify = true;
  // Inputs for verification: a .npy, .npz or .pb file (core/verify/tensor_file.h); empty =
  // seeded random inputs shaped by the graph.
  std::string verify_input;

  // --- Full-integer output (format qdq, target qdq; core/activations/) -----------------
  // Off by default. On: QuantizeLinear/DequantizeLinear pairs with per-tensor static
  // ranges on the activation inputs and outputs of every quantized Conv/ConvTranspose/
  // MatMul/Gemm (each branch of a split layer), biases as int32 where the weight scale
  // allows, so ONNX Runtime and NPU toolchains run the layers in integer kernels.
  ActivationType activations = ActivationType::kOff;
  // Calibration samples: each file is one set of graph inputs (.npy for a single-input
  // model, .npz, or .pb; core/verify/tensor_file.h); a directory holds one sample per file
  // (sorted by name) or per subdirectory of .pb files (the ONNX test-data layout). The FP32
  // model with its quantized weights is run on them in ONNX Runtime. Empty: the data-free
  // estimate (core/activations/data_free.h), which needs `input_ranges` for graph inputs.
  std::vector<std::string> calibration_inputs;
  CalibrationMethod calibration_method = CalibrationMethod::kPercentile;
  double calibration_percentile = 99.99;  // in (50, 100]
  // Declared ranges of graph inputs ("NAME=LO:HI" on the command line), used by the
  // data-free estimate (and ignored with calibration data).
  struct InputRange {
    std::string name;
    float lo = 0;
    float hi = 0;
  };
  std::vector<InputRange> input_ranges;
  // The activation split; any format (in format split the FP32 output carries it for
  // toolchains that calibrate themselves).
  ActivationSplit split_activations = ActivationSplit::kOff;
};

// Checks ranges and combinations; InvalidArgument naming the offending option. block_size
// is checked (2..65536) only when granularity is kBlock, since nothing else reads it; an
// enum holding a value outside its enumerators (a bad cast from a wire message) is
// rejected too. ToString returns "?" for such values.
absl::Status ValidateOptions(const QuantizeOptions& options);

// Parsing/printing of the enums (lower-case names as used on the command line and wire).
absl::StatusOr<Granularity> ParseGranularity(absl::string_view s);
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view s);
absl::StatusOr<SplitForm> ParseSplitForm(absl::string_view s);
absl::StatusOr<Target> ParseTarget(absl::string_view s);  // ort-cpu|qdq|portable
// The command line's --target / --format pair (either may be absent): --format qdq means
// --target qdq; --target alone implies format qdq. InvalidArgument naming both flags for
// --target with --format fake|split, or --format qdq with another --target.
absl::Status ResolveTargetFlags(const std::optional<std::string>& target,
                                const std::optional<std::string>& format, QuantizeOptions* o);
// The form split layers get: `options.form`, or the target's default for kAuto (which
// stays kAuto for ort-cpu, where it is chosen per layer).
SplitForm EffectiveForm(const QuantizeOptions& options);
absl::StatusOr<ClusterScope> ParseClusterScope(absl::string_view s);
absl::StatusOr<ScaleType> ParseScaleType(absl::string_view s);  // auto|float16|float32
absl::StatusOr<Rounding> ParseRounding(absl::string_view s);    // balanced|nearest
// Whether a layer of `op_type` quantized with `granularity` (split or not, at
// options.bits) gets balanced rounding.
bool BalancedRounding(const QuantizeOptions& options, Granularity granularity,
                      const std::string& op_type, bool split);
// Whether its split uses quantization-aware cuts (options.quant_aware_boundaries, true by
// default); never under blocked granularity.
bool QuantAwareBoundaries(const QuantizeOptions& options, Granularity granularity);
absl::StatusOr<SplitMode> ParseSplitMode(absl::string_view s);  // on|off|auto (true|false)
// 'REGEX=key:value,...'. InvalidArgument naming the bad part: no '=', an unknown key, a
// bad value, a regex RE2 rejects.
absl::StatusOr<LayerOverride> ParseLayerOverride(absl::string_view spec);
// The canonical text of an override (what ParseLayerOverride reads back).
std::string ToString(const LayerOverride& o);
// The settings of the layer whose node name is `layer_name`.
LayerSettings SettingsForLayer(const QuantizeOptions& options, absl::string_view layer_name);
const char* ToString(Granularity g);
const char* ToString(OutputFormat f);
const char* ToString(SplitForm f);
const char* ToString(Target t);
const char* ToString(ClusterScope c);
const char* ToString(ScaleType t);
const char* ToString(Rounding r);
const char* ToString(SplitMode m);
const char* ToString(ActivationType a);
const char* ToString(CalibrationMethod m);
const char* ToString(ActivationSplit a);
absl::StatusOr<ActivationType> ParseActivationType(absl::string_view s);        // off|int8|uint8
absl::StatusOr<CalibrationMethod> ParseCalibrationMethod(absl::string_view s);  // minmax|percentile
absl::StatusOr<ActivationSplit> ParseActivationSplit(absl::string_view s);  // off|on|range|positional
// 'NAME=LO:HI' with LO <= 0 <= HI not required but LO < HI, both finite.
absl::StatusOr<QuantizeOptions::InputRange> ParseInputRange(absl::string_view spec);

}  // namespace sq

#endif  // SQ_CORE_OPTIONS_H_
