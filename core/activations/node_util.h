// Small reads of ONNX nodes the activation stages share.
#ifndef SQ_CORE_ACTIVATIONS_NODE_UTIL_H_
#define SQ_CORE_ACTIVATIONS_NODE_UTIL_H_

#include <cstdint>
#include <string>

#include "onnx/onnx_pb.h"

namespace sq::activations {

inline bool IsDefaultDomain(const onnx::NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

// The attribute `name`, or nullptr.
inline const onnx::AttributeProto* Attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}
inline int64_t IntAttr(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  const onnx::AttributeProto* a = Attr(n, name);
  return a ? a->i() : fallback;
}
inline float FloatAttr(const onnx::NodeProto& n, const std::string& name, float fallback) {
  const onnx::AttributeProto* a = Attr(n, name);
  return a ? a->f() : fallback;
}

}  // namespace sq::activations

#endif  // SQ_CORE_ACTIVATIONS_NODE_UTIL_H_
