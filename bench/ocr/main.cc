// sq_bench_ocr: accuracy of SplitQuant vs plain linear weight quantization on the real
// PaddleOCR recognizer (ch_PP-OCRv4_rec) and orientation classifier (ch_ppocr_mobile_v2.0_cls),
// measured on a seeded synthetic set of labelled text lines. See docs/benchmarks.md.
//
//   sq_bench_ocr [--variant hard|clean] [--lines 300] [--seed 1] [--configs all|NAME,...]
//                [--out-json FILE] [--work-dir DIR] [--ort-threads 2] [--quant-threads 2]
//                [--models-dir DIR] [--no-clean-sanity] [--dump-dir DIR] [--list-configs]
//                [--form folded|branches] [--cluster-scope auto|tensor|channel]
//                [--scale-type auto|float16|float32]
//                [--show-errors N]
//
// Config names: fp32, or int<B>-<tensor|channel|block<N>>-<asym|sym>-<MODE>[-TARGET]
// (format `fake` unless suffixed; TARGET qdq, ort (--target ort-cpu), ort0 (ort-cpu with
// MatMulNBits accuracy_level 0) or portable: the artifacts users get). MODE: plain, split
// (the engine's default split), paper (the paper's method: reference k-means, k-means
// boundaries, min/max ranges, float32 scales), auto (--split auto).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/ocr/ocr_eval.h"
#include "bench/ocr/render.h"

#ifndef SQ_BENCH_OCR_NO_ENGINE
#include "core/engine.h"
#endif

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace sq_bench;

namespace {

struct Config {
  std::string name;
  bool fp32 = false;
  int bits = 0;
  std::string granularity;  // tensor, channel, block
  int block_size = 0;
  bool symmetric = false;
  bool split = false;
  std::string mode = "plain";  // plain, split, paper, auto, budget<B> (--bpw-budget B)
  double budget = 0;
  bool qdq = false;          // a real quantized artifact (any target), not fake quant
  std::string target = "qdq";  // with qdq: qdq, ort (MatMulNBits accuracy_level 4), ort0
                               // (accuracy_level 0) or portable
  // Full-integer (target qdq only): "" weights only, "a8" int8 activations from the
  // calibration set, "a8df" int8 activations from the data-free estimate.
  std::string act;
  std::string act_split;  // "", "asr" (--split-activations range), "asp" (positional)
};

std::string ConfigName(const Config& c) {
  if (c.fp32) return "fp32";
  std::string g = c.granularity == "block" ? "block" + std::to_string(c.block_size) : c.granularity;
  return "int" + std::to_string(c.bits) + "-" + g + "-" + (c.symmetric ? "sym" : "asym") + "-" +
         c.mode + (c.qdq ? "-" + c.target : "") + (c.act.empty() ? "" : "-" + c.act) +
         (c.act_split.empty() ? "" : "-" + c.act_split);
}

bool ParseConfig(const std::string& name, Config* c) {
  *c = Config();
  c->name = name;
  if (name == "fp32") {
    c->fp32 = true;
    return true;
  }
  std::vector<std::string> p;
  std::stringstream ss(name);
  for (std::string t; std::getline(ss, t, '-');) p.push_back(t);
  // Trailing full-integer tokens: -a8 / -a8df, then -asr / -asp.
  while (p.size() > 5 && (p.back() == "asr" || p.back() == "asp" || p.back() == "a8" || p.back() == "a8df")) {
    (p.back()[1] == 's' ? c->act_split : c->act) = p.back();
    p.pop_back();
  }
  if (p.size() < 4 || p.size() > 5 || p[0].rfind("int", 0) != 0) return false;
  c->bits = std::atoi(p[0].c_str() + 3);
  if (p[1] == "tensor" || p[1] == "channel") {
    c->granularity = p[1];
  } else if (p[1].rfind("block", 0) == 0) {
    c->granularity = "block";
    c->block_size = std::atoi(p[1].c_str() + 5);
  } else {
    return false;
  }
  if (p[2] != "asym" && p[2] != "sym") return false;
  c->symmetric = p[2] == "sym";
  if (p[3].rfind("budget", 0) == 0) {
    c->budget = std::atof(p[3].c_str() + 6);
    if (!(c->budget > 0) || p.size() != 5) return false;  // a stored size: a real artifact
  } else if (p[3] != "plain" && p[3] != "split" && p[3] != "paper" && p[3] != "auto") {
    return false;
  }
  c->mode = p[3];
  c->split = p[3] != "plain";
  if (p.size() == 5) {
    if (p[4] != "qdq" && p[4] != "ort" && p[4] != "ort0" && p[4] != "portable") return false;
    c->qdq = true;
    c->target = p[4];
  }
  return c->bits >= 2 && c->bits <= 8 && ConfigName(*c) == name;
}

std::vector<std::string> DefaultSweep() {
  // The artifacts users get (qdq), run in ONNX Runtime: plain, the paper's split, the
  // default split and --split auto, at the configurations docs/accuracy.md reports.
  std::vector<std::string> v = {"fp32"};
  for (const char* base : {"int4-channel-asym", "int8-tensor-asym"})
    for (const char* mode : {"plain", "paper", "split", "auto"})
      v.push_back(std::string(base) + "-" + mode + "-qdq");
  for (const char* base : {"int8-channel-asym", "int4-tensor-asym", "int2-channel-asym", "int2-block32-asym"})
    for (const char* mode : {"plain", "paper", "split"})
      v.push_back(std::string(base) + "-" + mode + "-qdq");
  return v;
}

struct ModelQuant {
  bool ok = false;
  std::string error;
  double seconds = 0;  // wall time of QuantizeModelFile
  double mean_sqnr_plain_db = 0, mean_sqnr_split_db = 0;
  int layers_found = 0, layers_quantized = 0, layers_split = 0;
  int output_opset = 0;
  int64_t input_bytes = 0, output_bytes = 0;
  double quantized_bpw = 0;
  json layers = json::array();
  std::vector<std::string> warnings;
};

// Split form for every quantized config. `folded` (three dequantized branches summed into
// one weight, one op) is numerically the split model with 1x compute; `branches` is the
// paper's three-op structure (3x compute, same values up to float summation order).
std::string g_form = "folded";
// Which values one k-means sees (engine option): auto (paper), tensor, channel.
std::string g_cluster_scope = "auto";
// Weight scales of every quantized config (--scale-type: auto, the default, float16, float32).
std::string g_scale_type = "auto";
// Calibration samples (one .npy per line of a set disjoint from the test lines) for the
// full-integer configs, per model.
std::string g_calib_rec_dir, g_calib_cls_dir;

ModelQuant Quantize(const Config& c, const std::string& in, const std::string& out,
                    int threads, const std::string& calib_dir) {
  ModelQuant q;
#ifdef SQ_BENCH_OCR_NO_ENGINE
  q.error = "built without the engine (SQ_BENCH_OCR_NO_ENGINE)";
#else
  sq::QuantizeOptions o;
  o.bits = c.bits;
  o.granularity = c.granularity == "tensor"    ? sq::Granularity::kTensor
                  : c.granularity == "channel" ? sq::Granularity::kChannel
                                               : sq::Granularity::kBlock;
  if (c.granularity == "block") o.block_size = c.block_size;
  o.symmetric = c.symmetric;
  o.bpw_budget = c.budget;
  o.split = c.mode == "plain" ? sq::SplitMode::kOff
            : c.mode == "auto" ? sq::SplitMode::kAuto
                               : sq::SplitMode::kOn;
  if (c.mode == "paper") {
    o.reference_kmeans = true;
    o.quant_aware_boundaries = false;
    o.rounding = sq::Rounding::kNearest;
  }
  // SQ_BENCH_ROUNDING=nearest|balanced overrides the rounding (default: the engine's).
  if (const char* r = std::getenv("SQ_BENCH_ROUNDING"); r && *r) {
    o.rounding = *sq::ParseRounding(r);
  }
  // SQ_BENCH_KMEANS=reference runs the paper's k-means instead of the exact optimum.
  if (const char* k = std::getenv("SQ_BENCH_KMEANS"); k && std::string(k) == "reference") {
    o.reference_kmeans = true;
  }
  // SQ_BENCH_BOUNDARIES=kmeans|quant picks the cut criterion (default: the engine's).
  if (const char* b = std::getenv("SQ_BENCH_BOUNDARIES"); b && *b && c.mode != "paper") {
    o.quant_aware_boundaries = std::string(b) == "quant";
  }
  o.format = c.qdq ? sq::OutputFormat::kQdq : sq::OutputFormat::kFake;
  o.threads = threads;
  o.verify = false;  // the bench runs its own evaluation in ONNX Runtime; timings exclude it
  o.form = g_form == "branches" ? sq::SplitForm::kBranches : sq::SplitForm::kFolded;
  // The engine's default target is ort-cpu: a -qdq config names target qdq explicitly.
  if (c.qdq && c.target == "qdq") o.target = sq::Target::kQdq;
  if (c.qdq && c.target != "qdq") {
    o.target = c.target == "portable" ? sq::Target::kPortable : sq::Target::kOrtCpu;
    o.ort_accuracy_level = c.target == "ort0" ? 0 : 4;
    o.form = g_form == "branches" ? sq::SplitForm::kBranches : sq::SplitForm::kAuto;
  }
  if (!c.act.empty()) {
    o.activations = sq::ActivationType::kInt8;
    // SQ_BENCH_ACTIVATIONS=uint8: ONNX Runtime's x86 integer kernels' native type.
    if (const char* t = std::getenv("SQ_BENCH_ACTIVATIONS"); t && std::string(t) == "uint8") {
      o.activations = sq::ActivationType::kUint8;
    }
    o.form = sq::SplitForm::kBranches;  // each branch its own integer op
    if (c.act == "a8") o.calibration_inputs = {calib_dir};
    else o.input_ranges = {{"x", -1.0f, 1.0f}};  // both models' input: (pixel / 255 - 0.5) / 0.5
  }
  if (!c.act_split.empty()) {
    o.split_activations = c.act_split == "asr" ? sq::ActivationSplit::kRange : sq::ActivationSplit::kPositional;
    if (c.act.empty() && o.split_activations == sq::ActivationSplit::kRange) o.calibration_inputs = {calib_dir};
  }
  if (const char* m = std::getenv("SQ_BENCH_CALIBRATION"); m && *m) {
    o.calibration_method = std::string(m) == "minmax" ? sq::CalibrationMethod::kMinMax
                                                      : sq::CalibrationMethod::kPercentile;
  }
  if (const char* p = std::getenv("SQ_BENCH_PERCENTILE"); p && *p) o.calibration_percentile = std::atof(p);
  // SQ_BENCH_EXCLUDE_OP=MatMul,Gemm leaves those layers FP32 (sensitivity studies).
  if (const char* x = std::getenv("SQ_BENCH_EXCLUDE_OP"); x && *x) {
    std::stringstream ss(x);
    for (std::string t; std::getline(ss, t, ',');) o.exclude_op_types.push_back(t);
  }
  // SQ_BENCH_LAYER='REGEX=key:value,...;REGEX2=...' adds per-layer overrides (sensitivity
  // studies: one layer at a time at other settings).
  if (const char* x = std::getenv("SQ_BENCH_LAYER"); x && *x) {
    std::stringstream ss(x);
    for (std::string t; std::getline(ss, t, ';');) {
      auto ov = sq::ParseLayerOverride(t);
      if (!ov.ok()) {
        q.error = ov.status().ToString();
        return q;
      }
      o.layer_overrides.push_back(*ov);
    }
  }
  o.scale_type = *sq::ParseScaleType(g_scale_type);
  if (c.mode == "paper") o.scale_type = sq::ScaleType::kFloat32;  // the paper's float scales
  o.cluster_scope = g_cluster_scope == "tensor"    ? sq::ClusterScope::kTensor
                    : g_cluster_scope == "channel" ? sq::ClusterScope::kChannel
                                                   : sq::ClusterScope::kAuto;
  auto t0 = std::chrono::steady_clock::now();
  auto r = sq::QuantizeModelFile(in, out, o);
  q.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok()) {
    q.error = r.status().ToString();
    return q;
  }
  q.ok = true;
  q.mean_sqnr_plain_db = r->mean_sqnr_plain_db;
  q.mean_sqnr_split_db = r->mean_sqnr_split_db;
  q.layers_found = r->layers_found;
  q.layers_quantized = r->layers_quantized;
  q.layers_split = r->layers_split;
  q.output_opset = r->output_opset;
  q.input_bytes = r->input_bytes;
  q.output_bytes = r->output_bytes;
  q.quantized_bpw = r->quantized_bits_per_weight;
  q.warnings = r->warnings;
  for (const auto& l : r->layers) {
    json j = {{"name", l.name},         {"op_type", l.op_type},
              {"shape", l.shape},       {"quantized", l.quantized},
              {"split", l.split},       {"sqnr_plain_db", l.sqnr_plain_db},
              {"sqnr_split_db", l.sqnr_split_db}};
    if (!l.skip_reason.empty()) j["skip_reason"] = l.skip_reason;
    if (!l.not_split_reason.empty()) j["not_split_reason"] = l.not_split_reason;
    q.layers.push_back(j);
  }
#endif
  return q;
}

// A float32 tensor as NumPy .npy (format 1.0), for calibration samples.
bool WriteNpy(const Tensor& t, const std::string& path) {
  std::string shape;
  for (size_t i = 0; i < t.shape.size(); ++i) shape += std::to_string(t.shape[i]) + (t.shape.size() == 1 || i + 1 < t.shape.size() ? "," : "");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << header;
  f.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * 4));
  return static_cast<bool>(f);
}

struct Row {
  Config config;
  std::string set;  // variant name
  bool ok = false;
  std::string error;
  EvalResult eval;
  ModelQuant rec_q, cls_q;
  double eval_seconds = 0;
};

std::string Fmt(const char* f, double v) {
  if (std::isnan(v)) return "n/a";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// Effective mean layer SQNR for the config: split SQNR when split, plain otherwise.
double EffSqnr(const Row& r, const ModelQuant& q) {
  if (r.config.fp32 || !q.ok) return NAN;
  return r.config.split ? q.mean_sqnr_split_db : q.mean_sqnr_plain_db;
}

void PrintTable(const std::vector<Row>& rows) {
  std::printf(
      "\n| config | set | rec exact %% | rec char %% | cls %% | mean SQNR rec dB | mean SQNR cls dB "
      "| rec stored bpw | rec MiB | quantize s (rec+cls) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    if (!r.ok) {
      std::printf("| %s | %s | failed: %s |||||\n", r.config.name.c_str(), r.set.c_str(),
                  r.error.c_str());
      continue;
    }
    std::string qs = r.config.fp32 ? "-" : Fmt("%.2f", r.rec_q.seconds + r.cls_q.seconds);
    // Stored size means something only for the real (qdq) artifact.
    const bool sized = r.config.qdq && r.rec_q.ok;
    std::printf("| %s | %s | %.1f | %.1f | %.1f | %s | %s | %s | %s | %s |\n", r.config.name.c_str(),
                r.set.c_str(), r.eval.rec_exact_pct(), r.eval.rec_char_pct(), r.eval.cls_pct(),
                r.config.fp32 ? "-" : Fmt("%.2f", EffSqnr(r, r.rec_q)).c_str(),
                r.config.fp32 ? "-" : Fmt("%.2f", EffSqnr(r, r.cls_q)).c_str(),
                sized ? Fmt("%.2f", r.rec_q.quantized_bpw).c_str() : "-",
                sized ? Fmt("%.2f", r.rec_q.output_bytes / 1048576.0).c_str() : "-", qs.c_str());
  }
}

// Plain vs split side by side, with the differences; flags any metric where split is worse.
json PrintPairs(const std::vector<Row>& rows, const std::string& set) {
  json pairs = json::array();
  std::map<std::string, const Row*> by_name;
  for (const Row& r : rows)
    if (r.set == set && r.ok) by_name[r.config.name] = &r;
  std::printf(
      "\n| base config | exact plain -> split | char plain -> split | cls plain -> split | SQNR rec "
      "plain -> split | SQNR cls plain -> split | split worse? |\n"
      "|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (r.set != set || !r.ok || r.config.fp32 || r.config.split) continue;
    Config sc = r.config;  // the default split of the same base (and the same format)
    sc.split = true;
    sc.mode = "split";
    auto it = by_name.find(ConfigName(sc));
    if (it == by_name.end()) continue;
    const Row& s = *it->second;
    std::string base = r.config.name;
    base.erase(base.find("-plain"), 6);
    double de = s.eval.rec_exact_pct() - r.eval.rec_exact_pct();
    double dc = s.eval.rec_char_pct() - r.eval.rec_char_pct();
    double dk = s.eval.cls_pct() - r.eval.cls_pct();
    std::vector<std::string> worse;
    if (de < 0) worse.push_back("exact " + Fmt("%+.1f", de));
    if (dc < 0) worse.push_back("char " + Fmt("%+.1f", dc));
    if (dk < 0) worse.push_back("cls " + Fmt("%+.1f", dk));
    if (EffSqnr(s, s.rec_q) < EffSqnr(r, r.rec_q)) worse.push_back("SQNR rec");
    if (EffSqnr(s, s.cls_q) < EffSqnr(r, r.cls_q)) worse.push_back("SQNR cls");
    std::string w;
    for (auto& x : worse) w += (w.empty() ? "" : ", ") + x;
    std::printf("| %s | %.1f -> %.1f | %.1f -> %.1f | %.1f -> %.1f | %.2f -> %.2f | %.2f -> %.2f | %s |\n",
                base.c_str(), r.eval.rec_exact_pct(), s.eval.rec_exact_pct(),
                r.eval.rec_char_pct(), s.eval.rec_char_pct(), r.eval.cls_pct(), s.eval.cls_pct(),
                EffSqnr(r, r.rec_q), EffSqnr(s, s.rec_q), EffSqnr(r, r.cls_q),
                EffSqnr(s, s.cls_q), w.empty() ? "no" : ("YES: " + w).c_str());
    pairs.push_back({{"base", base},
                     {"plain", r.config.name},
                     {"split", s.config.name},
                     {"delta_rec_exact_pct", de},
                     {"delta_rec_char_pct", dc},
                     {"delta_cls_pct", dk},
                     {"split_worse_on", worse}});
  }
  // QDQ check: a -qdq config against the same config in `fake` format.
  bool header = false;
  for (const Row& r : rows) {
    if (r.set != set || !r.config.qdq) continue;
    Config fc = r.config;
    fc.qdq = false;
    auto it = by_name.find(ConfigName(fc));
    if (!header) {
      std::printf("\n| qdq config | exact qdq / fake | char qdq / fake | cls qdq / fake | output opset "
                  "(rec, cls) | same predictions |\n|---|---|---|---|---|---|\n");
      header = true;
    }
    if (!r.ok || it == by_name.end()) {
      std::printf("| %s | %s |||||\n", r.config.name.c_str(),
                  r.ok ? "no fake counterpart in this run" : ("failed: " + r.error).c_str());
      continue;
    }
    const Row& f = *it->second;
    int same = 0;
    for (size_t i = 0; i < r.eval.predictions.size() && i < f.eval.predictions.size(); ++i)
      same += r.eval.predictions[i] == f.eval.predictions[i] &&
              r.eval.cls_predictions[i] == f.eval.cls_predictions[i];
    std::printf("| %s | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f | %d, %d | %d / %d |\n",
                r.config.name.c_str(), r.eval.rec_exact_pct(), f.eval.rec_exact_pct(),
                r.eval.rec_char_pct(), f.eval.rec_char_pct(), r.eval.cls_pct(), f.eval.cls_pct(),
                r.rec_q.output_opset, r.cls_q.output_opset, same, r.eval.lines);
  }
  return pairs;
}

json RowJson(const Row& r) {
  auto qj = [](const ModelQuant& q) {
    json j = {{"ok", q.ok}, {"quantize_seconds", q.seconds}};
    if (!q.ok) {
      j["error"] = q.error;
      return j;
    }
    j.update({{"mean_sqnr_plain_db", q.mean_sqnr_plain_db},
              {"mean_sqnr_split_db", q.mean_sqnr_split_db},
              {"layers_found", q.layers_found},
              {"layers_quantized", q.layers_quantized},
              {"layers_split", q.layers_split},
              {"output_opset", q.output_opset},
              {"input_bytes", q.input_bytes},
              {"output_bytes", q.output_bytes},
              {"quantized_bits_per_weight", q.quantized_bpw},
              {"warnings", q.warnings},
              {"layers", q.layers}});
    return j;
  };
  json j = {{"config", r.config.name}, {"set", r.set}, {"ok", r.ok}};
  if (!r.config.fp32) {
    j["options"] = {{"bits", r.config.bits},
                    {"granularity", r.config.granularity},
                    {"symmetric", r.config.symmetric},
                    {"split", r.config.split},
                    {"format", r.config.qdq ? "qdq" : "fake"}};
    if (r.config.granularity == "block") j["options"]["block_size"] = r.config.block_size;
    j["rec_quantize"] = qj(r.rec_q);
    j["cls_quantize"] = qj(r.cls_q);
  }
  if (!r.ok) {
    j["error"] = r.error;
    return j;
  }
  j.update({{"lines", r.eval.lines},
            {"rec_exact_pct", r.eval.rec_exact_pct()},
            {"rec_char_accuracy_pct", r.eval.rec_char_pct()},
            {"cls_accuracy_pct", r.eval.cls_pct()},
            {"rec_edit_distance", r.eval.edit_distance},
            {"rec_reference_chars", r.eval.ref_chars},
            {"rec_eval_seconds", r.eval.rec_seconds},
            {"cls_eval_seconds", r.eval.cls_seconds}});
  // A few predictions, to see what failure looks like.
  json ex = json::array();
  for (size_t i = 0; i < r.eval.predictions.size() && i < 8; ++i) ex.push_back(r.eval.predictions[i]);
  j["first_predictions"] = ex;
  return j;
}

void Usage() {
  std::fprintf(stderr,
               "usage: sq_bench_ocr [--variant hard|clean] [--lines N] [--seed S]\n"
               "  [--configs all|NAME[,NAME...]] [--out-json FILE] [--work-dir DIR]\n"
               "  [--ort-threads N] [--quant-threads N] [--models-dir DIR] [--fonts-dir DIR]\n"
               "  [--words FILE] [--no-clean-sanity] [--dump-dir DIR] [--show-errors N]\n"
               "  [--calibration-lines N] [--calibration-seed S] [--calibration-only]\n"
               "  [--form folded|branches] [--cluster-scope auto|tensor|channel]\n"
               "  [--scale-type auto|float16|float32]\n"
               "  [--list-configs]\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string variant = "hard", configs_arg = "all", out_json, work_dir = "/tmp/sq_bench_ocr";
  std::string models_dir = std::string(std::getenv("HOME") ? std::getenv("HOME") : "/root") +
                           "/.cache/sq/ocr-models-1.4.2";
  std::string fonts_dir = "/usr/share/fonts/truetype/dejavu";
  std::string words = "/usr/share/dict/american-english";
  std::string dump_dir;
  int lines = 300, ort_threads = 2, quant_threads = 2, show_errors = 0, calib_lines = 32;
  uint64_t calib_seed = 0;
  bool calib_seed_set = false;
  uint64_t seed = 1;
  bool clean_sanity = true;
  bool calibration_only = false;  // write the calibration set under --work-dir and stop
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--variant") variant = next();
    else if (a == "--lines") lines = std::atoi(next().c_str());
    else if (a == "--calibration-lines") calib_lines = std::atoi(next().c_str());
    else if (a == "--calibration-seed") {
      calib_seed = std::strtoull(next().c_str(), nullptr, 10);
      calib_seed_set = true;
    }
    else if (a == "--calibration-only") calibration_only = true;
    else if (a == "--seed") seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--configs") configs_arg = next();
    else if (a == "--out-json") out_json = next();
    else if (a == "--work-dir") work_dir = next();
    else if (a == "--ort-threads") ort_threads = std::atoi(next().c_str());
    else if (a == "--quant-threads") quant_threads = std::atoi(next().c_str());
    else if (a == "--models-dir") models_dir = next();
    else if (a == "--fonts-dir") fonts_dir = next();
    else if (a == "--words") words = next();
    else if (a == "--dump-dir") dump_dir = next();
    else if (a == "--no-clean-sanity") clean_sanity = false;
    else if (a == "--form") g_form = next();
    else if (a == "--cluster-scope") g_cluster_scope = next();
    else if (a == "--scale-type") g_scale_type = next();
    else if (a == "--show-errors") show_errors = std::atoi(next().c_str());
    else if (a == "--list-configs") {
      for (auto& n : DefaultSweep()) std::printf("%s\n", n.c_str());
      return 0;
    } else {
      Usage();
      return 2;
    }
  }
  if ((variant != "hard" && variant != "clean") || lines <= 0 ||
      (g_form != "folded" && g_form != "branches") ||
      (g_cluster_scope != "auto" && g_cluster_scope != "tensor" && g_cluster_scope != "channel") ||
      !sq::ParseScaleType(g_scale_type).ok()) {
    Usage();
    return 2;
  }
  std::vector<Config> configs;
  {
    std::vector<std::string> names;
    if (configs_arg == "all") {
      names = DefaultSweep();
    } else {
      std::stringstream ss(configs_arg);
      for (std::string t; std::getline(ss, t, ',');)
        if (!t.empty()) names.push_back(t);
    }
    for (auto& n : names) {
      Config c;
      if (!ParseConfig(n, &c)) {
        std::fprintf(stderr, "bad config name: %s\n", n.c_str());
        return 2;
      }
      configs.push_back(c);
    }
  }

  const std::string rec_path = models_dir + "/ch_PP-OCRv4_rec_infer.onnx";
  const std::string cls_path = models_dir + "/ch_ppocr_mobile_v2.0_cls_infer.onnx";
  std::string err;
  CtcDictionary dict;
  if (!dict.Load(models_dir + "/ppocr_keys_v1.txt", &err)) {
    std::fprintf(stderr, "%s (run scripts/setup.sh)\n", err.c_str());
    return 1;
  }
  auto renderer = LineRenderer::Create(fonts_dir, words, dict.AsciiCharacters(), &err);
  if (!renderer) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  fs::create_directories(work_dir);

  SetSpec spec;
  spec.variant = variant == "hard" ? SetVariant::kHard : SetVariant::kClean;
  spec.lines = lines;
  spec.seed = seed;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<TextLine> set = renderer->RenderSet(spec);
  PreparedSet prepared = PrepareSet(set, 16);
  double render_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int rotated = 0;
  double mean_chars = 0;
  for (auto& l : set) {
    rotated += l.rotated;
    mean_chars += double(l.text.size()) / set.size();
  }
  std::fprintf(stderr, "set: %s, %d lines, seed %llu, %d rotated, %.1f chars/line, %zu words; "
               "rendered+preprocessed in %.2f s\n",
               variant.c_str(), lines, (unsigned long long)seed, rotated, mean_chars,
               renderer->word_count(), render_s);
  if (!dump_dir.empty()) {
    fs::create_directories(dump_dir);
    std::ofstream labels(dump_dir + "/labels.tsv");
    for (size_t i = 0; i < set.size() && i < 64; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "%s_%03zu.pgm", variant.c_str(), i);
      WritePgm(set[i].image, dump_dir + "/" + name);
      labels << name << "\t" << set[i].rotated << "\t" << set[i].font << "\t" << set[i].text
             << "\n";
    }
  }

  // The calibration set: other lines (another seed), the same variant.
  {
    SetSpec cal = spec;
    cal.lines = calib_lines;
    // Default: seed + 1000003, disjoint from the test lines; --calibration-seed draws another.
    cal.seed = calib_seed_set ? calib_seed : seed + 1000003;
    std::vector<TextLine> cal_set = renderer->RenderSet(cal);
    g_calib_rec_dir = (fs::path(work_dir) / "calibration-rec").string();
    g_calib_cls_dir = (fs::path(work_dir) / "calibration-cls").string();
    fs::create_directories(g_calib_rec_dir);
    fs::create_directories(g_calib_cls_dir);
    for (size_t i = 0; i < cal_set.size(); ++i) {
      char name[32];
      std::snprintf(name, sizeof name, "line%03zu.npy", i);
      Tensor rec = PreprocessRec(cal_set[i].image);
      Tensor cls;
      AppendPreprocessedCls(cal_set[i].image, &cls);
      if (!WriteNpy(rec, g_calib_rec_dir + "/" + name) || !WriteNpy(cls, g_calib_cls_dir + "/" + name)) {
        std::fprintf(stderr, "cannot write calibration samples under %s\n", work_dir.c_str());
        return 1;
      }
    }
  }

  if (calibration_only) {
    std::printf("%s\n%s\n", g_calib_rec_dir.c_str(), g_calib_cls_dir.c_str());
    return 0;
  }

  std::vector<Row> rows;
  auto eval_models = [&](Row& row, const std::string& rec, const std::string& cls,
                         const PreparedSet& ps) {
    auto e0 = std::chrono::steady_clock::now();
    auto rm = OrtModel::Load(rec, ort_threads, &row.error);
    if (!rm) return;
    auto cm = OrtModel::Load(cls, ort_threads, &row.error);
    if (!cm) return;
    if (!Evaluate(*rm, *cm, dict, ps, &row.eval, &row.error)) return;
    row.ok = true;
    for (int i = 0, shown = 0; i < row.eval.lines && shown < show_errors; ++i) {
      const bool rec_bad = row.eval.predictions[i] != ps.texts[i];
      const bool cls_bad = row.eval.cls_predictions[i] != ps.labels[i];
      if (!rec_bad && !cls_bad) continue;
      ++shown;
      std::fprintf(stderr, "  %s line %d: ref \"%s\" rec \"%s\" cls %d (label %d)\n",
                   row.config.name.c_str(), i, ps.texts[i].c_str(),
                   row.eval.predictions[i].c_str(), row.eval.cls_predictions[i], ps.labels[i]);
    }
    row.eval_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
  };

  if (clean_sanity && spec.variant == SetVariant::kHard) {
    SetSpec cs = spec;
    cs.variant = SetVariant::kClean;
    PreparedSet clean = PrepareSet(renderer->RenderSet(cs), 16);
    Row row;
    ParseConfig("fp32", &row.config);
    row.set = "clean";
    eval_models(row, rec_path, cls_path, clean);
    std::fprintf(stderr, "[clean sanity] fp32: exact %.1f %% char %.1f %% cls %.1f %%%s\n",
                 row.eval.rec_exact_pct(), row.eval.rec_char_pct(), row.eval.cls_pct(),
                 row.ok ? "" : (" FAILED: " + row.error).c_str());
    rows.push_back(std::move(row));
  }

  for (const Config& c : configs) {
    Row row;
    row.config = c;
    row.set = variant;
    if (c.fp32) {
      eval_models(row, rec_path, cls_path, prepared);
    } else {
      fs::path dir = fs::path(work_dir) / c.name;
      fs::create_directories(dir);
      std::string rq = (dir / "rec.onnx").string(), cq = (dir / "cls.onnx").string();
      row.rec_q = Quantize(c, rec_path, rq, quant_threads, g_calib_rec_dir);
      row.cls_q = row.rec_q.ok ? Quantize(c, cls_path, cq, quant_threads, g_calib_cls_dir) : ModelQuant();
      if (!row.rec_q.ok) row.error = "quantize rec: " + row.rec_q.error;
      else if (!row.cls_q.ok) row.error = "quantize cls: " + row.cls_q.error;
      else eval_models(row, rq, cq, prepared);
      std::error_code ec;
      fs::remove_all(dir, ec);  // quantized models are regenerated on every run
    }
    if (row.ok)
      std::fprintf(stderr, "[%s] exact %.1f %% char %.1f %% cls %.1f %% | SQNR rec %.2f/%.2f "
                   "cls %.2f/%.2f dB (plain/split) | quantize %.2f s, eval %.1f s\n",
                   c.name.c_str(), row.eval.rec_exact_pct(), row.eval.rec_char_pct(),
                   row.eval.cls_pct(), row.rec_q.mean_sqnr_plain_db, row.rec_q.mean_sqnr_split_db,
                   row.cls_q.mean_sqnr_plain_db, row.cls_q.mean_sqnr_split_db,
                   row.rec_q.seconds + row.cls_q.seconds, row.eval_seconds);
    else
      std::fprintf(stderr, "[%s] FAILED: %s\n", c.name.c_str(), row.error.c_str());
    rows.push_back(std::move(row));
  }

  PrintTable(rows);
  json pairs = PrintPairs(rows, variant);
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\ntotal %.1f s\n", total_s);

  if (!out_json.empty()) {
    json j;
    j["benchmark"] = "sq_bench_ocr";
    j["set"] = {{"variant", variant},
                {"lines", lines},
                {"seed", seed},
                {"rotated", rotated},
                {"mean_chars_per_line", mean_chars},
                {"words", words},
                {"fonts_dir", fonts_dir},
                {"rec_orientation", "ground truth (rotated lines are turned upright before rec)"}};
    j["models"] = {{"rec", rec_path}, {"cls", cls_path}};
    j["split_form"] = g_form;
    j["cluster_scope"] = g_cluster_scope;
    j["scale_type"] = g_scale_type;
    j["ort_threads"] = ort_threads;
    j["quant_threads"] = quant_threads;
    j["total_seconds"] = total_s;
    j["results"] = json::array();
    for (const Row& r : rows) j["results"].push_back(RowJson(r));
    j["split_vs_plain"] = pairs;
    std::ofstream f(out_json);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", out_json.c_str());
      return 1;
    }
  }
  for (const Row& r : rows)
    if (!r.ok) return 3;  // some configuration failed (reported above)
  return 0;
}
