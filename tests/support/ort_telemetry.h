// What tests look for to prove sq leaves no ONNX Runtime telemetry behind
// (core/verify/ort_runner.h: KeepOrtTelemetryOff). ONNX Runtime 1.29's Linux build, by
// default, has every process that creates an Env write a device id and an event store
// under $XDG_CACHE_HOME/Microsoft and a mat-debug-<pid>.log in $TMPDIR.
#ifndef SQ_TESTS_SUPPORT_ORT_TELEMETRY_H_
#define SQ_TESTS_SUPPORT_ORT_TELEMETRY_H_

#include <filesystem>
#include <string>
#include <vector>

namespace sq::testing {

// The variables under which ONNX Runtime keeps quiet by itself (a CI service's: CI=true is
// set where this suite runs in CI). A test of sq's own opt-out clears them, or it would
// pass without sq's part.
inline const std::vector<std::string>& OrtQuietVariables() {
  static const std::vector<std::string> v = {
      "CI",       "TF_BUILD",         "GITHUB_ACTIONS",  "GITLAB_CI",  "CIRCLECI",
      "TRAVIS",   "JENKINS_URL",      "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION",
      "APPVEYOR", "BITBUCKET_BUILD_NUMBER"};
  return v;
}

// What ONNX Runtime's telemetry left: every entry under `cache` (the process's
// XDG_CACHE_HOME) and the mat-debug logs in `tmp` (its TMPDIR).
struct OrtTelemetryTraces {
  std::vector<std::string> cache, logs;
};
inline OrtTelemetryTraces FindOrtTelemetryTraces(const std::string& cache, const std::string& tmp) {
  OrtTelemetryTraces t;
  for (const auto& e : std::filesystem::recursive_directory_iterator(cache)) {
    t.cache.push_back(e.path().string());
  }
  for (const auto& e : std::filesystem::directory_iterator(tmp)) {
    if (e.path().filename().string().rfind("mat-debug-", 0) == 0) t.logs.push_back(e.path().string());
  }
  return t;
}

}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_ORT_TELEMETRY_H_
