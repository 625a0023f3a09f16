// Memory bounds in tests are the product's; AddressSanitizer's shadow memory and quarantine
// roughly triple a process's resident set, so sanitized builds scale the bounds by this.
#ifndef SQ_TESTS_SUPPORT_SANITIZERS_H_
#define SQ_TESTS_SUPPORT_SANITIZERS_H_

namespace sq::testing {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr long kSanitizerMemoryFactor = 3;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr long kSanitizerMemoryFactor = 3;
#else
inline constexpr long kSanitizerMemoryFactor = 1;
#endif
#else
inline constexpr long kSanitizerMemoryFactor = 1;
#endif

}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_SANITIZERS_H_
