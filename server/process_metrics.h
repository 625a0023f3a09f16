// Metrics read when Prometheus scrapes, not when something happens: the standard process_*
// family every dashboard expects (prometheus-cpp 1.0 has no process collector), and the
// artifact volume's space. Register it on the Exposer beside the registry.
#ifndef SQ_SERVER_PROCESS_METRICS_H_
#define SQ_SERVER_PROCESS_METRICS_H_

#include <string>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace sq::server {

class ProcessMetrics final : public prometheus::Collectable {
 public:
  // `artifact_dir`: the volume whose bytes used / free / total are reported.
  explicit ProcessMetrics(std::string artifact_dir) : artifact_dir_(std::move(artifact_dir)) {}

  // process_resident_memory_bytes, process_virtual_memory_bytes, process_cpu_seconds_total,
  // process_open_fds, process_max_fds, process_start_time_seconds (Linux /proc), and
  // sq_artifact_volume_bytes{kind="used"|"free"|"total"} (statvfs). A value that cannot be
  // read is left out, never reported as 0.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::string artifact_dir_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_PROCESS_METRICS_H_
