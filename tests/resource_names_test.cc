// proto/resource_names: the sq.v1 resource names "jobs/{job}" and "models/{model}".
#include "proto/resource_names.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sq::v1 {
namespace {

using ::testing::HasSubstr;

TEST(ResourceNamesTest, FormatsNames) {
  EXPECT_EQ(JobName("0123abcd"), "jobs/0123abcd");
  EXPECT_EQ(ModelName("beef"), "models/beef");
}

TEST(ResourceNamesTest, ParsesWhatItFormats) {
  auto job = ParseJobName(JobName("0123abcd"));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(*job, "0123abcd");
  auto model = ParseModelName(ModelName("beef"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(*model, "beef");
}

TEST(ResourceNamesTest, TheIdIsNotJudgedHere) {
  // Whether an id is well formed is the lookup's business (it refuses "..", non-hex ids).
  EXPECT_EQ(*ParseJobName("jobs/.."), "..");
  EXPECT_EQ(*ParseModelName("models/NOT-HEX"), "NOT-HEX");
}

TEST(ResourceNamesTest, RefusesEveryMalformedJobName) {
  for (const std::string& bad : std::vector<std::string>{
           "", "abc", "jobs", "jobs/", "/abc", "job/abc", "Jobs/abc", "jobs//abc", "jobs/abc/",
        "jobs/a/b", "models/abc", "xjobs/abc", " jobs/abc", "projects/p/jobs/abc",
        std::string("jobs\0/abc", 9)}) {
    auto id = ParseJobName(bad);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << "\"" << bad << "\"";
  }
}

TEST(ResourceNamesTest, RefusesEveryMalformedModelName) {
  for (const std::string& bad : std::vector<std::string>{"", "beef", "models", "models/", "model/beef", "models/a/b",
                                "models/beef/", "jobs/beef", "/models/beef"}) {
    auto id = ParseModelName(bad);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << "\"" << bad << "\"";
  }
}

TEST(ResourceNamesTest, TheErrorNamesTheFieldAndTheForm) {
  EXPECT_EQ(ParseJobName("abc").status().message(), R"(name must be "jobs/{job}", got "abc")");
  EXPECT_EQ(ParseModelName("jobs/x", "model").status().message(),
            R"(model must be "models/{model}", got "jobs/x")");
  // Bytes that are not printable come back escaped: the message stays ASCII.
  EXPECT_THAT(std::string(ParseJobName("\xff\n", "job").status().message()),
              HasSubstr(R"(got "\xff\n")"));
}

TEST(ResourceNamesTest, UserInputBecomesAName) {
  EXPECT_EQ(JobNameFromUser("abc"), "jobs/abc");
  EXPECT_EQ(JobNameFromUser("jobs/abc"), "jobs/abc");
  EXPECT_EQ(JobNameFromUser("models/abc"), "models/abc");  // the server names the mistake
  EXPECT_EQ(ModelNameFromUser("beef"), "models/beef");
  EXPECT_EQ(ModelNameFromUser("models/beef"), "models/beef");
}

}  // namespace
}  // namespace sq::v1
