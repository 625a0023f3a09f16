// The hostile-input corpus (tests/support/hostile_corpus.h) through the engine, as
// `sqctl quantize` runs it: each case gets the status code it should (InvalidArgument or
// NotFound with a message that names the problem; a valid if odd model quantizes), never a
// crash or a hang, and a failed case leaves nothing at or beside its output path.
#include <sys/resource.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "core/engine.h"
#include "core/report.h"
#include "core/utf8.h"
#include "gtest/gtest.h"
#include "tests/support/hostile_corpus.h"
#include "tests/support/model_builder.h"
#include "tests/support/sanitizers.h"

namespace sq {
namespace {

namespace fs = std::filesystem;

TEST(HostileTest, EveryCaseGetsItsCodeAndLeavesNothingBehind) {
  const std::string dir = testing::MakeTempDir("hostile");
  const std::vector<testing::HostileCase> cases = testing::WriteHostileCorpus(dir + "/in");
  ASSERT_GE(cases.size(), 60u);
  int ok = 0, refused = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const testing::HostileCase& c = cases[i];
    const std::string out_dir = dir + "/out" + std::to_string(i);
    fs::create_directories(out_dir);
    auto r = QuantizeModelFile(c.model, out_dir + "/out.onnx", QuantizeOptions(), {});
    EXPECT_EQ(r.status().code(), c.expect) << c.name << ": " << r.status();
    if (r.ok()) {
      ++ok;
      EXPECT_TRUE(fs::exists(out_dir + "/out.onnx")) << c.name;
      // What leaves the engine as text (JSON, summary) is valid UTF-8 whatever the names.
      EXPECT_TRUE(IsValidUtf8(ReportToJson(*r))) << c.name;
      EXPECT_TRUE(IsValidUtf8(ReportSummary(*r))) << c.name;
      continue;
    }
    ++refused;
    const std::string message(r.status().message());
    EXPECT_FALSE(message.empty()) << c.name;
    EXPECT_EQ(message.find('\n'), std::string::npos) << c.name << ": one line, got " << message;
    EXPECT_TRUE(IsValidUtf8(message)) << c.name;
    if (!c.expect_in_message.empty()) {
      EXPECT_TRUE(absl::StrContains(message, c.expect_in_message))
          << c.name << ": expected '" << c.expect_in_message << "' in: " << message;
    }
    EXPECT_TRUE(fs::is_empty(out_dir)) << c.name << ": something was left at the output";
  }
  EXPECT_GE(refused, 55);
  EXPECT_GE(ok, 3);
  // Bounded memory over the whole corpus (claims of terabytes are refused, not allocated).
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  // (Verification in ONNX Runtime of the 100k-node case is the peak: ~360 MB unsanitized.)
  EXPECT_LT(u.ru_maxrss, 1024 * 1024 * testing::kSanitizerMemoryFactor) << "peak RSS " << u.ru_maxrss / 1024 << " MB";
}

}  // namespace
}  // namespace sq
