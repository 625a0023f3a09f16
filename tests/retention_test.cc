// Retention and deletion of stored jobs and models: the sweeper's rules (age, size cap,
// what it never touches), DeleteModel over the RPC with and without tenants, and the
// background sweeper of a running server.
#include "server/retention.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <fstream>

#include "client/lib/client.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/server.h"
#include "server/testing/fake_engine.h"

namespace sq::server {
namespace {
namespace fs = std::filesystem;
using client::SqClient;
using testing::FakeEngine;

TEST(ParseByteSizeTest, AcceptsBinarySuffixesAndRejectsGarbage) {
  EXPECT_EQ(*ParseByteSize("0"), 0);
  EXPECT_EQ(*ParseByteSize("512"), 512);
  EXPECT_EQ(*ParseByteSize("100M"), int64_t{100} << 20);
  EXPECT_EQ(*ParseByteSize("20GiB"), int64_t{20} << 30);
  EXPECT_EQ(*ParseByteSize("1.5t"), int64_t{3} << 39);
  EXPECT_EQ(*ParseByteSize(" 8KB "), 8192);
  for (const char* bad : {"", "G", "-1", "ten", "5X", "1e30", "nan"}) {
    auto r = ParseByteSize(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseByteSize("5X").status().message().find("\"5X\""), std::string::npos);
}

// x[1,16] -> MatMul(W) -> y: `seed` makes different models (different ids).
std::string WriteModel(const fs::path& path, uint32_t seed) {
  EXPECT_TRUE(::sq::testing::WriteMatMulChain(path.string(), 1, 16, seed).ok());
  return path.string();
}

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sq_retention_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  ServerOptions Options() {
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.artifact_dir = (dir_ / "artifacts").string();
    o.workers = 2;
    o.default_job_threads = 1;
    return o;
  }
  std::unique_ptr<SqServer> Start(const ServerOptions& o, std::shared_ptr<EnginePort> engine,
                                  std::shared_ptr<prometheus::Registry> registry = nullptr) {
    auto s = SqServer::Start(o, std::move(registry), std::move(engine));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::unique_ptr<SqClient> Connect(const SqServer& s, const std::string& token = "") {
    client::ClientOptions o;
    o.target = s.address();
    o.token = token;
    auto c = SqClient::Create(o);
    EXPECT_TRUE(c.ok());
    return std::move(*c);
  }
  std::string Upload(SqClient& c, uint32_t seed) {
    auto up = c.UploadModel(WriteModel(dir_ / ("m" + std::to_string(seed) + ".onnx"), seed));
    EXPECT_TRUE(up.ok()) << up.status();
    return up.ok() ? up->model_id() : "";
  }
  v1::Job Submit(SqClient& c, const std::string& model_id) {
    v1::SubmitJobRequest req;
    req.set_model(model_id);  // a bare id: SqClient sends "models/<id>"
    auto job = c.Submit(req);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }
  v1::Job RunToEnd(SqClient& c, const std::string& model_id) {
    v1::Job job = Submit(c, model_id);
    auto done = c.Watch(job.job_id(), nullptr, absl::Seconds(30));
    EXPECT_TRUE(done.ok() && done->state() == v1::JOB_STATE_SUCCEEDED);
    return done.ok() ? *done : job;
  }
  bool JobOnDisk(const SqServer& s, const std::string& id) {
    return fs::exists(fs::path(const_cast<SqServer&>(s).store().JobDir(id)));
  }
  fs::path dir_;
};

TEST_F(RetentionTest, AgeLimitRemovesFinishedJobsAndUnusedModelsOnly) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  auto server = Start(Options(), engine);
  auto c = Connect(*server);
  const std::string done_model = Upload(*c, 1);
  const std::string busy_model = Upload(*c, 2);
  const std::string idle_model = Upload(*c, 3);
  v1::Job first = Submit(*c, done_model);
  ASSERT_TRUE(engine->WaitStarted(1));
  engine->Release();
  ASSERT_EQ(c->Watch(first.job_id(), nullptr, absl::Seconds(30))->state(), v1::JOB_STATE_SUCCEEDED);
  // A released gate stays open: restart on the same directory with a fresh gated engine to
  // pin the next job in RUNNING (the finished job and the models persist).
  auto gated = std::make_shared<FakeEngine>(/*gated=*/true);
  ServerOptions o = Options();
  o.workers = 1;
  server.reset();
  server = Start(o, gated);
  c = Connect(*server);
  v1::Job running = Submit(*c, busy_model);
  ASSERT_TRUE(gated->WaitStarted(1));

  RetentionSweeper sweeper(&server->store(), &server->jobs(), nullptr,
                           RetentionPolicy{absl::Hours(1), 0, absl::Minutes(5)});
  // Nothing is an hour old yet.
  SweepResult now = sweeper.SweepOnce(absl::Now());
  EXPECT_EQ(now.jobs_removed + now.models_removed, 0);

  SweepResult later = sweeper.SweepOnce(absl::Now() + absl::Hours(2));
  EXPECT_EQ(later.jobs_removed, 1);    // the finished job
  EXPECT_EQ(later.models_removed, 2);  // done_model and idle_model; busy_model is in use
  EXPECT_GT(later.bytes_removed, 0);
  EXPECT_FALSE(JobOnDisk(*server, first.job_id()));
  EXPECT_EQ(c->Get(first.job_id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(JobOnDisk(*server, running.job_id()));
  EXPECT_TRUE(server->store().HasModel(busy_model));
  EXPECT_FALSE(server->store().HasModel(done_model));
  EXPECT_FALSE(server->store().HasModel(idle_model));

  // The running job finishes normally; then it and its model go too.
  gated->Release();
  ASSERT_EQ(c->Watch(running.job_id(), nullptr, absl::Seconds(30))->state(), v1::JOB_STATE_SUCCEEDED);
  SweepResult after = sweeper.SweepOnce(absl::Now() + absl::Hours(2));
  EXPECT_EQ(after.jobs_removed, 1);
  EXPECT_EQ(after.models_removed, 1);
  EXPECT_EQ(after.bytes_after, 0);
  // Nothing half-deleted is left visible; tmp/ is empty again.
  EXPECT_TRUE(fs::is_empty(fs::path(Options().artifact_dir) / "tmp"));
}

TEST_F(RetentionTest, UsingAModelRestartsItsAge) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  const std::string model = Upload(*c, 1);
  RetentionSweeper sweeper(&server->store(), &server->jobs(), nullptr,
                           RetentionPolicy{absl::Seconds(2), 0, absl::Minutes(5)});
  absl::SleepFor(absl::Milliseconds(1500));
  Upload(*c, 1);  // deduplicated: counts as a use
  EXPECT_EQ(sweeper.SweepOnce(absl::Now() + absl::Seconds(1)).models_removed, 0);
  EXPECT_TRUE(server->store().HasModel(model));
  EXPECT_EQ(sweeper.SweepOnce(absl::Now() + absl::Seconds(3)).models_removed, 1);
}

TEST_F(RetentionTest, AnInFlightDownloadKeepsItsJob) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  v1::Job job = RunToEnd(*c, Upload(*c, 1));
  RetentionSweeper sweeper(&server->store(), &server->jobs(), nullptr,
                           RetentionPolicy{absl::Seconds(1), 0, absl::Minutes(5)});
  {
    // What every DownloadArtifact stream holds while it sends (any server on the directory).
    auto hold = server->store().HoldJobShared(job.job_id());
    ASSERT_TRUE(hold.ok()) << hold.status();
    SweepResult r = sweeper.SweepOnce(absl::Now() + absl::Hours(1));
    EXPECT_EQ(r.jobs_removed, 0);
    EXPECT_EQ(r.in_use_skipped, 1);
    EXPECT_TRUE(JobOnDisk(*server, job.job_id()));
  }
  EXPECT_EQ(sweeper.SweepOnce(absl::Now() + absl::Hours(1)).jobs_removed, 1);
  // And a download of a deleted job is NOT_FOUND, not a crash or a partial file.
  EXPECT_EQ(c->Download(job.job_id(), "", (dir_ / "x.onnx").string()).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir_ / "x.onnx"));
}

TEST_F(RetentionTest, SizeCapRemovesOldestFirstUntilUnderTheCap) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  const std::string model = Upload(*c, 1);
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 3; ++i) {
    jobs.push_back(RunToEnd(*c, model));
    absl::SleepFor(absl::Milliseconds(20));  // distinct end times
  }
  ArtifactStore& store = server->store();
  const int64_t job_bytes = store.JobBytes(jobs[0].job_id());
  const int64_t model_bytes = store.ModelBytes(model);
  ASSERT_GT(job_bytes, 0);
  const int64_t total = 3 * job_bytes + model_bytes;
  // Room for everything but about one job: the oldest job goes, nothing else.
  RetentionSweeper sweeper(&store, &server->jobs(), nullptr,
                           RetentionPolicy{absl::ZeroDuration(), total - job_bytes / 2, absl::Minutes(5)});
  SweepResult r = sweeper.SweepOnce(absl::Now());
  EXPECT_EQ(r.jobs_removed, 1);
  EXPECT_EQ(r.models_removed, 0);
  EXPECT_FALSE(JobOnDisk(*server, jobs[0].job_id()));
  EXPECT_TRUE(JobOnDisk(*server, jobs[1].job_id()));
  EXPECT_TRUE(JobOnDisk(*server, jobs[2].job_id()));
  EXPECT_LE(r.bytes_after, total - job_bytes / 2);
  // Under the cap: a second sweep removes nothing.
  EXPECT_EQ(sweeper.SweepOnce(absl::Now()).jobs_removed, 0);
}

TEST_F(RetentionTest, ServerSweepsInTheBackgroundAndCountsWhatItRemoved) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerOptions o = Options();
  o.retention = RetentionPolicy{absl::Seconds(1), 0, absl::Milliseconds(50)};
  auto server = Start(o, std::make_shared<FakeEngine>(), registry);
  auto c = Connect(*server);
  v1::Job job = RunToEnd(*c, Upload(*c, 1));
  // The counters move once a removal is complete (after its rename): wait for them.
  const std::string job_removed = "sq_removed_total{kind=\"job\",reason=\"retention\"} 1";
  const std::string model_removed = "sq_removed_total{kind=\"model\",reason=\"retention\"} 1";
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::string text;
  do {
    absl::SleepFor(absl::Milliseconds(50));
    text = prometheus::TextSerializer().Serialize(registry->Collect());
  } while ((text.find(job_removed) == std::string::npos || text.find(model_removed) == std::string::npos) &&
           absl::Now() < deadline);
  EXPECT_FALSE(JobOnDisk(*server, job.job_id()));
  EXPECT_TRUE(server->store().ListModelIds().empty());
  EXPECT_NE(text.find(job_removed), std::string::npos) << text;
  EXPECT_NE(text.find(model_removed), std::string::npos);
  EXPECT_EQ(text.find("sq_retention_sweeps_total 0"), std::string::npos);
}

TEST_F(RetentionTest, DeleteModelRefusesWhileAJobUsesItAndKeepsFinishedArtifacts) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerOptions o = Options();
  o.workers = 1;
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  auto server = Start(o, engine, registry);
  auto c = Connect(*server);
  EXPECT_EQ(c->DeleteModel("nope").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->DeleteModel(std::string(64, 'a')).code(), absl::StatusCode::kNotFound);

  const std::string model = Upload(*c, 1);
  v1::Job job = Submit(*c, model);
  ASSERT_TRUE(engine->WaitStarted(1));
  absl::Status busy = c->DeleteModel(model);
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(busy.message().find(job.job_id()), std::string::npos) << busy;
  engine->Release();
  ASSERT_EQ(c->Watch(job.job_id(), nullptr, absl::Seconds(30))->state(), v1::JOB_STATE_SUCCEEDED);

  ASSERT_TRUE(c->DeleteModel(model).ok());
  EXPECT_FALSE(server->store().HasModel(model));
  EXPECT_EQ(c->DeleteModel(model).code(), absl::StatusCode::kNotFound);
  v1::SubmitJobRequest again;
  again.set_model(model);
  EXPECT_EQ(c->Submit(again).status().code(), absl::StatusCode::kNotFound);
  // The finished job still delivers its artifact.
  ASSERT_TRUE(c->Download(job.job_id(), "", (dir_ / "out.onnx").string()).ok());
  ASSERT_TRUE(c->Delete(job.job_id()).ok());
  const std::string text = prometheus::TextSerializer().Serialize(registry->Collect());
  EXPECT_NE(text.find("sq_removed_total{kind=\"model\",reason=\"request\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("sq_removed_total{kind=\"job\",reason=\"request\"} 1"), std::string::npos);
}

TEST_F(RetentionTest, ListModelsPagesByIdAndShowsEachTenantItsOwn) {
  ServerOptions o = Options();
  o.tenants = {{"alice", "alice-token-0123456789"}, {"bob", "bob-token-0123456789abc"}};
  auto server = Start(o, std::make_shared<FakeEngine>());
  auto alice = Connect(*server, "alice-token-0123456789");
  auto bob = Connect(*server, "bob-token-0123456789abc");
  std::set<std::string> mine;
  for (uint32_t seed = 1; seed <= 5; ++seed) mine.insert(Upload(*alice, seed));
  const std::string bobs = Upload(*bob, 9);
  // Pages of two: every model once, in id order, none of bob's.
  auto listed = alice->ListModels(/*limit=*/0, /*page_size=*/2);
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<std::string> ids;
  for (const auto& m : *listed) {
    ids.push_back(m.model_id());
    EXPECT_EQ(m.files_size(), 1);
    EXPECT_GT(m.size_bytes(), 1000);
    EXPECT_NEAR(absl::ToDoubleSeconds(absl::Now() - absl::FromUnixSeconds(m.last_use_time().seconds())), 0, 60);
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), mine);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(bob->ListModels()->size(), 1u);
  EXPECT_EQ((*bob->ListModels())[0].model_id(), bobs);
  EXPECT_EQ(alice->ListModels(/*limit=*/3)->size(), 3u);
  // A forged token is refused.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer alice-token-0123456789");
  v1::ListModelsRequest req;
  req.set_page_token("bm90LWEtdG9rZW4");
  v1::ListModelsResponse resp;
  auto stub = v1::SqService::NewStub(grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(stub->ListModels(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(RetentionTest, UnderTenantsDeleteModelRemovesAccessThenTheFiles) {
  ServerOptions o = Options();
  o.tenants = {{"alice", "alice-token-0123456789"}, {"bob", "bob-token-0123456789abc"}};
  auto server = Start(o, std::make_shared<FakeEngine>());
  auto alice = Connect(*server, "alice-token-0123456789");
  auto bob = Connect(*server, "bob-token-0123456789abc");
  const std::string model = Upload(*alice, 1);
  EXPECT_EQ(bob->DeleteModel(model).code(), absl::StatusCode::kNotFound);  // not bob's
  ASSERT_EQ(Upload(*bob, 1), model);

  ASSERT_TRUE(alice->DeleteModel(model).ok());
  EXPECT_TRUE(server->store().HasModel(model));  // bob still holds it
  v1::SubmitJobRequest req;
  req.set_model(model);
  EXPECT_EQ(alice->Submit(req).status().code(), absl::StatusCode::kNotFound);
  auto job = bob->Submit(req);
  ASSERT_TRUE(job.ok());
  ASSERT_EQ(bob->Watch(job->job_id(), nullptr, absl::Seconds(30))->state(), v1::JOB_STATE_SUCCEEDED);

  // The last holder: the files go at once.
  ASSERT_TRUE(bob->DeleteModel(model).ok());
  EXPECT_FALSE(server->store().HasModel(model));
  EXPECT_EQ(bob->DeleteModel(model).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sq::server
