#include "server/artifact_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sq::server {
namespace fs = std::filesystem;

namespace {

// How old an unlocked entry of tmp/ must be before the sweep removes it: the instant
// between a temporary directory's mkdir and its flock, with a wide margin.
const absl::Duration kTempGrace = absl::Seconds(2);
// The file in every tmp/ folder whose flock() marks the folder as in use.
constexpr char kTempLockName[] = ".lock";

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

std::string Hex(const unsigned char* data, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 15];
  }
  return out;
}

bool IsLowerHex(absl::string_view s, size_t n) {
  if (s.size() != n) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// fsync of a directory, so a rename inside it survives a crash.
void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

}  // namespace

// ---- hashing ----------------------------------------------------------------------------

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr);
}
Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Sha256::Update(absl::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}
std::string Sha256::HexDigest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len);
  return Hex(md, len);
}

std::string Sha256Hex(absl::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  Sha256 h;
  std::string buf(1 << 20, '\0');
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoStatus(err, "read", path);
    }
    if (n == 0) break;
    h.Update(absl::string_view(buf.data(), static_cast<size_t>(n)));
  }
  ::close(fd);
  return h.HexDigest();
}

// ---- small helpers ----------------------------------------------------------------------

absl::Status WriteFileAtomic(const std::string& path, absl::string_view content) {
  std::string tmp = absl::StrCat(path, ".tmp-", NewJobId().substr(0, 12));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "create", tmp);
  absl::Status st = WriteAll(fd, content, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoStatus(errno, "fsync", tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoStatus(errno, "rename", tmp);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  SyncDir(fs::path(path).parent_path().string());
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return ss.str();
}

absl::Status ValidateRelativeName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("empty file name");
  if (name.size() > 1024) return absl::InvalidArgumentError("file name too long");
  if (name.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("absolute file name not allowed: ", name));
  }
  // Control characters too: a newline would forge lines of the manifest (ManifestText), whose
  // hash is the model id, and no file a model names needs one.
  for (char c : name) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '\\' || u < 0x20 || u == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad character in file name: \"", absl::CHexEscape(name), "\""));
    }
  }
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("file name must be a plain relative path: ", name));
    }
  }
  return absl::OkStatus();
}

bool IsValidJobId(absl::string_view id) { return IsLowerHex(id, 32); }
bool IsValidModelId(absl::string_view id) { return IsLowerHex(id, 64); }

std::string NewJobId() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    // OpenSSL's CSPRNG failing is not recoverable: ids must never be guessable.
    std::abort();
  }
  return Hex(bytes, sizeof bytes);
}

std::string ManifestText(const std::vector<StoredFile>& files) {
  std::string out;
  for (const StoredFile& f : files) absl::StrAppend(&out, f.sha256, " ", f.size, " ", f.name, "\n");
  return out;
}

JobLock::~JobLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

// ---- store ------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ArtifactStore>> ArtifactStore::Open(const std::string& root) {
  if (root.empty()) return absl::InvalidArgumentError("artifact directory not set");
  std::error_code ec;
  std::string abs = fs::absolute(root, ec).lexically_normal().string();
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad artifact directory ", root));
  if (!abs.empty() && abs.back() == '/') abs.pop_back();
  for (const char* sub : {"models", "jobs", "tmp", "owners", "keys"}) {
    fs::create_directories(fs::path(abs) / sub, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", abs, "/", sub, ": ", ec.message()));
    }
  }
  // Leftovers of uploads and deletions interrupted by a crash. Another live server may
  // share this directory: its entries are flock()ed and stay.
  std::unique_ptr<ArtifactStore> store(new ArtifactStore(abs));
  store->SweepTemp(kTempGrace);
  return store;
}

int ArtifactStore::SweepTemp(absl::Duration grace) const {
  int removed = 0;
  std::error_code ec;
  const auto now = fs::file_time_type::clock::now();
  const auto grace_chrono = absl::ToChronoSeconds(grace);
  for (const auto& entry : fs::directory_iterator(fs::path(root_) / "tmp", ec)) {
    const std::string path = entry.path().string();
    std::error_code ec2;
    auto t = fs::last_write_time(entry.path(), ec2);
    if (ec2 || now - t < grace_chrono) continue;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) continue;
    if (!S_ISDIR(st.st_mode)) {  // a symlink or stray file: never followed, just removed
      ::unlink(path.c_str());
      ++removed;
      continue;
    }
    // The holder's lock is on a regular file inside (see MakeTempDir). A folder without
    // one past the grace period was left between mkdir and lock, or is a deletion in
    // progress: either way nobody will use it again.
    int fd = ::open((path + "/" + kTempLockName).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      if (errno == ENOENT) {
        RemoveTree(path);
        ++removed;
      }
      continue;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {  // nobody alive holds it
      RemoveTree(path);
      ++removed;
    }
    ::close(fd);
  }
  return removed;
}

absl::StatusOr<ArtifactStore::TempDir> ArtifactStore::MakeTempDir(absl::string_view prefix) const {
  TempDir out;
  out.path = absl::StrCat(root_, "/tmp/", prefix, "-", NewJobId());
  if (::mkdir(out.path.c_str(), 0755) != 0) return ErrnoStatus(errno, "mkdir", out.path);
  // A regular file opened for writing, not the folder: flock() on a directory is local to
  // one node on NFS, a lock on a writable regular file reaches every server sharing it.
  int fd = ::open((out.path + "/" + kTempLockName).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    absl::Status st = ErrnoStatus(errno, "lock", out.path);
    if (fd >= 0) ::close(fd);
    RemoveTree(out.path);
    return st;
  }
  out.lock = std::make_unique<JobLock>(fd);
  return out;
}

absl::StatusOr<std::unique_ptr<UploadSession>> ArtifactStore::BeginUpload(
    std::vector<StoredFile> files) {
  if (files.empty()) return absl::InvalidArgumentError("upload names no files");
  std::set<std::string> seen;
  for (StoredFile& f : files) {
    if (absl::Status st = ValidateRelativeName(f.name); !st.ok()) return st;
    if (!seen.insert(f.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("file named twice: ", f.name));
    }
    if (f.size < 0) return absl::InvalidArgumentError(absl::StrCat("negative size for ", f.name));
    if (!f.sha256.empty() && !IsLowerHex(f.sha256, 64)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sha256 of ", f.name, " is not 64 lower-case hex digits"));
    }
  }
  SweepTemp(kTempGrace);
  auto dir = MakeTempDir("upload");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<UploadSession> session(new UploadSession(this, *std::move(dir), std::move(files)));
  if (absl::Status st = session->OpenCurrent(); !st.ok()) return st;
  return session;
}

namespace {
std::string OwnerMark(const std::string& root, const std::string& model_id, const std::string& tenant) {
  return absl::StrCat(root, "/owners/", model_id, "/", absl::BytesToHexString(tenant));
}
}  // namespace

absl::Status ArtifactStore::AddModelOwner(const std::string& model_id, const std::string& tenant) {
  if (!IsValidModelId(model_id) || tenant.empty()) {
    return absl::InvalidArgumentError("AddModelOwner: bad model id or tenant");
  }
  std::error_code ec;
  fs::create_directories(absl::StrCat(root_, "/owners/", model_id), ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot record the model's owner: ", ec.message()));
  return WriteFileAtomic(OwnerMark(root_, model_id, tenant), "");
}

bool ArtifactStore::HasModelOwner(const std::string& model_id, const std::string& tenant) const {
  if (!IsValidModelId(model_id) || tenant.empty()) return false;
  struct stat st;
  return ::stat(OwnerMark(root_, model_id, tenant).c_str(), &st) == 0;
}

bool ArtifactStore::HasModel(const std::string& model_id) const {
  if (!IsValidModelId(model_id)) return false;
  struct stat st;
  return ::stat(absl::StrCat(root_, "/models/", model_id, "/manifest.txt").c_str(), &st) == 0;
}

absl::StatusOr<std::vector<StoredFile>> ArtifactStore::GetModelFiles(
    const std::string& model_id) const {
  if (!IsValidModelId(model_id)) {
    return absl::InvalidArgumentError(absl::StrCat("malformed model id \"", model_id, "\""));
  }
  auto text = ReadFileToString(absl::StrCat(root_, "/models/", model_id, "/manifest.txt"));
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("no model ", model_id));
  std::vector<StoredFile> files;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(' ', 2));
    if (parts.size() != 3) return absl::InternalError("corrupt manifest of " + model_id);
    StoredFile f;
    f.sha256 = parts[0];
    f.size = std::stoll(parts[1]);
    f.name = parts[2];
    files.push_back(std::move(f));
  }
  if (files.empty()) return absl::InternalError("empty manifest of " + model_id);
  return files;
}

std::string ArtifactStore::ModelPath(const std::string& model_id, const StoredFile& main) const {
  return absl::StrCat(root_, "/models/", model_id, "/files/", main.name);
}

std::vector<std::string> ArtifactStore::ListModelIds() const {
  std::vector<std::string> ids;
  std::error_code ec;
  for (fs::directory_iterator it(root_ + "/models", ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (IsValidModelId(name)) ids.push_back(std::move(name));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

void ArtifactStore::TouchModel(const std::string& model_id) const {
  if (!IsValidModelId(model_id)) return;
  std::string path = absl::StrCat(root_, "/models/", model_id, "/last_used");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  (void)::futimens(fd, nullptr);  // now
  ::close(fd);
}

absl::StatusOr<absl::Time> ArtifactStore::ModelLastUsed(const std::string& model_id) const {
  if (!IsValidModelId(model_id)) return absl::NotFoundError("no model " + model_id);
  std::string dir = absl::StrCat(root_, "/models/", model_id);
  struct stat st;
  if (::stat((dir + "/last_used").c_str(), &st) == 0 || ::stat((dir + "/manifest.txt").c_str(), &st) == 0) {
    return absl::TimeFromTimespec(st.st_mtim);
  }
  return absl::NotFoundError("no model " + model_id);
}

absl::Status ArtifactStore::RemoveModelOwner(const std::string& model_id, const std::string& tenant) {
  if (!IsValidModelId(model_id) || tenant.empty()) return absl::NotFoundError("no model " + model_id);
  if (::unlink(OwnerMark(root_, model_id, tenant).c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, "unlink", OwnerMark(root_, model_id, tenant));
  }
  return absl::OkStatus();
}

bool ArtifactStore::HasAnyModelOwner(const std::string& model_id) const {
  if (!IsValidModelId(model_id)) return false;
  std::error_code ec;
  fs::directory_iterator it(absl::StrCat(root_, "/owners/", model_id), ec);
  return !ec && it != fs::directory_iterator();
}

absl::Status ArtifactStore::DeleteModel(const std::string& model_id) {
  if (!IsValidModelId(model_id)) return absl::NotFoundError("no model " + model_id);
  const std::string tag = model_id.substr(0, 16);
  absl::Status st = RemoveByRename(absl::StrCat(root_, "/models/", model_id), "deleted-model-" + tag);
  if (absl::IsNotFound(st)) return absl::NotFoundError("no model " + model_id);
  if (!st.ok()) return st;
  (void)RemoveByRename(absl::StrCat(root_, "/owners/", model_id), "deleted-owners-" + tag);  // may have none
  return absl::OkStatus();
}

namespace {
int64_t TreeBytes(const std::string& path) {
  int64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code e2;
    if (it->is_regular_file(e2)) {
      auto n = it->file_size(e2);
      if (!e2) total += static_cast<int64_t>(n);
    }
  }
  return total;
}
}  // namespace

int64_t ArtifactStore::ModelBytes(const std::string& model_id) const {
  if (!IsValidModelId(model_id)) return 0;
  return TreeBytes(absl::StrCat(root_, "/models/", model_id));
}

int64_t ArtifactStore::JobBytes(const std::string& job_id) const {
  if (!IsValidJobId(job_id)) return 0;
  return TreeBytes(JobDir(job_id));
}

std::string ArtifactStore::JobDir(const std::string& job_id) const {
  return absl::StrCat(root_, "/jobs/", job_id);
}

absl::StatusOr<std::unique_ptr<JobLock>> ArtifactStore::CreateJob(const std::string& job_id) {
  if (!IsValidJobId(job_id)) return absl::InvalidArgumentError("malformed job id");
  std::string dir = JobDir(job_id);
  if (::mkdir(dir.c_str(), 0755) != 0) {
    if (errno == EEXIST) return absl::AlreadyExistsError("job id taken");
    return ErrnoStatus(errno, "mkdir", dir);
  }
  return TryLockJob(job_id);
}

absl::StatusOr<std::unique_ptr<JobLock>> ArtifactStore::TryLockJob(const std::string& job_id) const {
  if (!IsValidJobId(job_id)) return absl::InvalidArgumentError("malformed job id");
  std::string path = JobDir(job_id) + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError("no job " + job_id);
    return ErrnoStatus(errno, "open", path);
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) return absl::FailedPreconditionError("job is owned by a live server");
    return ErrnoStatus(err, "flock", path);
  }
  return std::make_unique<JobLock>(fd);
}

absl::StatusOr<std::unique_ptr<JobLock>> ArtifactStore::HoldJobShared(const std::string& job_id) const {
  if (!IsValidJobId(job_id)) return absl::NotFoundError("no job " + job_id);
  std::string path = JobDir(job_id) + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError("no job " + job_id);
    return ErrnoStatus(errno, "open", path);
  }
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) return absl::FailedPreconditionError("job " + job_id + " is being changed or deleted");
    return ErrnoStatus(err, "flock", path);
  }
  return std::make_unique<JobLock>(fd);
}

absl::Status ArtifactStore::WriteJobRecord(const std::string& job_id, absl::string_view json) {
  return WriteFileAtomic(JobDir(job_id) + "/job.json", json);
}

absl::StatusOr<std::string> ArtifactStore::ReadJobRecord(const std::string& job_id) const {
  if (!IsValidJobId(job_id)) return absl::NotFoundError("no job " + job_id);
  auto text = ReadFileToString(JobDir(job_id) + "/job.json");
  if (!text.ok()) return absl::NotFoundError("no job " + job_id);
  return text;
}

std::vector<std::string> ArtifactStore::ListJobIds() const {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_ + "/jobs", ec)) {
    std::string id = entry.path().filename().string();
    if (!IsValidJobId(id)) continue;
    std::error_code ec2;
    if (fs::exists(entry.path() / "job.json", ec2)) ids.push_back(id);
  }
  return ids;
}

namespace {
std::string KeyPath(const std::string& root, const std::string& key) {
  return absl::StrCat(root, "/keys/", Sha256Hex(key));
}
}  // namespace

absl::Status ArtifactStore::ClaimIdempotencyKey(const std::string& key, const std::string& job_id) {
  const std::string path = KeyPath(root_, key);
  // Written complete under a private name in tmp/ (which the sweep empties should this
  // server die here), then link()ed: link fails with EEXIST when another claim (on any
  // server) got there first, and nobody ever reads a partial file.
  const std::string temp = absl::StrCat(root_, "/tmp/claim-", job_id);
  if (absl::Status st = WriteFileAtomic(temp, job_id); !st.ok()) return st;
  int rc = ::link(temp.c_str(), path.c_str());
  int err = errno;
  ::unlink(temp.c_str());
  if (rc == 0) {
    SyncDir(root_ + "/keys");
    return absl::OkStatus();
  }
  if (err != EEXIST) return ErrnoStatus(err, "link", path);
  auto holder = ReadFileToString(path);
  if (!holder.ok()) return absl::UnavailableError("idempotency key changed hands; retry");
  return absl::AlreadyExistsError(*holder);
}

absl::StatusOr<std::string> ArtifactStore::LookupIdempotencyKey(const std::string& key) const {
  auto holder = ReadFileToString(KeyPath(root_, key));
  if (!holder.ok() || !IsValidJobId(*holder)) return absl::NotFoundError("no such key");
  return holder;
}

void ArtifactStore::ReleaseIdempotencyKey(const std::string& key, const std::string& job_id) {
  const std::string path = KeyPath(root_, key);
  auto holder = ReadFileToString(path);
  if (holder.ok() && *holder == job_id) ::unlink(path.c_str());
}

absl::Status ArtifactStore::RequestCancel(const std::string& job_id) {
  return WriteFileAtomic(JobDir(job_id) + "/cancel", "cancel\n");
}

bool ArtifactStore::CancelRequested(const std::string& job_id) const {
  struct stat st;
  return ::stat((JobDir(job_id) + "/cancel").c_str(), &st) == 0;
}

absl::Status ArtifactStore::DeleteJob(const std::string& job_id) {
  if (!IsValidJobId(job_id)) return absl::NotFoundError("no job " + job_id);
  absl::Status st = RemoveByRename(JobDir(job_id), "deleted-" + job_id);
  return absl::IsNotFound(st) ? absl::NotFoundError("no job " + job_id) : st;
}

absl::Status ArtifactStore::RemoveByRename(const std::string& path, const std::string& tag) const {
  const std::string dest = absl::StrCat(root_, "/tmp/", tag, "-", NewJobId().substr(0, 8));
  if (::rename(path.c_str(), dest.c_str()) != 0) return ErrnoStatus(errno, "rename", path);
  RemoveTree(dest);
  return absl::OkStatus();
}

// ---- uploads ----------------------------------------------------------------------------

UploadSession::UploadSession(const ArtifactStore* store, ArtifactStore::TempDir temp_dir,
                             std::vector<StoredFile> files)
    : store_(store),
      temp_dir_(std::move(temp_dir.path)),
      files_(std::move(files)),
      temp_lock_(std::move(temp_dir.lock)) {
  for (const StoredFile& f : files_) declared_ += f.size;
  computed_sha_.resize(files_.size());
}

UploadSession::~UploadSession() {
  if (!done_) Abort();
}

void UploadSession::Abort() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_dir_.empty()) RemoveTree(temp_dir_);
  temp_dir_.clear();
  temp_lock_.reset();
  done_ = true;
}

absl::Status UploadSession::OpenCurrent() {
  // Skips over (and finishes) zero-length files so Append always has a file with room.
  while (current_ < files_.size()) {
    fs::path path = fs::path(temp_dir_) / "files" / files_[current_].name;
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return absl::InternalError("mkdir " + path.parent_path().string() + ": " + ec.message());
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoStatus(errno, "create", path.string());
    hasher_ = std::make_unique<Sha256>();
    current_written_ = 0;
    writeback_from_ = 0;
    if (files_[current_].size > 0) return absl::OkStatus();
    if (absl::Status st = CloseCurrent(); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status UploadSession::CloseCurrent() {
  absl::Status st;
  if (::fsync(fd_) != 0) st = ErrnoStatus(errno, "fsync", files_[current_].name);
  ::close(fd_);
  fd_ = -1;
  computed_sha_[current_] = hasher_->HexDigest();
  ++current_;
  return st;
}

absl::Status UploadSession::Append(absl::string_view data) {
  if (done_) return absl::FailedPreconditionError("upload already finished");
  while (!data.empty()) {
    if (current_ >= files_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload sent more bytes than the ", declared_, " declared in its header"));
    }
    int64_t room = files_[current_].size - current_written_;
    absl::string_view part = data.substr(0, static_cast<size_t>(std::min<int64_t>(room, data.size())));
    if (absl::Status st = WriteAll(fd_, part, files_[current_].name); !st.ok()) return st;
    hasher_->Update(part);
    current_written_ += part.size();
    // Start the disk writeback of what is written so far without waiting for it, so the
    // fsync at the end of the file has little left to flush (a hint: errors surface there).
    if (current_written_ - writeback_from_ >= kWritebackBytes) {
      ::sync_file_range(fd_, writeback_from_, current_written_ - writeback_from_, SYNC_FILE_RANGE_WRITE);
      writeback_from_ = current_written_;
    }
    received_ += part.size();
    data.remove_prefix(part.size());
    if (current_written_ == files_[current_].size) {
      if (absl::Status st = CloseCurrent(); !st.ok()) return st;
      if (absl::Status st = OpenCurrent(); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UploadSession::Result> UploadSession::Commit() {
  if (done_) return absl::FailedPreconditionError("upload already finished");
  if (current_ < files_.size()) {
    Abort();
    return absl::InvalidArgumentError(absl::StrCat("upload ended after ", received_, " of ",
                                                   declared_, " declared bytes"));
  }
  for (size_t i = 0; i < files_.size(); ++i) {
    if (!files_[i].sha256.empty() && files_[i].sha256 != computed_sha_[i]) {
      std::string msg = absl::StrCat("sha256 mismatch for ", files_[i].name, ": declared ",
                                     files_[i].sha256, ", received data hashes to ",
                                     computed_sha_[i]);
      Abort();
      return absl::InvalidArgumentError(msg);
    }
    files_[i].sha256 = computed_sha_[i];
  }
  Result result;
  result.files = files_;
  std::string manifest = ManifestText(files_);
  result.model_id = Sha256Hex(manifest);
  if (absl::Status st = WriteFileAtomic(temp_dir_ + "/manifest.txt", manifest); !st.ok()) {
    Abort();
    return st;
  }
  std::string dest = absl::StrCat(store_->root(), "/models/", result.model_id);
  if (store_->HasModel(result.model_id)) {
    result.deduplicated = true;
    Abort();
    return result;
  }
  if (::rename(temp_dir_.c_str(), dest.c_str()) != 0) {
    int err = errno;
    if (err == EEXIST || err == ENOTEMPTY) {  // a concurrent upload of the same model won
      result.deduplicated = true;
      Abort();
      return result;
    }
    Abort();
    return ErrnoStatus(err, "rename", dest);
  }
  ::unlink((dest + "/" + kTempLockName).c_str());  // the upload's mark, not part of the model
  SyncDir(store_->root() + "/models");
  temp_dir_.clear();
  temp_lock_.reset();
  done_ = true;
  return result;
}

}  // namespace sq::server
