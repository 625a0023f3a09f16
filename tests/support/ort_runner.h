// The tests reach ONNX Runtime through the engine's own runner (core/verify/ort_runner.h),
// under the names they have always used.
#ifndef SQ_TESTS_SUPPORT_ORT_RUNNER_H_
#define SQ_TESTS_SUPPORT_ORT_RUNNER_H_

#include "core/verify/ort_runner.h"

namespace sq::testing {
using ::sq::LoadInOrt;
using ::sq::MakeRandomInputs;
using ::sq::MaxAbsError;
using ::sq::MaxRelativeError;
using ::sq::OrtRunOptions;
using ::sq::OrtTensor;
using ::sq::RunOrt;
}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_ORT_RUNNER_H_
