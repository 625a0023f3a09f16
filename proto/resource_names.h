// The sq.v1 resource names (AIP-122): a job is "jobs/{job}", a model "models/{model}", where
// {job} / {model} is the id the service has always used (Job.job_id, Model.model_id). One
// place formats and parses them for the server and every C++ client.
//
// Parsing is strict: exactly "<collection>/<id>" with a non-empty id holding no '/'. Only
// the form is checked here; whether the id is well formed (hex digits, no path tricks) and
// exists stays the business of the code that looks it up.
#ifndef SQ_PROTO_RESOURCE_NAMES_H_
#define SQ_PROTO_RESOURCE_NAMES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sq::v1 {

// "jobs/<id>" / "models/<id>".
std::string JobName(absl::string_view job_id);
std::string ModelName(absl::string_view model_id);

// The id in a resource name. InvalidArgument otherwise, naming `field` (the request field
// the name came from) and the expected form, e.g.
//   name must be "jobs/{job}", got "abc"
absl::StatusOr<std::string> ParseJobName(absl::string_view name, absl::string_view field = "name");
absl::StatusOr<std::string> ParseModelName(absl::string_view name, absl::string_view field = "name");

// What a user typed (command line, library argument) as a name to send: a bare id (no '/')
// becomes "jobs/<id>" / "models/<id>"; anything holding a '/' is passed on unchanged, so
// the server judges it (and names a wrong collection in its error).
std::string JobNameFromUser(absl::string_view id_or_name);
std::string ModelNameFromUser(absl::string_view id_or_name);

}  // namespace sq::v1

#endif  // SQ_PROTO_RESOURCE_NAMES_H_
