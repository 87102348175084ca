#include "routing/policy.hpp"

#include <algorithm>
#include <cmath>

namespace tr::routing {

namespace {

// Candidates a policy evaluated, with its score (lower is better).
struct Scored {
  uint32_t index;
  double score;
  double tiebreak;  // random: equal scores are taken in random order
  float ttft_s;     // the estimator's prediction (latency policy; -1 otherwise)
  float completion_s;
};

constexpr size_t kEvalMax = 256;  // replicas scored in one decision, at most

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed ? seed : 0x9e3779b97f4a7c15ull) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>((next() >> 32) * n >> 32); }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_;
};

// Base for the scoring policies: pick the evaluation set (all, or a random
// sample on large fleets), score each usable replica, sort, emit.
class ScoringPolicy : public Policy {
 public:
  explicit ScoringPolicy(const PolicyOptions& opt) : opt_(opt), rng_(opt.seed) {}

  Ranking rank(const RouteRequest& req, const ReplicaSource& src,
               std::span<uint32_t> out) override {
    Ranking r;
    const size_t n = src.size();
    if (n == 0 || out.empty()) return r;
    Scored scored[kEvalMax];
    size_t m = 0;
    ReplicaView v;
    const uint32_t start = cursor_++ % static_cast<uint32_t>(n);
    const uint64_t salt = rng_.next();
    bool saw_saturated = false;
    auto consider = [&](uint32_t i) {
      src.view(i, &v);
      if (!v.usable) return;
      if (v.saturated) {
        saw_saturated = true;
        return;
      }
      // Equal scores: in turn from a rotating start, or in a random order
      // (a per-decision salt hashed with the index: one multiply, no RNG call).
      double tie = round_robin_ties_
                       ? static_cast<double>((i + n - start) % n)
                       : static_cast<double>(((i + 1) * 0x9e3779b97f4a7c15ull ^ salt) >> 11);
      last_ = estimator::Prediction{-1, -1};
      double sc = score(req, v);
      scored[m++] = Scored{i, sc, tie, static_cast<float>(last_.ttft_s),
                           static_cast<float>(last_.completion_s)};
    };
    if (n <= opt_.sample_above && n <= kEvalMax) {
      for (uint32_t i = 0; i < n; ++i)
        consider(i);
    } else {
      // Power-of-d: a random sample keeps the cost flat. Duplicates are skipped;
      // if the sample found nothing usable, fall back to a full scan.
      size_t want = std::min<size_t>({opt_.sample_size, n, kEvalMax});
      uint32_t picked[kEvalMax];
      size_t npicked = 0;
      for (size_t tries = 0; npicked < want && tries < want * 4; ++tries) {
        uint32_t i = rng_.below(static_cast<uint32_t>(n));
        if (std::find(picked, picked + npicked, i) != picked + npicked) continue;
        picked[npicked++] = i;
        consider(i);
      }
      for (uint32_t i = 0; m == 0 && i < n && m < kEvalMax; ++i)
        consider(i);
    }
    // Only the first out.size() places matter (a few: max_attempts): select
    // them instead of sorting everything.
    r.count = std::min(m, out.size());
    r.saturated = m == 0 && saw_saturated;
    auto better = [](const Scored& a, const Scored& b) {
      if (a.score != b.score) return a.score < b.score;
      return a.tiebreak < b.tiebreak;
    };
    std::partial_sort(scored, scored + r.count, scored + m, better);
    for (size_t k = 0; k < r.count; ++k)
      out[k] = scored[k].index;
    if (r.count > 0) {
      r.predicted_ttft_s = scored[0].ttft_s;
      r.predicted_completion_s = scored[0].completion_s;
    }
    return r;
  }

 protected:
  // Lower is better. Must be finite.
  virtual double score(const RouteRequest& req, const ReplicaView& v) = 0;
  // score() may leave the estimator's prediction here for the ranking to report.
  estimator::Prediction last_{-1, -1};

  PolicyOptions opt_;
  Rng rng_;
  uint32_t cursor_ = 0;
  bool round_robin_ties_ = false;
};

double per_weight(double load, double weight) {
  return load / (weight > 0 ? weight : 1.0);
}

class LeastRequests final : public ScoringPolicy {
 public:
  explicit LeastRequests(const PolicyOptions& opt) : ScoringPolicy(opt) {
    round_robin_ties_ = true;
    cursor_ = static_cast<uint32_t>(opt.seed);
  }
  std::string_view name() const override { return "least_requests"; }

 protected:
  double score(const RouteRequest&, const ReplicaView& v) override {
    return per_weight(static_cast<double>(v.inflight), v.weight);
  }
};

// Load score in the style of vLLM production-stack's and SGLang's load-aware
// routers: queued requests weigh more than running ones, and a full KV cache
// (preemption ahead) weighs most.
class KvAware final : public ScoringPolicy {
 public:
  using ScoringPolicy::ScoringPolicy;
  std::string_view name() const override { return "kv_aware"; }

 protected:
  double score(const RouteRequest&, const ReplicaView& v) override {
    double kv = v.kv_usage < 0 ? 0 : v.kv_usage;
    double load = v.running + 2.0 * v.waiting + 10.0 * kv;
    return per_weight(load, v.weight);
  }
};

// Minimum predicted completion, TTFT weighted: score = completion + w * ttft
// (+ imposed_weight * the delay the request adds to those already running).
class Latency final : public ScoringPolicy {
 public:
  using ScoringPolicy::ScoringPolicy;
  std::string_view name() const override { return "latency"; }

 protected:
  double score(const RouteRequest& req, const ReplicaView& v) override {
    estimator::Prediction p = estimator::predict(v.load, req.cost);
    last_ = p;
    double imposed = opt_.imposed_cap > 0 ? std::min(p.imposed_s, opt_.imposed_cap * p.completion_s)
                                          : p.imposed_s;
    double s = p.completion_s + opt_.ttft_weight * p.ttft_s + opt_.imposed_weight * imposed;
    // A heavier replica is a faster one: divide its predicted time.
    s = per_weight(s, v.weight);
    return std::isfinite(s) ? s : 1e18;
  }
};

// Rotation over usable replicas; no scores read.
class RoundRobin final : public Policy {
 public:
  explicit RoundRobin(const PolicyOptions& opt) : cursor_(static_cast<uint32_t>(opt.seed)) {}
  std::string_view name() const override { return "round_robin"; }
  Ranking rank(const RouteRequest&, const ReplicaSource& src, std::span<uint32_t> out) override {
    Ranking r;
    const size_t n = src.size();
    if (n == 0) return r;
    uint32_t start = cursor_++ % static_cast<uint32_t>(n);
    ReplicaView v;
    bool saw_saturated = false;
    for (size_t k = 0; k < n && r.count < out.size(); ++k) {
      uint32_t i = static_cast<uint32_t>((start + k) % n);
      src.view(i, &v);
      if (v.usable && v.saturated) saw_saturated = true;
      if (v.usable && !v.saturated) out[r.count++] = i;
    }
    r.saturated = r.count == 0 && saw_saturated;
    return r;
  }

 private:
  uint32_t cursor_;
};

// Two random usable replicas, the less loaded first (then the other); further
// fallbacks in least-requests order.
class PowerOfTwo final : public Policy {
 public:
  explicit PowerOfTwo(const PolicyOptions& opt) : least_(opt), rng_(opt.seed ^ 0x51ed) {}
  std::string_view name() const override { return "power_of_two"; }
  Ranking rank(const RouteRequest& req, const ReplicaSource& src,
               std::span<uint32_t> out) override {
    const size_t n = src.size();
    Ranking r;
    if (n == 0 || out.empty()) return r;
    ReplicaView va;
    ReplicaView vb;
    uint32_t a = 0;
    uint32_t b = 0;
    bool have_a = false;
    bool have_b = false;
    for (int tries = 0; tries < 8 && !(have_a && have_b); ++tries) {
      uint32_t i = rng_.below(static_cast<uint32_t>(n));
      if (have_a && i == a) continue;
      ReplicaView& v = have_a ? vb : va;
      src.view(i, &v);
      if (!v.usable || v.saturated) continue;
      (have_a ? b : a) = i;
      (have_a ? have_b : have_a) = true;
    }
    if (!have_a) return least_.rank(req, src, out);
    if (have_b && per_weight(static_cast<double>(vb.inflight), vb.weight) <
                      per_weight(static_cast<double>(va.inflight), va.weight)) {
      std::swap(a, b);
    }
    out[r.count++] = a;
    if (have_b && r.count < out.size()) out[r.count++] = b;
    if (r.count < out.size()) {
      uint32_t rest[kEvalMax];
      size_t cap = std::min<size_t>(out.size() - r.count + 2, kEvalMax);
      Ranking more = least_.rank(req, src, std::span<uint32_t>(rest, cap));
      for (size_t k = 0; k < more.count && r.count < out.size(); ++k) {
        if (rest[k] != a && !(have_b && rest[k] == b)) out[r.count++] = rest[k];
      }
    }
    return r;
  }

 private:
  LeastRequests least_;
  Rng rng_;
};

}  // namespace

std::unique_ptr<Policy> make_policy(const PolicyOptions& opt) {
  switch (opt.kind) {
    case PolicyKind::round_robin:
      return std::make_unique<RoundRobin>(opt);
    case PolicyKind::least_requests:
      return std::make_unique<LeastRequests>(opt);
    case PolicyKind::power_of_two:
      return std::make_unique<PowerOfTwo>(opt);
    case PolicyKind::kv_aware:
      return std::make_unique<KvAware>(opt);
    case PolicyKind::latency:
      return std::make_unique<Latency>(opt);
  }
  return std::make_unique<Latency>(opt);
}

bool parse_policy(std::string_view text, PolicyKind* out) {
  static constexpr PolicyKind kAll[] = {PolicyKind::round_robin, PolicyKind::least_requests,
                                        PolicyKind::power_of_two, PolicyKind::kv_aware,
                                        PolicyKind::latency};
  for (PolicyKind k : kAll) {
    if (policy_name(k) == text) {
      *out = k;
      return true;
    }
  }
  return false;
}

std::string_view policy_name(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::round_robin:
      return "round_robin";
    case PolicyKind::least_requests:
      return "least_requests";
    case PolicyKind::power_of_two:
      return "power_of_two";
    case PolicyKind::kv_aware:
      return "kv_aware";
    case PolicyKind::latency:
      return "latency";
  }
  return "latency";
}

}  // namespace tr::routing
