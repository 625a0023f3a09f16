#include "bench/ocr/ocr_eval.h"

#include <cstdlib>
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "core/verify/ort_runner.h"

namespace sq_bench {
namespace {

constexpr int kHeight = 48;
constexpr int kRecMinWidth = 320;
constexpr int kClsWidth = 192;

// Bilinear resize with OpenCV's INTER_LINEAR conventions (half-pixel centres, edge clamp),
// rounded back to 8 bits as cv2.resize on a uint8 image does.
std::vector<uint8_t> ResizeBilinear(const GrayImage& in, int w, int h) {
  std::vector<uint8_t> out(size_t(w) * h);
  const double sx = double(in.width) / w, sy = double(in.height) / h;
  for (int y = 0; y < h; ++y) {
    double fy = (y + 0.5) * sy - 0.5;
    int y0 = int(std::floor(fy));
    fy -= y0;
    if (y0 < 0) { y0 = 0; fy = 0; }
    if (y0 >= in.height - 1) { y0 = in.height - 1; fy = 0; }
    const int y1 = std::min(y0 + 1, in.height - 1);
    for (int x = 0; x < w; ++x) {
      double fx = (x + 0.5) * sx - 0.5;
      int x0 = int(std::floor(fx));
      fx -= x0;
      if (x0 < 0) { x0 = 0; fx = 0; }
      if (x0 >= in.width - 1) { x0 = in.width - 1; fx = 0; }
      const int x1 = std::min(x0 + 1, in.width - 1);
      double v = (1 - fy) * ((1 - fx) * in.at(x0, y0) + fx * in.at(x1, y0)) +
                 fy * ((1 - fx) * in.at(x0, y1) + fx * in.at(x1, y1));
      out[size_t(y) * w + x] = uint8_t(std::clamp(std::lround(v), 0L, 255L));
    }
  }
  return out;
}

// Writes a resized gray image into a [3, 48, width] float block (zero right padding).
void Fill(const std::vector<uint8_t>& px, int rw, int width, float* dst) {
  const size_t plane = size_t(kHeight) * width;
  std::fill(dst, dst + 3 * plane, 0.f);
  for (int y = 0; y < kHeight; ++y)
    for (int x = 0; x < rw; ++x) {
      float v = (px[size_t(y) * rw + x] / 255.f - 0.5f) / 0.5f;
      for (int c = 0; c < 3; ++c) dst[c * plane + size_t(y) * width + x] = v;
    }
}

std::vector<uint32_t> CodePoints(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    uint8_t c = uint8_t(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

std::string TrimSpaces(const std::string& s) {
  size_t a = s.find_first_not_of(' '), b = s.find_last_not_of(' ');
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

Ort::Env& GlobalEnv() {
  static Ort::Env env = [] {
    sq::KeepOrtTelemetryOff();  // as sq itself does (core/verify/ort_runner.h)
    return Ort::Env(ORT_LOGGING_LEVEL_WARNING, "sq_bench_ocr");
  }();
  return env;
}

}  // namespace

bool CtcDictionary::Load(const std::string& path, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot open " + path;
    return false;
  }
  symbols_.assign(1, "");  // blank
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    symbols_.push_back(line);
  }
  symbols_.push_back(" ");
  return true;
}

std::string CtcDictionary::AsciiCharacters() const {
  std::string out;
  for (const auto& s : symbols_)
    if (s.size() == 1 && uint8_t(s[0]) < 0x80 && out.find(s[0]) == std::string::npos) out += s;
  return out;
}

std::string CtcDictionary::Decode(const float* scores, int steps, int classes) const {
  std::string out;
  int prev = -1;
  for (int t = 0; t < steps; ++t) {
    const float* row = scores + size_t(t) * classes;
    int best = int(std::max_element(row, row + classes) - row);
    if (best != prev && best != 0 && best < size()) out += symbols_[best];
    prev = best;
  }
  return out;
}

Tensor PreprocessRec(const GrayImage& img) {
  const double ratio = double(img.width) / img.height;
  const int width = std::max(kRecMinWidth, int(kHeight * ratio));
  const int rw = std::min(width, int(std::ceil(kHeight * ratio)));
  Tensor t;
  t.shape = {1, 3, kHeight, width};
  t.data.resize(size_t(3) * kHeight * width);
  Fill(ResizeBilinear(img, rw, kHeight), rw, width, t.data.data());
  return t;
}

void AppendPreprocessedCls(const GrayImage& img, Tensor* batch) {
  const double ratio = double(img.width) / img.height;
  const int rw = std::min(kClsWidth, int(std::ceil(kHeight * ratio)));
  const size_t per = size_t(3) * kHeight * kClsWidth;
  if (batch->shape.empty()) batch->shape = {0, 3, kHeight, kClsWidth};
  batch->data.resize(batch->data.size() + per);
  Fill(ResizeBilinear(img, rw, kHeight), rw, kClsWidth, batch->data.data() + batch->data.size() - per);
  batch->shape[0] += 1;
}

size_t CodePointCount(const std::string& s) { return CodePoints(s).size(); }

int EditDistance(const std::string& sa, const std::string& sb) {
  auto a = CodePoints(sa), b = CodePoints(sb);
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = int(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = int(i);
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

struct OrtModel::Impl {
  std::unique_ptr<Ort::Session> session;
  std::string in_name, out_name;
};

OrtModel::OrtModel() : impl_(new Impl) {}
OrtModel::~OrtModel() = default;

std::unique_ptr<OrtModel> OrtModel::Load(const std::string& path, int intra_threads,
                                         std::string* error) {
  try {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(intra_threads);
    so.SetInterOpNumThreads(1);
    // Study knob: SQ_BENCH_ORT_OPT=disable|basic|extended (default: all, as users run).
    GraphOptimizationLevel level = GraphOptimizationLevel::ORT_ENABLE_ALL;
    if (const char* o = std::getenv("SQ_BENCH_ORT_OPT"); o != nullptr) {
      const std::string v = o;
      if (v == "disable") level = GraphOptimizationLevel::ORT_DISABLE_ALL;
      if (v == "basic") level = GraphOptimizationLevel::ORT_ENABLE_BASIC;
      if (v == "extended") level = GraphOptimizationLevel::ORT_ENABLE_EXTENDED;
    }
    so.SetGraphOptimizationLevel(level);
    std::unique_ptr<OrtModel> m(new OrtModel);
    m->impl_->session = std::make_unique<Ort::Session>(GlobalEnv(), path.c_str(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    m->impl_->in_name = m->impl_->session->GetInputNameAllocated(0, alloc).get();
    m->impl_->out_name = m->impl_->session->GetOutputNameAllocated(0, alloc).get();
    return m;
  } catch (const Ort::Exception& e) {
    *error = std::string("ONNX Runtime cannot load ") + path + ": " + e.what();
    return nullptr;
  }
}

bool OrtModel::Run(const Tensor& input, Tensor* output, std::string* error) {
  try {
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value in = Ort::Value::CreateTensor<float>(
        mem, const_cast<float*>(input.data.data()), input.data.size(), input.shape.data(),
        input.shape.size());
    const char* in_names[] = {impl_->in_name.c_str()};
    const char* out_names[] = {impl_->out_name.c_str()};
    auto outs = impl_->session->Run(Ort::RunOptions{nullptr}, in_names, &in, 1, out_names, 1);
    auto info = outs[0].GetTensorTypeAndShapeInfo();
    output->shape = info.GetShape();
    const float* p = outs[0].GetTensorData<float>();
    output->data.assign(p, p + info.GetElementCount());
    return true;
  } catch (const Ort::Exception& e) {
    *error = std::string("ONNX Runtime run failed: ") + e.what();
    return false;
  }
}

PreparedSet PrepareSet(const std::vector<TextLine>& lines, int cls_batch) {
  PreparedSet s;
  for (size_t i = 0; i < lines.size(); ++i) {
    const TextLine& l = lines[i];
    s.texts.push_back(l.text);
    s.labels.push_back(l.rotated);
    // Rec sees the line upright: the ground-truth orientation is undone here, so rec
    // quality is measured independently of the classifier.
    s.rec_inputs.push_back(PreprocessRec(l.rotated ? Rotate180(l.image) : l.image));
    if (i % size_t(cls_batch) == 0) s.cls_batches.emplace_back();
    AppendPreprocessedCls(l.image, &s.cls_batches.back());
  }
  return s;
}

bool Evaluate(OrtModel& rec, OrtModel& cls, const CtcDictionary& dict, const PreparedSet& set,
              EvalResult* r, std::string* error) {
  using Clock = std::chrono::steady_clock;
  *r = EvalResult();
  r->lines = int(set.texts.size());
  Tensor out;
  auto t0 = Clock::now();
  for (size_t i = 0; i < set.rec_inputs.size(); ++i) {
    if (!rec.Run(set.rec_inputs[i], &out, error)) return false;
    if (out.shape.size() != 3) {
      *error = "rec output is not [N, T, C]";
      return false;
    }
    // Leading/trailing spaces carry no information about a cropped line (the recognizer
    // emits them for wide margins); they are trimmed. Inner spaces are compared as is.
    std::string pred =
        TrimSpaces(dict.Decode(out.data.data(), int(out.shape[1]), int(out.shape[2])));
    const std::string& ref = set.texts[i];
    r->rec_exact += pred == ref;
    r->edit_distance += EditDistance(ref, pred);
    r->ref_chars += int64_t(CodePointCount(ref));
    r->predictions.push_back(std::move(pred));
  }
  auto t1 = Clock::now();
  for (const Tensor& b : set.cls_batches) {
    if (!cls.Run(b, &out, error)) return false;
    const int n = int(out.shape[0]), c = int(out.shape.back());
    for (int k = 0; k < n; ++k) {
      const float* row = out.data.data() + size_t(k) * c;
      r->cls_predictions.push_back(int(std::max_element(row, row + c) - row));
    }
  }
  auto t2 = Clock::now();
  for (size_t i = 0; i < set.labels.size() && i < r->cls_predictions.size(); ++i)
    r->cls_correct += r->cls_predictions[i] == set.labels[i];
  r->rec_seconds = std::chrono::duration<double>(t1 - t0).count();
  r->cls_seconds = std::chrono::duration<double>(t2 - t1).count();
  return true;
}

}  // namespace sq_bench
