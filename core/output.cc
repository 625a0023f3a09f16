#include "core/output.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/transform_stage.h"

namespace sq {
namespace {

// Above this many bytes of tensor data the output uses an external data file: protobuf
// cannot serialise a message of 2 GB or more, and the rest of the proto needs room.
constexpr int64_t kInlineLimitBytes = (int64_t{2} << 30) - (int64_t{128} << 20);
// An input with external data keeps an external output above this size.
constexpr int64_t kKeepExternalBytes = int64_t{64} << 20;
// In external mode, tensors at least this large go to the data file.
constexpr int64_t kExternalMinBytes = 1024;

void SetExternal(onnx::TensorProto* t, const std::string& location, int64_t offset, int64_t size) {
  t->clear_raw_data();
  t->clear_float_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_double_data();
  t->clear_uint64_data();
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add = [&](const char* k, const std::string& v) {
    auto* e = t->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  add("location", location);
  add("offset", std::to_string(offset));
  add("length", std::to_string(size));
}

// Raw little-endian bytes of an inline tensor, whichever field holds them.
std::string InlineBytes(const onnx::TensorProto& t) {
  if (t.has_raw_data()) return t.raw_data();
  auto dump = [](const auto& field, size_t elem, auto convert) {
    std::string out(field.size() * elem, '\0');
    for (int i = 0; i < field.size(); ++i) {
      auto v = convert(field.Get(i));
      std::memcpy(&out[i * elem], &v, elem);
    }
    return out;
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      return dump(t.float_data(), 4, [](float v) { return v; });
    case onnx::TensorProto::DOUBLE:
      return dump(t.double_data(), 8, [](double v) { return v; });
    case onnx::TensorProto::INT64:
      return dump(t.int64_data(), 8, [](int64_t v) { return v; });
    case onnx::TensorProto::UINT64:
    case onnx::TensorProto::UINT32:
      return dump(t.uint64_data(), t.data_type() == onnx::TensorProto::UINT64 ? 8 : 4,
                  [](uint64_t v) { return v; });
    case onnx::TensorProto::INT32:
      return dump(t.int32_data(), 4, [](int32_t v) { return v; });
    case onnx::TensorProto::INT16:
    case onnx::TensorProto::UINT16:
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::BFLOAT16:
      return dump(t.int32_data(), 2, [](int32_t v) { return static_cast<uint16_t>(v); });
    case onnx::TensorProto::INT8:
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::BOOL:
      return dump(t.int32_data(), 1, [](int32_t v) { return static_cast<uint8_t>(v); });
    default:
      return "";
  }
}

void CollectInitializers(onnx::GraphProto* g, std::vector<onnx::TensorProto*>* out) {
  for (auto& t : *g->mutable_initializer()) out->push_back(&t);
  for (auto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) CollectInitializers(a.mutable_g(), out);
      for (auto& sg : *a.mutable_graphs()) CollectInitializers(&sg, out);
    }
  }
}


}  // namespace

absl::StatusOr<std::unique_ptr<OutputFiles>> OutputFiles::LayOut(LoadedModel& model,
                                                                 const std::vector<GroupPlan>& plans,
                                                                 const QuantizeOptions& options,
                                                                 const std::string& output_path) {
  std::unique_ptr<OutputFiles> out(new OutputFiles(model, output_path));
  onnx::ModelProto& proto = model.proto();
  auto& slots = out->slots_;
  for (const GroupPlan& p : plans) {
    for (const auto& [t, bytes] : p.tensor_bytes) slots[t] = {-1, bytes};
  }
  std::vector<onnx::TensorProto*> all;
  CollectInitializers(proto.mutable_graph(), &all);
  int64_t total = 0;
  for (onnx::TensorProto* t : all) {
    auto it = slots.find(t);
    total += it != slots.end() ? it->second.size : TensorDataBytes(*t);
  }
  // A model that came with external data keeps it when large: pulling gigabytes into the
  // proto would cost memory and a slow serialisation for nothing.
  const bool external = options.external_data || total > kInlineLimitBytes ||
                        (model.uses_external_data() && total > kKeepExternalBytes);
  out->data_name_ = BaseName(output_path) + ".data";
  const std::string& data_name = out->data_name_;
  const std::string data_path = absl::StrCat(DirName(output_path), "/", data_name);
  auto& data_file = out->data_file_;
  auto& copies = out->copies_;
  // Copies: the untouched tensors that go to the data file (external mode only).
  std::vector<onnx::TensorProto*> copied;  // copies[i]'s tensor
  if (external) {
    for (onnx::TensorProto* t : all) {
      if (slots.count(t)) continue;
      const int64_t size = TensorDataBytes(*t);
      if (size < kExternalMinBytes) {
        // Small existing tensors stay inline; pull them in if they were external.
        if (IsExternal(*t)) {
          SQ_ASSIGN_OR_RETURN(ExternalLocation loc, model.ExternalLocationOf(*t));
          SQ_ASSIGN_OR_RETURN(const MappedFile* map, model.Map(loc.path));
          std::string bytes(reinterpret_cast<const char*>(map->data() + loc.offset), loc.length);
          t->clear_external_data();
          t->set_data_location(onnx::TensorProto::DEFAULT);
          t->set_raw_data(std::move(bytes));
        }
        continue;
      }
      Copy job;
      job.size = size;
      if (IsExternal(*t)) {
        SQ_ASSIGN_OR_RETURN(job.from, model.ExternalLocationOf(*t));
      } else {
        job.inline_bytes = InlineBytes(*t);
        job.size = static_cast<int64_t>(job.inline_bytes.size());
      }
      copied.push_back(t);
      copies.push_back(std::move(job));
    }
  }
  // The schedule: every layer and every copy, largest first (a big layer started last
  // would trail behind the rest); ties keep layers before copies, each in model order.
  auto& schedule = out->schedule_;
  for (size_t i = 0; i < plans.size(); ++i) {
    schedule.push_back({static_cast<int>(i), -1, NumElements(plans[i].group->shape) * 4});
  }
  for (size_t i = 0; i < copies.size(); ++i) {
    schedule.push_back({-1, static_cast<int>(i), copies[i].size / 8});
  }
  std::stable_sort(schedule.begin(), schedule.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  // Layers that must run alone (RunsAlone): the first keeps its place, the others go last,
  // where the workers would have deferred them anyway — so the data file is laid out in
  // the order it is really written.
  {
    std::vector<Task> ordered, last;
    bool seen_alone = false;
    for (const Task& t : schedule) {
      if (t.plan >= 0 && RunsAlone(plans[t.plan])) {
        if (seen_alone) {
          last.push_back(t);
          continue;
        }
        seen_alone = true;
      }
      ordered.push_back(t);
    }
    ordered.insert(ordered.end(), last.begin(), last.end());
    schedule = std::move(ordered);
  }
  if (external) {
    // The data file is laid out in schedule order, so that it fills roughly front to back
    // and its hash can follow the writes (FollowingSha256).
    SQ_ASSIGN_OR_RETURN(data_file, AtomicFile::Create(data_path));
    int64_t offset = 0;
    const std::set<const onnx::TensorProto*> in_graph(all.begin(), all.end());
    std::vector<std::pair<int64_t, int64_t>> padding;
    auto place = [&](onnx::TensorProto* t, int64_t size) {
      const int64_t align = size >= (64 << 10) ? 4096 : 64;
      const int64_t aligned = (offset + align - 1) / align * align;
      if (aligned > offset) padding.emplace_back(offset, aligned - offset);
      SetExternal(t, data_name, aligned, size);
      offset = aligned + size;
      return aligned;
    };
    for (const Task& task : schedule) {
      if (task.copy >= 0) {
        Copy& job = copies[task.copy];
        job.offset = place(copied[task.copy], job.size);
      } else {
        for (const auto& [t, bytes] : plans[task.plan].tensor_bytes) {
          if (!in_graph.count(t)) {
            return absl::InternalError(absl::StrCat("planned tensor '", t->name(), "' is not an initializer"));
          }
          Slot& slot = slots[t];
          slot.offset = place(t, slot.size);
        }
      }
    }
    SQ_RETURN_IF_ERROR(data_file->Truncate(offset));
    auto hasher = FollowingSha256::Start(data_file->temp_path(), offset);
    if (hasher.ok()) {
      out->hasher_ = *std::move(hasher);
      for (const auto& [begin, size] : padding) out->hasher_->MarkWritten(begin, size);
    }  // else Commit hashes the file after the fact
  } else {
    for (onnx::TensorProto* t : all) {
      auto it = slots.find(t);
      if (it != slots.end()) {
        t->mutable_raw_data()->assign(static_cast<size_t>(it->second.size), '\0');
      } else if (IsExternal(*t)) {
        SQ_ASSIGN_OR_RETURN(ExternalLocation loc, model.ExternalLocationOf(*t));
        SQ_ASSIGN_OR_RETURN(const MappedFile* map, model.Map(loc.path));
        std::string bytes(reinterpret_cast<const char*>(map->data() + loc.offset), loc.length);
        map->Release(loc.offset, loc.length);
        t->clear_external_data();
        t->set_data_location(onnx::TensorProto::DEFAULT);
        t->set_raw_data(std::move(bytes));
      }
    }
  }
  return out;
}

absl::Status OutputFiles::WriteTensorBytes(onnx::TensorProto* t, int64_t offset, const void* data,
                                           size_t size) {
  auto it = slots_.find(t);
  if (it == slots_.end()) {
    return absl::InternalError(absl::StrCat("tensor '", t->name(), "' has no place in the output"));
  }
  const Slot& slot = it->second;
  if (offset < 0 || offset + static_cast<int64_t>(size) > slot.size) {
    return absl::InternalError(absl::StrCat("write past the end of tensor '", t->name(), "'"));
  }
  if (slot.offset < 0) {
    std::memcpy(&(*t->mutable_raw_data())[offset], data, size);
    return absl::OkStatus();
  }
  SQ_RETURN_IF_ERROR(data_file_->WriteAt(slot.offset + offset, data, size));
  if (hasher_) hasher_->MarkWritten(slot.offset + offset, static_cast<int64_t>(size));
  return absl::OkStatus();
}

absl::Status OutputFiles::RunCopy(int i) {
  Copy& c = copies_[i];
  if (!c.inline_bytes.empty()) {
    SQ_RETURN_IF_ERROR(data_file_->WriteAt(c.offset, c.inline_bytes.data(), c.inline_bytes.size()));
    if (hasher_) hasher_->MarkWritten(c.offset, c.size);
    return absl::OkStatus();
  }
  SQ_ASSIGN_OR_RETURN(const MappedFile* map, model_.Map(c.from.path));
  // Stream through the mapping in pieces, handing pages back as we go.
  constexpr int64_t kPiece = 16 << 20;
  for (int64_t done = 0; done < c.size; done += kPiece) {
    int64_t n = std::min(kPiece, c.size - done);
    SQ_RETURN_IF_ERROR(data_file_->WriteAt(c.offset + done, map->data() + c.from.offset + done, n));
    if (hasher_) hasher_->MarkWritten(c.offset + done, n);
    map->Release(c.from.offset + done, n);
  }
  return absl::OkStatus();
}

absl::Status OutputFiles::Commit(const onnx::ModelProto& proto, ModelReport* report,
                                 const std::function<absl::Status(const ArtifactImage&)>& check) {
  std::string serialized;
  if (!proto.SerializeToString(&serialized)) {
    return absl::InternalError("the output model does not serialise (over 2 GB inline?)");
  }
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFile> model_file, AtomicFile::Create(output_path_));
  SQ_RETURN_IF_ERROR(model_file->Append(serialized.data(), serialized.size()));
  report->output_bytes = static_cast<int64_t>(serialized.size());
  report->output_sha256 = Sha256Hex(serialized.data(), serialized.size());
  if (data_file_) {
    SQ_ASSIGN_OR_RETURN(int64_t data_bytes, FileSize(data_file_->temp_path()));
    report->output_bytes += data_bytes;
    report->external_data_path = data_name_;
    if (hasher_) {
      SQ_ASSIGN_OR_RETURN(report->external_data_sha256, hasher_->Finish());
      hash_followed_bytes_ = hasher_->rehashed() ? 0 : hasher_->followed_bytes();
      hasher_.reset();
    } else {
      SQ_ASSIGN_OR_RETURN(report->external_data_sha256, Sha256File(data_file_->temp_path()));
    }
  }
  if (check) {
    ArtifactImage image;
    image.name = BaseName(output_path_);
    image.model_bytes = serialized;
    if (data_file_) {
      image.data_path = data_file_->temp_path();
      image.data_location = data_name_;
    }
    image.total_bytes = report->output_bytes;
    SQ_RETURN_IF_ERROR(check(image));
  }
  if (data_file_) SQ_RETURN_IF_ERROR(data_file_->Commit());
  return model_file->Commit();
}

}  // namespace sq
