// ONNX Runtime in a child process. A crash inside ONNX Runtime — on a hostile model, the
// user's FP32 model included — would take down the process that runs it; a server must not
// go down with it. With a worker set (SetOrtWorker), every RunOrt, OrtSession and LoadInOrt
// of this process (ort_runner.h) runs in its own `sq-ort-worker` child instead: the caller
// gets the same results (the child runs the same in-process code), and a child that dies
// (signal, exit) becomes an Internal status naming how it died and what it was doing
// ("ONNX Runtime worker killed by signal 11 (Segmentation fault) while running model.onnx").
//
// Protocol (private to this file's two sides, same machine, same build): frames on a Unix
// stream socket that the child holds as fd 3: a kind byte, a 64-bit length, the payload.
// OPEN (options, model path or bytes, external data files by path or inline bytes) and RUN
// (tensors) from the parent; OK (RUN: the output tensors) or ERROR (absl code, message) from
// the child. One session per child; the child exits at end of stream.
//
// The child starts with no signals blocked and dies with the thread that started it
// (PR_SET_PDEATHSIG): keep a session on the thread that opened it, as every caller does.
//
// Test hook: SQ_ORT_WORKER_FAULT=open|run in the child's environment makes it kill itself
// (SIGKILL) on that request, standing in for a crash inside ONNX Runtime; =hang makes it
// sleep on a run instead, standing in for a run that never ends; =reply-oversized,
// reply-unknown, reply-malformed, reply-bad-error make it answer a run with a frame that
// breaks the protocol (a length past the limit, an unknown kind, tensors or an error that do
// not parse). A child that breaks the protocol is killed: the call's INTERNAL status says
// what it sent, what was being done and "(killed)".
#ifndef SQ_CORE_VERIFY_ORT_WORKER_H_
#define SQ_CORE_VERIFY_ORT_WORKER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/verify/ort_runner.h"

namespace sq {

// The worker executable every later ONNX Runtime call of this process runs in; empty (the
// default) runs them in this process. Set it once, before any call (not synchronised with
// calls in flight).
void SetOrtWorker(std::string path);
const std::string& OrtWorker();

// How long one request (a load, a run) may take in the worker before it is killed and the
// call fails with DeadlineExceeded; zero or less: no limit (the default). Set it once, with
// SetOrtWorker.
void SetOrtWorkerTimeout(double seconds);

// `sq-ort-worker` beside the running executable (/proc/self/exe), or NotFound naming where
// it was looked for.
absl::StatusOr<std::string> OrtWorkerBesideThisExecutable();

// The parent's side: one child holding one session.
class OrtWorkerSession {
 public:
  // Starts `worker` and opens `model` in it.
  static absl::StatusOr<std::unique_ptr<OrtWorkerSession>> Open(const std::string& worker,
                                                                const OrtModelSource& model,
                                                                const OrtRunOptions& options);
  ~OrtWorkerSession();  // ends the child (SIGKILL if it has not exited) and reaps it
  OrtWorkerSession(const OrtWorkerSession&) = delete;
  OrtWorkerSession& operator=(const OrtWorkerSession&) = delete;

  absl::StatusOr<std::vector<OrtTensor>> Run(const std::vector<OrtTensor>& inputs);

 private:
  OrtWorkerSession(int fd, int pid, std::string name) : fd_(fd), pid_(pid), name_(std::move(name)) {}
  // The reply to a request: its payload, or the child's error, or how the child died.
  absl::StatusOr<std::string> Call(char kind, const std::string& payload, const std::string& doing);
  // Waits for the child to end (killing it first when `kill`) and says how it ended.
  std::string Reap(bool kill);
  // The child sent `what`, which breaks the protocol: it is killed and reaped, never talked
  // to again; INTERNAL "ONNX Runtime worker sent <what> while <doing> (killed)".
  absl::Status Broken(absl::string_view what, absl::string_view doing);

  int fd_ = -1;
  int pid_ = -1;
  std::string name_;  // the model, for messages
};

// The child's side: serves requests on `fd` until end of stream. Returns the exit code.
int ServeOrtWorker(int fd);

}  // namespace sq

#endif  // SQ_CORE_VERIFY_ORT_WORKER_H_
