// ToValidUtf8 / IsValidUtf8: what reaches proto strings and JSON from model names.
#include "core/utf8.h"

#include "gtest/gtest.h"

namespace sq {
namespace {

TEST(Utf8Test, ValidTextIsUnchanged) {
  for (const char* s : {"", "conv_1/weight", "caf\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87", "\xf0\x9f\x98\x80"}) {
    EXPECT_TRUE(IsValidUtf8(s)) << s;
    EXPECT_EQ(ToValidUtf8(s), s);
  }
}

TEST(Utf8Test, InvalidBytesAreEscapedOneByOne) {
  EXPECT_EQ(ToValidUtf8("a\xff" "b"), "a\\xFFb");
  EXPECT_EQ(ToValidUtf8("\xc3"), "\\xC3");                  // truncated 2-byte sequence
  EXPECT_EQ(ToValidUtf8("\xc0\xaf"), "\\xC0\\xAF");         // overlong '/'
  EXPECT_EQ(ToValidUtf8("\xed\xa0\x80"), "\\xED\\xA0\\x80");  // a UTF-16 surrogate
  EXPECT_EQ(ToValidUtf8("\xf4\x90\x80\x80"), "\\xF4\\x90\\x80\\x80");  // above U+10FFFF
  EXPECT_EQ(ToValidUtf8("ok\xc3\xa9\x80"), "ok\xc3\xa9\\x80");  // valid part kept
  EXPECT_EQ(ToValidUtf8(std::string("a\0b", 3)), std::string("a\0b", 3));  // NUL is valid
}

TEST(Utf8Test, OutputIsAlwaysValid) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (int i = 255; i >= 0; --i) all.push_back(static_cast<char>(i));
  EXPECT_FALSE(IsValidUtf8(all));
  EXPECT_TRUE(IsValidUtf8(ToValidUtf8(all)));
}

}  // namespace
}  // namespace sq
