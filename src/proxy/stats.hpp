// Counters a worker keeps about its own traffic. Each worker writes only its
// own WorkerStats (single writer: relaxed load + store, no read-modify-write);
// the admin thread reads all of them and sums (relaxed loads), so no counter
// is ever shared between two writers and no lock is taken.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

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

class WorkerStats {
 public:
  explicit WorkerStats(size_t backends)
      : n_(backends), per_backend_(std::make_unique<BackendStats[]>(backends + 1)) {}
  size_t backends() const { return n_; }
  // Index n_ is "no backend" (answered by the proxy itself).
  BackendStats& backend(size_t i) { return per_backend_[i]; }
  const BackendStats& backend(size_t i) const { return per_backend_[i]; }
  BackendStats& none() { return per_backend_[n_]; }
  const BackendStats& none() const { return per_backend_[n_]; }

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
  size_t n_;
  std::unique_ptr<BackendStats[]> per_backend_;
};

}  // namespace tr::proxy
