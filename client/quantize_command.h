// `sqctl quantize`: the engine on a local file, no server. A thin wrapper: it parses
// flags into sq::QuantizeOptions, calls sq::QuantizeModelFile and prints the report.
#ifndef SQ_CLIENT_QUANTIZE_COMMAND_H_
#define SQ_CLIENT_QUANTIZE_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/options.h"

namespace sq::cli {

// Exit codes shared by every sqctl command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;   // the job/engine failed (bad model, ...)
inline constexpr int kExitUsage = 2;    // bad command line

// Parsed `sqctl quantize` command line.
struct QuantizeArgs {
  std::string input, output, report_path;
  QuantizeOptions options;
  bool json = false;    // print the JSON report instead of the summary
  bool quiet = false;
  bool help = false;
};

// Parses the arguments after "quantize". Flags: --bits --granularity --block-size
// --symmetric --split on|off --form --format --cluster-scope --exclude (repeatable)
// --exclude-op (repeatable) --min-elements --target-opset --threads --external-data
// -o/--output --report --json --quiet. InvalidArgument names the bad flag or value.
absl::StatusOr<QuantizeArgs> ParseQuantizeArgs(const std::vector<std::string>& args);

// Runs the command; returns the process exit code. Errors go to stderr as one line.
int RunQuantize(const std::vector<std::string>& args);

std::string QuantizeUsage();

}  // namespace sq::cli

#endif  // SQ_CLIENT_QUANTIZE_COMMAND_H_
