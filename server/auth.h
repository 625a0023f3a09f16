// BearerAuth: optional shared-token access control. When a token is configured every sq.v1
// call must carry metadata `authorization: Bearer <token>`; a missing or wrong one gives
// UNAUTHENTICATED. The comparison is constant-time. Health and reflection stay open.
#ifndef SQ_SERVER_AUTH_H_
#define SQ_SERVER_AUTH_H_

#include <string>

#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace sq::server {

class BearerAuth {
 public:
  explicit BearerAuth(std::string token) : token_(std::move(token)) {}
  bool enabled() const { return !token_.empty(); }
  grpc::Status Check(const grpc::ServerContextBase& context) const;

 private:
  std::string token_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_AUTH_H_
