#include "server/reflection_v1.h"

#include <set>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "server/published.h"

namespace sq::server {
namespace {

namespace pb = google::protobuf;
using grpc::reflection::v1::ServerReflectionRequest;
using grpc::reflection::v1::ServerReflectionResponse;

// `file` and everything it imports, each once, dependencies first.
void AddFileWithDependencies(const pb::FileDescriptor* file, std::set<std::string>* seen,
                             grpc::reflection::v1::FileDescriptorResponse* out) {
  if (!seen->insert(file->name()).second) return;
  for (int i = 0; i < file->dependency_count(); ++i) AddFileWithDependencies(file->dependency(i), seen, out);
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
}

void NotFound(const std::string& what, ServerReflectionResponse* response) {
  auto* error = response->mutable_error_response();
  error->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
  error->set_error_message(what);
}

// Reads a request, writes its answer, reads the next: one outstanding operation at a time,
// each callback possibly on another thread (published_: server/published.h).
class Reactor final : public grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse> {
 public:
  explicit Reactor(const ReflectionV1Service* service) : service_(service) {
    Published::OnExit publish(&published_);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    published_.Acquire();
    if (!ok) {  // the client closed its side
      Finish(grpc::Status::OK);
      return;
    }
    response_ = service_->Answer(request_);
    published_.Release();
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    published_.Acquire();
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "reflection stream cancelled"));
      return;
    }
    published_.Release();
    StartRead(&request_);
  }

  void OnDone() override {
    published_.Acquire();
    delete this;
  }

 private:
  Published published_;
  const ReflectionV1Service* const service_;
  ServerReflectionRequest request_;
  ServerReflectionResponse response_;
};

}  // namespace

ReflectionV1Service::ReflectionV1Service(std::vector<std::string> services)
    : services_(std::move(services)) {
  // Link the health protocol's descriptors in, so that a listed grpc.health.v1.Health
  // resolves like every other service.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
}

grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse>*
ReflectionV1Service::ServerReflectionInfo(grpc::CallbackServerContext*) {
  return new Reactor(this);
}

ServerReflectionResponse ReflectionV1Service::Answer(const ServerReflectionRequest& request) const {
  const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
  ServerReflectionResponse response;
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  std::set<std::string> seen;
  switch (request.message_request_case()) {
    case ServerReflectionRequest::kListServices:
      for (const std::string& name : services_) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      break;
    case ServerReflectionRequest::kFileByFilename: {
      const pb::FileDescriptor* file = pool->FindFileByName(request.file_by_filename());
      if (file == nullptr) {
        NotFound("file not found: " + request.file_by_filename(), &response);
      } else {
        AddFileWithDependencies(file, &seen, response.mutable_file_descriptor_response());
      }
      break;
    }
    case ServerReflectionRequest::kFileContainingSymbol: {
      const pb::FileDescriptor* file = pool->FindFileContainingSymbol(request.file_containing_symbol());
      if (file == nullptr) {
        NotFound("symbol not found: " + request.file_containing_symbol(), &response);
      } else {
        AddFileWithDependencies(file, &seen, response.mutable_file_descriptor_response());
      }
      break;
    }
    case ServerReflectionRequest::kFileContainingExtension: {
      const auto& ext = request.file_containing_extension();
      const pb::Descriptor* type = pool->FindMessageTypeByName(ext.containing_type());
      const pb::FieldDescriptor* field =
          type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
      if (field == nullptr) {
        NotFound("extension not found: " + ext.containing_type() + " " +
                     std::to_string(ext.extension_number()),
                 &response);
      } else {
        AddFileWithDependencies(field->file(), &seen, response.mutable_file_descriptor_response());
      }
      break;
    }
    case ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const pb::Descriptor* type = pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        NotFound("type not found: " + request.all_extension_numbers_of_type(), &response);
        break;
      }
      std::vector<const pb::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* out = response.mutable_all_extension_numbers_response();
      out->set_base_type_name(type->full_name());
      for (const pb::FieldDescriptor* f : extensions) out->add_extension_number(f->number());
      break;
    }
    default: {
      auto* error = response.mutable_error_response();
      error->set_error_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      error->set_error_message("empty or unknown reflection request");
    }
  }
  return response;
}

}  // namespace sq::server
