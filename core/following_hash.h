// SHA-256 of a file that is written out of order, computed while it is being written.
//
// The engine writes its external data file at precomputed offsets from many threads, in
// whatever order the layers finish. SHA-256 consumes bytes strictly in order, so hashing
// after the last write meant a second pass over the whole file on one thread (0.5 s per
// GB with SHA-NI, all of it after the transform). FollowingSha256 instead runs a thread
// that follows the writes: writers report each range they finished (MarkWritten), and the
// thread hashes the file's longest written prefix as it grows, straight from the page
// cache through a populated mapping of at most 8 MiB at a time (no copy, no page faults;
// the file must not shrink while it is followed). Finish() hashes whatever is left after
// the last write.
//
// The digest is always the SHA-256 of the file's final bytes: a range reported written
// a second time after the hasher passed over it marks the run "overwritten", and Finish()
// then hashes the whole file again instead of trusting the followed prefix. Ranges that
// are never reported (padding between tensors, zeros from ftruncate) are simply read by
// Finish() once writing is over; report them up front (MarkWritten) to let the hasher run
// past them.
#ifndef SQ_CORE_FOLLOWING_HASH_H_
#define SQ_CORE_FOLLOWING_HASH_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sq {

class FollowingSha256 {
 public:
  // How the hasher reads the file: through mappings of the page cache, falling back to
  // pread() where mapping fails (kMapped), or with pread() only (kPread: what the fallback
  // does, for tests).
  enum class Read { kMapped, kPread };
  // Follows file `path` (opened read-only here; the writers keep their own descriptor),
  // whose final size is `size` bytes. Errors: those of open().
  static absl::StatusOr<std::unique_ptr<FollowingSha256>> Start(const std::string& path, int64_t size,
                                                                 Read read = Read::kMapped);
  ~FollowingSha256();  // stops the thread; the digest is discarded
  FollowingSha256(const FollowingSha256&) = delete;
  FollowingSha256& operator=(const FollowingSha256&) = delete;

  // Bytes [offset, offset + size) now hold their final contents. Thread-safe; cheap (a map
  // insert under a mutex). Ranges may overlap, arrive in any order and be empty.
  void MarkWritten(int64_t offset, int64_t size);

  // Call after the last write. Hashes the rest of the file (everything from the followed
  // prefix on, reported or not) and returns the lower-case hex digest of the whole file.
  // The file's size must be `size` by then. Errors: the read errors of the file, and
  // Internal when its size is not `size`. Call once.
  absl::StatusOr<std::string> Finish();

  // For tests and the report: bytes hashed by the following thread before Finish(), and
  // whether Finish() had to hash the whole file again because of a second write.
  int64_t followed_bytes() const;
  bool rehashed() const { return rehashed_; }

 private:
  FollowingSha256(std::string path, int fd, int64_t size, Read read);
  void Run();

  const std::string path_;
  const int fd_;
  const int64_t size_;
  const Read read_;
  void* ctx_ = nullptr;  // EVP_MD_CTX, owned by the thread until it stops, then by Finish

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, int64_t> pending_;  // written but not yet hashed: begin -> end, disjoint
  int64_t claimed_ = 0;                 // [0, claimed_) is hashed or being hashed
  bool overwritten_ = false;            // a write landed in [0, claimed_)
  bool stop_ = false;
  absl::Status read_status_;
  bool rehashed_ = false;
  bool finished_ = false;
  std::thread thread_;
};

}  // namespace sq

#endif  // SQ_CORE_FOLLOWING_HASH_H_
