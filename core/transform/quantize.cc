#include "core/transform/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/transform/common.h"
#include "core/transform/inputs.h"

namespace sq {
namespace transform {

BranchKernels ChooseKernelParams(const WeightView& weight, const TransformConfig& config,
                                 const SplitPlan& plan, const SliceRanges& ranges,
                                 const std::vector<std::array<float, 6>>& shrink,
                                 TransformResult& result) {
  const int nb = plan.split ? 3 : 1;
  std::vector<float> branch_mn = ranges.mn, branch_mx = ranges.mx;
  if (!shrink.empty()) ApplyShrink(shrink, plan.degenerate, ranges.slices, branch_mn, branch_mx);

  const bool quantize = config.encoding != WeightEncoding::kFloatSplit;
  const bool plain = config.compute_plain_error && (plan.split || !quantize);
  BranchKernels out;
  out.nb = nb;
  out.quantize = quantize;
  out.plain = plain;
  std::array<KernelParams, 3>& kp = out.kp;
  KernelParams& pp = out.pp;
  const int64_t S = ranges.slices;
  out.slices = S;
  out.off.assign(static_cast<size_t>(S), 0.0f);
  // Float16 scales: one exponent for the layer, from its largest |w| (every element is in
  // some branch's range; empty ranges are +inf / -inf and do not count).
  QuantSpec spec = config.spec;
  if (spec.half_scales) {
    float max_abs = 0.0f;
    for (size_t i = 0; i < ranges.mn.size(); ++i) {
      if (ranges.mn[i] > ranges.mx[i]) continue;
      max_abs = std::max({max_abs, std::fabs(ranges.mn[i]), std::fabs(ranges.mx[i])});
    }
    spec.half_exponent = config.whole ? config.whole->half_exponent : HalfScaleExponent(max_abs);
    result.scale_exponent = spec.half_exponent;
  }
  auto fill = [&](KernelParams& k, BranchParams& bp, auto range_of) {
    k.scale.resize(S);
    k.zf.resize(S);
    k.zi.resize(S);
    bp = ParamsLayout(weight, config);
    bp.scales.resize(S);
    bp.zero_points.resize(S);
    for (int64_t s = 0; s < S; ++s) {
      const auto [lo, hi] = range_of(s);
      const QuantParams q = ChooseQuantParams(std::min(lo, 0.0f), std::max(hi, 0.0f), spec);
      k.scale[s] = bp.scales[s] = q.scale;
      k.zi[s] = bp.zero_points[s] = q.zero_point;
      k.zf[s] = static_cast<float>(q.zero_point);
    }
  };
  for (int b = 0; b < nb; ++b) {
    BranchParams bp;
    fill(kp[b], bp, [&](int64_t s) {
      return std::make_pair(branch_mn[b * S + s], branch_mx[b * S + s]);
    });
    if (quantize) result.params[b] = std::move(bp);
  }
  if (plain) {
    BranchParams unused;
    fill(pp, unused, [&](int64_t s) {
      float lo = kInfF, hi = -kInfF;
      for (int b = 0; b < nb; ++b) {
        lo = std::min(lo, ranges.mn[b * S + s]);
        hi = std::max(hi, ranges.mx[b * S + s]);
      }
      return std::make_pair(lo, hi);
    });
  }
  return out;
}

std::vector<Partial> QuantizeAndEmit(const WeightView& weight, int64_t n,
                                     const TransformConfig& config, const IndexMap& slices,
                                     const IndexMap& units, const SplitPlan& plan,
                                     const BranchKernels& kernels, bool signal,
                                     const BranchSink& sink, const ParallelFor& parallel_for) {
  const int nb = kernels.nb;
  const bool plain = kernels.plain;
  const std::array<KernelParams, 3>& kp = kernels.kp;
  const KernelParams& pp = kernels.pp;
  const int64_t S = kernels.slices;
  // Pass 3, piece by piece: workers fill the piece buffers, then this thread emits them in
  // offset order.
  const bool codes = config.encoding == WeightEncoding::kCodes;
  const int out_branches = config.encoding == WeightEncoding::kDequantizedSum ? 1 : nb;
  const int64_t total_sub = (n + kSubChunk - 1) / kSubChunk;
  std::vector<Partial> partials(static_cast<size_t>(total_sub));
  const int64_t piece_cap = std::min(n, kPieceElements);
  std::array<std::vector<uint8_t>, 3> piece;
  for (int b = 0; b < out_branches; ++b) {
    piece[b].resize(static_cast<size_t>(EncodedBytes(piece_cap, config)));
  }
  const float neg_inf = -kInfF, pos_inf = kInfF;
  // Channel-last codes (the MatMul [K, N] layout): the row kernel, codes packed directly.
  const bool rows = codes && slices.kind == MapKind::kChannel && slices.ax.I == 1 &&
                    (!plan.split || units.kind == MapKind::kConst ||
                     (units.kind == MapKind::kChannel && units.ax.I == 1));
  std::array<std::vector<uint8_t>, 3> zb;
  std::array<std::vector<float>, 2> scale_x, zf_x;
  RowFn row_fn = nullptr;
  if (rows) {
    for (int b = 0; b < nb; ++b) {
      zb[b].resize(static_cast<size_t>(S));
      for (int64_t s = 0; s < S; ++s) zb[b][s] = static_cast<uint8_t>(kp[b].zi[s] & 0xFF);
    }
    if (plan.split) {
      for (int j = 0; j < 2; ++j) {
        const int b = j == 0 ? 0 : 2;
        scale_x[j].resize(static_cast<size_t>(S));
        zf_x[j].resize(static_cast<size_t>(S));
        for (int64_t s = 0; s < S; ++s) {
          scale_x[j][s] = XorFloatBits(kp[b].scale[s], kp[1].scale[s]);
          zf_x[j][s] = XorFloatBits(kp[b].zf[s], kp[1].zf[s]);
        }
      }
    }
    row_fn = PickRow(plan.split, plan.split && units.kind == MapKind::kChannel, plain,
                     signal, config.storage_bits);
  }
  const int64_t row_len = slices.ax.D;
  auto run_rows = [&](int64_t e0, int64_t e1, int64_t p0, Partial& acc) {
    RowArgs a;
    a.qmin = static_cast<float>(config.spec.qmin());
    a.qmax = static_cast<float>(config.spec.qmax());
    a.is_signed = config.spec.symmetric;
    for (int b = 0; b < 3; ++b) {
      a.out[b] = b < out_branches
                     ? piece[b].data() + PackedBytes(e0 - p0, config.storage_bits)
                     : nullptr;
    }
    const bool vec_t = plan.split && units.kind == MapKind::kChannel;
    int64_t col = e0 % row_len;
    for (int64_t e = e0; e < e1;) {
      const int64_t len = std::min(row_len - col, e1 - e);
      a.x = weight.data + e;
      a.len = len;
      a.pos = e - e0;
      a.t0 = plan.split ? plan.t0.data() + (vec_t ? col : 0) : &neg_inf;
      a.t1 = plan.split ? plan.t1.data() + (vec_t ? col : 0) : &pos_inf;
      for (int b = 0; b < 3; ++b) {
        const int bb = b < nb ? b : 0;
        a.scale[b] = kp[bb].scale.data() + col;
        a.zf[b] = kp[bb].zf.data() + col;
        a.zb[b] = zb[bb].data() + col;
      }
      for (int j = 0; j < 2; ++j) {
        a.scale_x[j] = plan.split ? scale_x[j].data() + col : nullptr;
        a.zf_x[j] = plan.split ? zf_x[j].data() + col : nullptr;
      }
      a.off = kernels.off.data() + col;
      a.pscale = plain ? pp.scale.data() + col : nullptr;
      a.pzf = plain ? pp.zf.data() + col : nullptr;
      row_fn(a, acc);
      e += len;
      col = 0;
    }
  };
  for (int64_t p0 = 0; p0 < n; p0 += kPieceElements) {
    const int64_t p1 = std::min(n, p0 + kPieceElements);
    const int64_t sub0 = p0 / kSubChunk;
    const int64_t subs = (p1 - p0 + kSubChunk - 1) / kSubChunk;
    if (rows) {
      RunParallel(subs, parallel_for, [&](int64_t cb, int64_t ce) {
        for (int64_t sc = cb; sc < ce; ++sc) {
          const int64_t e0 = p0 + sc * kSubChunk, e1 = std::min(p1, e0 + kSubChunk);
          run_rows(e0, e1, p0, partials[sub0 + sc]);
        }
      });
    } else {
      RunParallel(subs, parallel_for, [&](int64_t cb, int64_t ce) {
        std::array<std::vector<uint8_t>, 3> staging;
        if (codes && config.storage_bits != 8) {
          for (int b = 0; b < out_branches; ++b) staging[b].resize(kSubChunk);
        }
        for (int64_t sc = cb; sc < ce; ++sc) {
          const int64_t e0 = p0 + sc * kSubChunk, e1 = std::min(p1, e0 + kSubChunk);
          Partial& acc = partials[sub0 + sc];
          ForEachSegment(slices, units, e0, e1, [&](int64_t e, int64_t len, Run rs, Run ru) {
            SegmentArgs a;
            a.x = weight.data + e;
            a.len = len;
            a.t0 = plan.split ? plan.t0.data() + ru.value : &neg_inf;
            a.t1 = plan.split ? plan.t1.data() + ru.value : &pos_inf;
            for (int b = 0; b < 3; ++b) {
              const int bb = b < nb ? b : 0;
              a.scale[b] = kp[bb].scale.data() + rs.value;
              a.zf[b] = kp[bb].zf.data() + rs.value;
              a.zi[b] = kp[bb].zi.data() + rs.value;
              a.codes[b] = nullptr;
              a.floats[b] = nullptr;
            }
            a.off = kernels.off.data() + rs.value;
            a.pscale = plain ? pp.scale.data() + rs.value : nullptr;
            a.pzf = plain ? pp.zf.data() + rs.value : nullptr;
            a.qmin = static_cast<float>(config.spec.qmin());
            a.qmax = static_cast<float>(config.spec.qmax());
            a.is_signed = config.spec.symmetric;
            for (int b = 0; b < out_branches; ++b) {
              if (codes) {
                a.codes[b] = config.storage_bits == 8 ? piece[b].data() + (e - p0)
                                                      : staging[b].data() + (e - e0);
              } else {
                a.floats[b] = reinterpret_cast<float*>(piece[b].data()) + (e - p0);
              }
            }
            PickKernel(plan.split, config.encoding, plain, signal,
                       plan.split && ru.stride, rs.stride)(a, acc);
          });
          if (codes && config.storage_bits != 8) {
            for (int b = 0; b < out_branches; ++b) {
              PackStaging(staging[b].data(), e1 - e0, config.storage_bits,
                          piece[b].data() + PackedBytes(e0 - p0, config.storage_bits));
            }
          }
        }
      });
    }
    const int64_t offset = EncodedBytes(p0, config);
    const int64_t size = EncodedBytes(p1, config) - offset;
    for (int b = 0; b < out_branches; ++b) {
      sink(b, offset, piece[b].data(), static_cast<size_t>(size));
    }
  }
  return partials;
}

}  // namespace transform
}  // namespace sq
