// sqctl's server commands, end to end through the real binaries: sq-server started as a
// child on 127.0.0.1 with port 0, driven by sqctl as a pipeline would.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/model_builder.h"
#include "tests/support/ort_telemetry.h"
#include "tests/support/ort_runner.h"

namespace {

using ::testing::HasSubstr;

// sqctl's documented exit codes.
constexpr int kExitOk = 0;
constexpr int kExitNotFound = 4;
constexpr int kExitUnavailable = 3;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class SqctlRemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = sq::testing::MakeTempDir("sq-sqctl-remote");
    log_ = dir_ + "/server.log";
    std::filesystem::create_directories(dir_ + "/server-cache");
    std::filesystem::create_directories(dir_ + "/server-tmp");
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      // ONNX Runtime's telemetry, were it on, would write here (tests/support/ort_telemetry.h;
      // the test below checks): the server's and its sq-ort-worker's own folders.
      for (const std::string& v : sq::testing::OrtQuietVariables()) unsetenv(v.c_str());
      unsetenv("ORT_DISABLE_TELEMETRY");
      setenv("XDG_CACHE_HOME", (dir_ + "/server-cache").c_str(), 1);
      setenv("TMPDIR", (dir_ + "/server-tmp").c_str(), 1);
      std::string server = absl::StrCat(SQ_BINARY_DIR, "/server/sq-server");
      std::string artifacts = absl::StrCat("--artifact_dir=", dir_, "/artifacts");
      execl(server.c_str(), server.c_str(), "--listen=127.0.0.1:0", "--metrics_listen=",
            artifacts.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    ASSERT_GT(pid_, 0);
    // The server prints its bound port once it serves.
    std::regex port_re("\\(port ([0-9]+)\\)");
    for (int i = 0; i < 200 && port_ == 0; ++i) {
      std::smatch m;
      std::string log = ReadAll(log_);
      if (std::regex_search(log, m, port_re)) port_ = std::stoi(m[1]);
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_NE(port_, 0) << "server did not start: " << ReadAll(log_);
  }

  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "drain did not exit cleanly";
    }
  }

  // Runs sqctl with `args` against this server; returns the exit code, output in *out.
  int Sqctl(const std::string& args, std::string* out) {
    std::string cmd = absl::StrCat(SQ_BINARY_DIR, "/client/sqctl ", args, " --server 127.0.0.1:",
                                   port_, " 2>&1 </dev/null");
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    size_t n;
    out->clear();
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  // x[?, 64] -> MatMul(w [64, 32]) -> y: the model the tests submit.
  static absl::Status SaveOneMatMul(const std::string& path) {
    onnx::ModelProto m = sq::testing::NewModel(17);
    sq::testing::GraphBuilder g(m.mutable_graph());
    g.Input("x", {-1, 64});
    g.Initializer("w", {64, 32}, sq::testing::TestWeights(64 * 32, 9));
    g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
    g.Output("y");
    return sq::testing::SaveModel(m, path);
  }

  std::string dir_, log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST_F(SqctlRemoteTest, SubmitWatchDownloadListStatusAndErrors) {
  const std::string model = dir_ + "/m.onnx";
  ASSERT_TRUE(SaveOneMatMul(model).ok());

  std::string out;
  ASSERT_EQ(Sqctl("health", &out), kExitOk) << out;
  EXPECT_THAT(out, HasSubstr("SERVING"));

  const std::string result = dir_ + "/m.q.onnx";
  ASSERT_EQ(Sqctl(absl::StrCat("submit ", model, " --bits 4 --kmeans reference --boundaries quant --rounding nearest --scale-type float32 -o ", result), &out),
            kExitOk)
      << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  EXPECT_TRUE(sq::testing::LoadInOrt(result).ok());

  ASSERT_EQ(Sqctl("list --json", &out), kExitOk) << out;
  nlohmann::json list = nlohmann::json::parse(out);
  ASSERT_EQ(list["jobs"].size(), 1u);
  EXPECT_EQ(list["jobs"][0]["state"], "JOB_STATE_SUCCEEDED");
  const std::string job = list["jobs"][0]["job_id"];
  // --json prints the messages: the resource names are there beside the ids.
  EXPECT_EQ(list["jobs"][0]["name"], "jobs/" + job) << out;
  EXPECT_EQ(list["jobs"][0]["model"], "models/" + list["jobs"][0]["model_id"].get<std::string>()) << out;
  ASSERT_EQ(Sqctl("list --state failed --state cancelled --json", &out), kExitOk) << out;
  EXPECT_TRUE(nlohmann::json::parse(out)["jobs"].empty()) << out;
  ASSERT_EQ(Sqctl("list --state succeeded --limit 1 --json", &out), kExitOk) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["jobs"].size(), 1u);
  EXPECT_EQ(Sqctl("list --state done", &out), 2) << out;

  ASSERT_EQ(Sqctl("status " + job, &out), kExitOk) << out;
  EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  // A job is named by its id or by its resource name, alike.
  ASSERT_EQ(Sqctl("status jobs/" + job + " --json", &out), kExitOk) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["name"], "jobs/" + job) << out;
  ASSERT_EQ(Sqctl("report jobs/" + job, &out), kExitOk) << out;
  // Another collection's name is refused by the server, which says what it wants.
  EXPECT_NE(Sqctl("status models/" + job, &out), kExitOk) << out;
  EXPECT_THAT(out, HasSubstr("name must be \"jobs/{job}\""));
  ASSERT_EQ(Sqctl("report " + job + " --json", &out), kExitOk) << out;
  EXPECT_THAT(out, HasSubstr("\"kmeans\": \"reference\""));
  EXPECT_THAT(out, HasSubstr("\"boundaries\": \"quant\""));
  EXPECT_THAT(out, HasSubstr("\"scale_type\": \"float32\""));
  EXPECT_THAT(out, HasSubstr("\"rounding\": \"nearest\""));

  // The uploaded model can be removed; the finished job keeps its artifact.
  const std::string model_id = list["jobs"][0]["model_id"];
  ASSERT_EQ(Sqctl("models --json", &out), kExitOk) << out;
  nlohmann::json models = nlohmann::json::parse(out)["models"];
  ASSERT_EQ(models.size(), 1u) << out;
  EXPECT_EQ(models[0]["model_id"], model_id);
  EXPECT_EQ(models[0]["name"], "models/" + model_id);
  EXPECT_EQ(models[0]["files"][0]["name"], "m.onnx");
  ASSERT_EQ(Sqctl("models", &out), kExitOk) << out;
  EXPECT_THAT(out, HasSubstr(model_id));
  ASSERT_EQ(Sqctl("delete-model " + model_id + " --json", &out), kExitOk) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["deleted_model"], model_id);
  EXPECT_EQ(Sqctl("delete-model " + model_id, &out), kExitNotFound) << out;
  EXPECT_EQ(Sqctl("delete-model models/" + model_id, &out), kExitNotFound) << out;  // the name, alike
  EXPECT_EQ(Sqctl("delete-model", &out), 2) << out;
  ASSERT_EQ(Sqctl(absl::StrCat("download ", job, " -o ", dir_, "/again.onnx"), &out), kExitOk) << out;
  ASSERT_EQ(Sqctl(absl::StrCat("download jobs/", job, " -o ", dir_, "/by_name.onnx"), &out), kExitOk) << out;

  // --timeout: a bad value is a usage error; a watch that outlasts it exits 3 and says the
  // job goes on, which a later watch sees finish.
  EXPECT_EQ(Sqctl("status " + job + " --timeout soon", &out), 2) << out;
  ASSERT_EQ(Sqctl("status " + job + " --timeout 30s", &out), kExitOk) << out;
  {
    onnx::ModelProto big = sq::testing::NewModel(17);
    sq::testing::GraphBuilder bg(big.mutable_graph());
    bg.Input("x", {-1, 1024});
    std::string prev = "x";
    for (int l = 0; l < 6; ++l) {
      const std::string w = "w" + std::to_string(l), y = "y" + std::to_string(l);
      bg.Initializer(w, {1024, 1024}, sq::testing::TestWeights(1024 * 1024, 100 + l));
      bg.Node("MatMul", {prev, w}, {y}, "fc" + std::to_string(l));
      prev = y;
    }
    bg.Output(prev);
    const std::string big_path = dir_ + "/big.onnx";
    ASSERT_TRUE(sq::testing::SaveModel(big, big_path).ok());
    ASSERT_EQ(Sqctl(absl::StrCat("submit ", big_path, " --bits 4 --threads 1 --detach"), &out), kExitOk) << out;
    const std::string slow = out.substr(0, 32);
    EXPECT_EQ(Sqctl("watch " + slow + " --timeout 0.1", &out), kExitUnavailable) << out;
    EXPECT_THAT(out, HasSubstr("goes on on the server"));
    ASSERT_EQ(Sqctl("watch " + slow, &out), kExitOk) << out;
    EXPECT_THAT(out, HasSubstr("SUCCEEDED"));
  }

  // A detached submit prints just the job id.
  ASSERT_EQ(Sqctl(absl::StrCat("submit ", model, " --bits 8 --detach"), &out), kExitOk) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("[0-9a-f]{32}"))) << out;
  // --detach --json prints the job with its names.
  ASSERT_EQ(Sqctl(absl::StrCat("submit ", model, " --bits 8 --detach --json"), &out), kExitOk) << out;
  {
    nlohmann::json detached = nlohmann::json::parse(out);
    EXPECT_EQ(detached["name"], "jobs/" + detached["job_id"].get<std::string>()) << out;
    ASSERT_EQ(Sqctl("watch " + detached["name"].get<std::string>(), &out), kExitOk) << out;
  }

  EXPECT_EQ(Sqctl("status 0123456789abcdef0123456789abcdef", &out), kExitNotFound) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "errors are one line: " << out;
  EXPECT_NE(Sqctl(absl::StrCat("submit ", dir_, "/missing.onnx --bits 4"), &out), kExitOk);

  std::string unreachable;
  std::string cmd = absl::StrCat(SQ_BINARY_DIR, "/client/sqctl health --server 127.0.0.1:1 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  char buf[512];
  while (fgets(buf, sizeof buf, p)) unreachable += buf;
  int status = pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), kExitUnavailable) << unreachable;
}

// A float32 .npy of shape (rows, cols), every value `value`.
void WriteNpy(const std::string& path, int rows, int cols, float value) {
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", rows, ", ", cols, "), }");
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(header.size() & 0xff)
    << static_cast<char>(header.size() >> 8) << header;
  for (int i = 0; i < rows * cols; ++i) f.write(reinterpret_cast<const char*>(&value), sizeof value);
}

// The server runs jobs' ONNX Runtime sessions (verification) in its sq-ort-worker; neither
// may leave ONNX Runtime's telemetry behind (tests/support/ort_telemetry.h). SetUp gave the
// server its own XDG_CACHE_HOME and TMPDIR, without ORT_DISABLE_TELEMETRY or CI variables.
TEST_F(SqctlRemoteTest, TheServerAndItsOrtWorkerLeaveNoOnnxRuntimeTelemetryBehind) {
  const std::string model = dir_ + "/m.onnx";
  ASSERT_TRUE(SaveOneMatMul(model).ok());
  std::string out;
  ASSERT_EQ(Sqctl(absl::StrCat("submit ", model, " --bits 4 -o ", dir_, "/m.q.onnx"), &out), kExitOk) << out;
  ASSERT_EQ(Sqctl("list --json", &out), kExitOk) << out;
  const std::string job = nlohmann::json::parse(out)["jobs"][0]["job_id"];
  ASSERT_EQ(Sqctl("report " + job + " --json", &out), kExitOk) << out;
  ASSERT_EQ(nlohmann::json::parse(out)["verification"]["status"], "passed") << out;
  const sq::testing::OrtTelemetryTraces left =
      sq::testing::FindOrtTelemetryTraces(dir_ + "/server-cache", dir_ + "/server-tmp");
  EXPECT_THAT(left.cache, ::testing::IsEmpty());
  EXPECT_THAT(left.logs, ::testing::IsEmpty());
}

TEST_F(SqctlRemoteTest, SubmitUploadsCalibrationSamplesWithTheModel) {
  const std::string model = dir_ + "/m.onnx";
  ASSERT_TRUE(sq::testing::WriteMatMulChain(model, 1, 64, 3).ok());
  const std::string calib = dir_ + "/calib";
  std::filesystem::create_directories(calib);
  WriteNpy(calib + "/s1.npy", 1, 64, 0.5f);
  WriteNpy(calib + "/s0.npy", 1, 64, -0.25f);
  std::ofstream(calib + "/README") << "not a sample";

  // A directory is its .npy/.npz/.pb files, by name; --activations alone means target qdq.
  std::string out;
  ASSERT_EQ(Sqctl(absl::StrCat("submit ", model, " --activations int8 --calibration ", calib, " --detach --json"), &out),
            kExitOk)
      << out;
  nlohmann::json job = nlohmann::json::parse(out);
  EXPECT_EQ(job["options"]["activations"], "ACTIVATION_TYPE_INT8");
  EXPECT_EQ(job["options"]["target"], "TARGET_QDQ");
  EXPECT_EQ(job["options"]["calibration_inputs"], nlohmann::json::array({"s0.npy", "s1.npy"})) << out;
  // Let it end before the server drains; how it ends is the engine's business, not sqctl's.
  Sqctl(absl::StrCat("watch ", job["job_id"].get<std::string>()), &out);

  // Refused before anything is uploaded: a subdirectory, calibration nothing reads, a bad range.
  std::filesystem::create_directories(calib + "/test_data_set_0");
  EXPECT_EQ(Sqctl(absl::StrCat("submit ", model, " --activations int8 --calibration ", calib), &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("test_data_set_0 is a directory"));
  EXPECT_EQ(Sqctl(absl::StrCat("submit ", model, " --calibration ", calib, "/s0.npy"), &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("nothing reads it"));
  EXPECT_EQ(Sqctl(absl::StrCat("submit ", model, " --activations int8 --input-range x=1"), &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("--input-range"));
}

// Runs a command line; returns its exit code and what it printed (stdout + stderr).
int RunLine(const std::string& cmd, std::string* out) {
  out->clear();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[512];
  while (fgets(buf, sizeof buf, p)) *out += buf;
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(SqctlHelpTest, EveryCommandHasItsOwnHelpAndVersionSpeaksJson) {
  const std::string sqctl = absl::StrCat(SQ_BINARY_DIR, "/client/sqctl");
  std::string out;
  for (const char* command : {"submit", "status", "watch", "list", "cancel", "delete", "models", "delete-model",
                              "download", "report", "inspect", "health"}) {
    // Works without a server and whatever else is on the line.
    ASSERT_EQ(RunLine(absl::StrCat(sqctl, " ", command, " --help --bits 99"), &out), 0) << command;
    EXPECT_EQ(out.rfind(absl::StrCat("usage: sqctl ", command), 0), 0u) << out;
    EXPECT_TRUE(absl::StrContains(out, "Exit codes")) << command;
  }
  ASSERT_EQ(RunLine(sqctl + " submit --help", &out), 0);
  EXPECT_TRUE(absl::StrContains(out, "--verify on|off")) << "submit lists the engine options";
  ASSERT_EQ(RunLine(sqctl + " version --json", &out), 0);
  EXPECT_TRUE(absl::StrContains(out, "{\"sqctl\": \"")) << out;
  EXPECT_EQ(RunLine(sqctl + " version --yaml", &out), 2);
}

TEST(SqServerFlagsTest, HelpListsTheFlagsAndVersionPrintsIt) {
  const std::string server = absl::StrCat(SQ_BINARY_DIR, "/server/sq-server");
  std::string out;
  ASSERT_EQ(RunLine(server + " --help", &out), 0) << out;
  for (const char* flag : {"--listen", "--artifact_dir", "--auth_token_file", "--tls_client_ca",
                           "--max_upload_bytes", "--drain_grace_seconds", "--retention_age",
                           "--retention_bytes", "--retention_interval"}) {
    EXPECT_TRUE(absl::StrContains(out, flag)) << flag << " missing from --help:\n" << out;
  }
  ASSERT_EQ(RunLine(server + " --version", &out), 0);
  EXPECT_TRUE(absl::StrContains(out, "sq-server 0.")) << out;
}

}  // namespace
