#ifndef SQ_SERVER_PUBLISHED_H_
#define SQ_SERVER_PUBLISHED_H_

#include <atomic>
#include <cstdint>

namespace sq::server {

// What the reactors (service.cc, reflection_v1.cc) use to show ThreadSanitizer the ordering
// gRPC gives their callbacks.
//
// gRPC hands a reactor from the thread that made it to the threads that run its callbacks
// through its core, which ThreadSanitizer cannot see (libgrpc is not instrumented), so the
// first lock of a mutex made in the constructor reads as racing with the mutex's
// construction. Each reactor releases this at the end of its constructor (every path: the
// guard) and acquires it at the start of every gRPC callback, which makes the ordering
// gRPC guarantees visible; one atomic load per callback. The same holds between callbacks:
// what one callback (or the upload's writer thread) writes before StartRead / StartWrite,
// the callback that operation completes reads, possibly on another thread; Release() right
// before the Start call publishes it. A read-modify-write, so that each release adds to what
// the next acquire sees instead of replacing another thread's release.
class Published {
 public:
  struct OnExit {
    explicit OnExit(Published* p) : p(p) {}
    ~OnExit() { p->Release(); }
    Published* p;
  };
  void Release() { n_.fetch_add(1, std::memory_order_release); }
  void Acquire() const { (void)n_.load(std::memory_order_acquire); }

 private:
  std::atomic<uint64_t> n_{0};
};

}  // namespace sq::server

#endif  // SQ_SERVER_PUBLISHED_H_
