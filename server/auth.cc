#include "server/auth.h"

#include <openssl/crypto.h>

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sq::server {
namespace {

bool TokenEquals(absl::string_view got, const std::string& token) {
  const std::string want = "Bearer " + token;
  return got.size() == want.size() && CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
}

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<TokenConfig> ParseTokenFile(absl::string_view text) {
  TokenConfig config;
  std::set<std::string> names, tokens;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("token file line ", line_no, ": ", why));
    };
    if (f.size() > 2) return bad("expected a token, or a tenant name and its token");
    const std::string token(f.back());
    if (token.size() < 16) return bad("tokens must be at least 16 characters");
    if (!tokens.insert(token).second) return bad("this token is already given");
    if (f.size() == 1) {
      if (!config.shared_token.empty() || !config.tenants.empty()) {
        return bad("a bare token must be the file's only entry (use NAME TOKEN lines for tenants)");
      }
      config.shared_token = token;
      continue;
    }
    if (!config.shared_token.empty()) return bad("a bare token and NAME TOKEN lines cannot be mixed");
    const std::string name(f[0]);
    if (!ValidName(name)) return bad("tenant names are 1-64 of A-Z a-z 0-9 . _ -");
    if (!names.insert(name).second) return bad(absl::StrCat("tenant ", name, " is already given"));
    config.tenants.push_back({name, token});
  }
  if (config.shared_token.empty() && config.tenants.empty()) {
    return absl::InvalidArgumentError("token file holds no token");
  }
  return config;
}

grpc::Status BearerAuth::Authenticate(const grpc::ServerContextBase& context,
                                      std::string* tenant) const {
  tenant->clear();
  if (!enabled()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing bearer token (metadata \"authorization: Bearer <token>\")");
  }
  const absl::string_view got(it->second.data(), it->second.size());
  if (!shared_.empty()) {
    if (TokenEquals(got, shared_)) return grpc::Status::OK;
  } else {
    // Every token is compared, so the time does not tell which tenant came closest.
    const Tenant* match = nullptr;
    for (const Tenant& t : tenants_) {
      if (TokenEquals(got, t.token)) match = &t;
    }
    if (match != nullptr) {
      *tenant = match->name;
      return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
}

}  // namespace sq::server
