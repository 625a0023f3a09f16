// PaddleOCR-style preprocessing, ONNX Runtime inference of the recognizer and the
// orientation classifier, greedy CTC decoding and the metrics of the OCR benchmark.
#ifndef SQ_BENCH_OCR_OCR_EVAL_H_
#define SQ_BENCH_OCR_OCR_EVAL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/ocr/render.h"

namespace sq_bench {

// The CTC dictionary: index 0 = blank, 1..n = the lines of ppocr_keys_v1.txt, n+1 = space.
class CtcDictionary {
 public:
  bool Load(const std::string& path, std::string* error);
  const std::string& Symbol(int index) const { return symbols_[index]; }
  int size() const { return int(symbols_.size()); }
  // The single-byte characters the dictionary can emit (for choosing benchmark text).
  std::string AsciiCharacters() const;
  // Greedy CTC decoding of [T, C] scores: argmax per step, collapse repeats, drop blank.
  std::string Decode(const float* scores, int steps, int classes) const;

 private:
  std::vector<std::string> symbols_;
};

// A preprocessed NCHW float tensor (N = 1 for rec, any N for cls batches).
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// PaddleOCR recognizer input: height 48, width = ceil(48 * w / h), right-padded with zeros
// (after normalisation) to at least 320; (x / 255 - 0.5) / 0.5; 3 channels.
Tensor PreprocessRec(const GrayImage& img);
// PaddleOCR classifier input for one image: height 48, width min(192, ceil(48 * w / h)),
// right-padded to 192. Appended to `batch` (shape [N, 3, 48, 192]).
void AppendPreprocessedCls(const GrayImage& img, Tensor* batch);

// Levenshtein distance between two UTF-8 strings, in code points.
int EditDistance(const std::string& a, const std::string& b);
size_t CodePointCount(const std::string& s);

class OrtModel {
 public:
  // intra_threads: ONNX Runtime intra-op threads.
  static std::unique_ptr<OrtModel> Load(const std::string& path, int intra_threads,
                                        std::string* error);
  ~OrtModel();
  // Runs the model's first input -> first output. False + error on failure.
  bool Run(const Tensor& input, Tensor* output, std::string* error);

 private:
  OrtModel();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct EvalResult {
  int lines = 0;
  int rec_exact = 0;
  int64_t ref_chars = 0, edit_distance = 0;
  int cls_correct = 0;
  double rec_exact_pct() const { return lines ? 100.0 * rec_exact / lines : 0; }
  // 1 - CER (total edit distance over total reference characters), in percent; may go
  // below zero when the model inserts many characters (reported unclamped).
  double rec_char_pct() const {
    return ref_chars ? 100.0 * (1.0 - double(edit_distance) / double(ref_chars)) : 0;
  }
  double cls_pct() const { return lines ? 100.0 * cls_correct / lines : 0; }
  double rec_seconds = 0, cls_seconds = 0;
  std::vector<std::string> predictions;  // rec output per line
  std::vector<int> cls_predictions;
};

// Preprocessed inputs of a set, computed once and shared by all configurations.
struct PreparedSet {
  std::vector<std::string> texts;
  std::vector<int> labels;
  std::vector<Tensor> rec_inputs;   // one per line, upright by ground truth
  std::vector<Tensor> cls_batches;  // batches of up to `cls_batch` lines
};
PreparedSet PrepareSet(const std::vector<TextLine>& lines, int cls_batch);

// Evaluates rec (on ground-truth-upright lines) and cls. False + error on an ORT failure.
bool Evaluate(OrtModel& rec, OrtModel& cls, const CtcDictionary& dict, const PreparedSet& set,
              EvalResult* result, std::string* error);

}  // namespace sq_bench

#endif  // SQ_BENCH_OCR_OCR_EVAL_H_
