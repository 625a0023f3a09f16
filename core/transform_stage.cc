#include "core/transform_stage.h"

#include <algorithm>
#include <cmath>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/quantizer.h"
#include "core/status_macros.h"
#include "core/transform/encode.h"

namespace sq {

bool IsReencoded(LayerForm f) {
  return f == LayerForm::kCompact || f == LayerForm::kNBits || f == LayerForm::kNBitsOuter8 ||
         f == LayerForm::kGather || f == LayerForm::kGatherOuter8;
}

namespace {
// Re-encoded layers buffering more codes than this go in bands or, where they cannot, run
// one at a time (see the workers).
constexpr int64_t kSerialReencodeAboveBytes = int64_t{128} << 20;

// The codes a re-encoded layer buffers whole: every branch, packed in its container.
int64_t BufferedCodeBytes(const GroupPlan& p) {
  return p.num_branches * PackedBytes(NumElements(p.group->shape), p.config.storage_bits);
}

// The branches' codes of a re-encoded layer or band, collected from TransformWeight's sink
// (packed in their 2/4/8-bit container, per branch) before they are re-encoded.
struct CodeBuffers {
  CodeBuffers(int branches, int64_t elements, int storage_bits) : branches(branches) {
    for (int b = 0; b < branches; ++b) codes[b].resize(static_cast<size_t>(PackedBytes(elements, storage_bits)));
  }
  // The sink: a piece of `branch` at `offset`; a branch or range outside the buffers is
  // kept in `status` (Internal) and stops the rest.
  void Put(int branch, int64_t offset, const uint8_t* data, size_t size) {
    if (!status.ok()) return;
    if (branch < 0 || branch >= branches) {
      status = absl::InternalError(absl::StrCat("transform emitted unexpected branch ", branch));
    } else if (offset < 0 || offset + static_cast<int64_t>(size) > static_cast<int64_t>(codes[branch].size())) {
      status = absl::InternalError("transform wrote past the end of a branch");
    } else {
      std::memcpy(codes[branch].data() + offset, data, size);
    }
  }
  const int branches;
  std::array<std::vector<uint8_t>, 3> codes;
  absl::Status status;
};

// Mapped weights larger than this are handed back to the kernel piece by piece while a
// pass runs (bounding memory); smaller ones when their transform is done.
constexpr int64_t kReleasePiecesAboveBytes = int64_t{256} << 20;
// MatMulNBits and GatherBlockQuantized re-encoding works on bands of columns / rows of
// about this many bytes.
constexpr int64_t kEncodeBandBytes = int64_t{8} << 20;
// Where a layer's re-encoded tensors go: the whole layer (channel 0 on, the plan's layout)
// or a band of its channels (TransformLayerInBands: columns of a MatMul weight, rows of a
// Gather table), whose kernel tensors start at channel `c0` of the layer's.
struct ChannelBand {
  int64_t c0 = 0;
  ParamLayout layout;  // the band's own: its shape has the band's channels
};

// Stage "transform", compact and MatMulNBits layers: the branches' codes (packed in their
// container) re-encoded (core/transform/encode.h) and written with their parameters.
// outer8 layers are re-quantized (QuantizeOuterAt8) from the FP32 `values`, and their
// error energy in `r` updated to what the artifact holds.
// Buffers are freed as soon as they are encoded; `release` hands back pages of `values`.
absl::Status WriteReencoded(const GroupPlan& p, const ChannelBand& band, const float* values,
                            TransformResult& r, std::array<std::vector<uint8_t>, 3>& codes,
                            const ReleaseFn& release, OutputFiles& out) {
  const QuantSpec& spec = p.config.spec;
  const int cb = p.config.storage_bits;
  const ParamLayout& layout = band.layout;
  const int64_t c0 = band.c0;
  auto free_buffer = [](std::vector<uint8_t>& v) { std::vector<uint8_t>().swap(v); };
  const std::string& name = p.group->weight_name;
  // One GatherBlockQuantized kernel's tensors for the band's rows, at their places in plan
  // slot `slot` (data: already written when `data` is null).
  const bool gather = p.form == LayerForm::kGather || p.form == LayerForm::kGatherOuter8;
  auto write_gather = [&](int slot, const GatherEncoding& e, const std::vector<uint8_t>* data) -> absl::Status {
    const int64_t zp_row = (e.blocks * e.bits + 7) / 8;
    if (data != nullptr) {
      SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.data[slot], c0 * (e.cols * e.bits / 8), data->data(), data->size()));
    }
    SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale[slot], c0 * e.blocks * 4, e.scales.data(), e.scales.size() * 4));
    return out.WriteTensorBytes(p.zero_point[slot], c0 * zp_row, e.zero_points.data(), e.zero_points.size());
  };
  auto failed = [&](const absl::Status& s) {
    return absl::InternalError(absl::StrCat("weight '", name, "': ", s.message()));
  };
  auto encode_kernel = [&](int slot, const uint8_t* c, const BranchParams& params,
                           const QuantSpec& s, int code_bits) -> absl::Status {
    if (gather) {  // in bands of rows: a large table's data is never held twice
      absl::Status written;
      const int64_t data0 = c0 * (layout.shape[1] * ContainerBits(s.bits) / 8);
      auto e = EncodeGatherBlockQuantizedInBands(
          c, params, layout, s, code_bits, kEncodeBandBytes,
          [&](int64_t offset, const std::vector<uint8_t>& bytes) {
            written = out.WriteTensorBytes(p.data[slot], data0 + offset, bytes.data(), bytes.size());
            return written;
          });
      if (!written.ok()) return written;
      if (!e.ok()) return failed(e.status());
      if (e->cols * e->bits / 8 * c0 != data0) return failed(absl::InternalError("gather row size"));
      return write_gather(slot, *e, nullptr);
    }
    // In bands of columns: a 1 GB lm_head's transposed B is never held whole.
    absl::Status written;
    absl::Status st = EncodeMatMulNBitsInBands(
        c, params, layout, s, code_bits, kEncodeBandBytes, [&](int64_t n0, const NBitsEncoding& e) {
          const int64_t col_bytes = e.blocks * e.block_size * e.bits / 8;
          const int64_t zp_col = (e.blocks * e.bits + 7) / 8;
          const int64_t n = c0 + n0;
          written = out.WriteTensorBytes(p.data[slot], n * col_bytes, e.b.data(), e.b.size());
          if (written.ok()) {
            written = out.WriteTensorBytes(p.scale[slot], n * e.blocks * 4, e.scales.data(), e.scales.size() * 4);
          }
          if (written.ok()) {
            written = out.WriteTensorBytes(p.zero_point[slot], n * zp_col, e.zero_points.data(),
                                           e.zero_points.size());
          }
          return written;
        });
    if (!written.ok()) return written;  // the output's error (a full disk), as it is
    return st.ok() ? st : failed(st);
  };
  if (p.form == LayerForm::kNBitsOuter8 || p.form == LayerForm::kGatherOuter8) {
    std::vector<const uint8_t*> branch_codes = {codes[0].data(), codes[1].data(), codes[2].data()};
    auto outer = QuantizeOuterAt8(values, branch_codes, r, layout, spec.symmetric, cb, release, [&] {
      free_buffer(codes[0]);
      free_buffer(codes[2]);
    });
    if (!outer.ok()) return failed(outer.status());
    SQ_RETURN_IF_ERROR(encode_kernel(0, codes[1].data(), r.params[1], spec, cb));
    free_buffer(codes[1]);
    if (gather) {
      auto e = EncodeGatherBlockQuantized8(std::move(outer->codes), outer->params, layout, spec.symmetric);
      if (!e.ok()) return failed(e.status());
      SQ_RETURN_IF_ERROR(write_gather(1, *e, &e->data));
    } else {
      SQ_RETURN_IF_ERROR(encode_kernel(1, outer->codes.data(), outer->params, QuantSpec{8, spec.symmetric}, 8));
    }
    free_buffer(outer->codes);
    r.split_error_energy = outer->error_energy;
    return absl::OkStatus();
  }
  if (p.form == LayerForm::kNBits || p.form == LayerForm::kGather) {
    for (int b = 0; b < p.num_branches; ++b) {
      SQ_RETURN_IF_ERROR(encode_kernel(b, codes[b].data(), r.params[b], spec, cb));
      free_buffer(codes[b]);
    }
    return absl::OkStatus();
  }
  if (c0 != 0) return absl::InternalError(absl::StrCat("weight '", name, "': compact form in bands"));
  std::vector<const uint8_t*> branch_codes;
  for (int b = 0; b < p.num_branches; ++b) branch_codes.push_back(codes[b].data());
  auto e = EncodeCompact(branch_codes, r, layout, spec, CompactContainerBits(spec.bits), cb);
  for (auto& c : codes) free_buffer(c);
  if (!e.ok()) return absl::InternalError(absl::StrCat("weight '", name, "': ", e.status().message()));
  SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.data[0], 0, e->codes.data(), e->codes.size()));
  if (p.ids) SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.ids, 0, e->ids.data(), e->ids.size()));
  SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale[0], 0, e->scales.data(), e->scales.size()));
  if (p.scale_multiplier) {
    const float m = std::ldexp(1.0f, e->scale_exponent);
    SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale_multiplier, 0, &m, sizeof m));
  }
  return out.WriteTensorBytes(p.zero_point[0], 0, e->zero_points.data(), e->zero_points.size());
}

// ---- Large re-encoded layers, a band of channels at a time ---------------------------------
//
// A 1 GB lm_head or embedding transformed whole buffers every branch's codes (three 4-bit
// branches: ~400 MB) and keeps its mapped input resident while passes run. Where every
// choice the transform makes is a channel's own (per-channel or blocked parameters, and a
// split clustered per channel), the layer is the concatenation of its channels: it is read
// (pread, never mapped in), transformed, re-encoded and written a band of ~16 MB of FP32
// at a time, and the output is byte for byte the whole layer's. The layer-wide inputs to
// each channel's choices (TransformConfig::whole: how many channels share the cut
// search's sample budget, and float16 scales' exponent) come from the layer's shape and a
// first pass over the weight.

// Testing and A/B knobs (unset in production): SQ_BANDS_ABOVE_BYTES, buffered code bytes
// above which a layer goes in bands (default: the run-alone threshold; "off" never), and
// SQ_BAND_BYTES, the FP32 bytes of a band.
int64_t EnvBytes(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  if (std::strcmp(v, "off") == 0) return -1;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  return end != v && *end == '\0' && x >= 0 ? static_cast<int64_t>(x) : fallback;
}
constexpr int64_t kBandInputBytes = int64_t{16} << 20;

// The band's channels: columns [c0, c0 + count) of a [K, N] MatMul weight, rows of a
// [R, C] Gather table.
struct BandSpan {
  int64_t c0 = 0, count = 0;
};

// Reads elements [begin, begin + count) of `w` into `out`: pread for a mapped weight (its
// pages stay out of this process), a copy otherwise.
absl::Status ReadElements(const FloatTensor& w, int64_t begin, int64_t count, float* out) {
  if (w.mapping != nullptr) return w.mapping->ReadAt(w.mapping_offset + begin * 4, count * 4, out);
  std::memcpy(out, w.data + begin, static_cast<size_t>(count) * 4);
  return absl::OkStatus();
}

// Runs fn(i) for i in [0, n) on `threads` threads (the caller's one of them), each index
// once; the first error (lowest i) is returned and stops indices not yet started.
absl::Status ForEachIndex(int64_t n, int threads, const std::function<absl::Status(int64_t)>& fn) {
  std::vector<absl::Status> status(static_cast<size_t>(n));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto run = [&] {
    for (int64_t i; !failed.load() && (i = next.fetch_add(1)) < n;) {
      status[i] = fn(i);
      if (!status[i].ok()) failed = true;
    }
  };
  std::vector<std::thread> helpers;
  for (int t = 1; t < std::min<int64_t>(threads, n); ++t) helpers.emplace_back(run);
  run();
  for (auto& h : helpers) h.join();
  for (const absl::Status& st : status) SQ_RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

// The layer's largest |w|, or -1 when a value is not finite; read in pieces with pread.
absl::StatusOr<float> LargestMagnitude(const FloatTensor& w, int64_t n, int threads) {
  constexpr int64_t kPiece = int64_t{1} << 20;  // elements
  const int64_t pieces = (n + kPiece - 1) / kPiece;
  std::vector<float> largest(static_cast<size_t>(pieces), 0.0f);
  SQ_RETURN_IF_ERROR(ForEachIndex(pieces, threads, [&](int64_t i) -> absl::Status {
    thread_local std::vector<float> buf;
    const int64_t b = i * kPiece, count = std::min(kPiece, n - b);
    buf.resize(static_cast<size_t>(count));
    SQ_RETURN_IF_ERROR(ReadElements(w, b, count, buf.data()));
    float m = 0.0f, bad = 0.0f;
    for (float x : buf) {
      const float a = std::fabs(x);
      m = a > m ? a : m;
      bad += x * 0.0f;  // NaN once an infinity or a NaN passes
    }
    largest[i] = bad == 0.0f ? m : -1.0f;
    return absl::OkStatus();
  }));
  float m = 0.0f;
  for (float x : largest) {
    if (x < 0.0f) return -1.0f;
    m = std::max(m, x);
  }
  return m;
}

// Sums band results into the layer's: parameters placed at their channels, counts and
// energies added in band order, each cluster's min / max over the bands that have it.
TransformResult MergeBands(const GroupPlan& p, const std::vector<BandSpan>& spans,
                           std::vector<TransformResult>& parts) {
  const bool columns = p.group->channel_axis == 1;
  const int64_t channels = p.group->shape[columns ? 1 : 0];
  TransformResult r;
  r.num_branches = parts[0].num_branches;
  r.split = true;
  r.scale_exponent = parts[0].scale_exponent;
  for (int b = 0; b < r.num_branches; ++b) {
    BranchParams& whole = r.params[b];
    const BranchParams& first = parts[0].params[b];
    whole.shape = first.shape;
    whole.axis = first.axis;
    whole.block_size = first.block_size;
    if (!whole.shape.empty()) whole.shape[columns ? whole.shape.size() - 1 : 0] = channels;
    const int64_t per_channel = static_cast<int64_t>(first.scales.size()) / spans[0].count;
    whole.scales.resize(static_cast<size_t>(per_channel * channels));
    whole.zero_points.resize(whole.scales.size());
    for (size_t i = 0; i < spans.size(); ++i) {
      const BranchParams& bp = parts[i].params[b];
      const int64_t c0 = spans[i].c0, count = spans[i].count;
      for (int64_t o = 0; o < per_channel; ++o) {
        for (int64_t j = 0; j < count; ++j) {
          // [K, N] blocked: [K / block, N] (outer index o); a table's [R, C / block]: rows.
          const int64_t from = columns ? o * count + j : j * per_channel + o;
          const int64_t to = columns ? o * channels + c0 + j : (c0 + j) * per_channel + o;
          whole.scales[to] = bp.scales[from];
          whole.zero_points[to] = bp.zero_points[from];
        }
      }
    }
  }
  std::array<bool, 3> seen{};
  for (TransformResult& t : parts) {
    r.split = r.split && t.split;
    if (r.not_split_reason.empty()) r.not_split_reason = t.not_split_reason;
    r.inertia += t.inertia;
    r.degenerate_units += t.degenerate_units;
    r.signal_energy += t.signal_energy;
    r.split_error_energy += t.split_error_energy;
    r.plain_error_energy += t.plain_error_energy;
    r.offset_slices += t.offset_slices;
    for (int b = 0; b < 3; ++b) {
      const ClusterSummary& c = t.clusters[b];
      ClusterSummary& w = r.clusters[b];
      w.count += c.count;
      if (c.count == 0) continue;
      w.min = seen[b] ? std::min(w.min, c.min) : c.min;
      w.max = seen[b] ? std::max(w.max, c.max) : c.max;
      seen[b] = true;
    }
  }
  return r;
}

// Whether a layer goes in bands (see above): a 2-D MatMul or Gather kernel form whose
// codes would buffer more than the threshold, and no choice that spans channels.
bool TransformsInBands(const GroupPlan& p) {
  const int64_t above = EnvBytes("SQ_BANDS_ABOVE_BYTES", kSerialReencodeAboveBytes);
  const TransformConfig& c = p.config;
  const WeightGroup& g = *p.group;
  const bool kernel_form = p.form == LayerForm::kNBits || p.form == LayerForm::kNBitsOuter8 ||
                           p.form == LayerForm::kGather || p.form == LayerForm::kGatherOuter8;
  const bool matmul = g.channel_axis == 1 && g.reduction_axis == 0;
  const bool table = g.channel_axis == 0 && g.reduction_axis == 1;
  return above >= 0 && kernel_form && g.shape.size() == 2 && (matmul || table) &&
         c.encoding == WeightEncoding::kCodes && c.granularity != Granularity::kTensor &&
         (!c.split || c.cluster_per_channel) && BufferedCodeBytes(p) > above;
}

}  // namespace

bool RunsAlone(const GroupPlan& p) {
  return IsReencoded(p.form) && !TransformsInBands(p) && BufferedCodeBytes(p) > kSerialReencodeAboveBytes;
}

namespace {

// TransformLayer for a layer that goes in bands: `parts` threads take a band each.
absl::StatusOr<TransformResult> TransformLayerInBands(const GroupPlan& p, const FloatTensor& w,
                                                      OutputFiles& out, int parts) {
  const WeightGroup& g = *p.group;
  const bool columns = g.channel_axis == 1;
  const int64_t rows = g.shape[0], cols = g.shape[1], n = rows * cols;
  const int64_t channels = columns ? cols : rows, per_channel = columns ? rows : cols;
  auto named = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("layer weight '", g.weight_name, "': ", s.message()));
  };
  TransformConfig config = p.config;
  SQ_ASSIGN_OR_RETURN(const float largest, LargestMagnitude(w, n, parts));
  if (largest < 0) {  // TransformWeight names the first bad value, before it emits a byte
    WeightView whole{w.data, g.shape, g.channel_axis, g.reduction_axis};
    auto r = TransformWeight(whole, config, [](int, int64_t, const uint8_t*, size_t) {});
    return named(r.ok() ? absl::InternalError("a non-finite value passed the transform") : r.status());
  }
  config.whole = TransformConfig::Whole{channels, HalfScaleExponent(largest)};
  const int64_t band_bytes = std::max<int64_t>(1, EnvBytes("SQ_BAND_BYTES", kBandInputBytes));
  const int64_t width =
      std::min(channels, std::max<int64_t>(8, band_bytes / 4 / std::max<int64_t>(per_channel, 1) / 8 * 8));
  std::vector<BandSpan> spans;
  for (int64_t c0 = 0; c0 < channels; c0 += width) spans.push_back({c0, std::min(width, channels - c0)});
  std::vector<TransformResult> results(spans.size());
  SQ_RETURN_IF_ERROR(ForEachIndex(static_cast<int64_t>(spans.size()), parts, [&](int64_t i) -> absl::Status {
    const BandSpan sp = spans[i];
    const int64_t band_n = sp.count * per_channel;
    // Every element is read into it: no zero-filling (16 MB a band).
    std::unique_ptr<float[]> values(new float[static_cast<size_t>(band_n)]);
    if (columns) {
      for (int64_t k = 0; k < rows; ++k) {
        SQ_RETURN_IF_ERROR(ReadElements(w, k * cols + sp.c0, sp.count, values.get() + k * sp.count));
      }
    } else {
      SQ_RETURN_IF_ERROR(ReadElements(w, sp.c0 * cols, band_n, values.get()));
    }
    ChannelBand band{sp.c0, p.layout};
    band.layout.shape = columns ? std::vector<int64_t>{rows, sp.count} : std::vector<int64_t>{sp.count, cols};
    WeightView view{values.get(), band.layout.shape, g.channel_axis, g.reduction_axis};
    CodeBuffers buffers(p.num_branches, band_n, config.storage_bits);
    absl::StatusOr<TransformResult> r = TransformWeight(
        view, config, [&](int b, int64_t offset, const uint8_t* data, size_t size) { buffers.Put(b, offset, data, size); });
    if (!r.ok()) return named(r.status());
    SQ_RETURN_IF_ERROR(buffers.status);
    if (r->num_branches != p.num_branches) {
      return absl::InternalError(absl::StrCat("weight '", g.weight_name, "': planned ", p.num_branches,
                                              " branches, a band made ", r->num_branches));
    }
    SQ_RETURN_IF_ERROR(WriteReencoded(p, band, values.get(), *r, buffers.codes, nullptr, out));
    results[i] = *std::move(r);
    return absl::OkStatus();
  }));
  TransformResult r = MergeBands(p, spans, results);
  r.bytes_per_branch = PackedBytes(n, config.storage_bits);  // bands may round up apiece
  r.bands = static_cast<int64_t>(spans.size());
  return r;
}

// One layer: its weight read (mapped), transformed with `parts` threads cutting its passes,
// its codes and parameters written to their places in `out`.
absl::StatusOr<TransformResult> TransformLayer(LoadedModel& model, const GroupPlan& p,
                                               OutputFiles& out, int parts) {
  SQ_ASSIGN_OR_RETURN(FloatTensor w, ReadFloatTensor(model, *p.group->weight.tensor));
  if (TransformsInBands(p)) return TransformLayerInBands(p, w, out, parts);
  WeightView view;
  view.data = w.data;
  view.shape = p.group->shape;
  view.channel_axis = p.group->channel_axis;
  view.reduction_axis = p.group->reduction_axis;
  absl::Status sink_status;
  // Compact and kernel-form layers are re-encoded from the branches' codes, collected
  // first; the others' codes are written as they come.
  const bool reencode = IsReencoded(p.form);
  CodeBuffers buffers(reencode ? p.num_branches : 0, NumElements(p.group->shape), p.config.storage_bits);
  auto sink = [&](int branch, int64_t offset, const uint8_t* data, size_t size) {
    if (reencode) return buffers.Put(branch, offset, data, size);
    if (!sink_status.ok()) return;
    if (branch < 0 || branch > 2 || p.data[branch] == nullptr) {
      sink_status = absl::InternalError(absl::StrCat("transform emitted unexpected branch ", branch));
      return;
    }
    sink_status = out.WriteTensorBytes(p.data[branch], offset, data, size);
  };
  // `parts` > 1 cuts the passes across extra threads (the output does not depend on how
  // they are cut). A memory-mapped tensor is walked in ~32 MB pieces whose pages are handed back after
  // each piece, so even a 1 GB weight never sits in memory whole. Smaller tensors stay
  // mapped until they are done: re-faulting their pages on every pass costs more.
  const int64_t numel = NumElements(p.group->shape);
  const bool release_pieces = w.mapping != nullptr && numel * 4 > kReleasePiecesAboveBytes;
  ReleaseFn release_range;
  if (w.mapping != nullptr) {
    release_range = [&w](int64_t begin, int64_t end) {
      w.mapping->Release(w.mapping_offset + begin * 4, (end - begin) * 4);
    };
  }
  if (release_pieces) view.release = release_range;  // what passes read out of order
  ParallelFor parallel;
  if (parts > 1 || release_pieces) {
    parallel = [parts, numel, release_pieces, &w](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
      if (n <= 0) return;
      const int64_t per_chunk = std::max<int64_t>(1, numel / n);
      const int64_t piece = std::max<int64_t>(1, (int64_t{8} << 20) / per_chunk);
      auto run = [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; b += piece) {
          int64_t e = std::min(end, b + piece);
          fn(b, e);
          if (release_pieces) {
            w.mapping->Release(w.mapping_offset + b * per_chunk * 4, (e - b) * per_chunk * 4);
          }
        }
      };
      int used = static_cast<int>(std::min<int64_t>(parts, n));
      std::vector<std::thread> helpers;
      for (int t = 1; t < used; ++t) {
        helpers.emplace_back([&, t] { run(n * t / used, n * (t + 1) / used); });
      }
      run(0, n / used);
      for (auto& h : helpers) h.join();
    };
  }
  auto result = TransformWeight(view, p.config, sink, parallel);
  absl::Cleanup release = [&w] { w.ReleasePages(); };
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat("layer weight '", p.group->weight_name, "': ", result.status().message()));
  }
  SQ_RETURN_IF_ERROR(sink_status);
  SQ_RETURN_IF_ERROR(buffers.status);
  int expected = p.config.encoding == WeightEncoding::kDequantizedSum ? 1 : p.num_branches;
  if (result->num_branches != p.num_branches) {
    return absl::InternalError(absl::StrCat("weight '", p.group->weight_name, "': planned ",
                                            p.num_branches, " branches, transform made ",
                                            result->num_branches));
  }
  if (reencode) {
    SQ_RETURN_IF_ERROR(
        WriteReencoded(p, ChannelBand{0, p.layout}, w.data, *result, buffers.codes, release_range, out));
  } else if (p.scale[0] != nullptr) {
    for (int b = 0; b < expected; ++b) {
      const BranchParams& bp = result->params[b];
      int64_t count = NumElements(p.param_shape);
      if (static_cast<int64_t>(bp.scales.size()) != count ||
          static_cast<int64_t>(bp.zero_points.size()) != count) {
        return absl::InternalError(absl::StrCat("weight '", p.group->weight_name,
                                                "': parameter count mismatch"));
      }
      SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale[b], 0, bp.scales.data(), bp.scales.size() * 4));
      std::string zp(static_cast<size_t>(PackedBytes(count, p.config.storage_bits)), '\0');
      PackCodes(bp.zero_points, p.config.storage_bits, reinterpret_cast<uint8_t*>(&zp[0]));
      SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.zero_point[b], 0, zp.data(), zp.size()));
    }
  }
  return *std::move(result);
}

}  // namespace

absl::StatusOr<std::vector<TransformResult>> RunTransformStage(LoadedModel& model,
                                                              const std::vector<GroupPlan>& plans,
                                                              OutputFiles& out, int threads,
                                                              const TransformStageHooks& hooks) {
  auto cancelled = [&] { return hooks.is_cancelled && hooks.is_cancelled(); };
  // Tasks: one per weight group plus the copies of untouched tensors, in the order the
  // output was laid out for (largest first, so the big ones do not trail).
  using Task = OutputFiles::Task;
  const std::vector<Task>& tasks = out.schedule();

  int64_t total_weight_elements = 0;
  for (const GroupPlan& p : plans) total_weight_elements += NumElements(p.group->shape);
  std::vector<TransformResult> results(plans.size());
  std::vector<absl::Status> plan_status(plans.size());
  std::vector<absl::Status> copy_status(static_cast<size_t>(out.num_copies()));
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::mutex big_layer_mu;  // held by a layer buffering > kSerialReencodeAboveBytes of codes
  std::condition_variable cv;
  std::vector<int> finished;  // plan indices, in completion order
  size_t done_tasks = 0;

  // A tensor bigger than a fair share of the work would trail behind the others, and the
  // last task has nothing left to run beside it (a run-alone lm_head, scheduled last):
  // their passes are cut across extra threads.
  auto run_plan = [&](int i, bool last) -> absl::Status {
    const GroupPlan& p = plans[i];
    const int64_t numel = NumElements(p.group->shape);
    const int parts = threads > 1 && (last || numel * threads > 2 * total_weight_elements) ? threads : 1;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<TransformResult> r = TransformLayer(model, p, out, parts);
    if (!r.ok()) return r.status();
    results[i] = *std::move(r);
    results[i].seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return absl::OkStatus();
  };

  // Layers whose re-encoding buffers a lot of codes (a 1 GB embedding or lm_head holds
  // ~400 MB of them at 4 bits, split) run one at a time, so that two never peak together:
  // a worker that finds another one running defers it and goes on with the rest.
  auto buffers_much = [&](const Task& t) { return t.plan >= 0 && RunsAlone(plans[t.plan]); };
  std::vector<size_t> deferred;  // task indices, under mu
  const int workers = std::min<int>(threads, static_cast<int>(tasks.size()));
  auto worker = [&] {
    while (!stop.load()) {
      size_t k = next.fetch_add(1);
      std::unique_lock<std::mutex> big_layer;
      bool last = false;  // nothing is queued after this task
      if (k < tasks.size()) {
        if (buffers_much(tasks[k])) {
          big_layer = std::unique_lock<std::mutex>(big_layer_mu, std::try_to_lock);
          if (!big_layer.owns_lock()) {
            std::lock_guard<std::mutex> lock(mu);
            deferred.push_back(k);
            continue;
          }
        }
      } else {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (deferred.empty()) break;
          k = deferred.front();
          deferred.erase(deferred.begin());
          last = deferred.empty();
        }
        big_layer = std::unique_lock<std::mutex>(big_layer_mu);
      }
      if (k + 1 == tasks.size()) {
        std::lock_guard<std::mutex> lock(mu);
        last = deferred.empty();
      }
      const Task& t = tasks[k];
      absl::Status s = t.plan >= 0 ? run_plan(t.plan, last) : out.RunCopy(t.copy);
      if (big_layer.owns_lock()) big_layer.unlock();
      std::lock_guard<std::mutex> lock(mu);
      if (t.plan >= 0) {
        plan_status[t.plan] = s;
        finished.push_back(t.plan);
      } else {
        copy_status[t.copy] = s;
      }
      if (!s.ok()) stop = true;
      ++done_tasks;
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  };
  std::vector<std::thread> pool;
  for (int i = 0; i < workers; ++i) pool.emplace_back(worker);
  {
    size_t reported = 0;
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      cv.wait_for(lock, std::chrono::milliseconds(100));
      while (reported < finished.size()) {
        int i = finished[reported++];
        std::string name = plans[i].group->uses[0].display_name;
        lock.unlock();
        if (hooks.on_layer) hooks.on_layer(static_cast<int>(reported), static_cast<int>(plans.size()), name);
        lock.lock();
      }
      if (done_tasks == tasks.size() || stop) break;
      lock.unlock();
      bool c = cancelled();
      lock.lock();
      if (c) {
        stop = true;
        break;
      }
    }
  }
  for (auto& t : pool) t.join();
  const absl::Status kCancelled = absl::CancelledError("cancelled by request");
  if (cancelled()) return kCancelled;
  for (const auto& s : plan_status) SQ_RETURN_IF_ERROR(s);
  for (const auto& s : copy_status) SQ_RETURN_IF_ERROR(s);
  if (stop) return kCancelled;
  return results;
}

}  // namespace sq
