// sq_load: N concurrent clients, each uploading a model, submitting jobs, watching them to the
// end, downloading the output and polling Get/List meanwhile. Reports jobs done, jobs lost
// (accepted but never SUCCEEDED: must be 0), submissions refused because the queue was full
// (retried with backoff), and p50/p99 latency of the control calls.
//
//   sq_load [--clients 16] [--jobs 4] [--model M.onnx] [--server HOST:PORT --token T]
//           [--workers 2] [--queue 64] [--fake] [--require-refusals]
// Exit 0 when no accepted job was lost (and, with --require-refusals, when the queue filled
// at least once and every refusal was RESOURCE_EXHAUSTED with retry advice): the CI test
// LoadTest.* runs it small; docs/reliability.md has the 32-client figures.
// Without --server an in-process server on 127.0.0.1 (port 0) with a temporary artifact
// directory is started (real engine, or --fake for the service overhead alone). Without
// --model a small generated MatMul model is used.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "onnx/onnx_pb.h"
#include "client/lib/client.h"
#include "server/server.h"
#include "server/testing/fake_engine.h"

namespace {
namespace fs = std::filesystem;

void WriteModel(const std::string& path, int layers, int dim) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("load");
  auto value = [&](onnx::ValueInfoProto* v, const std::string& name) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    t->mutable_shape()->add_dim()->set_dim_value(1);
    t->mutable_shape()->add_dim()->set_dim_value(dim);
  };
  value(g->add_input(), "x");
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0, 0.05f);
  std::string prev = "x";
  for (int l = 0; l < layers; ++l) {
    auto* w = g->add_initializer();
    w->set_name("w" + std::to_string(l));
    w->set_data_type(onnx::TensorProto::FLOAT);
    w->add_dims(dim);
    w->add_dims(dim);
    for (int i = 0; i < dim * dim; ++i) w->add_float_data(normal(rng));
    auto* n = g->add_node();
    n->set_op_type("MatMul");
    n->set_name("mm" + std::to_string(l));
    n->add_input(prev);
    n->add_input(w->name());
    prev = l + 1 == layers ? "y" : "h" + std::to_string(l);
    n->add_output(prev);
  }
  value(g->add_output(), "y");
  std::ofstream f(path, std::ios::binary);
  m.SerializeToOstream(&f);
}

struct Latencies {
  std::mutex mu;
  std::map<std::string, std::vector<double>> ms;
  void Add(const std::string& call, absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu);
    ms[call].push_back(absl::ToDoubleMilliseconds(d));
  }
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  int clients = 16, jobs_per_client = 4, workers = 2, queue = 64;
  std::string model, server_addr, token;
  bool fake = false, require_refusals = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--clients") (void)absl::SimpleAtoi(next(), &clients);
    else if (a == "--jobs") (void)absl::SimpleAtoi(next(), &jobs_per_client);
    else if (a == "--workers") (void)absl::SimpleAtoi(next(), &workers);
    else if (a == "--queue") (void)absl::SimpleAtoi(next(), &queue);
    else if (a == "--model") model = next();
    else if (a == "--server") server_addr = next();
    else if (a == "--token") token = next();
    else if (a == "--fake") fake = true;
    else if (a == "--require-refusals") require_refusals = true;
    else {
      std::fprintf(stderr, "usage: sq_load [--clients N] [--jobs N] [--model M] [--server ADDR] [--token T] "
                           "[--workers N] [--queue N] [--fake] [--require-refusals]\n");
      return 2;
    }
  }
  fs::path tmp = fs::temp_directory_path() / ("sq_load_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  if (model.empty()) {
    model = (tmp / "load.onnx").string();
    WriteModel(model, 8, 128);
  }

  std::unique_ptr<sq::server::SqServer> server;
  if (server_addr.empty()) {
    sq::server::ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.artifact_dir = (tmp / "artifacts").string();
    o.workers = workers;
    o.queue_capacity = queue;
    o.default_job_threads = 1;
    std::shared_ptr<sq::server::EnginePort> engine;
    if (fake) engine = std::make_shared<sq::server::testing::FakeEngine>(false, 8);
    auto s = sq::server::SqServer::Start(o, nullptr, engine);
    if (!s.ok()) {
      std::fprintf(stderr, "sq_load: %s\n", s.status().ToString().c_str());
      return 3;
    }
    server = std::move(*s);
    server_addr = server->address();
  }

  Latencies lat;
  std::atomic<int> done{0}, lost{0}, refused{0}, failed_calls{0}, refusals_without_advice{0};
  absl::Time t0 = absl::Now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      sq::client::ClientOptions co;
      co.target = server_addr;
      co.token = token;
      auto client = sq::client::SqClient::Create(co);
      if (!client.ok()) {
        lost += jobs_per_client;
        return;
      }
      auto& cl = **client;
      absl::Time t = absl::Now();
      auto up = cl.UploadModel(model);
      lat.Add("UploadModel", absl::Now() - t);
      if (!up.ok()) {
        std::fprintf(stderr, "upload: %s\n", up.status().ToString().c_str());
        lost += jobs_per_client;
        return;
      }
      for (int j = 0; j < jobs_per_client; ++j) {
        sq::v1::SubmitJobRequest req;
        req.set_model(up->name());
        req.set_idempotency_key("load-" + std::to_string(::getpid()) + "-" + std::to_string(c) + "-" +
                                std::to_string(j));
        absl::StatusOr<sq::v1::Job> job;
        for (int attempt = 0;; ++attempt) {
          t = absl::Now();
          job = cl.Submit(req);
          lat.Add("SubmitJob", absl::Now() - t);
          if (job.ok() || job.status().code() != absl::StatusCode::kResourceExhausted || attempt > 200) break;
          ++refused;
          if (job.status().message().find("retry") == absl::string_view::npos) ++refusals_without_advice;
          absl::SleepFor(absl::Milliseconds(50 + 10 * std::min(attempt, 20)));
        }
        if (!job.ok()) {
          std::fprintf(stderr, "submit: %s\n", job.status().ToString().c_str());
          ++failed_calls;
          continue;  // never accepted: not lost
        }
        t = absl::Now();
        auto got = cl.Get(job->job_id());
        lat.Add("GetJob", absl::Now() - t);
        if (!got.ok()) ++failed_calls;
        t = absl::Now();
        auto list = cl.List();
        lat.Add("ListJobs", absl::Now() - t);
        if (!list.ok()) ++failed_calls;
        auto final_job = cl.Watch(job->job_id(), nullptr, absl::Minutes(10));
        if (!final_job.ok() || final_job->state() != sq::v1::JOB_STATE_SUCCEEDED) {
          std::fprintf(stderr, "job %s: %s\n", job->job_id().c_str(),
                       final_job.ok() ? final_job->error().message().c_str()
                                      : final_job.status().ToString().c_str());
          ++lost;
          continue;
        }
        std::string out = (tmp / ("out_" + std::to_string(c) + "_" + std::to_string(j) + ".onnx")).string();
        t = absl::Now();
        absl::Status st = cl.DownloadAll(*final_job, out);
        lat.Add("DownloadArtifact", absl::Now() - t);
        if (!st.ok()) {
          ++lost;
          continue;
        }
        fs::remove(out);
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  double wall = absl::ToDoubleSeconds(absl::Now() - t0);

  std::printf("sq_load: %d clients x %d jobs against %s%s\n", clients, jobs_per_client, server_addr.c_str(),
              server ? (fake ? " (in-process, fake engine)" : " (in-process, real engine)") : "");
  std::printf("jobs done %d, lost %d, queue-full refusals (retried) %d, failed calls %d, wall %.2f s, "
              "%.2f jobs/s\n",
              done.load(), lost.load(), refused.load(), failed_calls.load(), wall, done.load() / wall);
  std::printf("%-18s %8s %10s %10s\n", "call", "n", "p50 ms", "p99 ms");
  for (const auto& [call, v] : lat.ms) {
    std::printf("%-18s %8zu %10.2f %10.2f\n", call.c_str(), v.size(), Percentile(v, 0.5), Percentile(v, 0.99));
  }
  server.reset();
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (require_refusals && (refused.load() == 0 || refusals_without_advice.load() > 0)) {
    std::printf("expected queue-full refusals with retry advice: %d refusals, %d without advice\n",
                refused.load(), refusals_without_advice.load());
    return 1;
  }
  return lost.load() == 0 && failed_calls.load() == 0 ? 0 : 1;
}
