#include "core/options.h"

#include "absl/strings/str_cat.h"

namespace sq {
namespace {

absl::Status Invalid(absl::string_view option, absl::string_view detail) {
  return absl::InvalidArgumentError(absl::StrCat("option ", option, ": ", detail));
}

}  // namespace

absl::Status ValidateOptions(const QuantizeOptions& options) {
  if (options.bits < 2 || options.bits > 8) {
    return Invalid("bits", absl::StrCat("must be in 2..8, got ", options.bits));
  }
  // Enum fields can carry any integer when built from a wire message by a cast.
  if (ToString(options.granularity)[0] == '?') return Invalid("granularity", "unknown value");
  if (ToString(options.format)[0] == '?') return Invalid("format", "unknown value");
  if (ToString(options.form)[0] == '?') return Invalid("form", "unknown value");
  if (ToString(options.cluster_scope)[0] == '?') {
    return Invalid("cluster_scope", "unknown value");
  }
  // block_size only means something for blocked granularity; other granularities ignore
  // it, so a caller that leaves it unset (0) with per-channel scales is not rejected.
  if (options.granularity == Granularity::kBlock &&
      (options.block_size < 2 || options.block_size > 65536)) {
    return Invalid("block_size", absl::StrCat("must be in 2..65536, got ", options.block_size));
  }
  if (options.threads < 0 || options.threads > 1024) {
    return Invalid("threads", absl::StrCat("must be in 0..1024, got ", options.threads));
  }
  if (options.min_weight_elements < 0) {
    return Invalid("min_weight_elements",
                   absl::StrCat("must be >= 0, got ", options.min_weight_elements));
  }
  if (options.target_opset != 0 &&
      (options.target_opset < 13 || options.target_opset > 25)) {
    return Invalid("target_opset",
                   absl::StrCat("must be 0 (auto) or in 13..25, got ", options.target_opset));
  }
  if (options.format == OutputFormat::kSplit && !options.split) {
    return Invalid("format", "format split needs split on");
  }
  return absl::OkStatus();
}

absl::StatusOr<Granularity> ParseGranularity(absl::string_view s) {
  if (s == "tensor") return Granularity::kTensor;
  if (s == "channel") return Granularity::kChannel;
  if (s == "block") return Granularity::kBlock;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown granularity '", s, "'; accepted: tensor, channel, block"));
}

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view s) {
  if (s == "qdq") return OutputFormat::kQdq;
  if (s == "fake") return OutputFormat::kFake;
  if (s == "split") return OutputFormat::kSplit;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown format '", s, "'; accepted: qdq, fake, split"));
}

absl::StatusOr<SplitForm> ParseSplitForm(absl::string_view s) {
  if (s == "branches") return SplitForm::kBranches;
  if (s == "folded") return SplitForm::kFolded;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split form '", s, "'; accepted: branches, folded"));
}

absl::StatusOr<ClusterScope> ParseClusterScope(absl::string_view s) {
  if (s == "auto") return ClusterScope::kAuto;
  if (s == "tensor") return ClusterScope::kTensor;
  if (s == "channel") return ClusterScope::kChannel;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown cluster scope '", s, "'; accepted: auto, tensor, channel"));
}

const char* ToString(Granularity g) {
  switch (g) {
    case Granularity::kTensor: return "tensor";
    case Granularity::kChannel: return "channel";
    case Granularity::kBlock: return "block";
  }
  return "?";
}

const char* ToString(OutputFormat f) {
  switch (f) {
    case OutputFormat::kQdq: return "qdq";
    case OutputFormat::kFake: return "fake";
    case OutputFormat::kSplit: return "split";
  }
  return "?";
}

const char* ToString(SplitForm f) {
  switch (f) {
    case SplitForm::kBranches: return "branches";
    case SplitForm::kFolded: return "folded";
  }
  return "?";
}

const char* ToString(ClusterScope c) {
  switch (c) {
    case ClusterScope::kAuto: return "auto";
    case ClusterScope::kTensor: return "tensor";
    case ClusterScope::kChannel: return "channel";
  }
  return "?";
}

}  // namespace sq
