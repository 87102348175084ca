// Assertions that stay on in release builds for invariants whose violation
// means memory corruption is near; TR_DASSERT is for hot paths (debug only).
#pragma once

#include <cstdio>
#include <cstdlib>

namespace tr {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "tokenrelay: assertion failed: %s (%s:%d)\n", expr, file, line);
  std::abort();
}
}  // namespace tr

#define TR_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::tr::assert_fail(#cond, __FILE__, __LINE__))

// Hot-path checks: on in debug builds (meson buildtype=debug, which the asan and
// fuzz builds use), off in the default debugoptimized and release builds.
#ifdef TR_DEBUG_CHECKS
#define TR_DASSERT(cond) TR_ASSERT(cond)
#else
#define TR_DASSERT(cond) static_cast<void>(0)
#endif
