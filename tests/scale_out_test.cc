// Scale-out (#12, Kubernetes): several sq servers share one artifact directory, the way the
// replicas of deploy/k8s/deployment.yaml share one ReadWriteMany volume, and a client spreads
// its calls over them round robin, the way a Kubernetes Service spreads connections. Proven
// here on one host (one local filesystem, flock between processes' open files): every job
// submitted to any server runs exactly once, on the server that accepted it, and finishes
// SUCCEEDED; every server serves every job (state, watch, download with identical bytes);
// a server that starts while others run jobs (a rolling update's surge pod) does not take
// their jobs for interrupted; and once a server is drained and gone the others serve all
// of its jobs.
//
// What this does not prove: flock semantics of a network filesystem across nodes (see
// docs/deploy.md, "Kubernetes: scale-out").
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "onnx/onnx_pb.h"
#include "prometheus/registry.h"
#include "client/lib/client.h"
#include "server/artifact_store.h"
#include "server/server.h"
#include "server/testing/fake_engine.h"

// ONNX Runtime (the real engine verifies its artifacts in it) keeps a small one-time
// allocation until exit; LeakSanitizer should not blame the service for it.
extern "C" const char* __lsan_default_suppressions() { return "leak:libonnxruntime.so\n"; }

namespace sq::server {
namespace {
namespace fs = std::filesystem;
using client::SqClient;
using testing::FakeEngine;

// x[1,dim] -> MatMul(W0) -> MatMul(W1) -> y[1,dim] (tests/support/model_builder.h).
void WriteTinyModel(const std::string& path, int layers = 2, int dim = 64) {
  ASSERT_TRUE(::sq::testing::WriteMatMulChain(path, layers, dim, /*seed=*/7).ok());
}

std::string Slurp(const std::string& path) {
  auto s = ReadFileToString(path);
  return s.ok() ? *s : std::string();
}

// The job id of a run, from the output path the job manager hands the engine
// (<artifact dir>/jobs/<job id>/out/<name>).
std::string JobIdOfOutput(const std::string& output_path) {
  fs::path p(output_path);
  return p.parent_path().parent_path().filename().string();
}

// Every engine run on every server, by job id: the ledger that "exactly once" is read from.
class RunLedger {
 public:
  void Record(const std::string& server, const std::string& job_id) {
    absl::MutexLock lock(&mu_);
    runs_[job_id].push_back(server);
  }
  std::map<std::string, std::vector<std::string>> runs() {
    absl::MutexLock lock(&mu_);
    return runs_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::string>> runs_;
};

// Forwards to `inner` and writes each run into the ledger under this server's name.
class CountingEngine final : public EnginePort {
 public:
  CountingEngine(std::string server, std::shared_ptr<EnginePort> inner, RunLedger* ledger)
      : server_(std::move(server)), inner_(std::move(inner)), ledger_(ledger) {}
  absl::StatusOr<ModelReport> Quantize(const std::string& input_path, const std::string& output_path,
                                       const QuantizeOptions& options, const RunHooks& hooks) override {
    ledger_->Record(server_, JobIdOfOutput(output_path));
    return inner_->Quantize(input_path, output_path, options, hooks);
  }
  absl::StatusOr<ModelInfo> Inspect(const std::string& input_path) override {
    return inner_->Inspect(input_path);
  }
  std::string Version() override { return inner_->Version(); }

 private:
  const std::string server_;
  const std::shared_ptr<EnginePort> inner_;
  RunLedger* const ledger_;
};

// A counter or gauge of one registry (the series with label `label`=`value`, or the
// family's only series when `label` is empty).
double MetricValue(prometheus::Registry& registry, const std::string& family,
                   const std::string& label = "", const std::string& value = "") {
  for (const auto& f : registry.Collect()) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      bool match = label.empty();
      for (const auto& l : m.label) match = match || (l.name == label && l.value == value);
      if (!match) continue;
      return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  return -1;
}

// One sq server of the shared directory, with its own metrics registry (as each pod has its
// own /metrics) and its own engine.
struct Replica {
  std::string name;
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<SqServer> server;
  std::unique_ptr<SqClient> client;
};

class ScaleOutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sq_scale_out_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = (dir_ / "tiny.onnx").string();
    WriteTinyModel(model_);
  }
  void TearDown() override {
    replicas_.clear();  // servers first: they hold files under dir_
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Starts a server on the shared artifact directory; its runs go into the ledger.
  Replica& StartReplica(const std::string& name, std::shared_ptr<EnginePort> engine) {
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.artifact_dir = (dir_ / "artifacts").string();  // one directory for all replicas
    o.workers = 2;
    o.queue_capacity = 8;
    o.default_job_threads = 1;
    o.log_rpcs = false;
    auto r = std::make_unique<Replica>();
    r->name = name;
    r->registry = std::make_shared<prometheus::Registry>();
    auto s = SqServer::Start(o, r->registry,
                             std::make_shared<CountingEngine>(name, std::move(engine), &ledger_));
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) r->server = std::move(*s);
    client::ClientOptions co;
    co.target = r->server ? r->server->address() : "127.0.0.1:1";
    co.unary_timeout = absl::Seconds(20);
    auto c = SqClient::Create(co);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) r->client = std::move(*c);
    replicas_.push_back(std::move(r));
    return *replicas_.back();
  }

  // Drains a replica (as SIGTERM does) and removes it, the way a pod goes away.
  void StopReplica(const std::string& name, absl::Duration grace) {
    for (auto it = replicas_.begin(); it != replicas_.end(); ++it) {
      if ((*it)->name != name) continue;
      (*it)->server->Drain(grace);
      replicas_.erase(it);
      return;
    }
    ADD_FAILURE() << "no replica " << name;
  }

  // The round-robin client: call i goes to replica i mod n.
  Replica& Pick(size_t i) { return *replicas_[i % replicas_.size()]; }

  // Every job of the directory, as each replica lists it, is exactly `want` (ids).
  void ExpectEveryReplicaListsExactly(const std::set<std::string>& want) {
    for (auto& r : replicas_) {
      auto list = r->client->List();
      ASSERT_TRUE(list.ok()) << r->name << ": " << list.status();
      std::multiset<std::string> ids;
      for (const v1::Job& j : *list) ids.insert(j.job_id());
      EXPECT_EQ(ids.size(), want.size()) << r->name << " lists a job twice or misses one";
      EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), want) << r->name;
    }
  }

  // Each job ran exactly once, on the replica that accepted it.
  void ExpectRanExactlyOnce(const std::map<std::string, std::string>& accepted_by) {
    auto runs = ledger_.runs();
    EXPECT_EQ(runs.size(), accepted_by.size()) << "a run of an unknown job, or a job never run";
    for (const auto& [id, server] : accepted_by) {
      ASSERT_EQ(runs[id].size(), 1u) << "job " << id << " ran " << runs[id].size() << " times";
      EXPECT_EQ(runs[id][0], server) << "job " << id << " ran on another server than the one it was submitted to";
    }
  }

  fs::path dir_;
  std::string model_;
  RunLedger ledger_;
  std::vector<std::unique_ptr<Replica>> replicas_;
};

// Eight jobs on the real engine over three servers, round robin; each watched from the next
// server; all downloads byte-identical from every server; then one server is drained away
// and the other two still serve every job.
TEST_F(ScaleOutTest, RoundRobinJobsFinishExactlyOnceAndEveryServerServesThem) {
  constexpr int kJobs = 8;
  for (const char* name : {"a", "b", "c"}) StartReplica(name, DefaultEngine());
  ASSERT_EQ(replicas_.size(), 3u);
  for (auto& r : replicas_) ASSERT_TRUE(r->server && r->client);

  // The model is uploaded once through the Service (to a); the others find it stored.
  auto up = Pick(0).client->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  for (size_t i = 1; i < replicas_.size(); ++i) {
    auto again = Pick(i).client->UploadModel(model_);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->deduplicated()) << Pick(i).name << " does not see the shared upload";
    EXPECT_EQ(again->model_id(), up->model_id());
  }

  std::map<std::string, std::string> accepted_by;  // job id -> replica
  std::vector<std::string> order;
  for (int i = 0; i < kJobs; ++i) {
    v1::SubmitJobRequest req;
    req.set_model(up->name());
    req.mutable_options()->set_bits(i % 2 ? 4 : 8);  // two kinds of artifact
    Replica& r = Pick(i);
    auto job = r.client->Submit(req);
    ASSERT_TRUE(job.ok()) << r.name << ": " << job.status();
    ASSERT_TRUE(accepted_by.emplace(job->job_id(), r.name).second) << "job id issued twice";
    order.push_back(job->job_id());
  }

  // Each job followed from the next server in the ring (never the one running it).
  std::vector<absl::StatusOr<v1::Job>> watched(kJobs, absl::UnknownError("not watched"));
  {
    std::vector<std::thread> watchers;
    for (int i = 0; i < kJobs; ++i) {
      watchers.emplace_back([&, i] {
        watched[i] = Pick(i + 1).client->Watch(order[i], nullptr, absl::Seconds(180));
      });
    }
    for (auto& t : watchers) t.join();
  }
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(watched[i].ok()) << "watch of job " << i << " from " << Pick(i + 1).name << ": "
                                 << watched[i].status();
    EXPECT_EQ(watched[i]->state(), v1::JOB_STATE_SUCCEEDED) << watched[i]->error().message();
    ASSERT_GE(watched[i]->artifacts_size(), 1);
  }

  ExpectRanExactlyOnce(accepted_by);
  std::set<std::string> all(order.begin(), order.end());
  ExpectEveryReplicaListsExactly(all);

  // Each replica's own metrics count the jobs it ran, and together they count each job once.
  double finished = 0, submitted = 0;
  for (auto& r : replicas_) {
    int mine = 0;
    for (const auto& [id, server] : accepted_by) mine += server == r->name;
    EXPECT_EQ(MetricValue(*r->registry, "sq_jobs_finished_total", "outcome", "succeeded"), mine) << r->name;
    EXPECT_EQ(MetricValue(*r->registry, "sq_jobs_finished_total", "outcome", "failed"), 0) << r->name;
    EXPECT_EQ(MetricValue(*r->registry, "sq_queue_depth"), 0) << r->name;
    finished += MetricValue(*r->registry, "sq_jobs_finished_total", "outcome", "succeeded");
    submitted += MetricValue(*r->registry, "sq_jobs_submitted_total");
  }
  EXPECT_EQ(finished, kJobs);
  EXPECT_EQ(submitted, kJobs);

  // Every server gives the same bytes for every artifact, matching the recorded SHA-256.
  fs::create_directories(dir_ / "dl");
  for (int i = 0; i < kJobs; ++i) {
    const v1::Job& job = *watched[i];
    std::string first;
    for (auto& r : replicas_) {
      std::string dest = (dir_ / "dl" / absl::StrCat(i, "-", r->name, ".onnx")).string();
      absl::Status st = r->client->Download(job.job_id(), "", dest);
      ASSERT_TRUE(st.ok()) << r->name << ": " << st;
      std::string bytes = Slurp(dest);
      EXPECT_EQ(Sha256Hex(bytes), job.artifacts(0).sha256()) << r->name;
      if (first.empty()) first = bytes;
      EXPECT_EQ(bytes, first) << "job " << i << ": " << r->name << " serves other bytes";
    }
  }

  // A scale-down: one replica drains and goes away; the others serve all jobs, including
  // the ones it ran, and take new jobs round robin.
  const std::string gone = Pick(0).name;
  StopReplica(gone, absl::Seconds(10));
  ASSERT_EQ(replicas_.size(), 2u);
  for (auto& r : replicas_) {
    for (const std::string& id : order) {
      auto j = r->client->Get(id);
      ASSERT_TRUE(j.ok()) << r->name << ": " << j.status();
      EXPECT_EQ(j->state(), v1::JOB_STATE_SUCCEEDED) << r->name << " job " << id;
    }
    for (const auto& [id, server] : accepted_by) {
      if (server != gone) continue;
      std::string dest = (dir_ / "dl" / absl::StrCat(id, "-after-", r->name)).string();
      ASSERT_TRUE(r->client->Download(id, "", dest).ok()) << r->name << " cannot serve " << gone << "'s job";
    }
  }
  ExpectEveryReplicaListsExactly(all);
  for (int i = 0; i < 2; ++i) {
    v1::SubmitJobRequest req;
    req.set_model(up->name());
    auto job = Pick(i).client->Submit(req);
    ASSERT_TRUE(job.ok()) << job.status();
    accepted_by[job->job_id()] = Pick(i).name;
    auto done = Pick(i + 1).client->Watch(job->job_id(), nullptr, absl::Seconds(120));
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
    all.insert(job->job_id());
  }
  ExpectRanExactlyOnce(accepted_by);
  ExpectEveryReplicaListsExactly(all);
}

// A rolling update (maxSurge 1, maxUnavailable 0) while jobs run: a new server starts on the
// directory while two others hold running jobs, and must see them RUNNING, not interrupted;
// the old server drains (its running jobs finish, as with SIGTERM inside
// terminationGracePeriodSeconds) and goes; the remaining servers serve everything.
TEST_F(ScaleOutTest, RollingUpdateSurgeAndDrainLoseNoJobAndRunNoneTwice) {
  auto engine_a = std::make_shared<FakeEngine>(/*gated=*/true);
  auto engine_b = std::make_shared<FakeEngine>(/*gated=*/true);
  StartReplica("a", engine_a);
  StartReplica("b", engine_b);
  ASSERT_EQ(replicas_.size(), 2u);
  for (auto& r : replicas_) ASSERT_TRUE(r->server && r->client);
  auto up = Pick(0).client->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();

  std::map<std::string, std::string> accepted_by;
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {  // two per server: both workers of each busy
    v1::SubmitJobRequest req;
    req.set_model(up->name());
    auto job = Pick(i).client->Submit(req);
    ASSERT_TRUE(job.ok()) << job.status();
    accepted_by[job->job_id()] = Pick(i).name;
    order.push_back(job->job_id());
  }
  ASSERT_TRUE(engine_a->WaitStarted(2));
  ASSERT_TRUE(engine_b->WaitStarted(2));

  // The surge pod: its start-up recovery must leave the others' running jobs alone.
  auto engine_c = std::make_shared<FakeEngine>();
  StartReplica("c", engine_c);
  ASSERT_TRUE(replicas_.back()->server && replicas_.back()->client);
  for (const std::string& id : order) {
    auto j = replicas_.back()->client->Get(id);
    ASSERT_TRUE(j.ok()) << j.status();
    EXPECT_EQ(j->state(), v1::JOB_STATE_RUNNING) << "the new server took a live job for interrupted: "
                                                 << j->error().message();
  }

  // a drains (SIGTERM): it stops taking jobs at once, its running jobs finish.
  std::thread drain([&] { replicas_[0]->server->Drain(absl::Seconds(30)); });
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<bool> health;
  do {
    health = replicas_[0]->client->Health();
  } while (health.ok() && *health && absl::Now() < deadline);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_FALSE(*health) << "a draining server must read NOT_SERVING (readiness drops it)";
  // The Service sends new work to the ready replicas only.
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  EXPECT_EQ(replicas_[0]->client->Submit(req).status().code(), absl::StatusCode::kUnavailable);
  auto c_job = replicas_[2]->client->Submit(req);
  ASSERT_TRUE(c_job.ok()) << c_job.status();
  accepted_by[c_job->job_id()] = "c";
  order.push_back(c_job->job_id());

  engine_a->Release();
  drain.join();
  replicas_.erase(replicas_.begin());  // a's pod is gone
  engine_b->Release();

  for (size_t i = 0; i < order.size(); ++i) {
    auto done = Pick(i).client->Watch(order[i], nullptr, absl::Seconds(30));
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << order[i] << ": " << done->error().message();
  }
  ExpectRanExactlyOnce(accepted_by);
  ExpectEveryReplicaListsExactly(std::set<std::string>(order.begin(), order.end()));
  for (auto& r : replicas_) {
    for (const auto& [id, server] : accepted_by) {
      std::string dest = (dir_ / absl::StrCat(id, "-", r->name)).string();
      ASSERT_TRUE(r->client->Download(id, "", dest).ok()) << r->name << " cannot serve " << id;
      EXPECT_EQ(Slurp(dest), Slurp(model_));  // FakeEngine's artifact is the input
    }
  }
}

// A client that retries SubmitJob with the same idempotency key (its first call timed out)
// reaches another replica through the Service: it must get the same job, not a second one.
// Keys are claimed in the shared directory (keys/, a link() that only one claim wins), so
// every replica sees a key the moment another takes it.
TEST_F(ScaleOutTest, IdempotencyKeyRetriedOnAnotherServerGivesTheSameJob) {
  StartReplica("a", std::make_shared<FakeEngine>());
  StartReplica("b", std::make_shared<FakeEngine>());
  ASSERT_EQ(replicas_.size(), 2u);
  for (auto& r : replicas_) ASSERT_TRUE(r->server && r->client);
  auto up = Pick(0).client->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.set_idempotency_key("retry-me");
  auto first = Pick(0).client->Submit(req);
  ASSERT_TRUE(first.ok()) << first.status();
  auto retry = Pick(1).client->Submit(req);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->job_id(), first->job_id()) << "the retry on the other server made a second job";
  auto done = Pick(1).client->Watch(first->job_id(), nullptr, absl::Seconds(20));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(Pick(0).client->List()->size(), 1u);
}

}  // namespace
}  // namespace sq::server
