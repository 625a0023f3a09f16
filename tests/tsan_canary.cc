// A deliberate data race, built only in the ThreadSanitizer build (SQ_TSAN): it proves that
// the TSan pass of scripts/test.sh, with tests/tsan.supp in force, still reports a race in
// our code when that code runs inside a gRPC callback — the place where the suppressions of
// gRPC's own internals would hide one if they were too wide. The ctest entry passes only if
// TSan prints a data-race report naming RacyService::GetJob.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "sq/v1/sq.grpc.pb.h"

namespace {

// Written by a plain thread and by the RPC handler with no synchronisation between them.
int racy_counter = 0;

class RacyService final : public sq::v1::SqService::CallbackService {
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const sq::v1::GetJobRequest*,
                                   sq::v1::GetJobResponse*) override {
    ++racy_counter;  // the race
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

int main() {
  RacyService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "tsan_canary: cannot start a server\n");
    return 2;
  }
  // The writer finishes before the calls start, but nothing orders its writes before the
  // handler's: only the join below, which comes after.
  std::thread writer([] {
    for (int i = 0; i < 1000; ++i) ++racy_counter;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto stub = sq::v1::SqService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext context;
    sq::v1::GetJobRequest request;
    sq::v1::GetJobResponse response;
    grpc::Status status = stub->GetJob(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "tsan_canary: GetJob failed: %s\n", status.error_message().c_str());
      return 2;
    }
  }
  writer.join();
  server->Shutdown();
  std::printf("tsan_canary: %d increments\n", racy_counter);
  return 0;
}
