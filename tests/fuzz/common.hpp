// Helpers shared by the libFuzzer targets in tests/fuzz/<target>/.
//
// Every target takes the raw bytes a peer would send (so seeds are real
// requests, responses, streams, expositions and INI files, readable and usable
// outside the fuzzer). Where a target needs more choices than the bytes carry
// (where to split the input into reads, which parser options to use) it draws
// them from a hash of the input: deterministic for a given input, different
// for nearly every mutation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

// A property the code under test must keep. On failure: message, then abort(),
// which libFuzzer reports as a crash and saves the input for.
#define FUZZ_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : ::trfuzz::check_failed(#cond, __FILE__, __LINE__))

namespace trfuzz {

[[noreturn]] inline void check_failed(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", expr, file, line);
  std::abort();
}

// FNV-1a over the input: the seed of every data-derived choice.
inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// splitmix64: small, fast, good enough to pick split points.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n]; 0 when n == 0.
  size_t upto(size_t n) { return static_cast<size_t>(next() % (static_cast<uint64_t>(n) + 1)); }
  bool bit() { return (next() & 1) != 0; }

 private:
  uint64_t s_;
};

// How a stream of <n> bytes arrives: the end offset of each read, ascending,
// the last one == n. Never empty (n == 0 gives one empty read).
using Cuts = std::vector<size_t>;

inline Cuts cuts_whole(size_t n) {
  return Cuts{n};
}

// One split at a data-derived point.
inline Cuts cuts_one_split(size_t n, Rng* rng) {
  size_t at = rng->upto(n);
  return at == 0 || at == n ? Cuts{n} : Cuts{at, n};
}

// Up to <pieces_max> reads of data-derived sizes (short ones likelier, so
// line ends, CRLFs and chunk-size lines get cut often).
inline Cuts cuts_random(size_t n, Rng* rng, size_t pieces_max) {
  Cuts c;
  size_t at = 0;
  while (at < n && c.size() + 1 < pieces_max) {
    size_t left = n - at;
    size_t step = 1 + (rng->bit() ? rng->upto(left < 8 ? left - 1 : 7) : rng->upto(left - 1));
    at += step;
    c.push_back(at);
  }
  if (c.empty() || c.back() != n) c.push_back(n);
  return c;
}

// One byte per read.
inline Cuts cuts_bytes(size_t n) {
  Cuts c;
  c.reserve(n);
  for (size_t i = 1; i <= n; ++i)
    c.push_back(i);
  if (c.empty()) c.push_back(0);
  return c;
}

// The read plans every split-independence check compares: whole, one split,
// random pieces, and (for short inputs, to bound the cost) a byte at a time.
inline std::vector<Cuts> split_plans(size_t n, uint64_t seed, size_t byte_at_a_time_max) {
  Rng rng(seed);
  std::vector<Cuts> plans;
  plans.push_back(cuts_whole(n));
  plans.push_back(cuts_one_split(n, &rng));
  plans.push_back(cuts_random(n, &rng, 64));
  if (n <= byte_at_a_time_max) plans.push_back(cuts_bytes(n));
  return plans;
}

// True if <s> lies inside [base, base + n): views the code under test returns
// must point into the caller's buffer.
inline bool view_inside(std::string_view s, const char* base, size_t n) {
  if (s.empty()) return true;
  return s.data() >= base && s.data() + s.size() <= base + n;
}

}  // namespace trfuzz
