#include "core/file_util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"

namespace sq {

absl::Status ErrnoStatus(int err, const std::string& what, const std::string& path) {
  std::string msg = absl::StrCat(what, " '", path, "': ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case EISDIR:
    case ENOTDIR:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "cannot stat", path);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat("not a regular file: '", path, "'"));
  return static_cast<int64_t>(st.st_size);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (the fstat below refuses it);
  // it changes nothing for a regular file.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("not a regular file: '", path, "'"));
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = read(fd, &out[done], out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      close(fd);
      return ErrnoStatus(err, "cannot read", path);
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return out;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (the fstat below refuses it);
  // it changes nothing for a regular file.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("not a regular file: '", path, "'"));
  }
  const uint8_t* data = nullptr;
  if (st.st_size > 0) {
    void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      return ErrnoStatus(err, "cannot map", path);
    }
    data = static_cast<const uint8_t*>(p);
  }
  return std::unique_ptr<MappedFile>(new MappedFile(path, fd, data, st.st_size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
  close(fd_);
}

absl::Status MappedFile::ReadAt(int64_t offset, int64_t length, void* out) const {
  if (offset < 0 || length < 0 || offset > size_ || length > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("read of ", length, " bytes at ", offset,
                                              " is outside '", path_, "' (", size_, " bytes)"));
  }
  auto* dst = static_cast<uint8_t*>(out);
  while (length > 0) {
    const ssize_t got = pread(fd_, dst, static_cast<size_t>(length), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return ErrnoStatus(got < 0 ? errno : EIO, "cannot read", path_);
    dst += got;
    offset += got;
    length -= got;
  }
  return absl::OkStatus();
}

void MappedFile::Release(int64_t offset, int64_t length) const {
  if (data_ == nullptr || length <= 0) return;
  static const int64_t page = sysconf(_SC_PAGESIZE);
  // Only whole pages inside the range: a neighbouring tensor may still be in use.
  int64_t begin = (offset + page - 1) / page * page;
  int64_t end = std::min<int64_t>(offset + length, size_) / page * page;
  if (end <= begin) return;
  madvise(const_cast<uint8_t*>(data_) + begin, static_cast<size_t>(end - begin), MADV_DONTNEED);
}

std::string DirName(const std::string& path) {
  size_t pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string BaseName(const std::string& path) {
  size_t pos = path.find_last_of('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

absl::StatusOr<std::string> ResolveInsideDirectory(const std::string& base_dir,
                                                   const std::string& location) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("'", location, "' ", why));
  };
  if (location.empty()) return bad("is empty");
  if (location[0] == '/' || location.find('\\') != std::string::npos) {
    return bad("is absolute; only paths inside the model's directory are allowed");
  }
  for (absl::string_view part : absl::StrSplit(location, '/')) {
    if (part == "..") return bad("escapes the model's directory ('..')");
  }
  std::string joined = absl::StrCat(base_dir, "/", location);
  char resolved[PATH_MAX];
  if (realpath(joined.c_str(), resolved) == nullptr) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat("'", location, "' does not exist"));
    }
    return ErrnoStatus(errno, "cannot resolve", location);
  }
  std::string path = resolved;
  std::string base_prefix = base_dir == "/" ? "/" : base_dir + "/";
  if (!absl::StartsWith(path, base_prefix)) {
    return bad("leads outside the model's directory (symlink?)");
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "cannot stat", location);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", location, "' is not a regular file (a directory, FIFO or device)"));
  }
  return path;
}

absl::StatusOr<std::unique_ptr<AtomicFile>> AtomicFile::Create(const std::string& final_path) {
  std::random_device rd;
  std::string temp = absl::StrFormat("%s/.%s.tmp-%08x%08x", DirName(final_path),
                                     BaseName(final_path), rd(), rd());
  int fd = open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "cannot create", temp);
  return std::unique_ptr<AtomicFile>(new AtomicFile(final_path, temp, fd));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) close(fd_);
  if (!committed_) unlink(temp_path_.c_str());
}

absl::Status AtomicFile::WriteAt(int64_t offset, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = pwrite(fd_, p, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "cannot write", final_path_);
    if (n == 0) return ErrnoStatus(ENOSPC, "cannot write", final_path_);
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Append(const void* data, size_t size) {
  absl::Status s = WriteAt(append_offset_, data, size);
  if (s.ok()) append_offset_ += static_cast<int64_t>(size);
  return s;
}

absl::Status AtomicFile::CopyFrom(int src_fd, int64_t src_offset, int64_t dst_offset,
                                  int64_t length) {
  loff_t in = src_offset, out = dst_offset;
  while (length > 0) {
    ssize_t n = copy_file_range(src_fd, &in, fd_, &out, static_cast<size_t>(length), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Fall back to read + write (e.g. across file systems that refuse the call).
      std::string buf(std::min<int64_t>(length, 8 << 20), '\0');
      ssize_t r = pread(src_fd, buf.data(), buf.size(), in);
      if (r <= 0) return ErrnoStatus(r < 0 ? errno : EIO, "cannot read while copying to", final_path_);
      absl::Status s = WriteAt(out, buf.data(), static_cast<size_t>(r));
      if (!s.ok()) return s;
      n = r;
      in += r;
      out += r;
    }
    length -= n;
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Truncate(int64_t size) {
  if (ftruncate(fd_, size) != 0) return ErrnoStatus(errno, "cannot resize", final_path_);
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (fd_ >= 0) {
    if (close(fd_) != 0) {
      fd_ = -1;
      return ErrnoStatus(errno, "cannot close", final_path_);
    }
    fd_ = -1;
  }
  if (rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    return ErrnoStatus(errno, "cannot rename into place", final_path_);
  }
  committed_ = true;
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  auto file = AtomicFile::Create(path);
  if (!file.ok()) return file.status();
  absl::Status s = (*file)->Append(contents.data(), contents.size());
  if (!s.ok()) return s;
  return (*file)->Commit();
}

namespace {
std::string Hex(const unsigned char* digest, unsigned int len) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}
}  // namespace

std::string Sha256Hex(const void* data, size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, size, digest, &len, EVP_sha256(), nullptr);
  return Hex(digest, len);
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, "cannot stat", path);
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  absl::Status status;
  // Hash straight from the page cache through a mapping (no copy into a buffer), a piece
  // at a time, unmapping each piece's pages as it is done so that a large file never
  // counts in the process's RSS. read() where the file cannot be mapped.
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = size > 0 ? mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  if (map != MAP_FAILED) {
    madvise(map, size, MADV_SEQUENTIAL);
    const auto* base = static_cast<const unsigned char*>(map);
    constexpr size_t kPiece = size_t{64} << 20;
    for (size_t off = 0; off < size; off += kPiece) {
      const size_t len = std::min(kPiece, size - off);
      EVP_DigestUpdate(ctx, base + off, len);
      madvise(const_cast<unsigned char*>(base) + off, len, MADV_DONTNEED);
    }
    munmap(map, size);
  } else {
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    std::string buf(4 << 20, '\0');
    while (true) {
      ssize_t n = read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = ErrnoStatus(errno, "cannot read", path);
        break;
      }
      if (n == 0) break;
      EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    }
  }
  close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  if (!status.ok()) return status;
  return Hex(digest, len);
}

namespace {

// "quota period" (cgroup v2 cpu.max) or two files (v1) -> CPUs rounded up; 0 = unlimited.
int QuotaCpus(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>((quota + period - 1) / period);
}

}  // namespace

int CgroupCpuLimit(const std::string& cgroup_root, const std::string& proc_self_cgroup) {
  int best = 0;
  auto take = [&best](int cpus) {
    if (cpus > 0 && (best == 0 || cpus < best)) best = cpus;
  };
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) {
      // cgroup v2: every level from the process's cgroup up to the root may cap it.
      std::string path(f[2]);
      while (true) {
        auto text = ReadFileToString(cgroup_root + (path == "/" ? "" : path) + "/cpu.max");
        if (text.ok()) {
          std::vector<absl::string_view> q = absl::StrSplit(absl::StripAsciiWhitespace(*text), ' ');
          int64_t quota = 0, period = 0;
          if (q.size() == 2 && q[0] != "max" && absl::SimpleAtoi(q[0], &quota) &&
              absl::SimpleAtoi(q[1], &period)) {
            take(QuotaCpus(quota, period));
          }
        }
        if (path.empty() || path == "/") break;
        const size_t slash = path.rfind('/');
        path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
      }
    } else if (absl::c_linear_search(std::vector<absl::string_view>(absl::StrSplit(f[1], ',')),
                                     absl::string_view("cpu"))) {
      // cgroup v1: the cpu controller's folder, mounted as cpu (or cpu,cpuacct).
      for (const char* dir : {"/cpu", "/cpu,cpuacct"}) {
        const std::string base = cgroup_root + dir + (f[2] == "/" ? "" : std::string(f[2]));
        auto q = ReadFileToString(base + "/cpu.cfs_quota_us");
        auto p = ReadFileToString(base + "/cpu.cfs_period_us");
        int64_t quota = 0, period = 0;
        if (q.ok() && p.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*q), &quota) &&
            absl::SimpleAtoi(absl::StripAsciiWhitespace(*p), &period)) {
          take(QuotaCpus(quota, period));
          break;
        }
      }
    }
  }
  return best;
}

int AvailableCpus() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int affinity = CPU_COUNT(&set);
    if (affinity > 0 && (cpus <= 0 || affinity < cpus)) cpus = affinity;
  }
  if (auto self = ReadFileToString("/proc/self/cgroup"); self.ok()) {
    const int quota = CgroupCpuLimit("/sys/fs/cgroup", *self);
    if (quota > 0 && (cpus <= 0 || quota < cpus)) cpus = quota;
  }
  return std::max(1, cpus);
}

int64_t PeakRssBytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

int64_t CurrentRssBytes() {
  // /proc/self/statm: size resident ... in pages.
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const bool ok = std::fscanf(f, "%lld %lld", &size, &resident) == 2;
  std::fclose(f);
  return ok ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : 0;
}

}  // namespace sq
