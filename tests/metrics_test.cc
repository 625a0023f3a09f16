// Metrics: the families exist with Prometheus-conformant names, move when jobs run, are
// served over HTTP by prometheus-cpp's Exposer, and pass `promtool check metrics`.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "gtest/gtest.h"
#include "prometheus/exposer.h"
#include "prometheus/text_serializer.h"
#include "client/lib/client.h"
#include "server/server.h"
#include "server/testing/fake_engine.h"

namespace sq::server {
namespace {
namespace fs = std::filesystem;

std::string Serialize(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

// GET http://127.0.0.1:port/metrics (HTTP/1.0, connection closes at the end).
std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  (void)::send(fd, req.data(), req.size(), 0);
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

bool HavePromtool() { return std::system("promtool --version >/dev/null 2>&1") == 0; }

TEST(MetricsTest, FamiliesFollowNamingRules) {
  prometheus::Registry registry;
  ServerMetrics metrics(registry, "1.2.3");
  std::string text = Serialize(registry);
  for (const char* name :
       {"sq_jobs_submitted_total", "sq_jobs_finished_total", "sq_queue_depth", "sq_jobs_running",
        "sq_worker_slots", "sq_queue_wait_seconds", "sq_job_duration_seconds",
        "sq_stage_duration_seconds", "sq_upload_bytes_total", "sq_download_bytes_total",
        "sq_compression_ratio", "sq_layer_sqnr_decibels", "sq_build_info", "sq_uploads_total",
        "sq_process_resident_memory_bytes", "sq_process_peak_resident_memory_bytes",
        "sq_verifications_total"}) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("# TYPE ", name))) << name;
  }
  EXPECT_TRUE(absl::StrContains(text, "sq_build_info{version=\"1.2.3\"} 1"));
}

TEST(MetricsTest, JobsMoveTheMetricsAndTheScrapePassesPromtool) {
  fs::path dir = fs::temp_directory_path() / ("sq_metrics_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string model = (dir / "m.onnx").string();
  std::ofstream(model) << std::string(5000, 'm');

  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::Exposer exposer("127.0.0.1:0");
  exposer.RegisterCollectable(registry);
  ASSERT_FALSE(exposer.GetListeningPorts().empty());
  int metrics_port = exposer.GetListeningPorts()[0];

  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.artifact_dir = (dir / "artifacts").string();
  auto server = SqServer::Start(o, registry, std::make_shared<testing::FakeEngine>(false, 4));
  ASSERT_TRUE(server.ok()) << server.status();
  exposer.RegisterCollectable((*server)->process_metrics());
  client::ClientOptions co;
  co.target = (*server)->address();
  auto c = client::SqClient::Create(co);
  ASSERT_TRUE(c.ok());
  auto up = (*c)->Upload({{model, "m.onnx"}});
  ASSERT_TRUE(up.ok()) << up.status();
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  auto job = (*c)->Submit(req);
  ASSERT_TRUE(job.ok());
  auto done = (*c)->Watch(job->job_id(), nullptr, absl::Seconds(20));
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE((*c)->Download(job->job_id(), "", (dir / "out.onnx").string()).ok());

  std::string text = HttpGet(metrics_port, "/metrics");
  ASSERT_FALSE(text.empty());
  EXPECT_TRUE(absl::StrContains(text, "sq_jobs_submitted_total 1")) << text;
  EXPECT_TRUE(absl::StrContains(text, "sq_jobs_finished_total{outcome=\"succeeded\"} 1"));
  EXPECT_TRUE(absl::StrContains(text, "sq_upload_bytes_total 5000"));
  EXPECT_TRUE(absl::StrContains(text, "sq_download_bytes_total 5000"));
  EXPECT_TRUE(absl::StrContains(text, "sq_layer_sqnr_decibels_count{method=\"split\"} 4"));
  EXPECT_TRUE(absl::StrContains(text, "sq_layer_sqnr_decibels_count{method=\"plain\"} 4"));
  EXPECT_TRUE(absl::StrContains(text, "sq_worker_slots 2"));
  // Memory was sampled when the job ran: a real, non-zero figure.
  EXPECT_FALSE(absl::StrContains(text, "sq_process_resident_memory_bytes 0\n")) << text;
  EXPECT_FALSE(absl::StrContains(text, "sq_process_peak_resident_memory_bytes 0\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "sq_stage_duration_seconds_count{stage=\"transform\"} 1"));
  EXPECT_TRUE(absl::StrContains(text, "sq_stage_duration_seconds_count{stage=\"verify\"} 1"));
  EXPECT_TRUE(absl::StrContains(text, "sq_verifications_total{result=\"passed\"} 1"));
  EXPECT_TRUE(absl::StrContains(text, "sq_verifications_total{result=\"failed\"} 0"));
  EXPECT_TRUE(absl::StrContains(text, "sq_jobs_rejected_total{reason=\"queue_full\"} 0"));
  // The standard process family (read at scrape time) and the artifact volume's space.
  for (const char* name : {"process_resident_memory_bytes", "process_cpu_seconds_total",
                           "process_open_fds", "process_max_fds", "process_start_time_seconds",
                           "process_virtual_memory_bytes"}) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("# TYPE ", name))) << name;
    EXPECT_FALSE(absl::StrContains(text, absl::StrCat(name, " 0\n"))) << name << " reads 0";
  }
  for (const char* kind : {"used", "free", "total"}) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("sq_artifact_volume_bytes{kind=\"", kind, "\"}")))
        << kind;
  }
  // Per-RPC metrics (interceptor): one SubmitJob OK, a NOT_FOUND GetJob, a made-up method
  // that must not become a label value.
  EXPECT_EQ((*c)->Get("0123456789abcdef0123456789abcdef").status().code(), absl::StatusCode::kNotFound);
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest in;
    v1::GetJobResponse out;
    auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
    grpc::Status st = grpc::internal::BlockingUnaryCall(
        channel.get(), grpc::internal::RpcMethod("/evil.Service/Made-up-method", grpc::internal::RpcMethod::NORMAL_RPC),
        &ctx, in, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  text = HttpGet(metrics_port, "/metrics");
  EXPECT_TRUE(absl::StrContains(
      text, "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"SubmitJob\",grpc_service=\"sq.v1.SqService\"} 1"))
      << text;
  EXPECT_TRUE(absl::StrContains(
      text, "grpc_server_handled_total{grpc_code=\"NOT_FOUND\",grpc_method=\"GetJob\",grpc_service=\"sq.v1.SqService\"} 1"));
  EXPECT_TRUE(absl::StrContains(text, "grpc_server_handling_seconds_count{grpc_method=\"DownloadArtifact\",grpc_service=\"sq.v1.SqService\"} 1"));
  EXPECT_FALSE(absl::StrContains(text, "evil")) << "a client's method name became a label value";
  EXPECT_FALSE(absl::StrContains(text, job->job_id()));  // never an id as a label
  EXPECT_FALSE(absl::StrContains(text, up->model_id()));

  if (!HavePromtool()) {
    GTEST_SKIP() << "promtool not installed; scrape not linted";
  }
  std::string scrape = (dir / "scrape.txt").string();
  std::ofstream(scrape) << text;
  std::string cmd = "promtool check metrics < " + scrape + " > " + (dir / "lint.txt").string() + " 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream lint(dir / "lint.txt");
  std::string findings((std::istreambuf_iterator<char>(lint)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << findings;
  server->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sq::server
