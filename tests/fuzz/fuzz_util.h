// Shared by the libFuzzer harnesses (tests/fuzz/*_fuzz.cc): a private scratch folder per
// process, and a check that aborts (so libFuzzer records the input) when an invariant the
// code promises does not hold.
#ifndef SQ_TESTS_FUZZ_FUZZ_UTIL_H_
#define SQ_TESTS_FUZZ_FUZZ_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace sq::fuzz {

// A fresh folder under $TMPDIR (or /tmp), made once per process.
inline const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base ? base : "/tmp") + "/sq-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    return new std::string(tmpl);
  }();
  return *dir;
}

inline void WriteBytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

inline bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

#define SQ_FUZZ_CHECK(cond, what)                                         \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "invariant violated: %s (%s)\n", what, #cond); \
      std::abort();                                                       \
    }                                                                     \
  } while (0)

}  // namespace sq::fuzz

#endif  // SQ_TESTS_FUZZ_FUZZ_UTIL_H_
