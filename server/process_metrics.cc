#include "server/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace sq::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily One(const char* name, const char* help, MetricType type, double value) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  ClientMetric m;
  if (type == MetricType::Counter) m.counter.value = value;
  else m.gauge.value = value;
  f.metric.push_back(m);
  return f;
}

std::string Slurp(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<MetricFamily> ProcessMetrics::Collect() const {
  std::vector<MetricFamily> out;
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));

  // /proc/self/stat: fields after the ")" that closes the command name; utime is field 14,
  // stime 15, starttime 22, vsize 23, rss 24 (1-based, as proc(5) numbers them).
  const std::string stat = Slurp("/proc/self/stat");
  const size_t close = stat.rfind(')');
  if (close != std::string::npos) {
    std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
    auto field = [&](int n, double* v) { return n - 3 < static_cast<int>(f.size()) && absl::SimpleAtod(f[n - 3], v); };
    double utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
    if (field(14, &utime) && field(15, &stime) && ticks > 0) {
      out.push_back(One("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                        MetricType::Counter, (utime + stime) / ticks));
    }
    if (field(23, &vsize)) {
      out.push_back(One("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge, vsize));
    }
    if (field(24, &rss) && page > 0) {
      out.push_back(One("process_resident_memory_bytes", "Resident memory size in bytes.",
                        MetricType::Gauge, rss * page));
    }
    // Boot time (/proc/stat btime) + start ticks = the process's start, in Unix seconds.
    double btime = 0;
    for (absl::string_view line : absl::StrSplit(Slurp("/proc/stat"), '\n')) {
      if (absl::ConsumePrefix(&line, "btime ")) (void)absl::SimpleAtod(line, &btime);
    }
    if (field(22, &start) && btime > 0 && ticks > 0) {
      out.push_back(One("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                        MetricType::Gauge, btime + start / ticks));
    }
  }
  if (DIR* d = ::opendir("/proc/self/fd")) {
    int n = 0;
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
    out.push_back(One("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, n - 1));
  }
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    out.push_back(One("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                      static_cast<double>(lim.rlim_cur)));
  }
  struct statvfs vfs{};
  if (::statvfs(artifact_dir_.c_str(), &vfs) == 0) {
    MetricFamily f;
    f.name = "sq_artifact_volume_bytes";
    f.help = "The artifact directory's file system: bytes used, free (to this process) and total.";
    f.type = MetricType::Gauge;
    const double frsize = static_cast<double>(vfs.f_frsize);
    const double total = frsize * static_cast<double>(vfs.f_blocks);
    const double free_all = frsize * static_cast<double>(vfs.f_bfree);
    const double avail = frsize * static_cast<double>(vfs.f_bavail);
    for (auto [kind, v] : {std::pair<const char*, double>{"used", total - free_all}, {"free", avail}, {"total", total}}) {
      ClientMetric m;
      m.label.push_back({"kind", kind});
      m.gauge.value = v;
      f.metric.push_back(m);
    }
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace sq::server
