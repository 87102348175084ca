// Routing policies (src/routing): pure ranking over a fake replica source.
#include <catch.hpp>
#include <map>
#include <vector>

#include "estimator/engine_defaults.hpp"
#include "routing/policy.hpp"

using namespace tr::routing;

namespace {

// A replica table in memory; counts how many replicas a decision looked at.
class FakeSource final : public ReplicaSource {
 public:
  explicit FakeSource(size_t n) : v(n) {
    for (ReplicaView& r : v) {
      r.load.budget_tokens = tr::estimator::kDefaultBudgetTokens;
      r.load.max_num_seqs = tr::estimator::kDefaultMaxNumSeqs;
      r.load.step_base_s = 0.015;
      r.load.step_per_token_s = 40e-6;
    }
  }
  size_t size() const override { return v.size(); }
  void view(size_t i, ReplicaView* out) const override {
    ++views;
    *out = v[i];
  }
  std::vector<ReplicaView> v;
  mutable size_t views = 0;
};

std::unique_ptr<Policy> make(PolicyKind k, uint64_t seed = 7) {
  PolicyOptions o;
  o.kind = k;
  o.seed = seed;
  return make_policy(o);
}

RouteRequest req(uint32_t prompt = 200, uint32_t output = 200) {
  RouteRequest r;
  r.cost = {prompt, output};
  return r;
}

}  // namespace

TEST_CASE("policy names parse both ways", "[routing]") {
  for (auto k : {PolicyKind::round_robin, PolicyKind::least_requests, PolicyKind::power_of_two,
                 PolicyKind::kv_aware, PolicyKind::latency}) {
    PolicyKind back;
    REQUIRE(parse_policy(policy_name(k), &back));
    CHECK(back == k);
    CHECK(make(k)->name() == policy_name(k));
  }
  PolicyKind x;
  CHECK_FALSE(parse_policy("fastest", &x));
}

TEST_CASE("least_requests ranks by in-flight and skips unusable replicas", "[routing]") {
  FakeSource src(4);
  src.v[0].inflight = 5;
  src.v[1].inflight = 1;
  src.v[2].inflight = 3;
  src.v[3].usable = false;
  uint32_t out[4];
  Ranking r = make(PolicyKind::least_requests)->rank(req(), src, out);
  REQUIRE(r.count == 3);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
  CHECK(out[2] == 0);
}

TEST_CASE("least_requests takes equal loads in turn", "[routing]") {
  FakeSource src(3);
  auto p = make(PolicyKind::least_requests);
  std::map<uint32_t, int> first;
  for (int k = 0; k < 300; ++k) {
    uint32_t out[3];
    REQUIRE(p->rank(req(), src, out).count == 3);
    ++first[out[0]];
  }
  CHECK(first[0] == 100);
  CHECK(first[1] == 100);
  CHECK(first[2] == 100);
}

TEST_CASE("weight scales load; nothing usable ranks nothing", "[routing]") {
  FakeSource src(2);
  src.v[0].inflight = 4;
  src.v[0].weight = 4.0;  // 1 per unit of weight
  src.v[1].inflight = 2;  // 2 per unit
  uint32_t out[2];
  auto p = make(PolicyKind::least_requests);
  REQUIRE(p->rank(req(), src, out).count == 2);
  CHECK(out[0] == 0);
  src.v[0].usable = src.v[1].usable = false;
  for (auto k : {PolicyKind::round_robin, PolicyKind::least_requests, PolicyKind::power_of_two,
                 PolicyKind::kv_aware, PolicyKind::latency}) {
    CHECK(make(k)->rank(req(), src, out).count == 0);
  }
}

TEST_CASE("round_robin rotates over usable replicas", "[routing]") {
  FakeSource src(3);
  src.v[1].usable = false;
  auto p = make(PolicyKind::round_robin, 0);
  std::vector<uint32_t> firsts;
  for (int k = 0; k < 4; ++k) {
    uint32_t out[3];
    REQUIRE(p->rank(req(), src, out).count == 2);
    firsts.push_back(out[0]);
  }
  CHECK(firsts == std::vector<uint32_t>{0, 2, 2, 0});
}

TEST_CASE("power_of_two puts the less loaded of its two picks first", "[routing]") {
  FakeSource src(2);
  src.v[0].inflight = 9;
  src.v[1].inflight = 1;
  auto p = make(PolicyKind::power_of_two);
  for (int k = 0; k < 50; ++k) {
    uint32_t out[2];
    REQUIRE(p->rank(req(), src, out).count == 2);
    CHECK(out[0] == 1);
    CHECK(out[1] == 0);
  }
}

TEST_CASE("kv_aware prefers short queues and free KV cache", "[routing]") {
  FakeSource src(3);
  src.v[0].waiting = 4;
  src.v[1].kv_usage = 0.95;
  src.v[2].running = 2;
  uint32_t out[3];
  REQUIRE(make(PolicyKind::kv_aware)->rank(req(), src, out).count == 3);
  CHECK(out[0] == 2);  // 2 running < 9.5 (KV) < 8 waiting-weighted? 2 + 0 + 0 = 2
  CHECK(out[2] == 1);  // 10 * 0.95 = 9.5 is the worst
}

TEST_CASE("latency avoids a replica with a long prefill in progress", "[routing]") {
  FakeSource src(3);
  src.v[0].load.prefill_tokens_queued = 30000;  // a long document prefilling
  src.v[0].load.running = 1;
  src.v[1].load.step_base_s = 0.030;  // twice as slow per step
  src.v[1].load.step_per_token_s = 80e-6;
  uint32_t out[3];
  auto p = make(PolicyKind::latency);
  // A short answer: replica 0's ~1.4 s of queued prefill (15 full steps) costs
  // more than replica 1's doubled step time over 20 tokens (~0.65 s).
  Ranking r = p->rank(req(200, 20), src, out);
  REQUIRE(r.count == 3);
  CHECK(out[0] == 2);  // idle and fast
  CHECK(out[1] == 1);
  CHECK(out[2] == 0);
  CHECK(r.predicted_ttft_s > 0);
  CHECK(r.predicted_completion_s >= r.predicted_ttft_s);
}

TEST_CASE("latency spreads a burst when dispatch accounting is credited", "[routing]") {
  // Between two scrapes every replica looks idle; only the proxy's own
  // accounting (credited at each decision) can spread a burst.
  FakeSource src(4);
  auto p = make(PolicyKind::latency);
  std::map<uint32_t, int> got;
  for (int k = 0; k < 8; ++k) {
    uint32_t out[4];
    REQUIRE(p->rank(req(2000, 200), src, out).count == 4);
    ReplicaView& v = src.v[out[0]];
    ++got[out[0]];
    v.inflight += 1;
    v.load.running += 1;
    v.load.prefill_tokens_queued += 2000;
    v.load.decode_tokens_remaining += 200;
  }
  for (uint32_t i = 0; i < 4; ++i)
    CHECK(got[i] == 2);
}

TEST_CASE("large fleets are sampled: the decision looks at a bounded number", "[routing]") {
  for (size_t n : {size_t{17}, size_t{64}, size_t{1000}, size_t{5000}}) {
    FakeSource src(n);
    for (size_t i = 0; i < n; ++i)
      src.v[i].inflight = static_cast<int64_t>(i % 7);
    auto p = make(PolicyKind::latency);
    uint32_t out[3];
    src.views = 0;
    Ranking r = p->rank(req(), src, out);
    REQUIRE(r.count == 3);
    // At most sample_size (16) scored plus one re-read of the winner.
    CHECK(src.views <= 17);
  }
}

TEST_CASE("latency: imposed_cap keeps a long prompt off a slow idle replica", "[routing]") {
  // r0: fast, 40 requests decoding. r1: twice as slow, idle.
  FakeSource src(2);
  src.v[0].load.running = 40;
  src.v[0].load.decode_tokens_remaining = 40 * 200;
  src.v[1].load.step_base_s = 0.030;
  src.v[1].load.step_per_token_s = 80e-6;
  auto pick = [&](double cap, uint32_t prompt) {
    PolicyOptions o;
    o.kind = PolicyKind::latency;
    o.imposed_cap = cap;
    auto p = make_policy(o);
    uint32_t out[2];
    Ranking r = p->rank(req(prompt, 300), src, out);
    REQUIRE(r.count == 2);
    return out[0];
  };
  // Uncapped, a 12k-token prompt's delay to the 40 running requests (40 us x
  // 40 x 12k = 19 s, x 0.3) outweighs its own doubled time on r1.
  CHECK(pick(0, 12000) == 1);
  // Capped at its own completion, it goes where it finishes soonest.
  CHECK(pick(1, 12000) == 0);
  // A short prompt is not affected by the cap: both send it to the fast one.
  CHECK(pick(0, 100) == 0);
  CHECK(pick(1, 100) == 0);
}
