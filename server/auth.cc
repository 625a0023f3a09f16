#include "server/auth.h"

#include <openssl/crypto.h>

namespace sq::server {

grpc::Status BearerAuth::Check(const grpc::ServerContextBase& context) const {
  if (token_.empty()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing bearer token (metadata \"authorization: Bearer <token>\")");
  }
  std::string got(it->second.data(), it->second.size());
  std::string want = "Bearer " + token_;
  if (got.size() != want.size() || CRYPTO_memcmp(got.data(), want.data(), want.size()) != 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

}  // namespace sq::server
