// server/auth: the token file's two forms and their errors. (Per-tenant isolation through
// the RPCs is server_e2e_test's EachTenantSeesAndTouchesOnlyItsOwnJobsAndModels.)
#include "server/auth.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sq::server {
namespace {

using ::testing::HasSubstr;

TEST(TokenFileTest, ABareTokenIsShared) {
  auto c = ParseTokenFile("# the team's token\n0123456789abcdef0123\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shared_token, "0123456789abcdef0123");
  EXPECT_TRUE(c->tenants.empty());
}

TEST(TokenFileTest, NamedTokensAreTenants) {
  auto c = ParseTokenFile("alice  aaaaaaaaaaaaaaaa1\n\n# ci\nci-farm.eu_1\tbbbbbbbbbbbbbbbb2\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->shared_token.empty());
  ASSERT_EQ(c->tenants.size(), 2u);
  EXPECT_EQ(c->tenants[0].name, "alice");
  EXPECT_EQ(c->tenants[1].name, "ci-farm.eu_1");
  EXPECT_EQ(c->tenants[1].token, "bbbbbbbbbbbbbbbb2");
}

TEST(TokenFileTest, BadFilesNameTheLine) {
  struct Case {
    const char* text;
    const char* why;
  } cases[] = {
      {"", "holds no token"},
      {"# nothing\n", "holds no token"},
      {"short\n", "line 1: tokens must be at least 16"},
      {"a aaaaaaaaaaaaaaaa1\nb aaaaaaaaaaaaaaaa1\n", "line 2: this token is already given"},
      {"a aaaaaaaaaaaaaaaa1\na aaaaaaaaaaaaaaaa2\n", "line 2: tenant a is already given"},
      {"a/b aaaaaaaaaaaaaaaa1\n", "line 1: tenant names"},
      {"aaaaaaaaaaaaaaaa1\nb aaaaaaaaaaaaaaaa2\n", "line 2: a bare token and NAME TOKEN"},
      {"b aaaaaaaaaaaaaaaa2\naaaaaaaaaaaaaaaa1\n", "line 2: a bare token must be the file's only"},
      {"a b c\n", "line 1: expected a token"},
  };
  for (const Case& c : cases) {
    auto r = ParseTokenFile(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.why)) << c.text;
  }
}

}  // namespace
}  // namespace sq::server
