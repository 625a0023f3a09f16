// sqctl: the command-line client. `quantize` runs the engine locally; the other commands
// talk to an sq server (client/remote_commands.h) when built with the service.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "client/quantize_command.h"
#include "core/engine.h"
#include "core/verify/ort_runner.h"
#ifdef SQCTL_WITH_REMOTE
#include "client/remote_commands.h"
#endif

namespace {

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: sqctl COMMAND [args]\n\n"
               "Local:\n"
               "  quantize MODEL -o OUT [options]   split + quantize a model on this machine\n"
               "  version                           print the version\n");
#ifdef SQCTL_WITH_REMOTE
  std::fprintf(out, "\nServer (--server HOST:PORT, default $SQ_SERVER or 127.0.0.1:50051):\n%s",
               sq::cli::RemoteUsage().c_str());
#endif
  std::fprintf(out, "\nRun 'sqctl COMMAND --help' for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  sq::KeepOrtTelemetryOff();  // before any thread: see core/verify/ort_runner.h
  if (argc < 2) {
    Usage(stderr);
    return sq::cli::kExitUsage;
  }
  std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "-h" || command == "--help" || command == "help") {
    Usage(stdout);
    return sq::cli::kExitOk;
  }
  if (command == "version" || command == "--version") {
    const bool json = args.size() == 1 && args[0] == "--json";
    if (!args.empty() && !json) {
      std::fprintf(stderr, "sqctl: version takes only --json\n");
      return sq::cli::kExitUsage;
    }
    if (json) {
      std::printf("{\"sqctl\": \"%s\", \"remote\": %s}\n", sq::Version(),
#ifdef SQCTL_WITH_REMOTE
                  "true"
#else
                  "false"
#endif
      );
    } else {
      std::printf("sqctl %s\n", sq::Version());
    }
    return sq::cli::kExitOk;
  }
  if (command == "quantize") return sq::cli::RunQuantize(args);
#ifdef SQCTL_WITH_REMOTE
  if (sq::cli::IsRemoteCommand(command)) return sq::cli::RunRemoteCommand(command, args);
#endif
  std::fprintf(stderr, "sqctl: unknown command '%s' (see sqctl --help)\n", command.c_str());
  return sq::cli::kExitUsage;
}
