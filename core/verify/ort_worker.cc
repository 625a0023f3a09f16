#include "core/verify/ort_worker.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/file_util.h"

extern char** environ;

namespace sq {
namespace {

constexpr char kOpen = 'O';
constexpr char kRun = 'R';
constexpr char kOk = 'K';
constexpr char kError = 'E';
constexpr int kWorkerFd = 3;
// A frame larger than this is refused (a corrupt length, not data: inputs and outputs of a
// verification run are far smaller; inline model bytes are under protobuf's 2 GB).
constexpr uint64_t kMaxFrame = uint64_t{1} << 34;

std::string& WorkerPath() {
  static std::string* path = new std::string;
  return *path;
}
double& WorkerTimeout() {
  static double seconds = 0;
  return seconds;
}

// ---- frames -----------------------------------------------------------------------------

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool SendFrame(int fd, char kind, const std::string& payload) {
  char head[9];
  head[0] = kind;
  const uint64_t len = payload.size();
  std::memcpy(head + 1, &len, 8);
  return WriteAll(fd, head, 9) && WriteAll(fd, payload.data(), payload.size());
}

enum class Recv { kFrame, kClosed, kOversized };

// kClosed at end of stream or on a read error; kOversized for a corrupt length.
Recv RecvFrame(int fd, char* kind, std::string* payload) {
  char head[9];
  if (!ReadAll(fd, head, 9)) return Recv::kClosed;
  *kind = head[0];
  uint64_t len = 0;
  std::memcpy(&len, head + 1, 8);
  if (len > kMaxFrame) return Recv::kOversized;
  payload->resize(len);
  return ReadAll(fd, payload->data(), len) ? Recv::kFrame : Recv::kClosed;
}

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void Str(absl::string_view s) {
    Put<uint64_t>(s.size());
    out_.append(s.data(), s.size());
  }
  void Raw(const void* p, size_t n) {
    if (n > 0) out_.append(static_cast<const char*>(p), n);  // an empty vector's data() may be null
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() < sizeof(T)) return false;
    std::memcpy(v, in_.data(), sizeof(T));
    in_.remove_prefix(sizeof(T));
    return true;
  }
  bool Str(absl::string_view* s) {
    uint64_t n = 0;
    if (!Get(&n) || n > in_.size()) return false;
    *s = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool Raw(void* p, size_t n) {
    if (n > in_.size()) return false;
    if (n == 0) return true;  // p may be an empty vector's null data()
    std::memcpy(p, in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

void PutTensors(const std::vector<OrtTensor>& ts, Writer* w) {
  w->Put<uint64_t>(ts.size());
  for (const OrtTensor& t : ts) {
    w->Str(t.name);
    w->Put<int32_t>(t.elem_type);
    w->Put<uint64_t>(t.shape.size());
    for (int64_t d : t.shape) w->Put<int64_t>(d);
    w->Put<uint64_t>(t.f.size());
    w->Raw(t.f.data(), t.f.size() * sizeof(float));
    w->Put<uint64_t>(t.i.size());
    w->Raw(t.i.data(), t.i.size() * sizeof(int64_t));
  }
}

bool GetTensors(Reader* r, std::vector<OrtTensor>* ts) {
  uint64_t n = 0;
  if (!r->Get(&n) || n > (uint64_t{1} << 20)) return false;
  ts->resize(n);
  for (OrtTensor& t : *ts) {
    absl::string_view name;
    uint64_t rank = 0, nf = 0, ni = 0;
    if (!r->Str(&name) || !r->Get(&t.elem_type) || !r->Get(&rank) || rank > 64) return false;
    t.name = std::string(name);
    t.shape.resize(rank);
    for (int64_t& d : t.shape) {
      if (!r->Get(&d)) return false;
    }
    if (!r->Get(&nf) || nf > kMaxFrame / sizeof(float)) return false;
    t.f.resize(nf);
    if (!r->Raw(t.f.data(), nf * sizeof(float)) || !r->Get(&ni) || ni > kMaxFrame / sizeof(int64_t)) return false;
    t.i.resize(ni);
    if (!r->Raw(t.i.data(), ni * sizeof(int64_t))) return false;
  }
  return true;
}

std::string ErrorPayload(const absl::Status& st) {
  Writer w;
  w.Put<int32_t>(static_cast<int32_t>(st.code()));
  w.Str(st.message());
  return std::move(w.out());
}

// False when the payload does not parse (the protocol is broken).
bool ParseErrorPayload(const std::string& payload, absl::Status* error) {
  Reader r(payload);
  int32_t code = 0;
  absl::string_view msg;
  if (!r.Get(&code) || !r.Str(&msg) || code <= 0 || code > 16) return false;
  *error = absl::Status(static_cast<absl::StatusCode>(code), msg);
  return true;
}

void MaybeFault(absl::string_view step) {
  const char* f = std::getenv("SQ_ORT_WORKER_FAULT");
  if (f == nullptr) return;
  if (step == f) ::raise(SIGKILL);
  if (step == "run" && absl::string_view(f) == "hang") {
    for (;;) ::pause();
  }
}

// Test hook for the parent's handling of a broken reply to a run (SQ_ORT_WORKER_FAULT):
// reply-oversized sends a frame header claiming more than any frame may hold, then waits;
// reply-unknown a frame of an unknown kind; reply-malformed an OK frame whose tensors do not
// parse; reply-bad-error an ERROR frame whose payload does not parse. True when it replied.
bool MaybeBreakReply(int fd) {
  const char* f = std::getenv("SQ_ORT_WORKER_FAULT");
  if (f == nullptr) return false;
  const absl::string_view fault(f);
  if (fault == "reply-oversized") {
    char head[9];
    head[0] = kOk;
    const uint64_t len = ~uint64_t{0};
    std::memcpy(head + 1, &len, 8);
    WriteAll(fd, head, 9);
    for (;;) ::pause();  // alive, as a child whose memory was corrupted might be
  }
  char kind = 0;
  std::string payload;
  if (fault == "reply-unknown") {
    kind = 'X';
    payload = "?";
  } else if (fault == "reply-malformed") {
    kind = kOk;
    payload = "not tensors";
  } else if (fault == "reply-bad-error") {
    kind = kError;
    payload = "x";
  } else {
    return false;
  }
  SendFrame(fd, kind, payload);
  return true;
}

// Waits until `fd` has something to read, up to `seconds` (<= 0: no limit). False on timeout.
bool WaitReadable(int fd, double seconds) {
  if (seconds <= 0) return true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT_MAX)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // let the read report it
  }
}

}  // namespace

void SetOrtWorker(std::string path) { WorkerPath() = std::move(path); }
void SetOrtWorkerTimeout(double seconds) { WorkerTimeout() = seconds; }
const std::string& OrtWorker() { return WorkerPath(); }

absl::StatusOr<std::string> OrtWorkerBesideThisExecutable() {
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return absl::NotFoundError("cannot read /proc/self/exe to find sq-ort-worker beside it");
  self[n] = '\0';
  std::string path = std::string(self);
  path = path.substr(0, path.rfind('/') + 1) + "sq-ort-worker";
  if (::access(path.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("no executable sq-ort-worker at ", path));
  }
  return path;
}

// ---- the parent's side --------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<OrtWorkerSession>> OrtWorkerSession::Open(const std::string& worker,
                                                                         const OrtModelSource& model,
                                                                         const OrtRunOptions& options) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("ONNX Runtime worker: socketpair: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, sv[1], kWorkerFd);  // dup2 drops CLOEXEC on fd 3
  std::string fd_arg = absl::StrCat("--fd=", kWorkerFd);
  char* argv[] = {const_cast<char*>(worker.c_str()), fd_arg.data(), nullptr};
  // The child starts with no signals blocked, whatever this thread blocks (sq-server blocks
  // SIGTERM and SIGINT to take them with sigwait).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, worker.c_str(), &actions, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  ::close(sv[1]);
  if (rc != 0) {
    ::close(sv[0]);
    return absl::InternalError(absl::StrCat("cannot start the ONNX Runtime worker ", worker, ": ", std::strerror(rc)));
  }
  std::unique_ptr<OrtWorkerSession> session(new OrtWorkerSession(sv[0], pid, model.path));

  Writer w;
  w.Put<int32_t>(options.intra_op_threads);
  w.Put<uint8_t>(options.disable_optimizations ? 1 : 0);
  w.Str(model.path);
  w.Str(model.bytes);
  w.Put<uint64_t>(model.external_files.size());
  for (const OrtModelSource::File& f : model.external_files) {
    w.Str(f.location);
    w.Str(f.path);
    // A file the child can map itself travels by path; a buffer without one, inline.
    w.Str(f.path.empty() ? absl::string_view(f.data, f.size) : absl::string_view());
  }
  absl::StatusOr<std::string> reply = session->Call(kOpen, w.out(), absl::StrCat("loading ", model.path));
  if (!reply.ok()) return reply.status();
  return session;
}

OrtWorkerSession::~OrtWorkerSession() {
  if (fd_ >= 0) ::close(fd_);
  Reap(/*kill=*/true);
}

std::string OrtWorkerSession::Reap(bool kill) {
  if (pid_ <= 0) return "went away";
  if (kill) ::kill(pid_, SIGKILL);
  int st = 0;
  pid_t r;
  while ((r = ::waitpid(pid_, &st, 0)) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (r > 0 && WIFSIGNALED(st)) return absl::StrCat("killed by signal ", WTERMSIG(st), " (", strsignal(WTERMSIG(st)), ")");
  if (r > 0 && WIFEXITED(st)) return absl::StrCat("exited with status ", WEXITSTATUS(st));
  return "went away";
}

absl::Status OrtWorkerSession::Broken(absl::string_view what, absl::string_view doing) {
  Reap(/*kill=*/true);
  return absl::InternalError(absl::StrCat("ONNX Runtime worker sent ", what, " while ", doing, " (killed)"));
}

absl::StatusOr<std::string> OrtWorkerSession::Call(char kind, const std::string& payload, const std::string& doing) {
  char reply_kind = 0;
  std::string reply;
  // A closed socket means the child is ending: wait for it and say how it ended.
  auto died = [&] {
    return absl::InternalError(absl::StrCat("ONNX Runtime worker ", Reap(/*kill=*/false), " while ", doing));
  };
  if (!SendFrame(fd_, kind, payload)) return died();
  if (!WaitReadable(fd_, WorkerTimeout())) {
    Reap(/*kill=*/true);
    return absl::DeadlineExceededError(absl::StrCat("ONNX Runtime worker gave no answer within ", WorkerTimeout(),
                                                    " s while ", doing, " (killed)"));
  }
  switch (RecvFrame(fd_, &reply_kind, &reply)) {
    case Recv::kFrame:
      break;
    case Recv::kClosed:
      return died();
    case Recv::kOversized:  // the child is alive but its reply is garbage: do not wait on it
      return Broken("a corrupt reply", doing);
  }
  if (reply_kind == kError) {
    absl::Status error;
    if (!ParseErrorPayload(reply, &error)) return Broken("a malformed error", doing);
    return error;
  }
  if (reply_kind != kOk) return Broken("an unknown reply", doing);
  return reply;
}

absl::StatusOr<std::vector<OrtTensor>> OrtWorkerSession::Run(const std::vector<OrtTensor>& inputs) {
  Writer w;
  PutTensors(inputs, &w);
  absl::StatusOr<std::string> reply = Call(kRun, w.out(), absl::StrCat("running ", name_));
  if (!reply.ok()) return reply.status();
  Reader r(*reply);
  std::vector<OrtTensor> outputs;
  if (!GetTensors(&r, &outputs) || !r.done()) return Broken("malformed outputs", absl::StrCat("running ", name_));
  return outputs;
}

// ---- the child's side ---------------------------------------------------------------------

int ServeOrtWorker(int fd) {
  std::unique_ptr<OrtSession> session;
  std::string request;
  // What the session's source points into; kept as long as the session.
  std::string model_bytes;
  std::vector<std::string> inline_files;
  std::vector<std::unique_ptr<MappedFile>> mapped;
  char kind = 0;
  while (RecvFrame(fd, &kind, &request) == Recv::kFrame) {
    Reader r(request);
    std::string reply;
    char reply_kind = kOk;
    if (kind == kOpen && session == nullptr) {
      MaybeFault("open");
      OrtRunOptions options;
      uint8_t no_opt = 0;
      absl::string_view path, bytes;
      uint64_t n_files = 0;
      bool ok = r.Get(&options.intra_op_threads) && r.Get(&no_opt) && r.Str(&path) && r.Str(&bytes) &&
                r.Get(&n_files) && n_files < 4096;
      options.disable_optimizations = no_opt != 0;
      OrtModelSource source;
      source.path = std::string(path);
      model_bytes = std::string(bytes);
      source.bytes = model_bytes;
      inline_files.reserve(ok ? n_files : 0);
      absl::Status st;
      for (uint64_t k = 0; ok && k < n_files; ++k) {
        absl::string_view location, file_path, data;
        ok = r.Str(&location) && r.Str(&file_path) && r.Str(&data);
        if (!ok) break;
        OrtModelSource::File f;
        f.location = std::string(location);
        if (!file_path.empty()) {
          absl::StatusOr<std::unique_ptr<MappedFile>> m = MappedFile::Open(std::string(file_path));
          if (!m.ok()) {
            st = m.status();
            break;
          }
          f.path = std::string(file_path);
          f.data = reinterpret_cast<const char*>((*m)->data());
          f.size = static_cast<size_t>((*m)->size());
          mapped.push_back(std::move(*m));
        } else {
          inline_files.emplace_back(data);
          f.data = inline_files.back().data();
          f.size = inline_files.back().size();
        }
        source.external_files.push_back(std::move(f));
      }
      if (!ok) st = absl::InternalError("ONNX Runtime worker: malformed open request");
      if (st.ok()) {
        absl::StatusOr<std::unique_ptr<OrtSession>> opened = OrtSession::Open(source, options);
        if (opened.ok()) {
          session = std::move(*opened);
        } else {
          st = opened.status();
        }
      }
      if (!st.ok()) {
        reply_kind = kError;
        reply = ErrorPayload(st);
      }
    } else if (kind == kRun && session != nullptr) {
      MaybeFault("run");
      if (MaybeBreakReply(fd)) continue;
      std::vector<OrtTensor> inputs;
      absl::StatusOr<std::vector<OrtTensor>> outputs =
          GetTensors(&r, &inputs) && r.done()
              ? session->Run(inputs)
              : absl::StatusOr<std::vector<OrtTensor>>(absl::InternalError("ONNX Runtime worker: malformed run request"));
      if (outputs.ok()) {
        Writer w;
        PutTensors(*outputs, &w);
        reply = std::move(w.out());
      } else {
        reply_kind = kError;
        reply = ErrorPayload(outputs.status());
      }
    } else {
      reply_kind = kError;
      reply = ErrorPayload(absl::InternalError("ONNX Runtime worker: request out of order"));
    }
    if (!SendFrame(fd, reply_kind, reply)) return 1;
  }
  return 0;
}

}  // namespace sq
