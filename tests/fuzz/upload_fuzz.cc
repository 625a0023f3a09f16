// Fuzzes the upload stream as the artifact store receives it: the input declares 1-3 files
// (a name and a size each) and then feeds bytes in chunks of input-chosen sizes, ending in
// a commit or an abandoned session. Whatever happens, the store's temporary area is empty
// once the session is gone, and a committed model reads back with the declared files.
#include <dirent.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/artifact_store.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint8_t Byte() { return i_ < n_ ? d_[i_++] : 0; }
  std::string Bytes(size_t k) {
    k = std::min(k, n_ - i_);
    std::string s(reinterpret_cast<const char*>(d_ + i_), k);
    i_ += k;
    return s;
  }
  bool done() const { return i_ >= n_; }

 private:
  const uint8_t* d_;
  size_t n_, i_ = 0;
};

size_t Entries(const std::string& dir) {
  size_t n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) n += std::string(e->d_name) != "." && std::string(e->d_name) != "..";
    ::closedir(d);
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static sq::server::ArtifactStore* store = [] {
    auto s = sq::server::ArtifactStore::Open(sq::fuzz::ScratchDir() + "/store");
    SQ_FUZZ_CHECK(s.ok(), "the store opens");
    return s->release();
  }();
  Reader in(data, size);
  std::vector<sq::server::StoredFile> files(1 + in.Byte() % 3);
  for (auto& f : files) {
    f.name = in.Bytes(in.Byte() % 24);
    f.size = (static_cast<int64_t>(in.Byte()) << 8 | in.Byte()) - 16;  // may be negative
  }
  {
    absl::StatusOr<std::unique_ptr<sq::server::UploadSession>> up = store->BeginUpload(files);
    if (up.ok()) {
      while (!in.done()) {
        const uint8_t op = in.Byte();
        if (op == 0xff) break;  // the client vanishes
        if (!(*up)->Append(in.Bytes(op)).ok()) break;
      }
      if (in.done()) {
        absl::StatusOr<sq::server::UploadSession::Result> r = (*up)->Commit();
        if (r.ok()) {
          absl::StatusOr<std::vector<sq::server::StoredFile>> back = store->GetModelFiles(r->model_id);
          SQ_FUZZ_CHECK(back.ok() && back->size() == files.size(), "a committed model reads back");
        }
      }
    }
  }
  SQ_FUZZ_CHECK(Entries(store->root() + "/tmp") == 0, "no temporary outlives its upload");
  return 0;
}
