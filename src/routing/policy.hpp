// Routing policies: given what is known about each replica, rank the replicas
// for one request, best first. The caller walks down the list when a choice
// fails (connect refused, ...). Pure code: no sockets, no clocks, no globals;
// each worker owns its own policy object (state such as a round-robin cursor is
// per worker and needs no synchronisation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "tokenrelay/request_facts.hpp"

namespace tr::routing {

// One replica as a policy sees it. Filled by the caller from the replica table.
struct Candidate {
  uint32_t index = 0;    // replica index in config order
  bool usable = true;    // up and not excluded for this request
  int64_t inflight = 0;  // requests in flight through this process
  double weight = 1.0;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;
  // Writes the indices of usable candidates into <out>, best first, and returns
  // how many were written (at most out.size()). Unusable candidates are never ranked.
  virtual size_t rank(const RequestFacts& req, std::span<const Candidate> replicas,
                      std::span<uint32_t> out) = 0;
};

// Fewest in-flight requests (scaled by weight); ties broken round robin.
class LeastInflight final : public Policy {
 public:
  explicit LeastInflight(uint32_t seed = 0) : cursor_(seed) {}
  std::string_view name() const override { return "least_requests"; }
  size_t rank(const RequestFacts& req, std::span<const Candidate> replicas,
              std::span<uint32_t> out) override;

 private:
  uint32_t cursor_;
};

std::unique_ptr<Policy> make_default_policy(uint32_t seed);

}  // namespace tr::routing
