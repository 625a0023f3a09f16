// A corpus of hostile and broken model uploads, generated in code (no committed binaries):
// truncated and garbage bytes, impossible tensor headers, broken graphs, bad convolution
// attributes, deep nesting, external data that escapes its folder or lies about its
// bounds. Each case is written into its own folder; the engine test and the server test
// feed the same cases through `sqctl quantize`'s engine and through the RPCs.
#ifndef SQ_TESTS_SUPPORT_HOSTILE_CORPUS_H_
#define SQ_TESTS_SUPPORT_HOSTILE_CORPUS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sq::testing {

struct HostileCase {
  std::string name;                // what it tries
  std::string model;               // path of the .onnx (or whatever bytes) to quantize
  std::vector<std::string> files;  // every file an upload of this case sends, model first
  absl::StatusCode expect;         // kOk: a valid if odd model that must quantize
  std::string expect_in_message;   // a fragment the error message must contain ("" = any)
};

// Writes every case under `dir` (created; one sub-folder per case) and returns them.
std::vector<HostileCase> WriteHostileCorpus(const std::string& dir);

}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_HOSTILE_CORPUS_H_
