// ArtifactStore: everything the server keeps lives in one directory, so the server itself
// is stateless and several servers may share one directory.
//
//   <root>/models/<model_id>/manifest.txt    "<sha256> <size> <name>\n" per file; the
//                                            model id is the SHA-256 of this text
//   <root>/models/<model_id>/files/<name>    the uploaded files (.onnx first in manifest)
//   <root>/models/<model_id>/last_used       its mtime: the last upload or submit using it
//   <root>/owners/<model_id>/<hex tenant>    per-tenant access marks
//   <root>/jobs/<job_id>/job.json            the job's state (sq.v1.Job as JSON)
//   <root>/jobs/<job_id>/lock                flock()ed by the server that owns the job
//   <root>/jobs/<job_id>/cancel              present when a cancel was requested
//   <root>/jobs/<job_id>/out/...             output model (+ external data)
//   <root>/jobs/<job_id>/report.{json,txt}   the engine's report
//   <root>/keys/<sha256 of tenant + key>     a SubmitJob idempotency key: the job id it made
//   <root>/tmp/                              uploads in progress, deletions; emptied on Open
//
// Every file becomes visible only complete: written to a temporary name in the same
// directory, fsync()ed, then renamed; a model directory is renamed into place whole. A
// crash therefore never leaves a half-written artifact under a visible name.
//
// Thread-safety: all methods may be called concurrently; an UploadSession is used by one
// thread at a time.
#ifndef SQ_SERVER_ARTIFACT_STORE_H_
#define SQ_SERVER_ARTIFACT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/strings/string_view.h"

namespace sq::server {

struct StoredFile {
  std::string name;    // relative path, as the model references it
  int64_t size = 0;
  std::string sha256;  // lower-case hex; may be empty in a declared (not yet verified) file
};

// Incremental SHA-256 (OpenSSL EVP).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view data);
  std::string HexDigest();  // finalises; call once
 private:
  void* ctx_;  // EVP_MD_CTX
};
std::string Sha256Hex(absl::string_view data);
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

// Writes `content` to `path` atomically (temporary file in the same directory, fsync,
// rename). ResourceExhausted when the disk is full, Internal on other I/O errors.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view content);
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// A relative path without "..", empty or "." components, backslashes or control characters
// (NUL, newline, ... DEL).
absl::Status ValidateRelativeName(absl::string_view name);
bool IsValidJobId(absl::string_view id);    // 32 lower-case hex digits
bool IsValidModelId(absl::string_view id);  // 64 lower-case hex digits
// 128 random bits from OpenSSL's CSPRNG as 32 hex digits.
std::string NewJobId();

// The manifest text whose SHA-256 is the model id.
std::string ManifestText(const std::vector<StoredFile>& files);

// An exclusive flock() on a job's lock file or a temporary directory, released on
// destruction (or process death, which is how the sweep of tmp/ tells abandoned entries
// from live ones).
class JobLock {
 public:
  explicit JobLock(int fd) : fd_(fd) {}
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;
 private:
  int fd_;
};

class UploadSession;

class ArtifactStore {
 public:
  // Creates the directory layout under `root` if needed and removes leftovers in tmp/.
  static absl::StatusOr<std::unique_ptr<ArtifactStore>> Open(const std::string& root);

  const std::string& root() const { return root_; }

  // ---- models ----
  // Starts an upload of `files` (files[0] is the .onnx). InvalidArgument for bad names,
  // duplicates or negative sizes.
  absl::StatusOr<std::unique_ptr<UploadSession>> BeginUpload(std::vector<StoredFile> files);
  bool HasModel(const std::string& model_id) const;
  // Per-tenant access: a tenant may use a stored model only once it has uploaded it itself
  // (owners/<model id>/<hex tenant>), so that holding a model's id is not enough and a
  // deduplicated upload does not tell one tenant what another uploaded.
  absl::Status AddModelOwner(const std::string& model_id, const std::string& tenant);
  bool HasModelOwner(const std::string& model_id, const std::string& tenant) const;
  // The stored files of a model (manifest order). NotFound if absent.
  absl::StatusOr<std::vector<StoredFile>> GetModelFiles(const std::string& model_id) const;
  // Absolute path of the model's .onnx file.
  std::string ModelPath(const std::string& model_id, const StoredFile& main) const;
  // Ids of all stored models.
  std::vector<std::string> ListModelIds() const;
  // Records that the model was used now (an upload that found it stored, a submit), which
  // is what retention measures a model's age from. Best effort.
  void TouchModel(const std::string& model_id) const;
  // When the model was last used (its upload when never touched since). NotFound if absent.
  absl::StatusOr<absl::Time> ModelLastUsed(const std::string& model_id) const;
  // Removes a tenant's access mark; the model itself stays.
  absl::Status RemoveModelOwner(const std::string& model_id, const std::string& tenant);
  // Whether any tenant still holds an access mark on the model.
  bool HasAnyModelOwner(const std::string& model_id) const;
  // Removes the model's files and access marks: renamed into tmp/ first (so the model
  // vanishes at once and a concurrent upload of the same files simply stores it again),
  // then deleted. NotFound if absent. Jobs that used it keep their artifacts.
  absl::Status DeleteModel(const std::string& model_id);
  // Bytes stored for a model / a job (sum of its regular files' sizes); 0 when absent.
  int64_t ModelBytes(const std::string& model_id) const;
  int64_t JobBytes(const std::string& job_id) const;

  // ---- jobs ----
  std::string JobDir(const std::string& job_id) const;
  // Creates the job's directory and takes its lock. AlreadyExists if the id is taken.
  absl::StatusOr<std::unique_ptr<JobLock>> CreateJob(const std::string& job_id);
  // Takes the lock of an existing job without waiting. FailedPrecondition if another
  // holder has it, NotFound if the job does not exist.
  absl::StatusOr<std::unique_ptr<JobLock>> TryLockJob(const std::string& job_id) const;
  // A shared hold on a finished job's lock, taken by every download for as long as it
  // streams, so that retention (which needs TryLockJob) never deletes what any server
  // sharing the directory is sending. FailedPrecondition while an exclusive holder has it.
  absl::StatusOr<std::unique_ptr<JobLock>> HoldJobShared(const std::string& job_id) const;
  absl::Status WriteJobRecord(const std::string& job_id, absl::string_view json);
  absl::StatusOr<std::string> ReadJobRecord(const std::string& job_id) const;
  // Ids of all jobs that have a record.
  std::vector<std::string> ListJobIds() const;
  // Idempotency keys, shared by every server on the directory. `key` is the tenant-scoped
  // key (any bytes; stored under its SHA-256). Claim records `job_id` for it atomically:
  // AlreadyExists with the message set to the job id that holds it when another claim won.
  absl::Status ClaimIdempotencyKey(const std::string& key, const std::string& job_id);
  // The job id holding `key`; NotFound when none.
  absl::StatusOr<std::string> LookupIdempotencyKey(const std::string& key) const;
  // Frees `key` if `job_id` still holds it.
  void ReleaseIdempotencyKey(const std::string& key, const std::string& job_id);
  absl::Status RequestCancel(const std::string& job_id);
  bool CancelRequested(const std::string& job_id) const;
  // Removes the job's folder: renamed into tmp/ first (so it vanishes at once), then deleted.
  absl::Status DeleteJob(const std::string& job_id);

  // A fresh private directory under tmp/, flock()ed for as long as `lock` lives.
  struct TempDir {
    std::string path;
    std::unique_ptr<JobLock> lock;
  };
  absl::StatusOr<TempDir> MakeTempDir(absl::string_view prefix) const;

  // Removes every entry of tmp/ that no live process holds (its flock can be taken) and
  // that is older than `grace` (which covers the instant between a directory's mkdir and
  // its flock). Called by Open and before every upload, so what a crashed server left
  // behind goes as soon as any server sharing the directory works again. Returns the
  // number of entries removed.
  int SweepTemp(absl::Duration grace) const;

 private:
  explicit ArtifactStore(std::string root) : root_(std::move(root)) {}
  // Renames `path` into tmp/<tag>-<random> (so it vanishes at once, and a crash leaves it to
  // SweepTemp), then deletes it. NotFound when `path` does not exist.
  absl::Status RemoveByRename(const std::string& path, const std::string& tag) const;
  std::string root_;
};

// Receives the bytes of an upload into a private temporary directory. Nothing becomes
// visible until Commit(); the destructor removes the temporary directory if Commit() did
// not succeed (so an abandoned upload leaves nothing behind).
class UploadSession {
 public:
  ~UploadSession();
  UploadSession(const UploadSession&) = delete;
  UploadSession& operator=(const UploadSession&) = delete;

  // Appends bytes to the files in declared order. InvalidArgument once more bytes arrive
  // than declared in total.
  absl::Status Append(absl::string_view data);
  int64_t bytes_received() const { return received_; }
  int64_t bytes_declared() const { return declared_; }

  struct Result {
    std::string model_id;
    std::vector<StoredFile> files;  // with verified sha256
    bool deduplicated = false;
  };
  // Checks every file is complete and matches its declared sha256 (InvalidArgument
  // otherwise), then moves the model into place. deduplicated = it already existed.
  absl::StatusOr<Result> Commit();
  // Removes the temporary data now.
  void Abort();

 private:
  friend class ArtifactStore;
  UploadSession(const ArtifactStore* store, ArtifactStore::TempDir temp_dir,
                std::vector<StoredFile> files);
  absl::Status OpenCurrent();
  absl::Status CloseCurrent();

  const ArtifactStore* store_;
  std::string temp_dir_;
  std::vector<StoredFile> files_;
  std::vector<std::string> computed_sha_;
  size_t current_ = 0;
  int fd_ = -1;
  int64_t current_written_ = 0;
  int64_t writeback_from_ = 0;  // current file's bytes before this were handed to writeback
  static constexpr int64_t kWritebackBytes = int64_t{16} << 20;
  int64_t received_ = 0;
  int64_t declared_ = 0;
  std::unique_ptr<Sha256> hasher_;
  std::unique_ptr<JobLock> temp_lock_;  // marks temp_dir_ as live for SweepTemp
  bool done_ = false;
};

}  // namespace sq::server

#endif  // SQ_SERVER_ARTIFACT_STORE_H_
