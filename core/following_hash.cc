#include "core/following_hash.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"

namespace sq {
namespace {

constexpr int64_t kClaimBytes = int64_t{8} << 20;  // the most the thread takes per step
constexpr size_t kReadBytes = size_t{1} << 20;     // pread fallback: an L2-sized buffer

EVP_MD_CTX* Ctx(void* p) { return static_cast<EVP_MD_CTX*>(p); }

// Reads [begin, end) of `fd` into the digest: through a populated read-only mapping of the
// page cache (no copy, no page faults), pread() into `buf` where mapping fails or `map` is
// false.
absl::Status HashRange(int fd, const std::string& path, int64_t begin, int64_t end, bool map,
                       std::vector<unsigned char>& buf, EVP_MD_CTX* ctx) {
  static const int64_t kPage = sysconf(_SC_PAGESIZE);
  while (map && begin < end) {
    const int64_t len = std::min<int64_t>(end - begin, kClaimBytes);
    const int64_t base = begin / kPage * kPage;
    const size_t map_len = static_cast<size_t>(begin + len - base);
    void* map = mmap(nullptr, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, base);
    if (map == MAP_FAILED) break;
    EVP_DigestUpdate(ctx, static_cast<const unsigned char*>(map) + (begin - base), static_cast<size_t>(len));
    munmap(map, map_len);
    begin += len;
  }
  while (begin < end) {
    const size_t want = static_cast<size_t>(std::min<int64_t>(end - begin, static_cast<int64_t>(buf.size())));
    const ssize_t n = pread(fd, buf.data(), want, begin);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::DataLossError(absl::StrCat("cannot read ", path, " to hash it: ", std::strerror(errno)));
    if (n == 0) {
      return absl::InternalError(absl::StrCat(path, " ended at byte ", begin, " while hashing up to ", end));
    }
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    begin += n;
  }
  return absl::OkStatus();
}

std::string HexDigest(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FollowingSha256>> FollowingSha256::Start(const std::string& path,
                                                                        int64_t size, Read read) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open", path);
  std::unique_ptr<FollowingSha256> h(new FollowingSha256(path, fd, size, read));
  h->thread_ = std::thread([p = h.get()] { p->Run(); });
  return h;
}

FollowingSha256::FollowingSha256(std::string path, int fd, int64_t size, Read read)
    : path_(std::move(path)), fd_(fd), size_(size), read_(read) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  ctx_ = ctx;
}

FollowingSha256::~FollowingSha256() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  EVP_MD_CTX_free(Ctx(ctx_));
  close(fd_);
}

void FollowingSha256::MarkWritten(int64_t offset, int64_t size) {
  if (size <= 0) return;
  int64_t begin = offset, end = offset + size;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (begin < claimed_) overwritten_ = true;  // the hasher may have read the old bytes
    begin = std::max(begin, claimed_);
    if (begin >= end) return;
    // Merge with every pending range that overlaps or touches [begin, end).
    auto it = pending_.upper_bound(begin);
    if (it != pending_.begin()) {
      auto prev = std::prev(it);
      if (prev->second >= begin) it = prev;
    }
    while (it != pending_.end() && it->first <= end) {
      begin = std::min(begin, it->first);
      end = std::max(end, it->second);
      it = pending_.erase(it);
    }
    pending_.emplace(begin, end);
    wake = begin == claimed_;
  }
  if (wake) cv_.notify_one();
}

void FollowingSha256::Run() {
  std::vector<unsigned char> buf(kReadBytes);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || (!pending_.empty() && pending_.begin()->first <= claimed_); });
    if (stop_) return;
    auto front = pending_.begin();
    const int64_t begin = claimed_, end = std::min(front->second, claimed_ + kClaimBytes);
    if (end < front->second) {
      const int64_t rest_end = front->second;
      pending_.erase(front);
      pending_.emplace(end, rest_end);
    } else {
      pending_.erase(front);
    }
    claimed_ = end;
    lock.unlock();
    absl::Status s = HashRange(fd_, path_, begin, end, read_ == Read::kMapped, buf, Ctx(ctx_));
    lock.lock();
    if (!s.ok()) {
      read_status_ = s;
      return;
    }
  }
}

int64_t FollowingSha256::followed_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return claimed_;
}

absl::StatusOr<std::string> FollowingSha256::Finish() {
  if (finished_) return absl::FailedPreconditionError("FollowingSha256::Finish called twice");
  finished_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // The thread has stopped: its state is ours now.
  struct stat st;
  if (fstat(fd_, &st) != 0) return ErrnoStatus(errno, "cannot stat", path_);
  if (st.st_size != size_) {
    return absl::InternalError(absl::StrCat(path_, " is ", st.st_size, " bytes, expected ", size_));
  }
  if (!read_status_.ok()) return read_status_;
  std::vector<unsigned char> buf(kReadBytes);
  int64_t from = claimed_;
  if (overwritten_) {
    rehashed_ = true;
    EVP_DigestInit_ex(Ctx(ctx_), EVP_sha256(), nullptr);
    from = 0;
  }
  absl::Status s = HashRange(fd_, path_, from, size_, read_ == Read::kMapped, buf, Ctx(ctx_));
  if (!s.ok()) return s;
  return HexDigest(Ctx(ctx_));
}

}  // namespace sq
