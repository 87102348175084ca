// Routing decision cost: Policy::rank over the real replica table (seqlock
// reads + dispatch counters + estimator) for 64 .. 5000 replicas, every policy.
// Not a test: prints ns per decision. Run: build/bench/micro/route_decision
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "proxy/worker.hpp"
#include "routing/policy.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 200000;
  std::vector<size_t> sizes = {4, 16, 64, 128, 1000, 5000};
  if (argc > 2) sizes = {static_cast<size_t>(std::atol(argv[2]))};  // one size only
  std::printf("%-8s %-16s %12s\n", "replicas", "policy", "ns/decision");
  for (size_t n : sizes) {
    tr::Config cfg;
    cfg.backends.resize(n);
    tr::scores::Table table(n);
    for (size_t i = 0; i < n; ++i) {
      cfg.backends[i].name = "r" + std::to_string(i);
      tr::scores::ScrapedState st;
      st.metrics_ok = true;
      st.running = static_cast<float>(i % 13);
      st.waiting = static_cast<float>(i % 3);
      st.kv_usage = static_cast<float>(i % 10) / 10.0f;
      st.calibration_samples = 5;
      st.step_base_s = 0.01f + 0.001f * static_cast<float>(i % 5);
      st.step_per_token_s = 40e-6f;
      table.at(i).scraped.store(st);
      tr::scores::RoutingState rs;
      rs.flags = 3;
      rs.running = st.running;
      rs.waiting = st.waiting;
      rs.kv_usage = st.kv_usage;
      rs.step_base_s = st.step_base_s;
      rs.step_per_token_s = st.step_per_token_s;
      table.at(i).routing.store(rs);
      table.at(i).dispatch.inflight.store(static_cast<int64_t>(i % 7));
      table.at(i).dispatch.prefill_tokens.store(static_cast<int64_t>((i % 4) * 500));
    }
    tr::proxy::TableSource src(&cfg, &table);
    for (auto kind : {tr::routing::PolicyKind::round_robin, tr::routing::PolicyKind::least_requests,
                      tr::routing::PolicyKind::power_of_two, tr::routing::PolicyKind::kv_aware,
                      tr::routing::PolicyKind::latency}) {
      tr::routing::PolicyOptions opt;
      opt.kind = kind;
      auto policy = tr::routing::make_policy(opt);
      tr::RequestFacts facts;
      tr::routing::RouteRequest req;
      req.facts = &facts;
      req.cost = {215, 200};
      uint32_t out[3];
      uint64_t sink = 0;
      auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < iters; ++k) {
        tr::routing::Ranking r = policy->rank(req, src, out);
        sink += r.count ? out[0] : 0;
      }
      auto t1 = std::chrono::steady_clock::now();
      double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / iters;
      std::printf("%-8zu %-16s %12.1f%s\n", n, std::string(policy->name()).c_str(), ns,
                  sink == 42 ? " " : "");
    }
  }
  return 0;
}
