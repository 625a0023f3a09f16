// Making untrusted bytes safe for places that require valid UTF-8.
//
// Names inside an ONNX model (nodes, tensors, graphs, op types) are arbitrary bytes that
// a hostile or broken exporter may fill with invalid UTF-8. Protobuf `string` fields and
// JSON both require valid UTF-8: protobuf refuses to serialize the message and
// nlohmann::json throws. Every such name goes through ToValidUtf8 before it reaches a
// proto string, a JSON document or an error message that may end up in one.
#ifndef SQ_CORE_UTF8_H_
#define SQ_CORE_UTF8_H_

#include <string>

#include "absl/strings/string_view.h"

namespace sq {

// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates, <= U+10FFFF).
bool IsValidUtf8(absl::string_view s);

// `s` unchanged when it is valid UTF-8; otherwise every byte that is not part of a
// well-formed sequence is written as the four characters "\xNN" (NN: two upper-case hex
// digits), so distinct names stay distinct and a reader can see what was there.
std::string ToValidUtf8(absl::string_view s);

}  // namespace sq

#endif  // SQ_CORE_UTF8_H_
