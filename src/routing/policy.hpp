// Routing policies: rank the replicas for one request, best first. The caller
// walks down the list when a choice fails (connect refused, ...). Pure code: no
// sockets, no clocks, no globals. Each worker owns its policy object, so state
// such as a round-robin cursor or a random generator needs no synchronisation.
//
// A policy reads replicas through ReplicaSource, lazily: above
// PolicyOptions::sample_above replicas it evaluates a random subset of
// sample_size of them (power-of-d choices), so a decision costs the same for 64
// replicas as for 1,000.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "estimator/predict.hpp"
#include "tokenrelay/request_facts.hpp"

namespace tr::routing {

// One replica as policies see it: health, this process's dispatch accounting,
// the best-known engine load (scrape combined with accounting) and the
// estimator's inputs.
struct ReplicaView {
  bool usable = true;      // up and not ejected
  bool saturated = false;  // at its in-flight limit: not ranked now (the caller may queue)
  double weight = 1.0;     // [backend NAME] weight
  int64_t inflight = 0;    // requests this process has in flight there
  double running = 0;      // best-known requests running (>= 0)
  double waiting = 0;      // best-known requests queued (>= 0)
  double kv_usage = -1;    // 0..1, -1 unknown
  estimator::ReplicaLoad load;
};

class ReplicaSource {
 public:
  virtual size_t size() const = 0;
  // Fills <out> for replica <i> (0 <= i < size()).
  virtual void view(size_t i, ReplicaView* out) const = 0;

 protected:
  ~ReplicaSource() = default;
};

struct RouteRequest {
  const RequestFacts* facts = nullptr;
  estimator::RequestCost cost{};  // estimated prompt and output tokens
};

// A decision: indices of replicas, best first, and for the first one what the
// estimator predicted (latency policy only; negative otherwise).
struct Ranking {
  size_t count = 0;
  bool saturated = false;  // count == 0 because every usable replica was saturated
  double predicted_ttft_s = -1;
  double predicted_completion_s = -1;
};

enum class PolicyKind { round_robin, least_requests, power_of_two, kv_aware, latency };

struct PolicyOptions {
  PolicyKind kind = PolicyKind::latency;
  double ttft_weight = 1.0;     // latency: score = completion + ttft_weight * ttft
  double imposed_weight = 0.3;  // ... + imposed_weight * delay imposed on running requests
  double imposed_cap = 0;       // that delay counts at most imposed_cap x own completion (0: all)
  uint32_t sample_above = 16;   // evaluate a sample when there are more replicas than this
  uint32_t sample_size = 12;    // how many replicas the sample holds
  uint64_t seed = 1;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;
  // Writes up to out.size() indices of usable replicas into <out>, best first.
  // Unusable replicas are never ranked; count == 0 means none is usable.
  virtual Ranking rank(const RouteRequest& req, const ReplicaSource& src,
                       std::span<uint32_t> out) = 0;
};

std::unique_ptr<Policy> make_policy(const PolicyOptions& opt);
// "round_robin" | "least_requests" | "power_of_two" | "kv_aware" | "latency".
bool parse_policy(std::string_view text, PolicyKind* out);
std::string_view policy_name(PolicyKind kind);

}  // namespace tr::routing
