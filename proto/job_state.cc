#include "proto/job_state.h"

namespace sq::v1 {

bool IsTerminal(JobState s) {
  return s == JOB_STATE_SUCCEEDED || s == JOB_STATE_FAILED || s == JOB_STATE_CANCELLED;
}

const char* StateName(JobState s) {
  switch (s) {
    case JOB_STATE_QUEUED: return "QUEUED";
    case JOB_STATE_RUNNING: return "RUNNING";
    case JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case JOB_STATE_FAILED: return "FAILED";
    case JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

}  // namespace sq::v1
