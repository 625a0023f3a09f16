// The per-layer and per-model report of one quantization run: what was done to each layer
// and why, how much error it introduced (plain linear vs SplitQuant at the chosen bits),
// and what the run cost. Serialised as JSON (the file users keep) and as a short text
// summary (what the CLI prints).
#ifndef SQ_CORE_REPORT_H_
#define SQ_CORE_REPORT_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/options.h"

namespace sq {

struct ClusterRange {
  int64_t count = 0;
  float min = 0, max = 0;
};

struct LayerReport {
  std::string name;                 // node name (or "<op>#<index>" when unnamed)
  std::string op_type;              // MatMul, Gemm, Conv, ConvTranspose, Gather (a table)
  std::string weight;               // initializer / Constant output name
  std::vector<int64_t> shape;
  int shared_by = 1;                // nodes using this weight (processed once)
  std::string graph;                // "main" or the subgraph path, e.g. "main/If_0.then_branch"
  bool quantized = false;
  std::string skip_reason;          // why not quantized (excluded, too small, ...)
  bool split = false;
  std::string not_split_reason;     // why quantized but not split
  std::array<ClusterRange, 3> clusters{};
  int64_t degenerate_channels = 0;
  float scale_min = 0, scale_max = 0;
  double sqnr_plain_db = 0;         // plain linear quantization at the same bits
  double sqnr_split_db = 0;         // with the split (== plain when not split)
  double mse_plain = 0, mse_split = 0;
  int64_t bytes_before = 0;         // FP32 weight bytes
  int64_t bytes_after = 0;          // encoded weight bytes + scales/zero points
  // bytes_after * 8 / elements: what each weight of this layer costs in the artifact, every
  // branch's codes (in their real containers), scales and zero points counted.
  double stored_bits_per_weight = 32;
  double seconds = 0;               // wall time of this layer in stage "transform"
  bool bias_split = false;
  std::string note;                 // e.g. a granularity fallback
  // How the weight is stored: dq (DequantizeLinear per branch), fp32 (format fake/split),
  // compact (codes + cluster ids decoded at load), matmulnbits (com.microsoft.MatMulNBits
  // per branch), matmulnbits-outer8 (middle + outer clusters at 8 bits), gatherblockquantized
  // and gatherblockquantized-outer8 (the same for a table). Empty for a skipped layer.
  std::string form;
  // The settings this layer was quantized with (global options, or a --layer override).
  int bits = 0;
  std::string granularity;          // as applied (after any fallback)
  int block_size = 0;               // blocked granularity only
  bool symmetric = false;
  std::string split_mode;           // on, off, auto
  std::string override_rule;        // the --layer override that matched, if any
  std::string split_decision;       // --split auto: SQNR plain / split / gain and the choice
  // balanced (core/transform/rounding.h) or nearest, as applied to this layer, and with
  // balanced rounding how many output channels were rounded with a non-zero offset.
  std::string rounding;
  int64_t offset_channels = 0;
  // Bands of channels the layer was transformed, re-encoded and written in, to bound
  // memory (0: whole; core/transform_stage.h).
  int64_t bands = 0;
};

struct StageTiming {
  std::string stage;                // load, discover, convert, transform, write
  double seconds = 0;
};

// --bpw-budget: how much a layer's weights suffer at each bit width (its relative weight
// error, error energy / signal energy, the better of plain and split), and what it got.
struct SensitivityEntry {
  std::string layer;
  int64_t elements = 0;
  std::vector<std::pair<int, double>> rel_error_at_bits;  // (bits, relative error), bits ascending
  int chosen_bits = 0;
  bool chosen_split = false;
};

// Stage "verify": the artifact loaded and run in ONNX Runtime beside the FP32 model it came
// from, on the same inputs (core/verify/verify.h says how they are chosen).
struct OutputAgreement {
  std::string name;
  std::vector<int64_t> shape;
  double rel_l2 = 0;             // ||artifact - reference||_2 / ||reference||_2
  double max_abs = 0;            // max |artifact - reference|
  // Floating outputs whose last axis has > 1 entries: the fraction of rows (all but the last
  // axis) whose argmax agrees. Integer and bool outputs: the fraction of equal elements.
  // -1 where neither applies.
  double agreement = -1;
  std::string agreement_kind;    // "argmax" | "equal" | ""
};

struct Verification {
  // "passed"  - the artifact loaded and ran; compared with the reference when `reference_ran`.
  // "skipped" - not run or inconclusive; `note` says why (too large, the input model itself
  //             does not run in ONNX Runtime, ...).
  // "off"     - --verify off.
  // A failure is not recorded here: the run fails with the runtime's message instead.
  std::string status = "off";
  std::string runtime;           // "onnxruntime 1.22.0"
  std::string inputs;            // "seeded (seed 1; symbolic dims 1)" or "file <name>"
  bool reference_ran = false;
  std::string note;
  double seconds = 0;
  std::vector<OutputAgreement> outputs;
};

// Full-integer output (--activations) and the activation split.
struct ActivationReport {
  std::string type = "off";          // off, int8, uint8
  std::string ranges_from;           // "calibration: N samples (percentile 99.99)", "data-free (k 3.72)"
  int quantized_ops = 0;             // layer ops (branches counted) with quantized activations
  int tensors = 0;                   // Q/DQ pairs on activations
  int int32_biases = 0;
  int float_biases = 0;
  // Folded into the layer before them (full-integer output): BatchNormalization, Mul/Add.
  int folded_batch_norms = 0;
  int folded_affine = 0;
  int fused_hardswish = 0;  // x*Clip(x+3,0,6)/6 written as x*HardSigmoid(x)
  // --split-activations: elementwise activations split, and the layer ops that read their
  // groups separately (so each group keeps its own scale).
  std::string split = "off";         // off, range, positional
  int activations_split = 0;
  int consumers_split = 0;
  std::vector<std::string> split_notes;  // one per activation: "<node>: groups 12/20/32 (range)"
  double seconds = 0;
};

struct ModelReport {
  std::string tool_version;
  std::string input_path;
  std::string output_path;
  QuantizeOptions options;
  int input_opset = 0, output_opset = 0;
  int64_t input_bytes = 0;          // model file + external data
  int64_t output_bytes = 0;
  double compression_ratio = 0;     // input_bytes / output_bytes
  std::vector<StageTiming> stages;
  double total_seconds = 0;
  int64_t peak_rss_bytes = 0;
  std::string output_sha256;        // of the .onnx file
  std::string external_data_sha256; // of the external data file, if any
  std::string external_data_path;   // relative to the output's directory, if any
  int layers_found = 0, layers_quantized = 0, layers_split = 0;
  double mean_sqnr_plain_db = 0, mean_sqnr_split_db = 0;  // over quantized layers
  // Stored bits per weight: of the quantized layers (their bytes_after over their
  // elements), and of the whole artifact (output bytes over every floating-point weight
  // element of the input model, so FP32 leftovers, biases and graph overhead count too).
  double quantized_bits_per_weight = 0;
  double artifact_bits_per_weight = 0;
  int64_t model_weight_elements = 0;
  std::vector<std::string> warnings;
  // Initializers that were also graph inputs (IR < 4 models) and became weights.
  std::vector<std::string> initializer_inputs_promoted;
  // Batched MatMul weights ([1.., B, K, N]) unstacked into B 2-D layers (core/unstack.h):
  // "<weight> (<node>): <B> matrices".
  std::vector<std::string> batched_weights_unstacked;
  std::vector<LayerReport> layers;
  // --bpw-budget only: every layer's sensitivity, most sensitive first (what the budget
  // achieved is quantized_bits_per_weight: the engine holds each layer to its count).
  std::vector<SensitivityEntry> sensitivity;
  Verification verification;
  ActivationReport activations;
};

std::string ReportToJson(const ModelReport& report, int indent = 2);
std::string ReportSummary(const ModelReport& report);  // human-readable, a few lines + table
std::string VerificationSummary(const Verification& v);  // one line, "verification: ..." 

}  // namespace sq

#endif  // SQ_CORE_REPORT_H_
