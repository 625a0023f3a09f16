// Job-state helpers on the wire enum, shared by the server and every client.
#ifndef SQ_PROTO_JOB_STATE_H_
#define SQ_PROTO_JOB_STATE_H_

#include "sq/v1/sq.pb.h"

namespace sq::v1 {

// SUCCEEDED, FAILED or CANCELLED: the job will not change again.
bool IsTerminal(JobState state);
// "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"; "UNSPECIFIED" for anything else.
const char* StateName(JobState state);

}  // namespace sq::v1

#endif  // SQ_PROTO_JOB_STATE_H_
