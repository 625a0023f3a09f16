#include "core/transform_stage.h"

#include <algorithm>
#include <cmath>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
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
// Re-encoded layers buffering more codes than this run one at a time (see the workers).
constexpr int64_t kSerialReencodeAboveBytes = int64_t{128} << 20;
}  // namespace

bool RunsAlone(const GroupPlan& p) {
  return IsReencoded(p.form) && p.num_branches * PackedBytes(NumElements(p.group->shape),
                                                             p.config.storage_bits) >
                                    kSerialReencodeAboveBytes;
}

namespace {

// Mapped weights larger than this are handed back to the kernel piece by piece while a
// pass runs (bounding memory); smaller ones when their transform is done.
constexpr int64_t kReleasePiecesAboveBytes = int64_t{256} << 20;
// MatMulNBits and GatherBlockQuantized re-encoding works on bands of columns / rows of
// about this many bytes.
constexpr int64_t kEncodeBandBytes = int64_t{8} << 20;
// Stage "transform", compact and MatMulNBits layers: the branches' codes (packed in their
// container) re-encoded (core/transform/encode.h) and written with their parameters.
// outer8 layers are re-quantized (QuantizeOuterAt8) from the FP32 `values`, and their
// error energy in `r` updated to what the artifact holds.
// Buffers are freed as soon as they are encoded; `release` hands back pages of `values`.
absl::Status WriteReencoded(const GroupPlan& p, const float* values, TransformResult& r,
                            std::array<std::vector<uint8_t>, 3>& codes, const ReleaseFn& release,
                            OutputFiles& out) {
  const QuantSpec& spec = p.config.spec;
  const int cb = p.config.storage_bits;
  auto free_buffer = [](std::vector<uint8_t>& v) { std::vector<uint8_t>().swap(v); };
  const std::string& name = p.group->weight_name;
  // One low-bit kernel's tensors (MatMulNBits or GatherBlockQuantized) into plan slot `slot`.
  const bool gather = p.form == LayerForm::kGather || p.form == LayerForm::kGatherOuter8;
  auto write_kernel = [&](int slot, const std::vector<uint8_t>& data, const std::vector<float>& scales,
                          const std::vector<uint8_t>& zero_points) -> absl::Status {
    SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.data[slot], 0, data.data(), data.size()));
    SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale[slot], 0, scales.data(), scales.size() * 4));
    return out.WriteTensorBytes(p.zero_point[slot], 0, zero_points.data(), zero_points.size());
  };
  auto failed = [&](const absl::Status& s) {
    return absl::InternalError(absl::StrCat("weight '", name, "': ", s.message()));
  };
  auto encode_kernel = [&](int slot, const uint8_t* c, const BranchParams& params,
                           const QuantSpec& s, int code_bits) -> absl::Status {
    if (gather) {  // in bands of rows: a large table's data is never held twice
      absl::Status written;
      auto e = EncodeGatherBlockQuantizedInBands(
          c, params, p.layout, s, code_bits, kEncodeBandBytes,
          [&](int64_t offset, const std::vector<uint8_t>& bytes) {
            written = out.WriteTensorBytes(p.data[slot], offset, bytes.data(), bytes.size());
            return written;
          });
      if (!written.ok()) return written;
      if (!e.ok()) return failed(e.status());
      SQ_RETURN_IF_ERROR(out.WriteTensorBytes(p.scale[slot], 0, e->scales.data(), e->scales.size() * 4));
      return out.WriteTensorBytes(p.zero_point[slot], 0, e->zero_points.data(), e->zero_points.size());
    }
    // In bands of columns: a 1 GB lm_head's transposed B is never held whole.
    absl::Status written;
    absl::Status st = EncodeMatMulNBitsInBands(
        c, params, p.layout, s, code_bits, kEncodeBandBytes, [&](int64_t n0, const NBitsEncoding& band) {
          const int64_t col_bytes = band.blocks * band.block_size * band.bits / 8;
          const int64_t zp_col = (band.blocks * band.bits + 7) / 8;
          written = out.WriteTensorBytes(p.data[slot], n0 * col_bytes, band.b.data(), band.b.size());
          if (written.ok()) {
            written = out.WriteTensorBytes(p.scale[slot], n0 * band.blocks * 4, band.scales.data(),
                                           band.scales.size() * 4);
          }
          if (written.ok()) {
            written = out.WriteTensorBytes(p.zero_point[slot], n0 * zp_col, band.zero_points.data(),
                                           band.zero_points.size());
          }
          return written;
        });
    if (!written.ok()) return written;  // the output's error (a full disk), as it is
    return st.ok() ? st : failed(st);
  };
  if (p.form == LayerForm::kNBitsOuter8 || p.form == LayerForm::kGatherOuter8) {
    std::vector<const uint8_t*> branch_codes = {codes[0].data(), codes[1].data(), codes[2].data()};
    auto outer = QuantizeOuterAt8(values, branch_codes, r, p.layout, spec.symmetric, cb, release, [&] {
      free_buffer(codes[0]);
      free_buffer(codes[2]);
    });
    if (!outer.ok()) return failed(outer.status());
    SQ_RETURN_IF_ERROR(encode_kernel(0, codes[1].data(), r.params[1], spec, cb));
    free_buffer(codes[1]);
    if (gather) {
      auto e = EncodeGatherBlockQuantized8(std::move(outer->codes), outer->params, p.layout, spec.symmetric);
      if (!e.ok()) return failed(e.status());
      SQ_RETURN_IF_ERROR(write_kernel(1, e->data, e->scales, e->zero_points));
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
  std::vector<const uint8_t*> branch_codes;
  for (int b = 0; b < p.num_branches; ++b) branch_codes.push_back(codes[b].data());
  auto e = EncodeCompact(branch_codes, r, p.layout, spec, CompactContainerBits(spec.bits), cb);
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

// One layer: its weight read (mapped), transformed with `parts` threads cutting its passes,
// its codes and parameters written to their places in `out`.
absl::StatusOr<TransformResult> TransformLayer(LoadedModel& model, const GroupPlan& p,
                                               OutputFiles& out, int parts) {
  SQ_ASSIGN_OR_RETURN(FloatTensor w, ReadFloatTensor(model, *p.group->weight.tensor));
  WeightView view;
  view.data = w.data;
  view.shape = p.group->shape;
  view.channel_axis = p.group->channel_axis;
  view.reduction_axis = p.group->reduction_axis;
  absl::Status sink_status;
  // Compact and MatMulNBits layers are re-encoded from the branches' codes, which are
  // collected here first (packed in their 2/4/8-bit container, per branch).
  const bool reencode = IsReencoded(p.form);
  std::array<std::vector<uint8_t>, 3> codes;
  if (reencode) {
    for (int b = 0; b < p.num_branches; ++b) {
      codes[b].resize(static_cast<size_t>(PackedBytes(NumElements(p.group->shape), p.config.storage_bits)));
    }
  }
  auto sink = [&](int branch, int64_t offset, const uint8_t* data, size_t size) {
    if (!sink_status.ok()) return;
    if (branch < 0 || branch > 2 || (reencode ? branch >= p.num_branches : p.data[branch] == nullptr)) {
      sink_status = absl::InternalError(absl::StrCat("transform emitted unexpected branch ", branch));
      return;
    }
    if (reencode) {
      if (offset < 0 || offset + static_cast<int64_t>(size) > static_cast<int64_t>(codes[branch].size())) {
        sink_status = absl::InternalError("transform wrote past the end of a branch");
        return;
      }
      std::memcpy(codes[branch].data() + offset, data, size);
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
  int expected = p.config.encoding == WeightEncoding::kDequantizedSum ? 1 : p.num_branches;
  if (result->num_branches != p.num_branches) {
    return absl::InternalError(absl::StrCat("weight '", p.group->weight_name, "': planned ",
                                            p.num_branches, " branches, transform made ",
                                            result->num_branches));
  }
  if (reencode) {
    SQ_RETURN_IF_ERROR(WriteReencoded(p, w.data, *result, codes, release_range, out));
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
