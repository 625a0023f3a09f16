// sqctl's remote commands: talk to an sq server (sq.v1 over gRPC) through sq::client::SqClient.
//
//   submit MODEL [engine options] [-o OUT] [--detach]   upload, submit, watch, download
//   status JOB | watch JOB | list | cancel JOB | delete JOB
//   download JOB -o FILE     (resumes from FILE.partial)
//   report JOB [--json] | inspect MODEL | health
//
// Common flags: --server HOST:PORT (env SQ_SERVER, default 127.0.0.1:50051), --token T
// (env SQ_TOKEN), --tls (system roots) or --tls-ca FILE, --json.
// Exit codes: 0 ok, 1 job failed/cancelled (or not finished), 2 usage or invalid request,
// 3 server unavailable/transport/overloaded, 4 not found, 5 authentication.
// Errors are one line on stderr: "sqctl: <what>".
#ifndef SQ_CLIENT_REMOTE_COMMANDS_H_
#define SQ_CLIENT_REMOTE_COMMANDS_H_

#include <string>
#include <vector>

namespace sq::cli {

inline constexpr int kExitRemoteOk = 0;
inline constexpr int kExitJobFailed = 1;
inline constexpr int kExitRemoteUsage = 2;
inline constexpr int kExitUnavailable = 3;
inline constexpr int kExitNotFound = 4;
inline constexpr int kExitAuth = 5;

bool IsRemoteCommand(const std::string& command);
// `args` are the arguments after the command name. Returns the process exit code.
int RunRemoteCommand(const std::string& command, const std::vector<std::string>& args);
std::string RemoteUsage();
// One server command's own usage (`sqctl COMMAND --help`).
std::string RemoteCommandHelp(const std::string& command);

}  // namespace sq::cli

#endif  // SQ_CLIENT_REMOTE_COMMANDS_H_
