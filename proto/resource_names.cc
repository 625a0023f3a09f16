#include "proto/resource_names.h"

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace sq::v1 {
namespace {

constexpr absl::string_view kJobs = "jobs";
constexpr absl::string_view kModels = "models";

std::string Format(absl::string_view collection, absl::string_view id) {
  return absl::StrCat(collection, "/", id);
}

// `pattern` is the AIP pattern quoted in the error ("jobs/{job}").
absl::StatusOr<std::string> Parse(absl::string_view name, absl::string_view collection,
                                  absl::string_view pattern, absl::string_view field) {
  absl::string_view id = name;
  if (absl::ConsumePrefix(&id, collection) && absl::ConsumePrefix(&id, "/") && !id.empty() &&
      !absl::StrContains(id, '/')) {
    return std::string(id);
  }
  // CHexEscape: the message stays printable ASCII whatever bytes the caller sent.
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be \"", pattern, "\", got \"", absl::CHexEscape(name), "\""));
}

std::string FromUser(absl::string_view id_or_name, absl::string_view collection) {
  if (absl::StrContains(id_or_name, '/')) return std::string(id_or_name);
  return Format(collection, id_or_name);
}

}  // namespace

std::string JobName(absl::string_view job_id) { return Format(kJobs, job_id); }
std::string ModelName(absl::string_view model_id) { return Format(kModels, model_id); }

absl::StatusOr<std::string> ParseJobName(absl::string_view name, absl::string_view field) {
  return Parse(name, kJobs, "jobs/{job}", field);
}

absl::StatusOr<std::string> ParseModelName(absl::string_view name, absl::string_view field) {
  return Parse(name, kModels, "models/{model}", field);
}

std::string JobNameFromUser(absl::string_view id_or_name) { return FromUser(id_or_name, kJobs); }
std::string ModelNameFromUser(absl::string_view id_or_name) { return FromUser(id_or_name, kModels); }

}  // namespace sq::v1
