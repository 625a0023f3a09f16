// Pass 3 kernels of the fused transform: quantize a segment of one slice / unit run,
// encode it and accumulate the error sums.
//
//   PickKernel  : the segment kernel (SSE2 + the scalar QuantizeOne tail) for a split /
//                 unsplit tensor, an encoding, with or without the plain-error and signal
//                 sums, thresholds and parameters per element (vt / vs) or broadcast.
//                 kCodes writes one byte per code (staging), packed by PackStaging.
//   PickRow     : the channel-last row kernel for integer codes, packing 8 / 4 / 2-bit codes
//                 directly into the output.
// Both compute per element exactly QuantizeOne's float operations (x / s a true division,
// plus the slice's rounding offset, round half to even; the plain comparison rounds to
// nearest), so codes and error terms are bit-identical between the kernels and
// with quantizer.h; the error sums are accumulated in double in a fixed order per call.
//
// Pure functions of their arguments, thread-safe. Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_KERNELS_H_
#define SQ_CORE_TRANSFORM_KERNELS_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/weight_transform.h"

namespace sq {
namespace transform {

// Per-slice parameters of one branch in the layout the kernels read.
struct KernelParams {
  std::vector<float> scale, zf;  // zero point as float
  std::vector<int32_t> zi;
};

struct Partial {
  double signal = 0, split_error = 0, plain_error = 0;
};

struct SegmentArgs {
  const float* x;
  int64_t len;
  const float* t0;
  const float* t1;
  const float* scale[3];
  const float* zf[3];
  const int32_t* zi[3];
  const float* off;     // rounding offset of the slice (transform/rounding.h), all branches
  const float* pscale;  // plain
  const float* pzf;
  float qmin, qmax;
  bool is_signed;
  uint8_t* codes[3];    // kCodes: one byte per element (staging)
  float* floats[3];     // FP32 encodings
};

using SegmentFn = void (*)(const SegmentArgs&, Partial&);

// vt: thresholds per element (per-channel units along the segment); vs: parameters per
// element (slices along the segment).
SegmentFn PickKernel(bool split, WeightEncoding enc, bool plain, bool signal, bool vt,
                     bool vs);

// Packs one byte per code into `storage_bits` codes per byte (count a multiple of the
// per-byte count, or the tensor's tail).
void PackStaging(const uint8_t* in, int64_t count, int storage_bits, uint8_t* out);

// ---- pass 3, channel-last codes: row by row, codes packed directly ---------------------
//
// The LLM layout: per-channel parameters along the last axis (slice = column), clustering
// per tensor or per column, integer codes. Each row of the chunk is walked with the
// per-column arrays; the codes of all three branches are built 16 at a time in bytes and
// packed straight into the output (no staging buffer). The math per element is
// QuantizeOne's (same float operations, x / s kept as a true division: x * (1 / s) rounds
// differently), so codes and error terms are bit-identical; the error sums are accumulated
// in double in a fixed order per chunk, independent of how parallel_for splits the chunks.
// Branch parameters are picked with masks: the middle branch's value XOR-patched with
// precomputed (lower ^ middle) and (upper ^ middle) bit differences.
struct RowArgs {
  const float* x;       // row segment start
  int64_t len;
  int64_t pos;          // element offset of x[0] within the chunk (chunk starts on a byte)
  const float* t0;      // thresholds at this column (kVecT) or the tensor's (broadcast)
  const float* t1;
  const float* scale[3];
  const float* zf[3];
  const float* scale_x[2];  // split: bits of scale[0] ^ scale[1], scale[2] ^ scale[1]
  const float* zf_x[2];     // split: the same for zf
  const uint8_t* zb[3];  // zero point as a code byte (zi & 0xFF), per column
  const float* off;     // rounding offset per column (transform/rounding.h), all branches
  const float* pscale;  // plain
  const float* pzf;
  float qmin, qmax;
  bool is_signed;
  uint8_t* out[3];      // packed codes of the chunk, per branch
};

using RowFn = void (*)(const RowArgs&, Partial&);

// The bits of a ^ b as a float: RowArgs::scale_x / zf_x hold these for the outer branches.
inline float XorFloatBits(float a, float b) {
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  ua ^= ub;
  float r;
  std::memcpy(&r, &ua, 4);
  return r;
}

// Which build of a kernel runs. Every build gives the same codes bit for bit and, for the
// SIMD builds, the same error sums (the same lanes summed in the same order); the scalar
// reference sums element by element, so its sums differ in the last bits.
enum class KernelIsa { kScalar, kSse2, kAvx2 };
// The widest build this binary has and this CPU runs (AVX2 where both do, else SSE2);
// the environment variable SQ_KERNEL_ISA=sse2|scalar asks for less (A/B measurements).
KernelIsa BestKernelIsa();
const char* KernelIsaName(KernelIsa isa);

// vec_t: per-column thresholds (per-channel clustering); bits: storage bits 8, 4 or 2.
// An isa this binary lacks falls back to SSE2.
RowFn PickRow(bool split, bool vec_t, bool plain, bool signal, int bits,
              KernelIsa isa = BestKernelIsa());
// The AVX2 build (kernels_avx2.cc, compiled with -mavx2; call only where the CPU has
// AVX2), or nullptr when this binary was built without it.
RowFn PickRowAvx2(bool split, bool vec_t, bool plain, bool signal, int bits);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_KERNELS_H_
