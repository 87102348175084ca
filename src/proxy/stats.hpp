// Counters a worker keeps about its own traffic. Each worker writes only its
// own WorkerStats (single writer: relaxed load + store, no read-modify-write);
// the admin thread reads all of them and sums (relaxed loads), so no counter
// is ever shared between two writers and no lock is taken.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/catalog.hpp"

namespace tr::proxy {

// Status codes with their own series; others fall into a class ("2xx", ...).
inline constexpr int kCodes[] = {200, 400, 401, 403, 404, 405, 408, 413, 414,
                                 422, 429, 431, 500, 501, 502, 503, 504};
inline constexpr size_t kNamedCodes = sizeof(kCodes) / sizeof(kCodes[0]);
inline constexpr size_t kCodeSlots = kNamedCodes + 5;  // + 1xx..5xx classes

inline size_t code_slot(int status) {
  for (size_t i = 0; i < kNamedCodes; ++i) {
    if (kCodes[i] == status) return i;
  }
  int cls = status / 100;
  if (cls < 1 || cls > 5) cls = 5;
  return kNamedCodes + static_cast<size_t>(cls - 1);
}

// Upper bounds (seconds) of the proxy-observed TTFT histogram.
inline constexpr double kTtftBuckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                          0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                          7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
inline constexpr size_t kTtftBucketCount = sizeof(kTtftBuckets) / sizeof(kTtftBuckets[0]);

struct Counter {
  std::atomic<uint64_t> v{0};
  void add(uint64_t n = 1) {
    v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

// Why an exchange ended other than normally; label values of
// tokenrelay_request_failures_total{reason}.
enum class Failure : uint8_t {
  client_abort,        // client went away before the response ended
  upstream_connect,    // no connection to any ranked replica
  upstream_reset,      // replica closed/reset before the response head
  upstream_midstream,  // replica failed after the response started
  upstream_protocol,   // replica sent invalid HTTP
  upstream_timeout,    // first byte or idle timeout
  bad_request,         // malformed client request
  client_timeout,      // client too slow: header/body not received, or not reading
  count_,
};
inline constexpr const char* kFailureNames[] = {
    "client_abort",      "upstream_connect", "upstream_reset", "upstream_midstream",
    "upstream_protocol", "upstream_timeout", "bad_request",    "client_timeout"};

struct alignas(64) BackendStats {
  Counter requests[kCodeSlots];  // by final status code
  Counter retries;
  Counter route_decisions;  // times ranked first by the policy
};

// Per model (slots of models::SlotNames, the same for every configuration of
// the process; the last one is model="other").
struct ModelStats {
  Counter requests[kCodeSlots];      // by final status code
  Counter prompt_tokens;             // usage.prompt_tokens of the responses
  Counter completion_tokens;         // usage.completion_tokens (or relayed token events)
  std::atomic<int64_t> inflight{0};  // gauge: resolved to this model, not finished
};

// Upper bounds (seconds) of the routing decision time histogram.
inline constexpr double kDecisionBuckets[] = {2.5e-7, 5e-7,   1e-6, 2e-6, 5e-6,
                                              1e-5,   2.5e-5, 5e-5, 1e-4, 1e-3};
// Upper bounds (seconds) of predicted minus observed TTFT: negative = optimistic.
inline constexpr double kTtftErrorBuckets[] = {-5,     -2,    -1, -0.5, -0.25, -0.1, -0.05,
                                               -0.025, -0.01, 0,  0.01, 0.025, 0.05, 0.1,
                                               0.25,   0.5,   1,  2,    5};

// A histogram with fixed bounds, single writer (the owning worker).
template <size_t N>
struct Histogram {
  const double* bounds;
  Counter buckets[N + 1];  // last = +Inf; not cumulative (the renderer accumulates)
  Counter count;
  std::atomic<double> sum{0};
  explicit Histogram(const double (&b)[N]) : bounds(b) {}
  void observe(double v) {
    size_t i = 0;
    while (i < N && v > bounds[i])
      ++i;
    buckets[i].add();
    count.add();
    sum.store(sum.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
  }
  static constexpr size_t size() { return N; }
};

// Per-backend counters are indexed like the worker's configuration
// (cfg.backends); names() says which replica each index is, so the admin
// thread can add up workers of different configurations (a reload keeps the
// old workers draining next to the new ones) by replica name.
class WorkerStats {
 public:
  explicit WorkerStats(std::vector<std::string> names)
      : names_(std::move(names)),
        per_backend_(std::make_unique<BackendStats[]>(names_.size() + 1)) {
    for (size_t i = 0; i < names_.size(); ++i)
      index_.emplace(names_[i], i);
  }
  WorkerStats(const WorkerStats&) = delete;
  WorkerStats& operator=(const WorkerStats&) = delete;

  size_t backends() const { return names_.size(); }
  const std::vector<std::string>& names() const { return names_; }
  // Index backends() is "no backend" (answered by the proxy itself).
  BackendStats& backend(size_t i) { return per_backend_[i]; }
  const BackendStats& backend(size_t i) const { return per_backend_[i]; }
  BackendStats& none() { return per_backend_[names_.size()]; }
  const BackendStats& none() const { return per_backend_[names_.size()]; }
  // The counters of the replica called <name>, or nullptr. Immutable map: safe
  // from any thread.
  const BackendStats* find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &per_backend_[it->second];
  }

  // Adds every counter of <other> (a worker that has stopped) to this one,
  // per-backend counters by replica name (names this object does not have are
  // dropped). Gauges are not added. Single writer: the caller owns this object.
  void absorb(const WorkerStats& other);

  Counter ttft_buckets[kTtftBucketCount + 1];  // last = +Inf
  Counter ttft_count;
  Counter ttft_sum_us;
  Counter stream_events;
  Counter json_malformed;  // request bodies that did not parse (forwarded anyway)
  Counter auth_failures;   // 401: missing or wrong API key
  Counter connections_accepted;
  Counter connections_rejected;  // over connections_per_worker
  std::atomic<int64_t> connections_open{0};
  std::atomic<int64_t> queued{0};  // requests in the admission queue now
  Counter queue_admitted;          // requests that waited and then got a replica
  Counter queue_rejected;          // 429/503 from the admission queue (full or timed out)
  Counter failures[static_cast<size_t>(Failure::count_)];
  Counter upstream_connects;
  Counter upstream_bytes_in;  // response bytes read from replicas
  Counter upstream_reuses;
  ModelStats models[models::kStatsSlots + 1];
  Histogram<sizeof(kDecisionBuckets) / sizeof(double)> route_decision{kDecisionBuckets};
  Histogram<sizeof(kTtftErrorBuckets) / sizeof(double)> ttft_error{kTtftErrorBuckets};

  void observe_route_decision(double seconds) { route_decision.observe(seconds); }
  void observe_ttft_error(double seconds) { ttft_error.observe(seconds); }

  void observe_ttft(double seconds) {
    size_t i = 0;
    while (i < kTtftBucketCount && seconds > kTtftBuckets[i])
      ++i;
    ttft_buckets[i].add();
    ttft_count.add();
    ttft_sum_us.add(static_cast<uint64_t>(seconds * 1e6));
  }

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> index_;
  std::unique_ptr<BackendStats[]> per_backend_;
};

inline void add_backend(BackendStats* to, const BackendStats& from) {
  for (size_t i = 0; i < kCodeSlots; ++i)
    to->requests[i].add(from.requests[i].get());
  to->retries.add(from.retries.get());
  to->route_decisions.add(from.route_decisions.get());
}

template <size_t N>
void add_histogram(Histogram<N>* to, const Histogram<N>& from) {
  for (size_t i = 0; i <= N; ++i)
    to->buckets[i].add(from.buckets[i].get());
  to->count.add(from.count.get());
  to->sum.store(to->sum.load(std::memory_order_relaxed) + from.sum.load(std::memory_order_relaxed),
                std::memory_order_relaxed);
}

inline void WorkerStats::absorb(const WorkerStats& o) {
  for (size_t i = 0; i < o.backends(); ++i) {
    auto it = index_.find(o.names_[i]);
    if (it != index_.end()) add_backend(&per_backend_[it->second], o.backend(i));
  }
  add_backend(&none(), o.none());
  for (size_t i = 0; i <= kTtftBucketCount; ++i)
    ttft_buckets[i].add(o.ttft_buckets[i].get());
  ttft_count.add(o.ttft_count.get());
  ttft_sum_us.add(o.ttft_sum_us.get());
  stream_events.add(o.stream_events.get());
  json_malformed.add(o.json_malformed.get());
  auth_failures.add(o.auth_failures.get());
  connections_accepted.add(o.connections_accepted.get());
  connections_rejected.add(o.connections_rejected.get());
  queue_admitted.add(o.queue_admitted.get());
  queue_rejected.add(o.queue_rejected.get());
  for (size_t i = 0; i < static_cast<size_t>(Failure::count_); ++i)
    failures[i].add(o.failures[i].get());
  upstream_connects.add(o.upstream_connects.get());
  upstream_bytes_in.add(o.upstream_bytes_in.get());
  upstream_reuses.add(o.upstream_reuses.get());
  for (size_t m = 0; m <= models::kStatsSlots; ++m) {
    for (size_t i = 0; i < kCodeSlots; ++i)
      models[m].requests[i].add(o.models[m].requests[i].get());
    models[m].prompt_tokens.add(o.models[m].prompt_tokens.get());
    models[m].completion_tokens.add(o.models[m].completion_tokens.get());
  }
  add_histogram(&route_decision, o.route_decision);
  add_histogram(&ttft_error, o.ttft_error);
}

}  // namespace tr::proxy
