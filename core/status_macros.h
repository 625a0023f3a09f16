// Small helpers for absl::Status plumbing. Abseil 20220623 ships no RETURN_IF_ERROR /
// ASSIGN_OR_RETURN, so the project defines its own here.
#ifndef SQ_CORE_STATUS_MACROS_H_
#define SQ_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SQ_STATUS_CONCAT_INNER_(a, b) a##b
#define SQ_STATUS_CONCAT_(a, b) SQ_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if not OK.
#define SQ_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    ::absl::Status sq_status_ = (expr);                   \
    if (!sq_status_.ok()) return sq_status_;              \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status if not OK.
#define SQ_ASSIGN_OR_RETURN(lhs, rexpr) \
  SQ_ASSIGN_OR_RETURN_IMPL_(SQ_STATUS_CONCAT_(sq_statusor_, __LINE__), lhs, rexpr)
#define SQ_ASSIGN_OR_RETURN_IMPL_(var, lhs, rexpr) \
  auto var = (rexpr);                              \
  if (!var.ok()) return std::move(var).status();   \
  lhs = std::move(var).value()

#endif  // SQ_CORE_STATUS_MACROS_H_
