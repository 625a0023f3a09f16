// End-to-end tests of the sq.v1 service: a real server in-process on 127.0.0.1 (port 0),
// driven through SqClient / the raw stub. The main path uses the real engine and checks the
// artifact in ONNX Runtime; queueing, cancellation, draining and multi-server cases use a
// FakeEngine that can hold jobs in RUNNING deterministically.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "onnx/onnx_pb.h"
#include "server/artifact_store.h"
#include "server/convert.h"
#include "client/lib/client.h"
#include "proto/resource_names.h"
#include "server/server.h"
#include "server/testing/fake_engine.h"
#include "tests/support/hostile_corpus.h"
#include "tests/support/ort_runner.h"

// ONNX Runtime (used here only to check the artifact) keeps a small one-time allocation
// until exit; LeakSanitizer should not blame the service for it.
extern "C" const char* __lsan_default_suppressions() { return "leak:libonnxruntime.so\n"; }

namespace sq::server {
namespace {
namespace fs = std::filesystem;
using client::SqClient;
using testing::FakeEngine;

// x[1,dim] -> MatMul(W0) -> MatMul(W1) ... -> y[1,dim] (tests/support/model_builder.h).
void WriteTinyModel(const std::string& path, int layers = 2, int dim = 64, uint32_t seed = 1) {
  ASSERT_TRUE(::sq::testing::WriteMatMulChain(path, layers, dim, seed).ok());
}

// Entries below `dir` (0 when it does not exist). The server may be removing some while
// this walks (an abandoned upload's folder): a walk that loses a folder under it starts again.
size_t CountEntries(const fs::path& dir) {
  size_t n = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    n = 0;
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, ec), end;
    while (!ec && it != end) {
      ++n;
      it.increment(ec);
    }
    if (!ec) return n;
    if (!fs::exists(dir)) return 0;
  }
  return n;
}

// Reads a server stream to its end; its final status.
template <typename Message, typename Reader>
grpc::Status Drain(std::unique_ptr<Reader> reader) {
  Message ignored;
  while (reader->Read(&ignored)) {
  }
  return reader->Finish();
}

std::string Slurp(const std::string& path) {
  auto s = ReadFileToString(path);
  return s.ok() ? *s : std::string();
}

class ServerE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sq_e2e_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = (dir_ / "tiny.onnx").string();
    WriteTinyModel(model_);
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
    o.queue_capacity = 8;
    o.default_job_threads = 1;
    o.ort_worker = SQ_ORT_WORKER_PATH;  // verification runs in the worker, as in sq-server
    return o;
  }

  // Opens an UploadModel stream by hand and sends a header declaring one file.
  static std::unique_ptr<grpc::ClientWriter<v1::UploadModelRequest>> BeginRawUpload(
      SqClient& c, grpc::ClientContext* ctx, v1::UploadModelResponse* resp, const std::string& name,
      int64_t size, const std::string& sha256 = "") {
    auto writer = c.stub().UploadModel(ctx, resp);
    v1::UploadModelRequest header;
    auto* f = header.mutable_header()->add_files();
    f->set_name(name);
    f->set_size(size);
    if (!sha256.empty()) f->set_sha256(sha256);
    EXPECT_TRUE(writer->Write(header));
    return writer;
  }
  static bool SendChunk(grpc::ClientWriter<v1::UploadModelRequest>* writer, std::string bytes) {
    v1::UploadModelRequest chunk;
    chunk.set_chunk(std::move(bytes));
    return writer->Write(chunk);
  }

  std::unique_ptr<SqServer> Start(const ServerOptions& o, std::shared_ptr<EnginePort> engine = nullptr) {
    auto s = SqServer::Start(o, nullptr, std::move(engine));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  std::unique_ptr<SqClient> Connect(const SqServer& s, const std::string& token = "") {
    client::ClientOptions o;
    o.target = s.address();
    o.token = token;
    o.unary_timeout = absl::Seconds(20);
    auto c = SqClient::Create(o);
    EXPECT_TRUE(c.ok());
    return std::move(*c);
  }

  v1::Job SubmitOrDie(SqClient& c, const std::string& model_id, const std::string& key = "") {
    v1::SubmitJobRequest req;
    req.set_model(model_id);  // a bare id: SqClient sends "models/<id>"
    req.set_idempotency_key(key);
    auto job = c.Submit(req);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }

  fs::path dir_;
  std::string model_;
};

TEST_F(ServerE2ETest, UploadSubmitWatchDownloadRunsInOrt) {
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);

  int64_t last_done = 0;
  auto up = c->UploadModel(model_, [&](int64_t done, int64_t total) {
    EXPECT_LE(done, total);
    last_done = done;
  });
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_FALSE(up->deduplicated());
  EXPECT_EQ(last_done, static_cast<int64_t>(fs::file_size(model_)));
  EXPECT_EQ(up->files(0).sha256(), *Sha256OfFile(model_));
  EXPECT_EQ(up->name(), "models/" + up->model_id());

  auto info = c->Inspect(up->model_id());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->layers_size(), 2);

  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.mutable_options()->set_bits(4);
  req.mutable_options()->set_reference_kmeans(true);
  auto job = c->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->job_id().size(), 32u);
  EXPECT_EQ(job->name(), "jobs/" + job->job_id());
  EXPECT_EQ(job->model(), up->name());
  EXPECT_TRUE(job->state() == v1::JOB_STATE_QUEUED || job->state() == v1::JOB_STATE_RUNNING);

  std::vector<v1::Job> seen;
  auto final_job = c->Watch(job->job_id(), [&](const v1::Job& j) { seen.push_back(j); },
                            absl::Seconds(45));
  ASSERT_TRUE(final_job.ok()) << final_job.status();
  ASSERT_EQ(final_job->state(), v1::JOB_STATE_SUCCEEDED) << final_job->error().message();
  ASSERT_FALSE(seen.empty());
  for (const v1::Job& j : seen) EXPECT_EQ(j.name(), job->name());
  EXPECT_EQ(final_job->summary().layers_quantized(), 2);
  ASSERT_GE(final_job->artifacts_size(), 1);

  std::string out = (dir_ / "out" / "tiny.q.onnx").string();
  fs::create_directories(dir_ / "out");
  ASSERT_TRUE(c->DownloadAll(*final_job, out).ok());
  EXPECT_EQ(*Sha256OfFile(out), final_job->artifacts(0).sha256());
  EXPECT_FALSE(fs::exists(out + ".partial"));

  ASSERT_TRUE(sq::testing::LoadInOrt(out).ok()) << sq::testing::LoadInOrt(out);
  auto inputs = sq::testing::MakeRandomInputs(model_, 7);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  auto want = sq::testing::RunOrt(model_, *inputs);
  auto got = sq::testing::RunOrt(out, *inputs);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(sq::testing::MaxRelativeError(*got, *want), 0.5);

  auto report = c->Report(job->job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "mm0"));
  // Every engine option travels: the job ran with the paper's k-means.
  EXPECT_TRUE(final_job->options().reference_kmeans());
  EXPECT_TRUE(absl::StrContains(report->json(), "\"kmeans\": \"reference\""));
  EXPECT_FALSE(report->summary().empty());

  // The same model again: recognised from the header's hashes, and by content without them.
  auto again = c->UploadModel(model_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->deduplicated());
  EXPECT_EQ(again->model_id(), up->model_id());
  auto files = SqClient::ModelFiles(model_);
  ASSERT_TRUE(files.ok());
  auto unhashed = c->Upload(*files, nullptr, /*send_hashes=*/false);
  ASSERT_TRUE(unhashed.ok()) << unhashed.status();
  EXPECT_TRUE(unhashed->deduplicated());
  EXPECT_EQ(unhashed->model_id(), up->model_id());
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "tmp"), 0u);
}

// Jobs run ONNX Runtime in the worker process (ServerOptions::ort_worker): a crash inside it
// (the worker kills itself on every run here, SQ_ORT_WORKER_FAULT) is reported in the job's
// verification, and the server serves on; without the fault the next job verifies.
TEST_F(ServerE2ETest, AnOnnxRuntimeCrashIsReportedAndTheServerServesOn) {
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  setenv("SQ_ORT_WORKER_FAULT", "run", 1);
  auto job = c->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = c->Watch(job->job_id(), nullptr, absl::Seconds(45));
  unsetenv("SQ_ORT_WORKER_FAULT");
  ASSERT_TRUE(done.ok()) << done.status();
  // Neither the FP32 model nor the artifact ran: verification is skipped with the reason.
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
  auto report = c->Report(job->job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "ONNX Runtime worker killed by signal 9")) << report->json();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"status\": \"skipped\"")) << report->json();
  auto health = c->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(*health);

  auto again = c->Submit(req);
  ASSERT_TRUE(again.ok()) << again.status();
  done = c->Watch(again->job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
  report = c->Report(again->job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"status\": \"passed\"")) << report->json();
}

TEST_F(ServerE2ETest, VerificationRunsOnUploadedInputsAndIsReported) {
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  // The verification inputs travel as one more file of the upload (as sqctl submit sends them).
  onnx::TensorProto x;
  x.set_name("x");
  x.set_data_type(onnx::TensorProto::FLOAT);
  x.add_dims(1);
  x.add_dims(64);
  for (int i = 0; i < 64; ++i) x.add_float_data(0.01f * static_cast<float>(i % 13) - 0.05f);
  const std::string input = (dir_ / "inputs.pb").string();
  {
    std::ofstream f(input, std::ios::binary);
    ASSERT_TRUE(x.SerializeToOstream(&f));
  }
  auto files = SqClient::ModelFiles(model_);
  ASSERT_TRUE(files.ok());
  files->push_back({input, "inputs.pb"});
  auto up = c->Upload(*files);
  ASSERT_TRUE(up.ok()) << up.status();

  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.mutable_options()->set_verify_input("inputs.pb");
  auto job = c->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = c->Watch(job->job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
  EXPECT_TRUE(done->options().verify());
  EXPECT_EQ(done->options().verify_input(), "inputs.pb");
  auto report = c->Report(job->job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"inputs\": \"file inputs.pb\"")) << report->json();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"status\": \"passed\""));
  EXPECT_TRUE(absl::StrContains(report->summary(), "verification: passed in onnxruntime"));
  EXPECT_FALSE(absl::StrContains(report->json(), (dir_ / "artifacts").string()));

  // Only a file of the upload can be named, and only with verification on.
  for (const char* name : {"missing.pb", "../inputs.pb", "tiny.onnx", "/etc/passwd"}) {
    req.mutable_options()->set_verify_input(name);
    auto bad = c->Submit(req);
    ASSERT_FALSE(bad.ok()) << name;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  req.mutable_options()->set_verify_input("inputs.pb");
  req.mutable_options()->set_verify(false);
  auto off = c->Submit(req);
  EXPECT_EQ(off.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(off.status().message(), "verify"));
}

TEST_F(ServerE2ETest, CalibrationInputsNameFilesOfTheUpload) {
  // A FakeEngine: this is about resolving names at submit, not about calibrating.
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  const std::string sample = (dir_ / "calib0.npy").string();
  std::ofstream(sample) << "not read by the fake engine";
  auto files = SqClient::ModelFiles(model_);
  ASSERT_TRUE(files.ok());
  files->push_back({sample, "calib0.npy"});
  auto up = c->Upload(*files);
  ASSERT_TRUE(up.ok()) << up.status();

  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.mutable_options()->set_activations(v1::ACTIVATION_TYPE_INT8);  // target QDQ implied
  req.mutable_options()->add_calibration_inputs("calib0.npy");
  auto job = c->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->options().target(), v1::TARGET_QDQ);
  ASSERT_EQ(job->options().calibration_inputs_size(), 1);
  EXPECT_EQ(job->options().calibration_inputs(0), "calib0.npy");  // the name, not a path

  for (const char* name : {"missing.npy", "tiny.onnx", "../calib0.npy"}) {
    req.mutable_options()->set_calibration_inputs(0, name);
    auto bad = c->Submit(req);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_TRUE(absl::StrContains(bad.status().message(), "options.calibration_inputs[0]")) << bad.status();
    EXPECT_TRUE(absl::StrContains(bad.status().message(), name)) << bad.status();
  }
  req.mutable_options()->set_calibration_inputs(0, "calib0.npy");
  req.mutable_options()->add_input_ranges("x=1");
  auto range = c->Submit(req);
  EXPECT_EQ(range.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(range.status().message(), "options.input_ranges[0]")) << range.status();
  req.mutable_options()->clear_input_ranges();
  req.mutable_options()->set_target(v1::TARGET_ORT_CPU);
  auto target = c->Submit(req);
  EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(target.status().message(), "target")) << target.status();
}

// A real job: calibration samples uploaded with the model, a full-integer artifact back,
// its report saying where the ranges came from, and the artifact running in ORT.
TEST_F(ServerE2ETest, FullIntegerJobCalibratesOnUploadedSamples) {
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  auto files = SqClient::ModelFiles(model_);
  ASSERT_TRUE(files.ok());
  for (int s = 0; s < 3; ++s) {  // x: [1, 64] float32
    auto in = sq::testing::MakeRandomInputs(model_, 100 + s);
    ASSERT_TRUE(in.ok()) << in.status();
    const std::string path = (dir_ / absl::StrCat("s", s, ".npy")).string();
    std::ofstream(path, std::ios::binary) << sq::testing::NpyF32({1, 64}, (*in)[0].f);
    files->push_back({path, absl::StrCat("s", s, ".npy")});
  }
  auto up = c->Upload(*files);
  ASSERT_TRUE(up.ok()) << up.status();
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.mutable_options()->set_bits(8);
  req.mutable_options()->set_activations(v1::ACTIVATION_TYPE_INT8);
  for (int s = 0; s < 3; ++s) req.mutable_options()->add_calibration_inputs(absl::StrCat("s", s, ".npy"));
  auto job = c->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = c->Watch(job->job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
  auto report = c->Report(job->job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"ranges_from\": \"calibration: 3 samples")) << report->json();
  EXPECT_TRUE(absl::StrContains(report->json(), "\"type\": \"int8\""));
  const std::string out = (dir_ / "fi.onnx").string();
  ASSERT_TRUE(c->DownloadAll(*done, out).ok());
  auto inputs = sq::testing::MakeRandomInputs(model_, 7);
  ASSERT_TRUE(inputs.ok());
  auto want = sq::testing::RunOrt(model_, *inputs);
  auto got = sq::testing::RunOrt(out, *inputs);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status();
  EXPECT_LT(sq::testing::MaxRelativeError(*got, *want), 0.2);
}

TEST(ConvertTest, ActivationOptionsRoundTrip) {
  v1::QuantizeOptions w;
  w.set_activations(v1::ACTIVATION_TYPE_UINT8);
  w.add_calibration_inputs("a.npz");
  w.add_calibration_inputs("b.npy");
  w.set_calibration_method(v1::CALIBRATION_METHOD_MINMAX);
  w.set_calibration_percentile(99.5);
  w.add_input_ranges("x=-1:1");
  w.add_input_ranges("y=0:0.1");
  w.set_split_activations(v1::ACTIVATION_SPLIT_RANGE);
  w.set_scale_type(v1::SCALE_TYPE_FLOAT32);
  w.set_rounding(v1::ROUNDING_NEAREST);
  auto o = ToEngineOptions(w, 1);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->activations, ActivationType::kUint8);
  EXPECT_EQ(o->target, Target::kQdq);
  EXPECT_EQ(o->calibration_inputs, (std::vector<std::string>{"a.npz", "b.npy"}));
  EXPECT_EQ(o->calibration_method, CalibrationMethod::kMinMax);
  EXPECT_DOUBLE_EQ(o->calibration_percentile, 99.5);
  ASSERT_EQ(o->input_ranges.size(), 2u);
  EXPECT_EQ(o->input_ranges[1].hi, 0.1f);
  EXPECT_EQ(o->split_activations, ActivationSplit::kRange);
  EXPECT_EQ(o->scale_type, ScaleType::kFloat32);
  EXPECT_EQ(o->rounding, Rounding::kNearest);
  EXPECT_FALSE(o->quant_aware_boundaries.has_value());
  const v1::QuantizeOptions back = ToWireOptions(*o);
  EXPECT_EQ(back.scale_type(), v1::SCALE_TYPE_FLOAT32);
  EXPECT_EQ(back.rounding(), v1::ROUNDING_NEAREST);
  EXPECT_FALSE(back.has_quant_aware_boundaries());
  EXPECT_EQ(back.activations(), v1::ACTIVATION_TYPE_UINT8);
  EXPECT_EQ(back.calibration_inputs_size(), 2);
  EXPECT_EQ(back.calibration_inputs(1), "b.npy");
  EXPECT_EQ(back.calibration_method(), v1::CALIBRATION_METHOD_MINMAX);
  EXPECT_DOUBLE_EQ(back.calibration_percentile(), 99.5);
  ASSERT_EQ(back.input_ranges_size(), 2);
  EXPECT_EQ(back.input_ranges(0), "x=-1:1");
  EXPECT_EQ(back.input_ranges(1), "y=0:0.1");
  EXPECT_EQ(back.split_activations(), v1::ACTIVATION_SPLIT_RANGE);
  auto again = ToEngineOptions(back, 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->input_ranges[1].hi, o->input_ranges[1].hi);

  // Defaults: off, percentile 99.99; unknown enum values and bad ranges name the field.
  const v1::QuantizeOptions d = ToWireOptions(QuantizeOptions());
  EXPECT_EQ(d.scale_type(), v1::SCALE_TYPE_AUTO);
  EXPECT_EQ(d.rounding(), v1::ROUNDING_BALANCED);
  EXPECT_EQ(d.activations(), v1::ACTIVATION_TYPE_UNSPECIFIED);
  EXPECT_EQ(d.calibration_method(), v1::CALIBRATION_METHOD_PERCENTILE);
  EXPECT_DOUBLE_EQ(d.calibration_percentile(), 99.99);
  EXPECT_EQ(d.split_activations(), v1::ACTIVATION_SPLIT_UNSPECIFIED);
  v1::QuantizeOptions bad;
  bad.set_activations(static_cast<v1::ActivationType>(9));
  EXPECT_TRUE(absl::StrContains(ToEngineOptions(bad, 1).status().message(), "options.activations"));
  bad.Clear();
  bad.set_rounding(static_cast<v1::Rounding>(7));
  EXPECT_TRUE(absl::StrContains(ToEngineOptions(bad, 1).status().message(), "options.rounding"));
  bad.Clear();
  bad.add_input_ranges("x");
  EXPECT_TRUE(absl::StrContains(ToEngineOptions(bad, 1).status().message(), "options.input_ranges[0]"));
  bad.Clear();
  bad.add_calibration_inputs("a.npz");  // nothing reads them with activations off
  EXPECT_TRUE(absl::StrContains(ToEngineOptions(bad, 1).status().message(), "calibration_inputs"));
}

TEST_F(ServerE2ETest, ExternalDataFilesTravelWithTheModel) {
  // A model whose weights live in an external file: the client finds and sends it.
  onnx::ModelProto m;
  {
    std::ifstream in(model_, std::ios::binary);
    ASSERT_TRUE(m.ParseFromIstream(&in));
  }
  std::ofstream data(dir_ / "tiny.weights", std::ios::binary);
  int64_t offset = 0;
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    std::string bytes = t.raw_data().empty()
                            ? std::string(reinterpret_cast<const char*>(t.float_data().data()),
                                          t.float_data_size() * 4)
                            : t.raw_data();
    data.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    t.clear_float_data();
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    auto add = [&](const char* k, const std::string& v) {
      auto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add("location", "tiny.weights");
    add("offset", std::to_string(offset));
    add("length", std::to_string(bytes.size()));
    offset += static_cast<int64_t>(bytes.size());
  }
  data.close();
  std::string ext_model = (dir_ / "tiny_ext.onnx").string();
  {
    std::ofstream out(ext_model, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
  }
  auto files = SqClient::ModelFiles(ext_model);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[1].name, "tiny.weights");

  auto server = Start(Options());
  auto c = Connect(*server);
  auto up = c->UploadModel(ext_model);
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_EQ(up->files_size(), 2);
  auto job = SubmitOrDie(*c, up->model_id());
  auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
}

TEST_F(ServerE2ETest, BadModelFailsTheJobWithTheEnginesMessage) {
  std::string bad = (dir_ / "bad.onnx").string();
  std::ofstream(bad) << "this is not an onnx model";
  auto server = Start(Options());
  auto c = Connect(*server);
  auto up = c->Upload({{bad, "bad.onnx"}});
  ASSERT_TRUE(up.ok()) << up.status();
  auto job = SubmitOrDie(*c, up->model_id());
  auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(30));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(done->error().message().empty());
  // Still serving.
  auto health = c->Health();
  ASSERT_TRUE(health.ok());
  EXPECT_TRUE(*health);
  EXPECT_EQ(c->Report(job.job_id()).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Names are bytes an exporter chose: invalid UTF-8 in them once reached a proto string
// and a JSON dump, and the uncaught exception killed the server with every job on it.
TEST_F(ServerE2ETest, NonUtf8NamesAreEscapedAndTheServerKeepsServing) {
  onnx::ModelProto m;
  {
    std::ifstream in(model_, std::ios::binary);
    ASSERT_TRUE(m.ParseFromIstream(&in));
  }
  const std::string bad_name = "mm\xff\xfe\xc3(";
  m.mutable_graph()->mutable_node(0)->set_name(bad_name);
  m.mutable_graph()->mutable_initializer(0)->set_name("w\x80");
  m.mutable_graph()->mutable_node(0)->set_input(1, "w\x80");
  std::string path = (dir_ / "names.onnx").string();
  {
    std::ofstream out(path, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
  }
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  auto up = c->UploadModel(path);
  ASSERT_TRUE(up.ok()) << up.status();
  auto info = c->Inspect(up->model_id());
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->layers_size(), 2);
  EXPECT_EQ(info->layers(0).name(), "mm\\xFF\\xFE\\xC3(");
  auto job = SubmitOrDie(*c, up->model_id());
  auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
  auto report = c->Report(job.job_id());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(absl::StrContains(report->json(), "mm\\\\xFF\\\\xFE\\\\xC3("));
  EXPECT_TRUE(absl::StrContains(report->json(), "w\\\\x80"));
  // The server lives on and runs the next job.
  auto up2 = c->UploadModel(model_);
  ASSERT_TRUE(up2.ok());
  auto job2 = SubmitOrDie(*c, up2->model_id());
  auto done2 = c->Watch(job2.job_id(), nullptr, absl::Seconds(45));
  ASSERT_TRUE(done2.ok());
  EXPECT_EQ(done2->state(), v1::JOB_STATE_SUCCEEDED);
}

// Crashers found by hand: a Conv weight of rank 200 (libonnx's Conv shape inference
// read out of bounds) and an external-data offset whose sum with the length overflowed.
// Each job fails with INVALID_ARGUMENT naming the problem; the server serves on.
TEST_F(ServerE2ETest, HostileModelsFailTheirJobAndTheServerServesOn) {
  std::vector<std::pair<std::string, std::vector<std::string>>> cases;  // (what, files)
  {
    onnx::ModelProto m;
    m.set_ir_version(8);
    m.add_opset_import()->set_version(13);
    auto* g = m.mutable_graph();
    auto* x = g->add_input();
    x->set_name("x");
    x->mutable_type()->mutable_tensor_type()->set_elem_type(1);
    auto* w = g->add_initializer();
    w->set_name("w");
    w->set_data_type(1);
    for (int i = 0; i < 200; ++i) w->add_dims(1);
    w->add_float_data(1.0f);
    auto* n = g->add_node();
    n->set_op_type("Conv");
    n->set_name("conv_rank200");
    n->add_input("x");
    n->add_input("w");
    n->add_output("y");
    g->add_output()->set_name("y");
    std::string p = (dir_ / "rank200.onnx").string();
    std::ofstream out(p, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
    cases.push_back({"rank 200", {p}});
  }
  // The test model with its weight moved to external data at (location, offset, length).
  auto external = [&](const std::string& file, const char* location, const char* offset) {
    onnx::ModelProto m;
    std::ifstream in(model_, std::ios::binary);
    EXPECT_TRUE(m.ParseFromIstream(&in));
    auto* t = m.mutable_graph()->mutable_initializer(0);
    t->clear_float_data();
    t->set_data_location(onnx::TensorProto::EXTERNAL);
    for (auto [k, v] : {std::pair<const char*, const char*>{"location", location},
                        {"offset", offset}, {"length", "16384"}}) {
      auto* e = t->add_external_data();
      e->set_key(k);
      e->set_value(v);
    }
    std::string p = (dir_ / file).string();
    std::ofstream out(p, std::ios::binary);
    EXPECT_TRUE(m.SerializeToOstream(&out));
    return p;
  };
  std::ofstream(dir_ / "w.bin", std::ios::binary) << std::string(64 * 64 * 4, '\0');
  cases.push_back({"offset overflow",
                   {external("overflow.onnx", "w.bin", "9223372036854775798"), (dir_ / "w.bin").string()}});
  // External data the upload did not bring: the engine's message names the file it looked
  // for, which must not reveal where the server keeps it.
  cases.push_back({"missing external data", {external("absent.onnx", "absent.bin", "0")}});
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  for (const auto& [what, paths] : cases) {
    std::vector<client::LocalFile> files;
    for (const auto& p : paths) files.push_back({p, fs::path(p).filename().string()});
    auto up = c->Upload(files);
    ASSERT_TRUE(up.ok()) << what << ": " << up.status();
    auto job = SubmitOrDie(*c, up->model_id());
    auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(30));
    ASSERT_TRUE(done.ok()) << what << ": " << done.status();
    EXPECT_EQ(done->state(), v1::JOB_STATE_FAILED) << what;
    const auto expected = what == "missing external data" ? absl::StatusCode::kNotFound
                                                          : absl::StatusCode::kInvalidArgument;
    EXPECT_EQ(done->error().code(), static_cast<int>(expected)) << what << ": " << done->error().message();
    // The server's directories stay its own.
    EXPECT_FALSE(absl::StrContains(done->error().message(), Options().artifact_dir))
        << what << ": " << done->error().message();
    EXPECT_FALSE(absl::StrContains(done->error().message(), "/models/")) << done->error().message();
    auto health = c->Health();
    ASSERT_TRUE(health.ok()) << what;
    EXPECT_TRUE(*health);
  }
  EXPECT_TRUE(absl::StrContains(c->Inspect(c->Upload({{cases[0].second[0], "rank200.onnx"}})->model_id())
                                    .status()
                                    .message(),
                                "rank 200"));
}

// The hostile corpus (tests/support/hostile_corpus.h) through the RPCs: every case is
// refused at upload or fails its job with INVALID_ARGUMENT / NOT_FOUND and a message (the
// valid ones succeed), nothing is published for a failed job, the server stays healthy
// throughout, and a good model still succeeds at the end.
TEST_F(ServerE2ETest, HostileCorpusThroughTheRpcs) {
  const std::vector<sq::testing::HostileCase> cases = sq::testing::WriteHostileCorpus((dir_ / "corpus").string());
  ASSERT_GE(cases.size(), 60u);
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  int refused_at_upload = 0, failed_jobs = 0, succeeded = 0;
  for (const sq::testing::HostileCase& hc : cases) {
    std::vector<client::LocalFile> files;
    for (const auto& p : hc.files) files.push_back({p, fs::path(p).filename().string()});
    auto up = c->Upload(files);
    if (!up.ok()) {
      ++refused_at_upload;
      EXPECT_NE(hc.expect, absl::StatusCode::kOk) << hc.name << ": " << up.status();
      EXPECT_TRUE(up.status().code() == absl::StatusCode::kInvalidArgument ||
                  up.status().code() == absl::StatusCode::kNotFound)
          << hc.name << ": " << up.status();
      EXPECT_FALSE(up.status().message().empty()) << hc.name;
    } else {
      auto job = SubmitOrDie(*c, up->model_id());
      auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(60));
      ASSERT_TRUE(done.ok()) << hc.name << ": " << done.status();
      if (hc.expect == absl::StatusCode::kOk) {
        ++succeeded;
        EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << hc.name << ": " << done->error().message();
      } else {
        ++failed_jobs;
        EXPECT_EQ(done->state(), v1::JOB_STATE_FAILED) << hc.name;
        const int code = done->error().code();
        // The server has only the files the upload brought: a file the model names but the
        // upload left out is NOT_FOUND there.
        EXPECT_TRUE(code == static_cast<int>(absl::StatusCode::kInvalidArgument) ||
                    code == static_cast<int>(absl::StatusCode::kNotFound))
            << hc.name << ": " << code << " " << done->error().message();
        EXPECT_FALSE(done->error().message().empty()) << hc.name;
        EXPECT_EQ(done->artifacts_size(), 0) << hc.name;
        EXPECT_FALSE(absl::StrContains(done->error().message(), Options().artifact_dir)) << hc.name;
      }
    }
    auto health = c->Health();
    ASSERT_TRUE(health.ok()) << hc.name;
    ASSERT_TRUE(*health) << hc.name;
  }
  std::printf("hostile corpus over RPC: %zu cases, %d refused at upload, %d jobs failed, %d succeeded\n",
              cases.size(), refused_at_upload, failed_jobs, succeeded);
  EXPECT_GE(succeeded, 3);
  EXPECT_GE(refused_at_upload + failed_jobs, 55);
  auto up = c->Upload({{model_, "good.onnx"}});
  ASSERT_TRUE(up.ok()) << up.status();
  auto job = SubmitOrDie(*c, up->model_id());
  auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(60));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error().message();
}

// sqctl submit uploads the files a model names; it must refuse the same models local
// `quantize` refuses, before reading anything: a symlink out of the model's folder.
TEST_F(ServerE2ETest, ClientRefusesExternalDataOutsideTheModelsFolder) {
  onnx::ModelProto m;
  {
    std::ifstream in(model_, std::ios::binary);
    ASSERT_TRUE(m.ParseFromIstream(&in));
  }
  auto* t = m.mutable_graph()->mutable_initializer(0);
  t->clear_float_data();
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* e = t->add_external_data();
  e->set_key("location");
  e->set_value("passwd");
  ASSERT_EQ(::symlink("/etc/passwd", (dir_ / "passwd").c_str()), 0);
  std::string p = (dir_ / "symlink.onnx").string();
  {
    std::ofstream out(p, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
  }
  auto files = SqClient::ModelFiles(p);
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(files.status().message(), "outside the model's directory"))
      << files.status();
  e->set_value("../../etc/passwd");
  {
    std::ofstream out(p, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
  }
  EXPECT_EQ(SqClient::ModelFiles(p).status().code(), absl::StatusCode::kInvalidArgument);
  e->set_value("/etc/passwd");
  {
    std::ofstream out(p, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&out));
  }
  EXPECT_EQ(SqClient::ModelFiles(p).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerE2ETest, BadOptionsAndUnknownIdsGetPreciseCodes) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  req.mutable_options()->set_bits(13);
  EXPECT_EQ(c->Submit(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.mutable_options()->clear_bits();
  req.mutable_options()->add_layer_overrides("(=bits:4");
  auto bad_override = c->Submit(req);
  EXPECT_EQ(bad_override.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad_override.status().message(), "layer_overrides[0]"))
      << bad_override.status();
  req.mutable_options()->clear_layer_overrides();
  // A bad exclusion regex is refused at submit, naming the field (it used to fail the job).
  req.mutable_options()->add_exclude_name_patterns("(");
  auto bad_exclude = c->Submit(req);
  EXPECT_EQ(bad_exclude.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad_exclude.status().message(), "exclude_name_patterns[0]"))
      << bad_exclude.status();
  req.mutable_options()->clear_exclude_name_patterns();
  req.mutable_options()->set_split_mode(static_cast<v1::SplitMode>(42));
  EXPECT_EQ(c->Submit(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.mutable_options()->clear_split_mode();
  // A target with an FP32 format, or a form the target cannot write: both fields named.
  req.mutable_options()->set_target(v1::TARGET_PORTABLE);
  req.mutable_options()->set_format(v1::OUTPUT_FORMAT_FAKE);
  auto conflict = c->Submit(req);
  EXPECT_EQ(conflict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(conflict.status().message(), "target portable and format fake"))
      << conflict.status();
  req.mutable_options()->clear_format();
  req.mutable_options()->set_form(v1::SPLIT_FORM_OUTER8);
  auto outer8 = c->Submit(req);
  EXPECT_EQ(outer8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(outer8.status().message(), "outer8")) << outer8.status();
  req.mutable_options()->clear_form();
  req.mutable_options()->clear_target();
  req.mutable_options()->set_bits(13);
  req.set_model(v1::ModelName(std::string(64, 'a')));
  req.mutable_options()->clear_bits();
  EXPECT_EQ(c->Submit(req).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Get(std::string(32, 'a')).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Get("../../etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  // In a well-formed name the id still meets the checks a bare id always met.
  EXPECT_EQ(c->Get("jobs/..").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->Get("jobs/" + std::string(32, 'a')).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Inspect("nope").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerE2ETest, FileNamesWithControlCharactersAreRefused) {
  // Found by fuzzing the upload stream: a newline in a file name forged manifest lines.
  auto server = Start(Options());
  ASSERT_TRUE(server);
  auto c = Connect(*server);
  auto files = SqClient::ModelFiles(model_);
  ASSERT_TRUE(files.ok());
  files->push_back({model_, "w.bin\n" + std::string(64, '0') + " 1 forged.bin"});
  auto up = c->Upload(*files);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(up.status().message(), "bad character in file name"));
  EXPECT_TRUE(c->UploadModel(model_).ok());  // and the server serves on
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "tmp"), 0u);
}

TEST_F(ServerE2ETest, ListJobsPagesNeverRepeatOrSkipWhileJobsArrive) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  std::vector<std::string> ids;
  for (int k = 0; k < 7; ++k) ids.push_back(SubmitOrDie(*c, up->model_id()).job_id());
  auto page = [&](int size, const std::string& token) {
    grpc::ClientContext ctx;
    c->Prepare(&ctx, absl::Seconds(10));
    v1::ListJobsRequest req;
    req.set_page_size(size);
    req.set_page_token(token);
    v1::ListJobsResponse resp;
    EXPECT_TRUE(c->stub().ListJobs(&ctx, req, &resp).ok());
    return resp;
  };
  v1::ListJobsResponse first = page(3, "");
  ASSERT_EQ(first.jobs_size(), 3);
  ASSERT_FALSE(first.next_page_token().empty());
  for (int k = 0; k < 2; ++k) SubmitOrDie(*c, up->model_id());  // newer jobs arrive meanwhile
  std::vector<std::string> seen;
  for (const auto& j : first.jobs()) seen.push_back(j.job_id());
  for (std::string token = first.next_page_token(); !token.empty();) {
    v1::ListJobsResponse next = page(3, token);
    for (const auto& j : next.jobs()) seen.push_back(j.job_id());
    token = next.next_page_token();
  }
  // The original 7, newest first, each once: the 2 newer ones belong before page one.
  std::vector<std::string> want(ids.rbegin(), ids.rend());
  std::vector<std::string> sorted_seen = seen, sorted_want = want;
  std::sort(sorted_seen.begin(), sorted_seen.end());
  std::sort(sorted_want.begin(), sorted_want.end());
  EXPECT_EQ(sorted_seen, sorted_want);
  EXPECT_EQ(seen, want);  // and in submission order, newest first (creation times to the ns)
  // The client follows pages; a limit stops early; a forged token is refused.
  auto all = c->List({}, 0, 2);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 9u);
  auto four = c->List({}, 4, 3);
  ASSERT_TRUE(four.ok());
  EXPECT_EQ(four->size(), 4u);
  grpc::ClientContext ctx;
  c->Prepare(&ctx, absl::Seconds(10));
  v1::ListJobsRequest bad;
  bad.set_page_token("not-a-token");
  v1::ListJobsResponse resp;
  EXPECT_EQ(c->stub().ListJobs(&ctx, bad, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerE2ETest, RequestsNameTheirTargetsByResourceName) {
  // Straight to the stub: SqClient would turn a bare id into a name.
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(up->name(), v1::ModelName(up->model_id()));
  // An INVALID_ARGUMENT whose message names the field and the expected form.
  auto expect_refused = [](const grpc::Status& st, const std::string& message) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_EQ(st.error_message(), message);
  };
  auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext ctx;
    c->Prepare(&ctx, absl::Seconds(10));
    return (c->stub().*method)(&ctx, request, response);
  };

  v1::SubmitJobRequest submit;
  v1::SubmitJobResponse submitted;
  submit.set_model(up->model_id());
  expect_refused(call(&v1::SqService::Stub::SubmitJob, submit, &submitted),
                 "model must be \"models/{model}\", got \"" + up->model_id() + "\"");
  submit.set_model("jobs/" + up->model_id());
  expect_refused(call(&v1::SqService::Stub::SubmitJob, submit, &submitted),
                 "model must be \"models/{model}\", got \"jobs/" + up->model_id() + "\"");
  submit.set_model(up->name());
  ASSERT_TRUE(call(&v1::SqService::Stub::SubmitJob, submit, &submitted).ok());
  const v1::Job& job = submitted.job();
  EXPECT_EQ(job.name(), "jobs/" + job.job_id());
  EXPECT_EQ(job.model(), up->name());
  ASSERT_EQ(c->Watch(job.name(), nullptr, absl::Seconds(20))->state(), v1::JOB_STATE_SUCCEEDED);

  v1::GetJobRequest get;
  v1::GetJobResponse got;
  get.set_name(job.job_id());  // a bare id
  expect_refused(call(&v1::SqService::Stub::GetJob, get, &got),
                 "name must be \"jobs/{job}\", got \"" + job.job_id() + "\"");
  get.set_name("models/" + job.job_id());  // the wrong collection
  expect_refused(call(&v1::SqService::Stub::GetJob, get, &got),
                 "name must be \"jobs/{job}\", got \"models/" + job.job_id() + "\"");
  for (const std::string& bad : {std::string("jobs/"), "jobs/" + job.job_id() + "/x", std::string()}) {
    get.set_name(bad);
    EXPECT_EQ(call(&v1::SqService::Stub::GetJob, get, &got).error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << bad;
  }
  get.set_name(job.name());
  ASSERT_TRUE(call(&v1::SqService::Stub::GetJob, get, &got).ok());
  EXPECT_EQ(got.job().name(), job.name());
  EXPECT_EQ(got.job().model(), up->name());

  // Every other request naming a job or a model parses it the same way.
  v1::GetReportRequest report;
  v1::GetReportResponse report_out;
  report.set_name(job.job_id());
  expect_refused(call(&v1::SqService::Stub::GetReport, report, &report_out),
                 "name must be \"jobs/{job}\", got \"" + job.job_id() + "\"");
  v1::CancelJobRequest cancel;
  v1::CancelJobResponse cancel_out;
  cancel.set_name(up->name());
  EXPECT_EQ(call(&v1::SqService::Stub::CancelJob, cancel, &cancel_out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::DeleteJobRequest del;
  v1::DeleteJobResponse del_out;
  del.set_name(job.job_id());
  EXPECT_EQ(call(&v1::SqService::Stub::DeleteJob, del, &del_out).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::InspectModelRequest inspect;
  v1::InspectModelResponse inspect_out;
  inspect.set_name(up->model_id());
  expect_refused(call(&v1::SqService::Stub::InspectModel, inspect, &inspect_out),
                 "name must be \"models/{model}\", got \"" + up->model_id() + "\"");
  v1::DeleteModelRequest del_model;
  v1::DeleteModelResponse del_model_out;
  del_model.set_name(job.name());
  EXPECT_EQ(call(&v1::SqService::Stub::DeleteModel, del_model, &del_model_out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    c->Prepare(&ctx, absl::Seconds(10));
    v1::WatchJobRequest watch;
    watch.set_name(job.job_id());
    expect_refused(Drain<v1::WatchJobResponse>(c->stub().WatchJob(&ctx, watch)),
                   "name must be \"jobs/{job}\", got \"" + job.job_id() + "\"");
  }
  {
    grpc::ClientContext ctx;
    c->Prepare(&ctx, absl::Seconds(10));
    v1::DownloadArtifactRequest download;
    download.set_job(job.job_id());
    expect_refused(Drain<v1::DownloadArtifactResponse>(c->stub().DownloadArtifact(&ctx, download)),
                   "job must be \"jobs/{job}\", got \"" + job.job_id() + "\"");
  }
  {
    grpc::ClientContext ctx;
    c->Prepare(&ctx, absl::Seconds(10));
    v1::DownloadArtifactRequest download;
    download.set_job(job.name());
    auto reader = c->stub().DownloadArtifact(&ctx, download);
    v1::DownloadArtifactResponse piece;
    ASSERT_TRUE(reader->Read(&piece));
    ASSERT_GE(got.job().artifacts_size(), 1);  // the job as GetJob read it, SUCCEEDED
    EXPECT_EQ(piece.file().name(), got.job().artifacts(0).name());
    while (reader->Read(&piece)) {
    }
    EXPECT_TRUE(reader->Finish().ok());
  }

  // Lists carry the names too.
  auto jobs = c->List();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].name(), job.name());
  EXPECT_EQ((*jobs)[0].model(), up->name());
  auto models = c->ListModels();
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].name(), up->name());

  // The names work where ids did: the same calls through names succeed.
  report.set_name(job.name());
  EXPECT_TRUE(call(&v1::SqService::Stub::GetReport, report, &report_out).ok());
  del.set_name(job.name());
  EXPECT_TRUE(call(&v1::SqService::Stub::DeleteJob, del, &del_out).ok());
  del_model.set_name(up->name());
  EXPECT_TRUE(call(&v1::SqService::Stub::DeleteModel, del_model, &del_model_out).ok());
}

TEST_F(ServerE2ETest, HashMismatchIsInvalidArgument) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  grpc::ClientContext ctx;
  c->Prepare(&ctx, absl::Seconds(10));
  v1::UploadModelResponse resp;
  auto writer = BeginRawUpload(*c, &ctx, &resp, "m.onnx", 4, Sha256Hex("abcd"));
  SendChunk(writer.get(), "abce");
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(st.error_message(), "sha256 mismatch")) << st.error_message();
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "models"), 0u);
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "tmp"), 0u);
}

TEST_F(ServerE2ETest, OversizedUploadIsResourceExhaustedWithAClearMessage) {
  ServerOptions o = Options();
  o.max_upload_bytes = 1000;
  auto server = Start(o, std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  EXPECT_EQ(up.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(up.status().message(), "exceeds this server's limit of 1000 bytes"))
      << up.status();
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "models"), 0u);
}

TEST_F(ServerE2ETest, ClientDisconnectingMidUploadLeavesNothingBehind) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  grpc::ClientContext ctx;
  c->Prepare(&ctx, absl::ZeroDuration());
  v1::UploadModelResponse resp;
  auto writer = BeginRawUpload(*c, &ctx, &resp, "big.onnx", 64 << 20);
  ASSERT_TRUE(SendChunk(writer.get(), std::string(256 << 10, 'x')));
  // Wait until the server has the partial upload on disk, then vanish.
  fs::path tmp = dir_ / "artifacts" / "tmp";
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (CountEntries(tmp) == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_GT(CountEntries(tmp), 0u);
  ctx.TryCancel();
  writer->Finish();
  deadline = absl::Now() + absl::Seconds(10);
  while (CountEntries(tmp) != 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(CountEntries(tmp), 0u);
  EXPECT_EQ(CountEntries(dir_ / "artifacts" / "models"), 0u);
}

// The server stores an upload on a writer thread while it receives the next chunks, at most
// upload_buffer_bytes ahead. With a buffer smaller than one chunk every read waits for the
// writer (pause and resume on each chunk): the bytes still all arrive, in order, and a
// failure found by the writer (more bytes than declared) while reading is paused or while a
// read is outstanding ends the call with its message and leaves nothing behind.
TEST_F(ServerE2ETest, UploadBufferSmallerThanAChunkStillStoresEveryByteInOrder) {
  for (int64_t buffer : {int64_t{1}, int64_t{3000}, int64_t{32} << 20}) {
    SCOPED_TRACE(buffer);
    ServerOptions o = Options();
    o.upload_buffer_bytes = buffer;
    auto server = Start(o, std::make_shared<FakeEngine>());
    auto c = Connect(*server);
    std::string data;
    for (int i = 0; i < 100000; ++i) data.push_back(static_cast<char>('a' + (i * 7919) % 26));
    {
      grpc::ClientContext ctx;
      c->Prepare(&ctx, absl::Seconds(20));
      v1::UploadModelResponse resp;
      auto writer = BeginRawUpload(*c, &ctx, &resp, "m.onnx", static_cast<int64_t>(data.size()));
      for (size_t at = 0; at < data.size(); at += 1000) ASSERT_TRUE(SendChunk(writer.get(), data.substr(at, 1000)));
      writer->WritesDone();
      grpc::Status st = writer->Finish();
      ASSERT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(resp.bytes_received(), static_cast<int64_t>(data.size()));
      ASSERT_EQ(resp.files_size(), 1);
      EXPECT_EQ(resp.files(0).sha256(), Sha256Hex(data));
    }
    const size_t stored = CountEntries(dir_ / "artifacts" / "models");
    // Too many bytes: the writer refuses the chunk past the declared size, whether the
    // reader waits for it (small buffers) or has a read outstanding (the large one).
    {
      grpc::ClientContext ctx;
      c->Prepare(&ctx, absl::Seconds(20));
      v1::UploadModelResponse resp;
      auto writer = BeginRawUpload(*c, &ctx, &resp, "short.onnx", 1500);
      for (int i = 0; i < 20; ++i) {
        if (!SendChunk(writer.get(), std::string(1000, 'y'))) break;  // the server has answered
      }
      writer->WritesDone();
      grpc::Status st = writer->Finish();
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_TRUE(absl::StrContains(st.error_message(), "more bytes than the 1500 declared")) << st.error_message();
    }
    fs::path tmp = dir_ / "artifacts" / "tmp";
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (CountEntries(tmp) != 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    EXPECT_EQ(CountEntries(tmp), 0u);
    EXPECT_EQ(CountEntries(dir_ / "artifacts" / "models"), stored);  // the refused upload added nothing
    server.reset();
    fs::remove_all(dir_ / "artifacts");
  }
}

TEST_F(ServerE2ETest, BearerTokenIsRequiredExceptForHealth) {
  ServerOptions o = Options();
  o.auth_token = "s3cret-token";
  auto server = Start(o, std::make_shared<FakeEngine>());
  auto none = Connect(*server);
  auto wrong = Connect(*server, "s3cret-tokex");
  auto right = Connect(*server, "s3cret-token");
  EXPECT_EQ(none->List().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong->List().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong->UploadModel(model_).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong->Watch(std::string(32, 'a')).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong->Download(std::string(32, 'a'), "", (dir_ / "x").string()).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(right->List().ok());
  EXPECT_TRUE(right->UploadModel(model_).ok());
  auto health = none->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(*health);
  // By service name too (grpc_health_probe -service, Kubernetes grpc probes with a service).
  auto by_name = none->Health("sq.v1.SqService");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_TRUE(*by_name);
  EXPECT_EQ(none->Health("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServerE2ETest, EachTenantSeesAndTouchesOnlyItsOwnJobsAndModels) {
  ServerOptions o = Options();
  o.tenants = {{"alice", "alice-token-0123456789"}, {"bob", "bob-token-0123456789abc"}};
  auto server = Start(o, std::make_shared<FakeEngine>());
  ASSERT_TRUE(server);
  auto alice = Connect(*server, "alice-token-0123456789");
  auto bob = Connect(*server, "bob-token-0123456789abc");
  EXPECT_EQ(Connect(*server)->List().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Connect(*server, "alice-token-012345678X")->List().status().code(),
            absl::StatusCode::kUnauthenticated);

  auto up = alice->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  v1::Job job = SubmitOrDie(*alice, up->model_id(), "key-1");
  EXPECT_EQ(job.owner(), "alice");
  auto done = alice->Watch(job.job_id(), nullptr, absl::Seconds(30));
  ASSERT_TRUE(done.ok() && done->state() == v1::JOB_STATE_SUCCEEDED);
  const std::string id = job.job_id();

  // Bob holds alice's ids and can do nothing with them: every answer is "not found".
  const auto kNotFound = absl::StatusCode::kNotFound;
  EXPECT_EQ(bob->Get(id).status().code(), kNotFound);
  EXPECT_EQ(bob->Watch(id).status().code(), kNotFound);
  EXPECT_EQ(bob->Cancel(id).status().code(), kNotFound);
  EXPECT_EQ(bob->Delete(id).code(), kNotFound);
  EXPECT_EQ(bob->Report(id).status().code(), kNotFound);
  EXPECT_EQ(bob->Download(id, "", (dir_ / "stolen.onnx").string()).code(), kNotFound);
  EXPECT_FALSE(fs::exists(dir_ / "stolen.onnx"));
  EXPECT_EQ(bob->Inspect(up->model_id()).status().code(), kNotFound);
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  EXPECT_EQ(bob->Submit(req).status().code(), kNotFound);
  auto bob_list = bob->List();
  ASSERT_TRUE(bob_list.ok());
  EXPECT_TRUE(bob_list->empty());

  // Bob uploads the same files: not "deduplicated" (that would tell him alice has them), and
  // now the model is his to use; his idempotency key is his own.
  auto bob_up = bob->UploadModel(model_);
  ASSERT_TRUE(bob_up.ok()) << bob_up.status();
  EXPECT_FALSE(bob_up->deduplicated());
  EXPECT_EQ(bob_up->model_id(), up->model_id());
  v1::Job bob_job = SubmitOrDie(*bob, up->model_id(), "key-1");
  EXPECT_NE(bob_job.job_id(), id);
  EXPECT_EQ(bob_job.owner(), "bob");
  auto again = alice->UploadModel(model_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->deduplicated());  // alice had uploaded it herself

  auto alice_list = alice->List();
  ASSERT_TRUE(alice_list.ok());
  ASSERT_EQ(alice_list->size(), 1u);
  EXPECT_EQ((*alice_list)[0].job_id(), id);
  EXPECT_EQ(alice->Get(bob_job.job_id()).status().code(), kNotFound);
  EXPECT_TRUE(alice->Report(id).ok());
  EXPECT_TRUE(alice->Delete(id).ok());
}

TEST_F(ServerE2ETest, CancelStopsRunningAndQueuedJobs) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  ServerOptions o = Options();
  o.workers = 1;
  auto server = Start(o, engine);
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job running = SubmitOrDie(*c, up->model_id());
  ASSERT_TRUE(engine->WaitStarted(1));
  v1::Job queued = SubmitOrDie(*c, up->model_id());

  auto q = c->Cancel(queued.job_id());
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->state(), v1::JOB_STATE_CANCELLED);  // at once

  auto r = c->Cancel(running.job_id());
  ASSERT_TRUE(r.ok());
  auto done = c->Watch(running.job_id(), nullptr, absl::Seconds(20));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(c->Download(running.job_id(), "", (dir_ / "x.onnx").string()).code(),
            absl::StatusCode::kFailedPrecondition);
  // Cancelling again is harmless; a finished job can be deleted.
  EXPECT_EQ(c->Cancel(running.job_id())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(c->Delete(running.job_id()).ok());
  EXPECT_EQ(c->Get(running.job_id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->started(), 1);  // the queued job never ran
}

TEST_F(ServerE2ETest, FullQueueIsResourceExhausted) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  ServerOptions o = Options();
  o.workers = 1;
  o.queue_capacity = 1;
  auto server = Start(o, engine);
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job a = SubmitOrDie(*c, up->model_id());
  ASSERT_TRUE(engine->WaitStarted(1));
  v1::Job b = SubmitOrDie(*c, up->model_id());
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  auto full = c->Submit(req);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << full.status();
  EXPECT_EQ(c->Delete(a.job_id()).code(), absl::StatusCode::kFailedPrecondition);  // running
  engine->Release();
  EXPECT_EQ(c->Watch(a.job_id(), nullptr, absl::Seconds(20))->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(c->Watch(b.job_id(), nullptr, absl::Seconds(20))->state(), v1::JOB_STATE_SUCCEEDED);
  auto list = c->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);  // the refused job left no trace
}

TEST_F(ServerE2ETest, IdempotencyKeyReturnsTheSameJob) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job a = SubmitOrDie(*c, up->model_id(), "key-1");
  v1::Job b = SubmitOrDie(*c, up->model_id(), "key-1");
  EXPECT_EQ(a.job_id(), b.job_id());
  std::string other = (dir_ / "other.onnx").string();
  WriteTinyModel(other, 2, 64, /*seed=*/2);
  auto up2 = c->UploadModel(other);
  ASSERT_TRUE(up2.ok());
  v1::SubmitJobRequest req;
  req.set_model(up2->name());
  req.set_idempotency_key("key-1");
  EXPECT_EQ(c->Submit(req).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerE2ETest, DownloadResumesFromPartialFileAndVerifiesHash) {
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job job = SubmitOrDie(*c, up->model_id());
  auto done = c->Watch(job.job_id(), nullptr, absl::Seconds(20));
  ASSERT_TRUE(done.ok());
  ASSERT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  std::string full = Slurp(model_);  // the fake engine copies its input

  std::string dest = (dir_ / "resumed.onnx").string();
  std::ofstream(dest + ".partial", std::ios::binary) << full.substr(0, 1000);
  ASSERT_TRUE(c->Download(job.job_id(), "", dest).ok());
  EXPECT_EQ(Slurp(dest), full);
  EXPECT_FALSE(fs::exists(dest + ".partial"));

  std::string corrupt = (dir_ / "corrupt.onnx").string();
  std::ofstream(corrupt + ".partial", std::ios::binary) << std::string(1000, 'z');
  EXPECT_EQ(c->Download(job.job_id(), "", corrupt).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(corrupt + ".partial"));  // removed; a rerun starts clean
  ASSERT_TRUE(c->Download(job.job_id(), "", corrupt).ok());
  EXPECT_EQ(Slurp(corrupt), full);

  EXPECT_EQ(c->Download(job.job_id(), "nope.bin", dest).code(), absl::StatusCode::kNotFound);
}

TEST_F(ServerE2ETest, RestartKeepsFinishedJobsAndFailsInterruptedOnes) {
  std::string finished_id;
  {
    auto first = Start(Options(), std::make_shared<FakeEngine>());
    auto c = Connect(*first);
    auto up = c->UploadModel(model_);
    ASSERT_TRUE(up.ok());
    finished_id = SubmitOrDie(*c, up->model_id()).job_id();
    ASSERT_EQ(c->Watch(finished_id, nullptr, absl::Seconds(20))->state(), v1::JOB_STATE_SUCCEEDED);
  }
  // A job folder left RUNNING by a server that crashed (nobody holds its lock).
  std::string stale_id = NewJobId();
  fs::path stale = dir_ / "artifacts" / "jobs" / stale_id;
  fs::create_directories(stale);
  std::ofstream(stale / "job.json") << "{\"job_id\":\"" << stale_id
                                    << "\",\"state\":\"JOB_STATE_RUNNING\",\"create_time\":\"2024-01-01T00:00:00Z\"}";

  auto second = Start(Options(), std::make_shared<FakeEngine>());
  auto c = Connect(*second);
  auto stale_job = c->Get(stale_id);
  ASSERT_TRUE(stale_job.ok()) << stale_job.status();
  EXPECT_EQ(stale_job->state(), v1::JOB_STATE_FAILED);
  // A record without resource names (as written before they existed) still gets them.
  EXPECT_EQ(stale_job->name(), "jobs/" + stale_id);
  EXPECT_TRUE(absl::StrContains(stale_job->error().message(), "interrupted"));
  auto finished = c->Get(finished_id);
  ASSERT_TRUE(finished.ok());
  EXPECT_EQ(finished->state(), v1::JOB_STATE_SUCCEEDED);
  std::string dest = (dir_ / "after_restart.onnx").string();
  ASSERT_TRUE(c->Download(finished_id, "", dest).ok());
  EXPECT_EQ(Slurp(dest), Slurp(model_));
  EXPECT_EQ(c->List()->size(), 2u);
}

TEST_F(ServerE2ETest, TwoServersOnOneDirectoryServeEachOthersJobs) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  auto a = Start(Options(), engine);
  auto b = Start(Options(), std::make_shared<FakeEngine>());
  auto ca = Connect(*a);
  auto cb = Connect(*b);
  auto up = ca->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  EXPECT_TRUE(cb->UploadModel(model_)->deduplicated());  // B sees A's upload
  v1::Job job = SubmitOrDie(*ca, up->model_id());
  ASSERT_TRUE(engine->WaitStarted(1));

  // B sees the job RUNNING (A holds its lock), not "interrupted".
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<v1::Job> seen_by_b;
  do {
    seen_by_b = cb->Get(job.job_id());
  } while (seen_by_b.ok() && seen_by_b->state() != v1::JOB_STATE_RUNNING && absl::Now() < deadline);
  ASSERT_TRUE(seen_by_b.ok());
  EXPECT_EQ(seen_by_b->state(), v1::JOB_STATE_RUNNING);

  // B follows it by polling the directory while A finishes it.
  absl::StatusOr<v1::Job> watched;
  std::thread watcher([&] { watched = cb->Watch(job.job_id(), nullptr, absl::Seconds(20)); });
  absl::SleepFor(absl::Milliseconds(100));
  engine->Release();
  watcher.join();
  ASSERT_TRUE(watched.ok()) << watched.status();
  EXPECT_EQ(watched->state(), v1::JOB_STATE_SUCCEEDED);

  std::string dest = (dir_ / "from_b.onnx").string();
  ASSERT_TRUE(cb->Download(job.job_id(), "", dest).ok());
  EXPECT_EQ(Slurp(dest), Slurp(model_));
  EXPECT_EQ(cb->List()->size(), 1u);
}

TEST_F(ServerE2ETest, DrainingReportsNotServingAndLetsRunningJobsFinish) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  ServerOptions o = Options();
  o.workers = 1;
  auto server = Start(o, engine);
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job running = SubmitOrDie(*c, up->model_id());
  ASSERT_TRUE(engine->WaitStarted(1));
  v1::Job queued = SubmitOrDie(*c, up->model_id());
  EXPECT_TRUE(*c->Health());

  std::thread drain([&] { server->Drain(absl::Seconds(20)); });
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<bool> health;
  do {
    health = c->Health();
  } while (health.ok() && *health && absl::Now() < deadline);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_FALSE(*health);  // NOT_SERVING while draining
  auto by_name = c->Health("sq.v1.SqService");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_FALSE(*by_name);  // by service name too
  v1::SubmitJobRequest req;
  req.set_model(up->name());
  EXPECT_EQ(c->Submit(req).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(c->Get(queued.job_id())->state(), v1::JOB_STATE_FAILED);  // never started
  engine->Release();
  drain.join();
  auto after = server->jobs().Get(running.job_id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(ServerE2ETest, DrainGracePeriodCancelsJobsThatDoNotFinish) {
  auto engine = std::make_shared<FakeEngine>(/*gated=*/true);
  auto server = Start(Options(), engine);
  auto c = Connect(*server);
  auto up = c->UploadModel(model_);
  ASSERT_TRUE(up.ok());
  v1::Job running = SubmitOrDie(*c, up->model_id());
  ASSERT_TRUE(engine->WaitStarted(1));
  server->Drain(absl::Milliseconds(200));
  auto after = server->jobs().Get(running.job_id());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(after->error().message(), "interrupted"));
}

TEST_F(ServerE2ETest, TlsWithACustomCa) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "openssl CLI absent";
  std::string cert = (dir_ / "cert.pem").string(), key = (dir_ / "key.pem").string();
  std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                    "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " + key + " -out " +
                    cert + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ServerOptions o = Options();
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  auto server = Start(o, std::make_shared<FakeEngine>());
  ASSERT_TRUE(server);
  client::ClientOptions co;
  co.target = server->address();
  co.tls_ca_file = cert;
  auto secure = SqClient::Create(co);
  ASSERT_TRUE(secure.ok());
  auto up = (*secure)->UploadModel(model_);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_TRUE((*secure)->List().ok());
  // A plaintext client cannot talk to it.
  client::ClientOptions quick;
  quick.target = server->address();
  quick.unary_timeout = absl::Seconds(2);
  auto plain_quick = SqClient::Create(quick);
  absl::StatusCode code = (*plain_quick)->List().status().code();
  EXPECT_TRUE(code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded)
      << absl::StatusCodeToString(code);
}

TEST_F(ServerE2ETest, MutualTlsRequiresAClientCertificateFromTheCa) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "openssl CLI absent";
  auto f = [&](const char* name) { return (dir_ / name).string(); };
  // A test CA; a server certificate and a client certificate it signs; a client certificate
  // from another CA.
  const std::string script = absl::StrCat(
      "set -e; cd ", dir_.string(), "\n",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=sq-test-ca -keyout ca.key -out ca.pem\n",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other-ca -keyout other.key -out other.pem\n",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext\n",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr\n",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.pem\n",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=build-farm -keyout client.key -out client.csr\n",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem\n",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=intruder -keyout intruder.key -out intruder.csr\n",
      "openssl x509 -req -in intruder.csr -CA other.pem -CAkey other.key -CAcreateserial -days 1 -out intruder.pem\n");
  std::ofstream(f("make.sh")) << script;
  ASSERT_EQ(std::system(("bash " + f("make.sh") + " >/dev/null 2>&1").c_str()), 0);
  ServerOptions o = Options();
  o.tls_cert_file = f("server.pem");
  o.tls_key_file = f("server.key");
  o.tls_client_ca_file = f("ca.pem");
  auto server = Start(o, std::make_shared<FakeEngine>());
  ASSERT_TRUE(server);
  auto connect = [&](const std::string& cert, const std::string& key) {
    client::ClientOptions co;
    co.target = server->address();
    co.tls_ca_file = f("ca.pem");
    co.tls_cert_file = cert;
    co.tls_key_file = key;
    co.unary_timeout = absl::Seconds(5);
    auto c = SqClient::Create(co);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  };
  auto good = connect(f("client.pem"), f("client.key"));
  EXPECT_TRUE(good->List().ok());
  EXPECT_TRUE(good->UploadModel(model_).ok());
  for (auto* bad : {connect("", "").release(), connect(f("intruder.pem"), f("intruder.key")).release()}) {
    std::unique_ptr<SqClient> c(bad);
    absl::StatusCode code = c->List().status().code();
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded)
        << absl::StatusCodeToString(code);
  }
  client::ClientOptions half;
  half.target = server->address();
  half.tls_cert_file = f("client.pem");
  EXPECT_EQ(SqClient::Create(half).status().code(), absl::StatusCode::kInvalidArgument);
  ServerOptions plain = Options();
  plain.tls_client_ca_file = f("ca.pem");
  EXPECT_EQ(SqServer::Start(plain, nullptr, std::make_shared<FakeEngine>()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Files that cannot be read fail the start after the workers were made: they are stopped
  // and the call returns (it used to dereference the server that was never built).
  ServerOptions unreadable = Options();
  unreadable.tls_cert_file = f("server.pem");
  unreadable.tls_key_file = f("server.pem");
  unreadable.tls_client_ca_file = f("missing-ca.pem");
  auto failed = SqServer::Start(unreadable, nullptr, std::make_shared<FakeEngine>());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(failed.status().message(), "missing-ca.pem"));
}

// Server reflection answers in both protocol versions (gRPC 1.51 serves v1alpha; v1, which
// current grpcurl and grpc_cli ask first, is server/reflection_v1). The two carry the same
// messages, so one set of message types talks to both.
TEST_F(ServerE2ETest, ReflectionAnswersInV1AndV1Alpha) {
  namespace refl = grpc::reflection::v1;
  auto server = Start(Options(), std::make_shared<FakeEngine>());
  ASSERT_TRUE(server);
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  for (const char* method : {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                             "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}) {
    SCOPED_TRACE(method);
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<refl::ServerReflectionRequest, refl::ServerReflectionResponse>>
        stream(grpc::internal::ClientReaderWriterFactory<refl::ServerReflectionRequest,
                                                         refl::ServerReflectionResponse>::
                   Create(channel.get(),
                          grpc::internal::RpcMethod(method, grpc::internal::RpcMethod::BIDI_STREAMING),
                          &context));
    refl::ServerReflectionRequest request;
    refl::ServerReflectionResponse response;

    request.set_list_services("");
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Read(&response));
    std::set<std::string> services;
    for (const auto& svc : response.list_services_response().service()) services.insert(svc.name());
    EXPECT_TRUE(services.count("sq.v1.SqService"));
    EXPECT_TRUE(services.count("grpc.health.v1.Health"));

    request.set_file_containing_symbol("sq.v1.SqService");
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Read(&response));
    std::set<std::string> files;
    for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      files.insert(file.name());
      if (file.name() == "sq/v1/sq.proto") {
        ASSERT_EQ(file.service_size(), 1);
        EXPECT_EQ(file.service(0).name(), "SqService");
      }
    }
    EXPECT_TRUE(files.count("sq/v1/sq.proto"));
    EXPECT_TRUE(files.count("google/protobuf/timestamp.proto")) << "dependencies come along";
    EXPECT_TRUE(files.count("google/api/field_behavior.proto")) << "the field annotations' too";
    EXPECT_TRUE(files.count("google/api/resource.proto")) << "the resource annotations' too";
    EXPECT_TRUE(files.count("google/protobuf/descriptor.proto")) << "and what those import";

    request.set_file_containing_symbol("no.such.Symbol");
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.error_response().error_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));

    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
}

}  // namespace
}  // namespace sq::server
