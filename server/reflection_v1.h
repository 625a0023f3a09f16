// gRPC server reflection, version 1 (grpc.reflection.v1.ServerReflection). Debian's gRPC
// 1.51 ships only v1alpha; current clients (grpcurl, grpc_cli, Postman) ask v1 first. The
// two protocols carry the same messages: this answers from the linked-in generated
// descriptors exactly as v1alpha does, beside it.
//
// Requests: list_services (the names given at construction), file_by_filename,
// file_containing_symbol, file_containing_extension (each answered with the file and all
// its transitive dependencies as serialized FileDescriptorProtos), and
// all_extension_numbers_of_type. Unknown names get an error_response NOT_FOUND in the
// stream; the stream itself stays open.
#ifndef SQ_SERVER_REFLECTION_V1_H_
#define SQ_SERVER_REFLECTION_V1_H_

#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace sq::server {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::CallbackService {
 public:
  explicit ReflectionV1Service(std::vector<std::string> services);

  grpc::ServerBidiReactor<grpc::reflection::v1::ServerReflectionRequest,
                          grpc::reflection::v1::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

  // The answer to one request (exposed for tests).
  grpc::reflection::v1::ServerReflectionResponse Answer(
      const grpc::reflection::v1::ServerReflectionRequest& request) const;

 private:
  const std::vector<std::string> services_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_REFLECTION_V1_H_
