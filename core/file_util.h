// File-system helpers for the engine: whole-file reads, read-only memory maps whose pages
// can be handed back to the kernel, atomic output files, SHA-256 and peak RSS.
#ifndef SQ_CORE_FILE_UTIL_H_
#define SQ_CORE_FILE_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sq {

// Status for a failed system call on `path`: NotFound for ENOENT, ResourceExhausted for
// ENOSPC/EDQUOT, PermissionDenied for EACCES, else Internal; message names what and path.
absl::Status ErrnoStatus(int err, const std::string& what, const std::string& path);

absl::StatusOr<std::string> ReadFileToString(const std::string& path);
absl::StatusOr<int64_t> FileSize(const std::string& path);

// A read-only private mapping of a whole file. Thread-safe for concurrent reads.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the pages of [offset, offset + length) from this process's resident set (the
  // page cache keeps them); later reads fault them back in. Bounds memory on big models.
  void Release(int64_t offset, int64_t length) const;
  // Copies [offset, offset + length) into `out` with pread on the file this maps (kept
  // open), so the pages never enter this process's resident set: for a caller that reads
  // a large tensor a piece at a time into its own buffer. The bytes are the mapping's.
  // Errors: OutOfRange outside the file, the read's errno otherwise.
  absl::Status ReadAt(int64_t offset, int64_t length, void* out) const;

 private:
  MappedFile(std::string path, int fd, const uint8_t* data, int64_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}
  std::string path_;
  int fd_;
  const uint8_t* data_;
  int64_t size_;
};

// A file written under a temporary name in the target's directory and renamed into place
// by Commit(). Destroying it uncommitted removes the temporary file, so a failed or
// cancelled run never leaves a partial file under the final name.
class AtomicFile {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFile>> Create(const std::string& final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  int fd() const { return fd_; }
  const std::string& temp_path() const { return temp_path_; }
  const std::string& final_path() const { return final_path_; }

  // Appends / writes at an offset; ResourceExhausted on a full disk. Thread-safe (pwrite).
  absl::Status Append(const void* data, size_t size);
  absl::Status WriteAt(int64_t offset, const void* data, size_t size);
  // Copies `length` bytes of file `src_fd` at `src_offset` to `dst_offset` in the kernel.
  absl::Status CopyFrom(int src_fd, int64_t src_offset, int64_t dst_offset, int64_t length);
  // Sets the final size (extends with zeros).
  absl::Status Truncate(int64_t size);
  // Closes and renames into place. After this the destructor does nothing.
  absl::Status Commit();

 private:
  AtomicFile(std::string final_path, std::string temp_path, int fd)
      : final_path_(std::move(final_path)), temp_path_(std::move(temp_path)), fd_(fd) {}
  std::string final_path_, temp_path_;
  int fd_ = -1;
  int64_t append_offset_ = 0;
  bool committed_ = false;
};

// Writes `contents` to `path` atomically (temporary file + rename).
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);

// Lower-case hex SHA-256 of a file's contents / of a byte string.
absl::StatusOr<std::string> Sha256File(const std::string& path);
std::string Sha256Hex(const void* data, size_t size);

// Peak resident set size of this process so far, in bytes.
int64_t PeakRssBytes();
// CPUs this process may use: the smallest of the machine's count, the affinity mask and
// the cgroup CPU quota rounded up (a container limited to 1.5 CPUs gets 2 threads, not the
// node's 64). At least 1.
int AvailableCpus();
// The cgroup CPU quota in CPUs, rounded up, read under `cgroup_root` (normally
// /sys/fs/cgroup) for the process whose /proc/self/cgroup text is `proc_self_cgroup`:
// cgroup v2 `cpu.max` along the process's path from its leaf to the root (the smallest
// applies), else cgroup v1 `cpu/cpu.cfs_quota_us` / `cpu.cfs_period_us`. 0 = no quota.
int CgroupCpuLimit(const std::string& cgroup_root, const std::string& proc_self_cgroup);
// Resident memory of this process now (bytes, /proc/self/statm); 0 if unreadable.
int64_t CurrentRssBytes();

// Directory part of a path ("." when it has none) and the last component.
std::string DirName(const std::string& path);
std::string BaseName(const std::string& path);

// The containment rule for files a model refers to (external data): `location` must be
// a relative path without "..", and once every symlink is resolved it must still lie
// inside `base_dir` (itself already resolved by realpath). Returns the resolved absolute
// path. Errors: InvalidArgument (empty, absolute, "..", backslash, or leading outside
// `base_dir`, or not a regular file: a FIFO, a device or a directory), NotFound (no such
// file), or the errno-derived status of realpath.
// The engine and the client (which uploads those files) both use this one rule.
absl::StatusOr<std::string> ResolveInsideDirectory(const std::string& base_dir,
                                                   const std::string& location);

}  // namespace sq

#endif  // SQ_CORE_FILE_UTIL_H_
