// Fuzzes the command-line and override parsers: NUL-separated arguments to `sqctl quantize`,
// and the whole input as one --layer rule. A rule that parses must print back to a rule that
// parses to the same text; options that parse must validate.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/quantize_command.h"
#include "core/options.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> args = absl::StrSplit(text, '\0');
  absl::StatusOr<sq::cli::QuantizeArgs> parsed = sq::cli::ParseQuantizeArgs(args);
  if (parsed.ok() && !parsed->help) {
    SQ_FUZZ_CHECK(sq::ValidateOptions(parsed->options).ok(), "parsed options validate");
    for (const sq::LayerOverride& lo : parsed->options.layer_overrides) {
      const std::string printed = sq::ToString(lo);
      absl::StatusOr<sq::LayerOverride> again = sq::ParseLayerOverride(printed);
      SQ_FUZZ_CHECK(again.ok(), "a printed override parses");
      SQ_FUZZ_CHECK(sq::ToString(*again) == printed, "an override prints the same twice");
    }
  }
  absl::StatusOr<sq::LayerOverride> lo = sq::ParseLayerOverride(text);
  if (lo.ok()) {
    absl::StatusOr<sq::LayerOverride> again = sq::ParseLayerOverride(sq::ToString(*lo));
    SQ_FUZZ_CHECK(again.ok(), "a printed override parses");
  }
  return 0;
}
