#include "routing/policy.hpp"

#include <algorithm>

namespace tr::routing {

size_t LeastInflight::rank(const RequestFacts& req, std::span<const Candidate> replicas,
                           std::span<uint32_t> out) {
  (void)req;
  const size_t n = replicas.size();
  if (n == 0 || out.empty()) return 0;
  // Start the scan at a rotating offset so equal loads are taken in turn.
  const size_t start = cursor_++ % n;
  // Positions into <replicas>, in rotated order, then sorted by load; a stable
  // sort keeps the rotation among equals: that is the round-robin tie-break.
  size_t count = 0;
  for (size_t k = 0; k < n && count < out.size(); ++k) {
    size_t pos = (start + k) % n;
    if (replicas[pos].usable) out[count++] = static_cast<uint32_t>(pos);
  }
  auto load = [&](uint32_t pos) {
    const Candidate& c = replicas[pos];
    return static_cast<double>(c.inflight) / (c.weight > 0 ? c.weight : 1.0);
  };
  std::stable_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(count),
                   [&](uint32_t a, uint32_t b) { return load(a) < load(b); });
  for (size_t i = 0; i < count; ++i)
    out[i] = replicas[out[i]].index;
  return count;
}

std::unique_ptr<Policy> make_default_policy(uint32_t seed) {
  return std::make_unique<LeastInflight>(seed);
}

}  // namespace tr::routing
