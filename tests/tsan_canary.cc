// A deliberate data race, built only in the ThreadSanitizer build (SQ_TSAN): it proves that
// the TSan pass of scripts/test.sh, with tests/tsan.supp in force, still reports a race in
// our code when that code runs inside a gRPC callback — the place where the suppressions of
// gRPC's own internals would hide one if they were too wide. The ctest entry passes only if
// TSan prints a data-race report naming RacyService::GetJob.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "sq/v1/sq.grpc.pb.h"

namespace {

// Written by a plain thread and by the RPC handler with no synchronisation between them.
unsigned racy_counter = 0;
// Tells the writer to stop. Relaxed on both sides: it orders nothing, so the writer's
// increments and the handler's stay unordered.
std::atomic<bool> stop_writing{false};

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
  // The writer keeps writing while the calls run, so a fresh unordered write is always
  // there when the handler's lands. (With a writer that had finished before the calls,
  // TSan once reported nothing in CI, 2026-12-05, under load: an old access can be
  // forgotten — the runtime clears its shadow memory when it runs out of epochs or thread
  // slots, and reuses a finished thread's slot.)
  std::thread writer([] {
    for (int i = 0; !stop_writing.load(std::memory_order_relaxed); ++i) {
      ++racy_counter;
      if (i % 64 == 0) std::this_thread::yield();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
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
  stop_writing.store(true, std::memory_order_relaxed);
  writer.join();
  server->Shutdown();
  std::printf("tsan_canary: %u increments\n", racy_counter);
  return 0;
}
