// Synthetic labelled text lines for the OCR accuracy benchmark: words from the system word
// list, rendered with FreeType in DejaVu fonts by a small rasteriser of our own, optionally
// degraded ("hard"), half of them rotated 180 degrees. Deterministic for a seed.
#ifndef SQ_BENCH_OCR_RENDER_H_
#define SQ_BENCH_OCR_RENDER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sq_bench {

// 8-bit grayscale image, row-major.
struct GrayImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
  uint8_t at(int x, int y) const { return pixels[static_cast<size_t>(y) * width + x]; }
};

GrayImage Rotate180(const GrayImage& img);
bool WritePgm(const GrayImage& img, const std::string& path);

enum class SetVariant { kClean, kHard };

struct TextLine {
  std::string text;      // ground truth (ASCII)
  int rotated = 0;       // cls label: 0 upright, 1 rotated 180 degrees
  GrayImage image;       // as the model sees it (rotated when rotated == 1)
  std::string font;      // font file name
  int font_px = 0;       // FreeType pixel size used for rasterising
  double text_px = 0;    // final em height in pixels (after any downscale)
};

struct SetSpec {
  SetVariant variant = SetVariant::kHard;
  int lines = 300;
  uint64_t seed = 1;
};

class LineRenderer {
 public:
  // fonts_dir: the DejaVu TrueType folder; words_path: a word list, one word per line.
  // `allowed` lists the characters the recognizer's dictionary can emit; text uses only those.
  static std::unique_ptr<LineRenderer> Create(const std::string& fonts_dir,
                                              const std::string& words_path,
                                              const std::string& allowed, std::string* error);
  ~LineRenderer();

  TextLine Render(const SetSpec& spec, int index) const;
  std::vector<TextLine> RenderSet(const SetSpec& spec) const;
  size_t word_count() const;

 private:
  LineRenderer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

const char* ToString(SetVariant v);

}  // namespace sq_bench

#endif  // SQ_BENCH_OCR_RENDER_H_
