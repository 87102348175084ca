// Counts heap allocations made by this test binary, for the "no allocation in
// steady state" checks. Replaces the global operator new/delete, so include it
// in exactly one translation unit per test binary (the test_*.cpp, never main).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

inline std::atomic<uint64_t> g_allocations{0};

namespace tr::test {
inline void* counted_alloc(size_t n) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
}  // namespace tr::test

// noinline: GCC 12 otherwise sees free() meet a pointer from operator new once
// inlined, and warns (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(size_t n) {
  if (void* p = tr::test::counted_alloc(n)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](size_t n) {
  if (void* p = tr::test::counted_alloc(n)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(size_t n, const std::nothrow_t&) noexcept {
  return tr::test::counted_alloc(n);
}
[[gnu::noinline]] void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  return tr::test::counted_alloc(n);
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
