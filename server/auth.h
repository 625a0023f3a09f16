// BearerAuth: optional bearer-token access control, shared or per tenant.
//
// Shared: one token; every sq.v1 call must carry metadata `authorization: Bearer <token>`,
// and every holder sees every job (tenant "").
// Per tenant: several named tokens (`sq-server --auth_token_file`, one "NAME TOKEN" per line);
// a call is made as the tenant whose token it carries, and the service shows each tenant only
// its own jobs and models (docs/api.md, "Access").
// A missing or unknown token gives UNAUTHENTICATED. Comparisons are constant-time per token.
// Health and reflection stay open.
#ifndef SQ_SERVER_AUTH_H_
#define SQ_SERVER_AUTH_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace sq::server {

struct Tenant {
  std::string name;   // [A-Za-z0-9._-]{1,64}
  std::string token;  // at least 16 characters, no whitespace
};

// What an --auth_token_file holds: blank lines and "#" comments aside, either one bare token
// (shared access; `shared_token` set) or one "NAME TOKEN" pair per line (per-tenant access;
// `tenants` set). InvalidArgument names the line: bad or duplicate names, duplicate or short
// tokens, a mix of both forms.
struct TokenConfig {
  std::string shared_token;
  std::vector<Tenant> tenants;
};
absl::StatusOr<TokenConfig> ParseTokenFile(absl::string_view text);

class BearerAuth {
 public:
  BearerAuth() = default;
  explicit BearerAuth(std::string shared_token) : shared_(std::move(shared_token)) {}
  explicit BearerAuth(std::vector<Tenant> tenants) : tenants_(std::move(tenants)) {}

  bool enabled() const { return !shared_.empty() || !tenants_.empty(); }
  bool per_tenant() const { return !tenants_.empty(); }
  // OK with the caller's tenant name in *tenant ("" without per-tenant access).
  grpc::Status Authenticate(const grpc::ServerContextBase& context, std::string* tenant) const;
  grpc::Status Check(const grpc::ServerContextBase& context) const {
    std::string tenant;
    return Authenticate(context, &tenant);
  }

 private:
  std::string shared_;
  std::vector<Tenant> tenants_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_AUTH_H_
