// sq-server: the SplitQuant quantization service. Starts with no arguments (gRPC on
// 127.0.0.1:50051, metrics on 127.0.0.1:9464, artifacts under the XDG state directory).
// SIGTERM/SIGINT drain: health goes NOT_SERVING, new work is refused, running jobs get
// --drain_grace_seconds to finish, then the process exits.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/internal/program_name.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "core/engine.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "core/verify/ort_worker.h"
#include "core/verify/ort_runner.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC listen address (host:port)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics listen address (host:port); empty disables metrics");
ABSL_FLAG(std::string, artifact_dir, "",
          "Directory holding uploads, jobs and outputs. Default: $XDG_STATE_HOME/sq/artifacts, "
          "else $HOME/.local/state/sq/artifacts, else /var/lib/sq/artifacts");
ABSL_FLAG(int, workers, 2, "Jobs that run at once");
ABSL_FLAG(int, queue_capacity, 16, "Jobs that may wait; beyond that SubmitJob gives RESOURCE_EXHAUSTED");
ABSL_FLAG(int, job_threads, 0, "Engine threads per job when the job asks for 0 (0 = all cores)");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{8} << 30, "Largest model upload (all files), bytes");
ABSL_FLAG(int64_t, upload_buffer_bytes, int64_t{32} << 20,
          "Per upload: bytes received but not yet written to disk (receiving overlaps writing)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain file; with --tls_key enables TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key file");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; set = mutual TLS: every client must present a certificate it signed "
          "(needs --tls_cert/--tls_key)");
ABSL_FLAG(std::string, auth_token_file, "",
          "Bearer tokens: one bare token (shared: every holder sees every job), or one "
          "\"NAME TOKEN\" line per tenant (each sees only its own jobs and models); '#' "
          "comments. Empty = no auth (env SQ_TOKEN, a shared token, is used when it is set)");
ABSL_FLAG(bool, log_rpcs, true, "Log one JSON line per RPC (method, code, ms, peer) on stderr");
ABSL_FLAG(absl::Duration, ort_worker_timeout, absl::Minutes(10),
          "How long one ONNX Runtime load or run of a job may take in the worker before it is "
          "killed (the job's verification or calibration then fails with DEADLINE_EXCEEDED); 0 = no limit");
ABSL_FLAG(std::string, ort_worker, "beside",
          "Where jobs run ONNX Runtime (verification, calibration): 'beside' = the sq-ort-worker "
          "executable next to sq-server, a path to it, or 'none' = inside this process (a crash "
          "in ONNX Runtime then takes the server down)");
ABSL_FLAG(absl::Duration, retention_age, absl::ZeroDuration(),
          "Remove finished jobs and unused models older than this (e.g. 168h); 0 = keep forever");
ABSL_FLAG(std::string, retention_bytes, "0",
          "Remove the oldest finished jobs and unused models while the artifact directory holds "
          "more than this (e.g. 50G; K/M/G/T are binary); 0 = no limit");
ABSL_FLAG(absl::Duration, retention_interval, absl::Minutes(5), "Time between retention sweeps");
ABSL_FLAG(int, drain_grace_seconds, 60, "On SIGTERM, how long running jobs may take to finish");

namespace {

std::string DefaultArtifactDir() {
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return std::string(x) + "/sq/artifacts";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.local/state/sq/artifacts";
  return "/var/lib/sq/artifacts";
}

}  // namespace

int main(int argc, char** argv) {
  sq::KeepOrtTelemetryOff();  // before any thread: see core/verify/ort_runner.h
  absl::SetProgramUsageMessage("SplitQuant quantization service (gRPC sq.v1)");
  // --help lists this file's flags (Abseil matches the program's name otherwise, and
  // "sq-server" is no file's name); --version prints the version.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) { return absl::EndsWith(path, "server/main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return absl::StrCat("sq-server ", sq::Version(), "\n"); };
  absl::SetFlagsUsageConfig(usage);
  // --help is a request, not an error: print the flags and exit 0 (Abseil would exit 1).
  for (int i = 1; i < argc; ++i) {
    const absl::string_view a = argv[i];
    if (a == "--" ) break;
    if (a == "--help" || a == "-h" || a == "-help") {
      absl::flags_internal::SetProgramInvocationName(argv[0]);
      absl::flags_internal::FlagsHelp(std::cout, "server/main.cc",
                                      absl::flags_internal::HelpFormat::kHumanReadable,
                                      absl::ProgramUsageMessage());
      return 0;
    }
  }
  absl::ParseCommandLine(argc, argv);

  // Signals are taken synchronously by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  sq::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.artifact_dir = absl::GetFlag(FLAGS_artifact_dir);
  if (options.artifact_dir.empty()) options.artifact_dir = DefaultArtifactDir();
  options.workers = absl::GetFlag(FLAGS_workers);
  options.queue_capacity = absl::GetFlag(FLAGS_queue_capacity);
  options.default_job_threads = absl::GetFlag(FLAGS_job_threads);
  options.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  options.upload_buffer_bytes = absl::GetFlag(FLAGS_upload_buffer_bytes);
  if (options.upload_buffer_bytes < 1) {
    std::fprintf(stderr, "sq-server: --upload_buffer_bytes must be at least 1\n");
    return 2;
  }
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.log_rpcs = absl::GetFlag(FLAGS_log_rpcs);
  options.ort_worker_timeout_seconds = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_ort_worker_timeout));
  if (const std::string w = absl::GetFlag(FLAGS_ort_worker); w == "beside") {
    absl::StatusOr<std::string> beside = sq::OrtWorkerBesideThisExecutable();
    if (!beside.ok()) {
      std::fprintf(stderr, "sq-server: %s (install it beside sq-server, or pass --ort_worker=PATH or --ort_worker=none)\n",
                   std::string(beside.status().message()).c_str());
      return 2;
    }
    options.ort_worker = *beside;
  } else if (w != "none") {
    options.ort_worker = w;
  }
  options.retention.max_age = absl::GetFlag(FLAGS_retention_age);
  options.retention.interval = absl::GetFlag(FLAGS_retention_interval);
  if (auto bytes = sq::server::ParseByteSize(absl::GetFlag(FLAGS_retention_bytes)); bytes.ok()) {
    options.retention.max_bytes = *bytes;
  } else {
    std::fprintf(stderr, "sq-server: --retention_bytes: %s\n", std::string(bytes.status().message()).c_str());
    return 2;
  }
  if (options.retention.max_age < absl::ZeroDuration() || options.retention.interval <= absl::ZeroDuration()) {
    std::fprintf(stderr, "sq-server: --retention_age must be >= 0 and --retention_interval > 0\n");
    return 2;
  }
  std::string token_file = absl::GetFlag(FLAGS_auth_token_file);
  if (!token_file.empty()) {
    auto text = sq::server::ReadFileToString(token_file);
    if (!text.ok()) {
      std::fprintf(stderr, "sq-server: cannot read --auth_token_file %s\n", token_file.c_str());
      return 2;
    }
    auto config = sq::server::ParseTokenFile(*text);
    if (!config.ok()) {
      std::fprintf(stderr, "sq-server: --auth_token_file %s: %s\n", token_file.c_str(),
                   std::string(config.status().message()).c_str());
      return 2;
    }
    options.auth_token = config->shared_token;
    options.tenants = config->tenants;
  } else if (const char* t = std::getenv("SQ_TOKEN"); t && *t) {
    options.auth_token = t;
  }

  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_listen.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(metrics_listen);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sq-server: cannot serve metrics on %s: %s\n", metrics_listen.c_str(), e.what());
      return 3;
    }
    exposer->RegisterCollectable(registry);
  }

  auto server = sq::server::SqServer::Start(options, registry);
  if (!server.ok()) {
    std::fprintf(stderr, "sq-server: %s\n", server.status().ToString().c_str());
    return 3;
  }
  if (exposer) exposer->RegisterCollectable((*server)->process_metrics());
  std::fprintf(stderr, "sq-server: serving sq.v1 on %s (port %d), metrics on %s, artifacts in %s%s%s\n",
               options.listen_address.c_str(), (*server)->port(),
               metrics_listen.empty() ? "(off)" : metrics_listen.c_str(), options.artifact_dir.c_str(),
               !options.tenants.empty() ? absl::StrCat(", bearer auth per tenant (", options.tenants.size(), " tenants)").c_str()
               : options.auth_token.empty() ? "" : ", bearer auth on",
               options.tls_cert_file.empty() ? ""
               : options.tls_client_ca_file.empty() ? ", TLS on" : ", mutual TLS on");

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "sq-server: signal %d: draining (grace %ds)\n", sig,
               absl::GetFlag(FLAGS_drain_grace_seconds));
  (*server)->Drain(absl::Seconds(absl::GetFlag(FLAGS_drain_grace_seconds)));
  server->reset();
  std::fprintf(stderr, "sq-server: stopped\n");
  return 0;
}
