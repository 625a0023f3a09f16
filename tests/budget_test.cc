// The size-budget allocator: feasibility, the budget held, and the error it trades.
#include "core/transform/budget.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sq {
namespace {

// A layer of `n` weights whose relative error at b bits is `k` * 4^-b (each bit quarters
// the error energy), stored at b bits per weight, plain only.
BudgetLayer Layer(int64_t n, double k) {
  BudgetLayer l;
  l.elements = n;
  for (int bits : {2, 3, 4, 8}) l.candidates.push_back({bits, false, n * bits / 8, k / (1 << (2 * bits))});
  return l;
}

TEST(BudgetTest, RefusesABudgetBelowTheCheapestChoiceNamingIt) {
  auto c = AllocateUnderBudget({Layer(800, 1), Layer(800, 1)}, 1.5);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), ::testing::HasSubstr("2.000 bits per weight"));
}

TEST(BudgetTest, HoldsTheBudgetAndSpendsItWhereTheErrorFallsMost) {
  // Same size, one layer 64x as sensitive: it gets the bits first.
  const std::vector<BudgetLayer> layers = {Layer(800, 1), Layer(800, 64)};
  auto c = AllocateUnderBudget(layers, 3.0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_LE(c->bits_per_weight, 3.0);
  EXPECT_EQ(layers[1].candidates[c->candidate[1]].bits, 4);
  EXPECT_EQ(layers[0].candidates[c->candidate[0]].bits, 2);
  // A larger budget never gives a larger error; the whole budget is usable.
  double previous = 1e300;
  for (double b : {2.0, 2.5, 3.0, 4.0, 6.0, 8.0}) {
    auto d = AllocateUnderBudget(layers, b);
    ASSERT_TRUE(d.ok());
    EXPECT_LE(d->bits_per_weight, b);
    EXPECT_LE(d->rel_error, previous) << b;
    previous = d->rel_error;
  }
  auto all8 = AllocateUnderBudget(layers, 8.0);
  EXPECT_EQ(layers[0].candidates[all8->candidate[0]].bits, 8);
  EXPECT_EQ(layers[1].candidates[all8->candidate[1]].bits, 8);
}

TEST(BudgetTest, SmallLayersAreCheapToKeepPrecise) {
  // Equal sensitivity, one tiny layer: raising it costs little, so it goes to 8 bits
  // before the large one moves.
  const std::vector<BudgetLayer> layers = {Layer(16, 1), Layer(8000, 1)};
  auto c = AllocateUnderBudget(layers, 2.05);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(layers[0].candidates[c->candidate[0]].bits, 8);
  EXPECT_EQ(layers[1].candidates[c->candidate[1]].bits, 2);
}

TEST(BudgetTest, PrefersTheBetterOfEqualCostAndTakesFreeGains) {
  BudgetLayer l;
  l.elements = 100;
  l.candidates = {{4, false, 50, 0.01}, {2, true, 50, 0.004}, {3, false, 50, 0.02}};
  auto c = AllocateUnderBudget({l}, 4.0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->candidate[0], 1);
  EXPECT_DOUBLE_EQ(c->rel_error, 0.004);
}

TEST(BudgetTest, FixedLayersCountAgainstTheBudget) {
  BudgetLayer fixed;
  fixed.elements = 800;
  fixed.candidates = {{8, false, 800, 1e-6}};  // a --layer override: 8 bits
  const std::vector<BudgetLayer> layers = {fixed, Layer(800, 1)};
  auto c = AllocateUnderBudget(layers, 5.0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(layers[1].candidates[c->candidate[1]].bits, 2);  // 8 + 2 = 10 bits for 2 weights
  EXPECT_FALSE(AllocateUnderBudget(layers, 4.9).ok());
}

}  // namespace
}  // namespace sq
