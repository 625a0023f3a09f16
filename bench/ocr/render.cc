#include "bench/ocr/render.h"

#include <ft2build.h>
#include FT_FREETYPE_H

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "bench/ocr/rng.h"

namespace sq_bench {
namespace {

// Font files (DejaVu, fonts-dejavu-core), regular and bold.
const char* const kFonts[] = {
    "DejaVuSans.ttf",     "DejaVuSans-Bold.ttf",     "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf",    "DejaVuSansMono-Bold.ttf",
};
constexpr int kFontCount = sizeof(kFonts) / sizeof(kFonts[0]);

// Streams of the per-line PRNG: content (text, font, size, margins, orientation) is shared
// by the clean and hard variants of a seed; degradation has its own stream.
constexpr uint64_t kStreamContent = 1;
constexpr uint64_t kStreamDegrade = 2;

struct FloatImage {
  int width = 0, height = 0;
  std::vector<float> v;
  FloatImage() = default;
  FloatImage(int w, int h, float fill = 0.f) : width(w), height(h), v(size_t(w) * h, fill) {}
  float& at(int x, int y) { return v[size_t(y) * width + x]; }
  float at(int x, int y) const { return v[size_t(y) * width + x]; }
};

// Area (box) resampling along one axis: each output sample averages the input interval it
// covers, with fractional weights at the ends. Good for downscaling by any factor.
std::vector<float> ResampleArea1D(const float* src, int n, int stride, int m) {
  std::vector<float> out(m);
  const double scale = double(n) / m;
  for (int i = 0; i < m; ++i) {
    double a = i * scale, b = (i + 1) * scale;
    double sum = 0, wsum = 0;
    for (int k = int(std::floor(a)); k < int(std::ceil(b)); ++k) {
      if (k < 0 || k >= n) continue;
      double w = std::min<double>(b, k + 1) - std::max<double>(a, k);
      if (w <= 0) continue;
      sum += w * src[size_t(k) * stride];
      wsum += w;
    }
    out[i] = wsum > 0 ? float(sum / wsum) : 0.f;
  }
  return out;
}

FloatImage ResizeArea(const FloatImage& in, int w, int h) {
  FloatImage tmp(w, in.height);
  for (int y = 0; y < in.height; ++y) {
    auto row = ResampleArea1D(&in.v[size_t(y) * in.width], in.width, 1, w);
    std::copy(row.begin(), row.end(), &tmp.v[size_t(y) * w]);
  }
  FloatImage out(w, h);
  for (int x = 0; x < w; ++x) {
    auto col = ResampleArea1D(&tmp.v[x], in.height, w, h);
    for (int y = 0; y < h; ++y) out.at(x, y) = col[y];
  }
  return out;
}

void GaussianBlur(FloatImage& img, double sigma) {
  if (sigma <= 0.05) return;
  int r = std::max(1, int(std::ceil(3 * sigma)));
  std::vector<float> k(2 * r + 1);
  double s = 0;
  for (int i = -r; i <= r; ++i) s += k[i + r] = float(std::exp(-(i * i) / (2 * sigma * sigma)));
  for (auto& x : k) x = float(x / s);
  FloatImage tmp(img.width, img.height);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      double acc = 0;
      for (int i = -r; i <= r; ++i) {
        int xx = std::clamp(x + i, 0, img.width - 1);
        acc += k[i + r] * img.at(xx, y);
      }
      tmp.at(x, y) = float(acc);
    }
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      double acc = 0;
      for (int i = -r; i <= r; ++i) {
        int yy = std::clamp(y + i, 0, img.height - 1);
        acc += k[i + r] * tmp.at(x, yy);
      }
      img.at(x, y) = float(acc);
    }
}

GrayImage ToGray(const FloatImage& f) {
  GrayImage g;
  g.width = f.width;
  g.height = f.height;
  g.pixels.resize(f.v.size());
  for (size_t i = 0; i < f.v.size(); ++i)
    g.pixels[i] = uint8_t(std::clamp(std::lround(f.v[i]), 0L, 255L));
  return g;
}

std::string Capitalise(std::string w) {
  if (!w.empty() && w[0] >= 'a' && w[0] <= 'z') w[0] = char(w[0] - 'a' + 'A');
  return w;
}
std::string Upper(std::string w) {
  for (auto& c : w)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return w;
}

}  // namespace

GrayImage Rotate180(const GrayImage& img) {
  GrayImage r = img;
  std::reverse(r.pixels.begin(), r.pixels.end());
  return r;
}

bool WritePgm(const GrayImage& img, const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  std::fprintf(f, "P5\n%d %d\n255\n", img.width, img.height);
  bool ok = std::fwrite(img.pixels.data(), 1, img.pixels.size(), f) == img.pixels.size();
  return std::fclose(f) == 0 && ok;
}

const char* ToString(SetVariant v) { return v == SetVariant::kClean ? "clean" : "hard"; }

struct LineRenderer::Impl {
  FT_Library lib = nullptr;
  FT_Face faces[kFontCount] = {};
  std::vector<std::string> words;
  ~Impl() {
    for (auto f : faces)
      if (f) FT_Done_Face(f);
    if (lib) FT_Done_FreeType(lib);
  }

  // Rasterises `text` at `px` pixels per em into a coverage map in [0, 1] with the given
  // margins (in em).
  FloatImage Rasterise(int font, const std::string& text, int px, double ml, double mr,
                       double mt, double mb) const {
    FT_Face face = faces[font];
    FT_Set_Pixel_Sizes(face, 0, px);
    const int asc = int(face->size->metrics.ascender >> 6);
    const int desc = int(-(face->size->metrics.descender >> 6));
    // Pass 1: pen positions (26.6 fixed point) with kerning.
    std::vector<long> pen(text.size());
    std::vector<FT_UInt> glyph(text.size());
    long x = 0;
    FT_UInt prev = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      FT_UInt gi = FT_Get_Char_Index(face, FT_ULong(uint8_t(text[i])));
      if (prev && gi && FT_HAS_KERNING(face)) {
        FT_Vector d;
        if (!FT_Get_Kerning(face, prev, gi, FT_KERNING_DEFAULT, &d)) x += d.x;
      }
      pen[i] = x;
      glyph[i] = gi;
      if (!FT_Load_Glyph(face, gi, FT_LOAD_DEFAULT)) x += face->glyph->advance.x;
      prev = gi;
    }
    const int left = int(std::lround(ml * px)), right = int(std::lround(mr * px));
    const int top = int(std::lround(mt * px)), bottom = int(std::lround(mb * px));
    const int w = left + int((x + 63) >> 6) + right;
    const int h = top + asc + desc + bottom;
    FloatImage cov(w, h);
    const int baseline = top + asc;
    // Pass 2: render and composite (max of coverages, so overlaps do not over-darken).
    for (size_t i = 0; i < text.size(); ++i) {
      if (FT_Load_Glyph(face, glyph[i], FT_LOAD_RENDER)) continue;
      const FT_Bitmap& bm = face->glyph->bitmap;
      if (bm.pixel_mode != FT_PIXEL_MODE_GRAY) continue;
      const int ox = left + int((pen[i] + 32) >> 6) + face->glyph->bitmap_left;
      const int oy = baseline - face->glyph->bitmap_top;
      for (unsigned r = 0; r < bm.rows; ++r)
        for (unsigned c = 0; c < bm.width; ++c) {
          int xx = ox + int(c), yy = oy + int(r);
          if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
          float a = bm.buffer[r * bm.pitch + c] / 255.f;
          float& d = cov.at(xx, yy);
          d = std::max(d, a);
        }
    }
    return cov;
  }
};

LineRenderer::LineRenderer() : impl_(new Impl) {}
LineRenderer::~LineRenderer() = default;
size_t LineRenderer::word_count() const { return impl_->words.size(); }

std::unique_ptr<LineRenderer> LineRenderer::Create(const std::string& fonts_dir,
                                                   const std::string& words_path,
                                                   const std::string& allowed,
                                                   std::string* error) {
  std::unique_ptr<LineRenderer> r(new LineRenderer);
  Impl& im = *r->impl_;
  if (FT_Init_FreeType(&im.lib)) {
    *error = "FT_Init_FreeType failed";
    return nullptr;
  }
  for (int i = 0; i < kFontCount; ++i) {
    std::string p = fonts_dir + "/" + kFonts[i];
    if (FT_New_Face(im.lib, p.c_str(), 0, &im.faces[i])) {
      *error = "cannot open font " + p;
      return nullptr;
    }
  }
  std::ifstream in(words_path);
  if (!in) {
    *error = "cannot open word list " + words_path;
    return nullptr;
  }
  std::string w;
  while (std::getline(in, w)) {
    if (w.size() < 2 || w.size() > 10) continue;
    bool ok = true;
    for (char c : w) {
      bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (!letter || allowed.find(c) == std::string::npos) ok = false;
    }
    if (ok) im.words.push_back(w);
  }
  if (im.words.size() < 100) {
    *error = "too few usable ASCII words in " + words_path;
    return nullptr;
  }
  return r;
}

TextLine LineRenderer::Render(const SetSpec& spec, int index) const {
  const Impl& im = *impl_;
  Rng rc = Rng::ForItem(spec.seed, kStreamContent, uint64_t(index));
  TextLine line;
  // Content: 1-3 words, sometimes a number (before or after), some capitalised/upper-case.
  std::vector<std::string> parts;
  const int nwords = rc.Int(1, 3);
  for (int i = 0; i < nwords; ++i) {
    std::string word = im.words[rc.Next() % im.words.size()];
    double u = rc.Uniform();
    if (u < 0.2) word = Capitalise(word);
    else if (u < 0.3) word = Upper(word);
    parts.push_back(word);
  }
  if (rc.Chance(0.35)) {
    int digits = rc.Int(1, 4);
    std::string num;
    for (int i = 0; i < digits; ++i) num += char('0' + rc.Int(i == 0 && digits > 1 ? 1 : 0, 9));
    if (rc.Chance(0.5)) parts.insert(parts.begin(), num);
    else parts.push_back(num);
  }
  for (size_t i = 0; i < parts.size(); ++i) line.text += (i ? " " : "") + parts[i];
  const int font = rc.Int(0, kFontCount - 1);
  line.font = kFonts[font];
  line.rotated = rc.Chance(0.5) ? 1 : 0;
  const double ml = rc.Uniform(0.15, 0.6), mr = rc.Uniform(0.15, 0.6);
  const double mt = rc.Uniform(0.05, 0.25), mb = rc.Uniform(0.05, 0.25);
  const int clean_px = rc.Int(26, 44);
  const bool dark_text = rc.Chance(0.85);

  Rng rd = Rng::ForItem(spec.seed, kStreamDegrade, uint64_t(index));
  FloatImage img;
  if (spec.variant == SetVariant::kClean) {
    line.font_px = clean_px;
    FloatImage cov = im.Rasterise(font, line.text, clean_px, ml, mr, mt, mb);
    double fg = rd.Uniform(0, 60), bg = rd.Uniform(195, 255);
    if (!dark_text) std::swap(fg, bg);
    img = FloatImage(cov.width, cov.height);
    for (size_t i = 0; i < cov.v.size(); ++i) img.v[i] = float(bg + (fg - bg) * cov.v[i]);
    line.text_px = clean_px;
  } else {
    // Hard: rasterise large, area-downscale to a 14-18 px em, blur, low contrast, noise.
    const int px = 40;
    line.font_px = px;
    FloatImage cov = im.Rasterise(font, line.text, px, ml, mr, mt, mb);
    const double target = rd.Uniform(14.0, 18.0);
    const double f = target / px;
    const int w = std::max(1, int(std::lround(cov.width * f)));
    const int h = std::max(1, int(std::lround(cov.height * f)));
    cov = ResizeArea(cov, w, h);
    GaussianBlur(cov, rd.Uniform(0.3, 0.9));
    const double bg = dark_text ? rd.Uniform(120, 230) : rd.Uniform(30, 110);
    const double contrast = rd.Uniform(45, 110);
    const double fg = dark_text ? bg - contrast : bg + contrast;
    const double sigma = rd.Uniform(4, 12);
    img = FloatImage(w, h);
    for (size_t i = 0; i < cov.v.size(); ++i)
      img.v[i] = float(bg + (fg - bg) * cov.v[i] + sigma * rd.Normal());
    line.text_px = target;
  }
  line.image = ToGray(img);
  if (line.rotated) line.image = Rotate180(line.image);
  return line;
}

std::vector<TextLine> LineRenderer::RenderSet(const SetSpec& spec) const {
  std::vector<TextLine> out;
  out.reserve(spec.lines);
  for (int i = 0; i < spec.lines; ++i) out.push_back(Render(spec, i));
  return out;
}

}  // namespace sq_bench
