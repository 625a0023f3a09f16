// sq-ort-worker: runs ONNX Runtime for another sq process (core/verify/ort_worker.h), which
// starts it with a socket as fd 3. Not for direct use.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/verify/ort_worker.h"
#include "core/verify/ort_runner.h"

int main(int argc, char** argv) {
  sq::KeepOrtTelemetryOff();  // inherited from its parent too; see core/verify/ort_runner.h
  // Dies with its parent, even in the middle of a long run (a parent that ends normally
  // closes the socket, and the worker ends at end of stream).
  const pid_t parent = ::getppid();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) return 1;  // the parent was already gone
  int fd = 3;
  for (int k = 1; k < argc; ++k) {
    if (std::strncmp(argv[k], "--fd=", 5) == 0) fd = std::atoi(argv[k] + 5);
  }
  if (fd < 0 || ::fcntl(fd, F_GETFD) < 0) {
    std::fprintf(stderr,
                 "sq-ort-worker: runs ONNX Runtime for sq-server and sqctl, which start it with a "
                 "socket as fd %d; not for direct use\n", fd);
    return 2;
  }
  return sq::ServeOrtWorker(fd);
}
