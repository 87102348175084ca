// Estimator (src/estimator): token estimation, step-time calibration and the
// latency model. Pure code: no sockets, no clocks (except the [.perf] timing).
#include <algorithm>
#include <atomic>
#include <catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "estimator/calibration.hpp"
#include "estimator/predict.hpp"
#include "estimator/tokens.hpp"

using tr::RequestFacts;
using tr::estimator::CalibrationOptions;
using tr::estimator::kv_penalty;
using tr::estimator::ModelLearner;
using tr::estimator::predict;
using tr::estimator::Prediction;
using tr::estimator::ReplicaLoad;
using tr::estimator::RequestCost;
using tr::estimator::StepCalibrator;

#include "alloc_counter.hpp"

namespace {

constexpr double kA = 0.015;  // default step base
constexpr double kB = 40e-6;  // default per-token cost

RequestFacts facts(const char* model, uint64_t chars, uint32_t messages = 0,
                   int64_t max_tokens = -1) {
  RequestFacts f;
  f.json_ok = true;
  f.model = model;
  f.prompt_chars = chars;
  f.messages = messages;
  f.max_tokens = max_tokens;
  return f;
}

bool sane(const Prediction& p) {
  return std::isfinite(p.ttft_s) && std::isfinite(p.completion_s) && p.ttft_s >= 0 &&
         p.completion_s >= 0 && p.ttft_s <= p.completion_s && std::isfinite(p.imposed_s) &&
         p.imposed_s >= 0;
}

// predict() as it was before the data-parallel, KV-fit, preemption,
// long-prefill, priority and LoRA terms (commit 033ac4d), kept verbatim: with
// those inputs at their defaults predict() must return exactly this.
Prediction predict_before_extensions(const ReplicaLoad& r, const RequestCost& q) {
  using namespace tr::estimator;
  auto clean_amount = [](double x) { return x > 0 ? std::min(x, kLoadMax) : 0.0; };
  auto clean_step = [](double x, double def, double max) {
    return x >= 0 ? std::min(x, max) : def;
  };
  const double budget = r.budget_tokens ? r.budget_tokens : kDefaultBudgetTokens;
  const double seqs = r.max_num_seqs ? r.max_num_seqs : kDefaultMaxNumSeqs;
  const double base = clean_step(r.step_base_s, kDefaultStepBaseS, kStepBaseMaxS);
  const double per_token = clean_step(r.step_per_token_s, kDefaultStepPerTokenS, kStepPerTokenMaxS);
  const double running = clean_amount(r.running);
  const double waiting = clean_amount(r.waiting);
  const double prompt = std::max<uint32_t>(q.prompt_tokens, 1);
  const double output = std::max<uint32_t>(q.output_tokens, 1);
  const double decodes = std::min(running, seqs);
  const double chunk = std::max(budget - decodes, budget / 8);
  const double prefill = clean_amount(r.prefill_tokens_queued) + prompt;
  const double steps = std::max(1.0, std::ceil(prefill / chunk));
  const double prefill_s = steps * (base + per_token * decodes) + per_token * prefill;
  const double remaining = clean_amount(r.decode_tokens_remaining);
  const double mean_remaining =
      decodes >= 1 && remaining > 0 ? remaining / decodes : kSlotWaitDefaultRemainingTokens;
  double slot_wait_s = 0;
  if (running + waiting >= seqs) {
    const double excess = running + waiting + 1 - seqs;
    slot_wait_s = excess * mean_remaining / seqs * (base + per_token * seqs);
  }
  const double batch = std::min(running + waiting + 1, seqs);
  const double decode_s = (output - 1) * (base + per_token * batch);
  const double imposed_s = per_token * decodes * (prompt + std::min(output, mean_remaining));
  const double kv = kv_penalty(r.kv_usage);
  const double first_s = slot_wait_s + prefill_s;
  Prediction p;
  p.ttft_s = first_s * (1.0 + kKvTtftShare * (kv - 1.0));
  p.completion_s = (first_s + decode_s) * kv;
  p.imposed_s = imposed_s;
  return p;
}

bool same(const Prediction& a, const Prediction& b) {
  return a.ttft_s == b.ttft_s && a.completion_s == b.completion_s && a.imposed_s == b.imposed_s;
}

}  // namespace

// ---------------------------------------------------------------------------
// Prediction

TEST_CASE("idle replica: TTFT is one step of the prompt", "[estimator][predict]") {
  ReplicaLoad r;  // defaults: B 2048, S 256, a 15 ms, b 40 us, nothing running
  Prediction p = predict(r, {1000, 100});
  // D = 0, C = 2048, n = ceil(1000 / 2048) = 1: ttft = a + b * 1000 = 0.015 + 0.040
  CHECK(p.ttft_s == Approx(0.055));
  // decode batch Dq = min(0 + 0 + 1, 256) = 1, itl = a + b = 0.01504;
  // completion = 0.055 + 99 * 0.01504 = 0.055 + 1.48896
  CHECK(p.completion_s == Approx(1.54396));

  // A prompt longer than the budget spans steps: n = ceil(5000 / 2048) = 3,
  // ttft = 3 * a + b * 5000 = 0.045 + 0.2
  CHECK(predict(r, {5000, 1}).ttft_s == Approx(0.245));
  // One output token: completion == ttft.
  Prediction one = predict(r, {5000, 1});
  CHECK(one.completion_s == Approx(one.ttft_s));
}

TEST_CASE("imposed delay: what joining costs the requests already running",
          "[estimator][predict]") {
  ReplicaLoad r;  // b = 40 us per token
  // Idle: nobody to delay.
  CHECK(predict(r, {1000, 100}).imposed_s == 0);
  // 50 running with 4,000 output tokens left between them (m = 80):
  // imposed = b * D * (p + min(o, m)) = 40e-6 * 50 * (1000 + 80) = 2.16 s
  r.running = 50;
  r.decode_tokens_remaining = 4000;
  CHECK(predict(r, {1000, 100}).imposed_s == Approx(2.16));
  // A short output delays them for its own length only: 40e-6 * 50 * (1000 + 20) = 2.04 s
  CHECK(predict(r, {1000, 20}).imposed_s == Approx(2.04));
  // Twice the per-token cost, twice the delay; and it grows with the batch.
  ReplicaLoad slow = r;
  slow.step_per_token_s = 80e-6;
  CHECK(predict(slow, {1000, 100}).imposed_s == Approx(4.32));
  r.running = 100;
  r.decode_tokens_remaining = 8000;
  CHECK(predict(r, {1000, 100}).imposed_s == Approx(4.32));
}

TEST_CASE("a 30k-token prefill ahead delays a short request by ~30000/C full steps",
          "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 4;
  r.prefill_tokens_queued = 30000;
  Prediction p = predict(r, {100, 1});
  // D = 4, C = 2044, P = 30100, n = ceil(14.726) = 15:
  // ttft = 15 * (a + 4b) + b * 30100 = 15 * 0.01516 + 1.204 = 0.2274 + 1.204
  CHECK(p.ttft_s == Approx(1.4314));
  // The rule of thumb: 30000 / C = 14.677 steps of full-budget time
  // step(2048) = 0.015 + 0.08192 = 0.09692 s -> 1.4225 s.
  CHECK(p.ttft_s == Approx(30000.0 / 2044 * (kA + kB * 2048)).epsilon(0.02));
  // Without the prefill ahead: one step, a + b * (4 + 100) = 0.01916.
  r.prefill_tokens_queued = 0;
  CHECK(predict(r, {100, 1}).ttft_s == Approx(0.01916));
}

TEST_CASE("a replica with twice the step time predicts twice the latency", "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 30;
  r.waiting = 3;
  r.prefill_tokens_queued = 7000;
  r.decode_tokens_remaining = 3000;
  ReplicaLoad slow = r;
  slow.step_base_s = 2 * r.step_base_s;
  slow.step_per_token_s = 2 * r.step_per_token_s;
  Prediction p = predict(r, {800, 200});
  Prediction q = predict(slow, {800, 200});
  CHECK(q.ttft_s == Approx(2 * p.ttft_s));
  CHECK(q.completion_s == Approx(2 * p.completion_s));
}

TEST_CASE("predictions are monotonic in the queue", "[estimator][predict]") {
  const RequestCost q{500, 200};
  SECTION("prefill tokens queued") {
    ReplicaLoad r;
    r.running = 10;
    Prediction last = predict(r, q);
    for (double t = 0; t <= 200000; t += 777) {
      r.prefill_tokens_queued = t;
      Prediction p = predict(r, q);
      CHECK(p.ttft_s >= last.ttft_s);
      CHECK(p.completion_s >= last.completion_s);
      last = p;
    }
    CHECK(last.ttft_s > 10 * predict(ReplicaLoad{}, q).ttft_s);
  }
  SECTION("waiting requests, through saturation") {
    ReplicaLoad r;
    r.max_num_seqs = 64;
    r.running = 40;
    r.decode_tokens_remaining = 40 * 150;
    Prediction last = predict(r, q);
    for (int w = 0; w <= 200; ++w) {
      r.waiting = w;
      r.prefill_tokens_queued = 500.0 * w;
      Prediction p = predict(r, q);
      CHECK(p.ttft_s >= last.ttft_s);
      CHECK(p.completion_s >= last.completion_s);
      last = p;
    }
  }
  SECTION("running requests (with their remaining output)") {
    ReplicaLoad r;
    r.max_num_seqs = 64;
    Prediction last = predict(r, q);
    for (int n = 0; n <= 100; ++n) {
      r.running = n;
      r.decode_tokens_remaining = 150.0 * n;
      Prediction p = predict(r, q);
      CHECK(p.ttft_s >= last.ttft_s);
      CHECK(p.completion_s >= last.completion_s);
      last = p;
    }
  }
}

TEST_CASE("KV penalty: none below the knee, monotonic, steep near full", "[estimator][predict]") {
  CHECK(kv_penalty(-1) == 1.0);
  CHECK(kv_penalty(std::nan("")) == 1.0);
  CHECK(kv_penalty(0) == 1.0);
  CHECK(kv_penalty(0.85) == 1.0);
  // 1 + 10 * 0.05^2 / (1 - 0.90 + 0.01) = 1 + 0.025 / 0.11
  CHECK(kv_penalty(0.90) == Approx(1.227273).epsilon(1e-5));
  // 1 + 10 * 0.10^2 / (1 - 0.95 + 0.01) = 1 + 0.1 / 0.06
  CHECK(kv_penalty(0.95) == Approx(2.666667).epsilon(1e-5));
  CHECK(kv_penalty(0.99) == tr::estimator::kKvPenaltyMax);
  CHECK(kv_penalty(1.0) == tr::estimator::kKvPenaltyMax);
  CHECK(kv_penalty(7.0) == tr::estimator::kKvPenaltyMax);
  double last = 1;
  for (double u = 0; u <= 1.0001; u += 0.001) {
    double k = kv_penalty(u);
    CHECK(k >= last);
    last = k;
  }
  // Steep near 1: the 0.93 -> 0.95 rise is over 10x the 0.87 -> 0.89 rise.
  // 0.95 -> 0.97: 2.667 -> 4.6; 0.87 -> 0.89: 1.0148 -> 1.12 (18x).
  CHECK(kv_penalty(0.97) - kv_penalty(0.95) > 10 * (kv_penalty(0.89) - kv_penalty(0.87)));

  ReplicaLoad r;
  r.running = 8;
  Prediction base = predict(r, {1000, 100});
  r.kv_usage = 0.95;
  Prediction hot = predict(r, {1000, 100});
  CHECK(hot.completion_s == Approx(base.completion_s * 2.666667).epsilon(1e-5));
  // TTFT takes half of the penalty: 1 + 0.5 * 1.666667
  CHECK(hot.ttft_s == Approx(base.ttft_s * 1.833333).epsilon(1e-5));
}

TEST_CASE("max_num_seqs saturation adds the wait for a slot", "[estimator][predict]") {
  ReplicaLoad r;
  r.max_num_seqs = 8;
  r.running = 8;
  r.decode_tokens_remaining = 800;  // 100 tokens left per running request
  ReplicaLoad roomy = r;
  roomy.max_num_seqs = 16;
  // Prefill (both): D = 8, C = 2040, n = 1: a + b * (8 + 100) = 0.01932.
  CHECK(predict(roomy, {100, 1}).ttft_s == Approx(0.01932));
  // Slot wait: excess = 8 + 0 + 1 - 8 = 1, m = 800 / 8 = 100,
  // 1 * 100 / 8 = 12.5 steps of step(8) = a + 8b = 0.01532 -> 0.1915.
  CHECK(predict(r, {100, 1}).ttft_s == Approx(0.01932 + 0.1915));
  // Four more waiting ahead: excess 5 -> 5 * 0.1915; their prompts are not
  // in prefill_tokens_queued here, so the prefill part is unchanged.
  r.waiting = 4;
  CHECK(predict(r, {100, 1}).ttft_s == Approx(0.01932 + 5 * 0.1915));
  // Remaining output unknown: m = 128, excess 1 (nothing waiting):
  // 1 * 128 / 8 = 16 steps of 0.01532 = 0.24512.
  r.waiting = 0;
  r.decode_tokens_remaining = 0;
  CHECK(predict(r, {100, 1}).ttft_s == Approx(0.01932 + 0.24512));
}

TEST_CASE("new inputs at their defaults reproduce the previous model exactly",
          "[estimator][predict]") {
  // A grid of loads through every regime (idle, chunked, saturated, KV knee)
  // with the new fields untouched: bit-identical to the kept copy.
  int cases = 0;
  for (uint32_t budget : {0u, 512u, 2048u, 8192u})
    for (uint32_t seqs : {0u, 8u, 64u, 256u})
      for (double running : {0.0, 0.5, 3.0, 40.0, 300.0})
        for (double waiting : {0.0, 2.0, 50.0})
          for (double queued : {0.0, 1500.0, 30000.0})
            for (double remaining : {0.0, 900.0, 40000.0})
              for (double kv : {-1.0, 0.5, 0.9, 0.99})
                for (RequestCost q : {RequestCost{0, 0}, RequestCost{100, 1},
                                      RequestCost{5000, 200}, RequestCost{70000, 4000}}) {
                  ReplicaLoad r;
                  r.budget_tokens = budget;
                  r.max_num_seqs = seqs;
                  r.step_base_s = 0.008 + 0.001 * (cases % 7);
                  r.step_per_token_s = 20e-6 + 1e-6 * (cases % 11);
                  r.running = running;
                  r.waiting = waiting;
                  r.prefill_tokens_queued = queued;
                  r.decode_tokens_remaining = remaining;
                  r.kv_usage = kv;
                  const Prediction want = predict_before_extensions(r, q);
                  INFO("case " << cases);
                  REQUIRE(same(predict(r, q), want));
                  // The "off" values other than the defaults are off too (the
                  // threshold above every chunk takes predict()'s general path).
                  ReplicaLoad off = r;
                  off.engines = 0;  // reads as 1
                  off.kv_free_tokens = std::nan("");
                  off.preemptions_per_s = -3;
                  off.long_prefill_threshold = 1u << 30;  // above any chunk
                  off.priority_scheduling = false;
                  off.waiting_by_class = {7, 8, 9};  // ignored without priority mode
                  off.prefill_tokens_by_class = {700, 800, 900};
                  off.max_loras = 1;  // ignored: the request names no adapter
                  off.loras_running = 5;
                  off.lora_load_s = 3;
                  RequestCost oq = q;
                  oq.priority = -5;
                  REQUIRE(same(predict(off, oq), want));
                  // An adapter that is running there costs nothing.
                  RequestCost aq = q;
                  aq.adapter = true;
                  ReplicaLoad resident = off;
                  resident.adapter_resident = true;
                  REQUIRE(same(predict(resident, aq), want));
                  // Priority mode with no breakdown, for a priority-0 request:
                  // everything is ahead of it, as FCFS.
                  ReplicaLoad prio = r;
                  prio.priority_scheduling = true;
                  REQUIRE(same(predict(prio, q), want));
                  ++cases;
                }
  CHECK(cases == 4 * 4 * 5 * 3 * 3 * 3 * 4 * 4);
}

TEST_CASE("data-parallel engines: the request sees one engine's share", "[estimator][predict]") {
  ReplicaLoad one;  // one engine: 10 running, 3,000 prefill tokens queued
  one.running = 10;
  one.prefill_tokens_queued = 3000;
  one.decode_tokens_remaining = 1000;
  ReplicaLoad four = one;  // four such engines behind one URL: the totals are 4x
  four.engines = 4;
  four.running = 40;
  four.prefill_tokens_queued = 12000;
  four.decode_tokens_remaining = 4000;
  const Prediction p = predict(four, {100, 50});
  // Per engine D = 10, C = 2038, P = 3000 + 100, n = ceil(1.521) = 2:
  // ttft = 2 * (a + 10b) + b * 3100 = 2 * 0.0154 + 0.124 = 0.1548
  CHECK(p.ttft_s == Approx(0.1548));
  CHECK(same(p, predict(one, {100, 50})));
  // Imposed: only the engine it joins: b * 10 * (100 + min(50, m = 100)) = 0.06
  CHECK(p.imposed_s == Approx(0.06));
  // The same totals on one engine: D = 40, C = 2008, P = 12100, n = 7:
  // 7 * (a + 40b) + b * 12100 = 0.1162 + 0.484 = 0.6002: four engines win.
  ReplicaLoad lumped = four;
  lumped.engines = 1;
  CHECK(predict(lumped, {100, 50}).ttft_s == Approx(0.6002));
  // Slot wait per engine: S = 8 each, 32 running over 4 engines -> 8 each: saturated.
  ReplicaLoad sat;
  sat.engines = 4;
  sat.max_num_seqs = 8;
  sat.running = 32;
  sat.decode_tokens_remaining = 3200;  // m = 100
  // As the single-engine case above: 0.01932 + 0.1915
  CHECK(predict(sat, {100, 1}).ttft_s == Approx(0.01932 + 0.1915));
}

TEST_CASE("long_prefill_token_threshold caps our chunk per step", "[estimator][predict]") {
  ReplicaLoad r;  // idle, C = 2048
  r.long_prefill_threshold = 512;
  // Idle: j = 0, r = 0, g = 512, n = 1 + ceil(4488 / 512) = 1 + 9 = 10 (vs 3 without):
  // ttft = 10 * a + b * 5000 = 0.15 + 0.2
  CHECK(predict(r, {5000, 1}).ttft_s == Approx(0.35));
  // A prompt under the threshold is not affected: a + b * 500
  CHECK(predict(r, {500, 1}).ttft_s == Approx(0.035));
  // Behind a queue that ends mid-step: Q = 3000 -> j = 1, r = 952, g = min(512, 1096, 2000),
  // n = 1 + 1 + ceil(1488 / 512) = 5; max(ceil(5000 / 2048), ceil(2000 / 512)) would say 4.
  // ttft = 5 * a + b * 5000 = 0.075 + 0.2
  r.prefill_tokens_queued = 3000;
  CHECK(predict(r, {2000, 1}).ttft_s == Approx(0.275));
  // Without the threshold: n = ceil(5000 / 2048) = 3 -> 0.045 + 0.2
  ReplicaLoad off = r;
  off.long_prefill_threshold = 0;
  CHECK(predict(off, {2000, 1}).ttft_s == Approx(0.245));
  // Queue ending on a step boundary: Q = 4096 -> j = 2, r = 0, g = 512, n = 3 + ceil(1488 / 512)
  // = 6: 6a + b * 6096 = 0.09 + 0.24384
  r.prefill_tokens_queued = 4096;
  CHECK(predict(r, {2000, 1}).ttft_s == Approx(0.33384));
  // A threshold at or above C changes nothing.
  for (uint32_t t : {2048u, 4096u}) {
    ReplicaLoad big = r;
    big.long_prefill_threshold = t;
    ReplicaLoad none = r;
    none.long_prefill_threshold = 0;
    CHECK(same(predict(big, {2000, 1}), predict(none, {2000, 1})));
  }
  // Never faster than without it, at least ceil(p / T) steps, monotonic in the queue.
  std::mt19937_64 rng(77);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 2000; ++i) {
    ReplicaLoad x;
    x.running = 100 * u(rng);
    x.budget_tokens = 512 + static_cast<uint32_t>(8000 * u(rng));
    x.long_prefill_threshold = 16 + static_cast<uint32_t>(4000 * u(rng));
    x.prefill_tokens_queued = 40000 * u(rng);
    const RequestCost q{1 + static_cast<uint32_t>(30000 * u(rng)), 1};
    ReplicaLoad y = x;
    y.long_prefill_threshold = 0;
    const double capped = predict(x, q).ttft_s;
    CHECK(capped >= predict(y, q).ttft_s * (1 - 1e-12));
    const double steps_min = std::ceil(q.prompt_tokens / double(x.long_prefill_threshold));
    CHECK(capped >= steps_min * kA * (1 - 1e-12));
    ReplicaLoad more = x;
    more.prefill_tokens_queued += 1 + 3000 * u(rng);
    CHECK(predict(more, q).ttft_s >= capped);
  }
}

TEST_CASE("KV fit: a request that cannot fit waits for running requests to free blocks",
          "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 50;
  r.decode_tokens_remaining = 5000;  // m = 100
  r.kv_usage = 0.8;                  // below the knee: no penalty, the fit alone
  r.kv_free_tokens = 10000;          // H = 10000 * 0.8 / 0.2 = 40000, h = 800
  // Prefill (all cases): D = 50, C = 1998, n = ceil(20000 / 1998) = 11:
  // 11 * (a + 50b) + b * 20000 = 0.187 + 0.8 = 0.987
  ReplicaLoad unknown = r;
  unknown.kv_free_tokens = -1;
  CHECK(predict(unknown, {20000, 100}).ttft_s == Approx(0.987));
  // Admission: missing = 20000 - 10000; life: 20100 - 10000 - 40000 * min(1, 100 / 100) < 0.
  // ceil(10000 / 800) = 13 completions, * m / D = 26 steps of a + 50b = 0.017 -> 0.442
  CHECK(predict(r, {20000, 100}).ttft_s == Approx(0.987 + 0.442));
  // The same prompt fits with room: no wait whatever is running.
  ReplicaLoad roomy = r;
  roomy.kv_free_tokens = 25000;
  CHECK(same(predict(roomy, {20000, 100}), predict(unknown, {20000, 100})));
  // Over its life: 10 running, m = 4000, u = 0.25, F = 6000 -> H = 2000, h = 200.
  // p = 5000 fits; with o = 3000: 8000 - 6000 - 2000 * min(1, 3000 / 4000) = 500 missing,
  // ceil(500 / 200) = 3 completions * 4000 / 10 = 1200 steps of a + 10b = 0.0154 -> 18.48 s.
  ReplicaLoad life;
  life.running = 10;
  life.decode_tokens_remaining = 40000;
  life.kv_usage = 0.25;
  life.kv_free_tokens = 6000;
  Prediction p = predict(life, {5000, 3000});
  // prefill: C = 2038, n = 3: 3 * 0.0154 + b * 5000 = 0.2462
  CHECK(p.ttft_s == Approx(0.2462 + 18.48));
  // decode: 2999 steps at a + 11b = 0.01544 -> 46.30456
  CHECK(p.completion_s == Approx(0.2462 + 18.48 + 46.30456));
  // With a shorter output (o = 2000): 7000 - 6000 - 1000 = 0 missing: no wait.
  CHECK(predict(life, {5000, 2000}).ttft_s == Approx(0.2462));
  // The prefill queued ahead takes its blocks first.
  life.prefill_tokens_queued = 1500;  // admission: 6500 - 6000 = 500 missing -> 18.48 s again
  // prefill: P = 6500, n = 4: 4 * 0.0154 + b * 6500 = 0.3216
  CHECK(predict(life, {5000, 1}).ttft_s == Approx(0.3216 + 18.48));
  // The slot wait and the KV wait overlap: the longer one counts.
  ReplicaLoad both = r;
  both.max_num_seqs = 50;  // excess 1: 1 * 100 / 50 = 2 steps of a + 50b = 0.034 < 0.442
  CHECK(predict(both, {20000, 100}).ttft_s == Approx(0.987 + 0.442));
  // The KV penalty applies to the rest, not to the hard wait: at u = 0.95,
  // F = 10000 -> H = 190000, h = 3800, missing 10000 -> 3 completions, 6 steps = 0.102;
  // ttft = 0.987 * (1 + 0.5 * 1.666667) + 0.102
  ReplicaLoad hot = r;
  hot.kv_usage = 0.95;
  CHECK(predict(hot, {20000, 100}).ttft_s == Approx(0.987 * 1.833333 + 0.102).epsilon(1e-5));
}

TEST_CASE("KV fit: less free KV is never faster", "[estimator][predict]") {
  std::mt19937_64 rng(31);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 500; ++i) {
    ReplicaLoad r;
    r.running = 200 * u(rng);
    r.waiting = 10 * u(rng);
    r.prefill_tokens_queued = 20000 * u(rng);
    r.decode_tokens_remaining = 50000 * u(rng);
    r.kv_usage = u(rng) < 0.2 ? -1 : u(rng);
    const RequestCost q{1 + static_cast<uint32_t>(40000 * u(rng)),
                        1 + static_cast<uint32_t>(4000 * u(rng))};
    r.kv_free_tokens = -1;
    const Prediction unknown = predict(r, q);
    Prediction last{};
    for (double f : {1e9, 2e5, 5e4, 2e4, 8000.0, 3000.0, 1000.0, 100.0, 1.0, 0.0}) {
      r.kv_free_tokens = f;
      const Prediction p = predict(r, q);
      INFO("i=" << i << " f=" << f);
      CHECK(p.ttft_s >= last.ttft_s);
      CHECK(p.completion_s >= last.completion_s);
      CHECK(p.ttft_s >= unknown.ttft_s);
      last = p;
    }
  }
}

TEST_CASE("preemptions stretch everything by the recompute share", "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 10;
  r.decode_tokens_remaining = 1000;
  const Prediction calm = predict(r, {1000, 100});
  r.preemptions_per_s = 2;
  const Prediction p = predict(r, {1000, 100});
  // h = 1024 (KV unknown), C = 2038: recompute = 1024 / 2038 * (a + 10b) + b * 1024
  // = 0.502453 * 0.0154 + 0.04096 = 0.0486978; rho = 2 * 0.0486978 = 0.0973956;
  // stretch = 1 / (1 - rho) = 1.107905
  CHECK(p.ttft_s == Approx(calm.ttft_s * 1.107905).epsilon(1e-5));
  CHECK(p.completion_s == Approx(calm.completion_s * 1.107905).epsilon(1e-5));
  // The rate is the replica's: two engines see half each.
  ReplicaLoad dp = r;
  dp.engines = 2;
  dp.running = 20;
  dp.decode_tokens_remaining = 2000;
  dp.preemptions_per_s = 4;
  CHECK(predict(dp, {1000, 100}).ttft_s == Approx(p.ttft_s));
  // Capped: at most 1 / (1 - 0.75) = 4x.
  r.preemptions_per_s = 1e6;
  CHECK(predict(r, {1000, 100}).completion_s == Approx(4 * calm.completion_s));
  // More preemptions are never faster.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 300; ++i) {
    ReplicaLoad x;
    x.running = 100 * u(rng);
    x.decode_tokens_remaining = 20000 * u(rng);
    x.kv_usage = u(rng);
    x.kv_free_tokens = u(rng) < 0.5 ? -1 : 50000 * u(rng);
    const RequestCost q{1 + static_cast<uint32_t>(8000 * u(rng)), 100};
    Prediction last = predict(x, q);
    for (double rate : {0.01, 0.1, 1.0, 5.0, 50.0, 1e4}) {
      x.preemptions_per_s = rate;
      const Prediction now = predict(x, q);
      CHECK(now.ttft_s >= last.ttft_s);
      CHECK(now.completion_s >= last.completion_s);
      last = now;
    }
  }
}

TEST_CASE("priority: only equal or more urgent queued load counts ahead", "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 4;  // D = 4, C = 2044, step base a + 4b = 0.01516
  r.waiting = 30;
  r.prefill_tokens_queued = 30000;
  r.priority_scheduling = true;
  r.waiting_by_class = {5, 10, 15};
  r.prefill_tokens_by_class = {2000, 8000, 20000};
  RequestCost urgent{100, 1, -1};
  RequestCost normal{100, 1, 0};
  RequestCost background{100, 1, 7};
  // Urgent: Q = 2000, P = 2100, n = 2; the 28,000 behind fill our steps:
  // tokens = min(30100, 2 * 2044) = 4088 -> 2 * 0.01516 + b * 4088 = 0.03032 + 0.16352
  CHECK(predict(r, urgent).ttft_s == Approx(0.19384));
  // Normal: Q = 10000, P = 10100, n = 5, tokens = min(30100, 10220) = 10220:
  // 5 * 0.01516 + b * 10220 = 0.0758 + 0.4088
  CHECK(predict(r, normal).ttft_s == Approx(0.4846));
  // Background: everything is ahead, as FCFS: n = 15 -> 1.4314 (see the 30k test).
  CHECK(predict(r, background).ttft_s == Approx(1.4314));
  ReplicaLoad fcfs = r;
  fcfs.priority_scheduling = false;
  CHECK(predict(fcfs, urgent).ttft_s == Approx(1.4314));
  // Load the breakdown does not cover counts as priority 0.
  ReplicaLoad uncovered = r;
  uncovered.prefill_tokens_by_class = {0, 0, 0};
  // Urgent: Q = 0, n = 1, tokens = min(30100, 2044) -> 0.01516 + b * 2044 = 0.09692
  CHECK(predict(uncovered, urgent).ttft_s == Approx(0.09692));
  CHECK(predict(uncovered, normal).ttft_s == Approx(1.4314));
  // Slot wait: S = 8, 8 running, 4 waiting of which 1 urgent and 3 normal:
  // urgent excess = 8 + 1 + 1 - 8 = 2, normal 5 (m = 100, 0.1915 each, see above).
  ReplicaLoad sat;
  sat.max_num_seqs = 8;
  sat.running = 8;
  sat.waiting = 4;
  sat.decode_tokens_remaining = 800;
  sat.priority_scheduling = true;
  sat.waiting_by_class = {1, 3, 0};
  CHECK(predict(sat, urgent).ttft_s == Approx(0.01932 + 2 * 0.1915));
  CHECK(predict(sat, normal).ttft_s == Approx(0.01932 + 5 * 0.1915));
  // Urgent is never slower than normal, normal than background, any than FCFS.
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 2000; ++i) {
    ReplicaLoad x;
    x.max_num_seqs = 16 + static_cast<uint32_t>(240 * u(rng));
    x.running = 300 * u(rng);
    x.decode_tokens_remaining = 30000 * u(rng);
    x.waiting_by_class = {20 * u(rng), 20 * u(rng), 20 * u(rng)};
    x.prefill_tokens_by_class = {20000 * u(rng), 20000 * u(rng), 20000 * u(rng)};
    x.waiting =
        (x.waiting_by_class[0] + x.waiting_by_class[1] + x.waiting_by_class[2]) * (0.5 + u(rng));
    x.prefill_tokens_queued = 60000 * u(rng);
    x.long_prefill_threshold = u(rng) < 0.3 ? 256 : 0;
    x.kv_usage = u(rng);
    x.kv_free_tokens = u(rng) < 0.5 ? -1 : 30000 * u(rng);
    x.engines = 1 + static_cast<uint32_t>(3 * u(rng));
    const uint32_t p = 1 + static_cast<uint32_t>(10000 * u(rng));
    ReplicaLoad off = x;
    off.priority_scheduling = false;
    x.priority_scheduling = true;
    Prediction last{};
    double ttft_last = 0;
    for (int32_t prio : {-3, 0, 2}) {
      const Prediction now = predict(x, {p, 100, prio});
      INFO("i=" << i << " prio=" << prio);
      CHECK(now.ttft_s >= ttft_last * (1 - 1e-12));
      CHECK(now.completion_s >= last.completion_s * (1 - 1e-12));
      CHECK(now.ttft_s <= predict(off, {p, 100, prio}).ttft_s * (1 + 1e-12));
      last = now;
      ttft_last = now.ttft_s;
    }
  }
}

TEST_CASE("LoRA: resident free, loaded at a cost, or wait for an adapter slot",
          "[estimator][predict]") {
  ReplicaLoad r;
  r.running = 8;
  r.decode_tokens_remaining = 800;  // m = 100
  RequestCost plain{100, 1};
  RequestCost lora{100, 1, 0, true};
  const Prediction base = predict(r, plain);
  // prefill as in the slot-wait test: a + b * (8 + 100) = 0.01932
  CHECK(base.ttft_s == Approx(0.01932));
  // Not running, a slot free (max_loras unknown): pays the load, 0.05 s.
  const Prediction loaded = predict(r, lora);
  CHECK(loaded.ttft_s == Approx(0.01932 + 0.05));
  CHECK(loaded.completion_s == Approx(base.completion_s + 0.05));
  // and stalls the 8 running requests for it: imposed + 8 * 0.05
  CHECK(loaded.imposed_s == Approx(base.imposed_s + 0.4));
  r.max_loras = 2;
  r.loras_running = 1;
  CHECK(predict(r, lora).ttft_s == Approx(0.01932 + 0.05));
  // All adapter slots taken: k = 8 / 2 = 4 requests per adapter, the last of 4 finishes after
  // 2 * 100 * 4 / 5 = 160 steps of a + 8b = 0.01532 -> 2.4512 s, then the load.
  r.loras_running = 2;
  CHECK(predict(r, lora).ttft_s == Approx(0.01932 + 2.4512 + 0.05));
  // One request per adapter (k = 1): its mean remaining, 100 steps -> 1.532 s.
  r.loras_running = 8;
  r.max_loras = 8;
  CHECK(predict(r, lora).ttft_s == Approx(0.01932 + 1.532 + 0.05));
  // A measured load cost replaces the default.
  r.max_loras = 0;
  r.lora_load_s = 0.3;
  CHECK(predict(r, lora).ttft_s == Approx(0.01932 + 0.3));
  // Resident: as if no adapter.
  r.adapter_resident = true;
  CHECK(same(predict(r, lora), base));
  // Resident is never slower than not resident.
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 1000; ++i) {
    ReplicaLoad x;
    x.running = 200 * u(rng);
    x.waiting = 20 * u(rng);
    x.decode_tokens_remaining = 30000 * u(rng);
    x.max_num_seqs = 16 + static_cast<uint32_t>(240 * u(rng));
    x.max_loras = static_cast<uint32_t>(4 * u(rng));
    x.loras_running = 5 * u(rng);
    x.lora_load_s = 0.2 * u(rng);
    x.kv_usage = u(rng);
    x.kv_free_tokens = u(rng) < 0.5 ? -1 : 30000 * u(rng);
    const RequestCost q{1 + static_cast<uint32_t>(5000 * u(rng)), 50, 0, true};
    ReplicaLoad res = x;
    res.adapter_resident = true;
    const Prediction a = predict(res, q);
    const Prediction b = predict(x, q);
    CHECK(a.ttft_s <= b.ttft_s);
    CHECK(a.completion_s <= b.completion_s);
  }
}

TEST_CASE("prediction is total: finite, non-negative, TTFT <= completion", "[estimator][predict]") {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double specials[] = {
      nan,  inf, -inf, -1, 0, 1e-300, 0.5, 1, 1e12, 1e300, std::numeric_limits<double>::max(),
      -1e-9};
  std::mt19937_64 rng(12345);
  auto pick = [&](double lo, double hi) {
    std::uniform_int_distribution<int> coin(0, 3);
    if (coin(rng) == 0) {
      std::uniform_int_distribution<size_t> i(0, std::size(specials) - 1);
      return specials[i(rng)];
    }
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  auto pick_u32 = [&](uint32_t hi) {
    std::uniform_int_distribution<int> coin(0, 5);
    switch (coin(rng)) {
      case 0:
        return uint32_t{0};
      case 1:
        return std::numeric_limits<uint32_t>::max();
      case 2:
        return uint32_t{1};
      default:
        return std::uniform_int_distribution<uint32_t>(1, hi)(rng);
    }
  };
  for (int i = 0; i < 20000; ++i) {
    ReplicaLoad r;
    r.budget_tokens = pick_u32(16384);
    r.max_num_seqs = pick_u32(1024);
    r.step_base_s = pick(0, 0.1);
    r.step_per_token_s = pick(0, 1e-4);
    r.running = pick(0, 600);
    r.waiting = pick(0, 600);
    r.prefill_tokens_queued = pick(0, 1e6);
    r.decode_tokens_remaining = pick(0, 1e6);
    r.kv_usage = pick(-1, 1.2);
    r.engines = pick_u32(16);
    r.long_prefill_threshold = pick_u32(4096);
    r.kv_free_tokens = pick(-1, 1e6);
    r.preemptions_per_s = pick(0, 20);
    r.priority_scheduling = (i & 1) != 0;
    r.waiting_by_class = {pick(0, 200), pick(0, 200), pick(0, 200)};
    r.prefill_tokens_by_class = {pick(0, 3e5), pick(0, 3e5), pick(0, 3e5)};
    r.adapter_resident = (i & 2) != 0;
    r.max_loras = pick_u32(8);
    r.loras_running = pick(0, 10);
    r.lora_load_s = pick(0, 1);
    RequestCost q{pick_u32(200000), pick_u32(32768)};
    q.priority = static_cast<int32_t>(pick_u32(10)) - 5;
    q.adapter = (i & 4) != 0;
    Prediction p = predict(r, q);
    INFO("i=" << i << " budget=" << r.budget_tokens << " seqs=" << r.max_num_seqs
              << " a=" << r.step_base_s << " b=" << r.step_per_token_s << " running=" << r.running
              << " waiting=" << r.waiting << " prefill=" << r.prefill_tokens_queued
              << " decode=" << r.decode_tokens_remaining << " kv=" << r.kv_usage
              << " engines=" << r.engines << " threshold=" << r.long_prefill_threshold
              << " kv_free=" << r.kv_free_tokens << " preempt=" << r.preemptions_per_s
              << " prio_mode=" << r.priority_scheduling << " max_loras=" << r.max_loras
              << " loras=" << r.loras_running << " lora_load=" << r.lora_load_s
              << " prompt=" << q.prompt_tokens << " output=" << q.output_tokens
              << " priority=" << q.priority << " adapter=" << q.adapter << " -> ttft=" << p.ttft_s
              << " completion=" << p.completion_s << " imposed=" << p.imposed_s);
    REQUIRE(sane(p));
  }
}

TEST_CASE("predict and learner lookups do not allocate", "[estimator]") {
  ModelLearner learner;
  learner.observe_usage("m", 3000, 0, 1000);
  learner.observe_finished("m", 100, -1);
  RequestFacts f = facts("m", 4000, 2, 500);
  ReplicaLoad r;
  r.running = 12;
  r.prefill_tokens_queued = 9000;
  double sink = 0;
  uint64_t before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) {
    RequestCost q{learner.prompt_tokens(f), learner.output_tokens(f)};
    sink += predict(r, q).completion_s;
    learner.observe_usage("m", 3000 + i, 1, 1000);
    learner.observe_finished("m", 90 + i % 20, 500);
  }
  uint64_t after = g_allocations.load();
  CHECK(after == before);
  CHECK(sink > 0);
}

TEST_CASE("predict() cost", "[.perf][estimator]") {
  std::vector<ReplicaLoad> loads(64);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  for (ReplicaLoad& r : loads) {
    r.running = 200 * u(rng);
    r.waiting = 20 * u(rng);
    r.prefill_tokens_queued = 50000 * u(rng);
    r.decode_tokens_remaining = 40000 * u(rng);
    r.kv_usage = u(rng);
    r.step_base_s = 0.01 + 0.02 * u(rng);
  }
  constexpr int kCalls = 20'000'000;
  double sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) {
    Prediction p = predict(loads[i & 63], {static_cast<uint32_t>(100 + (i & 1023)), 200});
    sink += p.completion_s + p.ttft_s;
  }
  auto t1 = std::chrono::steady_clock::now();
  double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / kCalls;
  std::printf("predict(): %.1f ns/call (sink %g)\n", ns, sink);
  CHECK(ns < 100);
}

// ---------------------------------------------------------------------------
// Token estimation

TEST_CASE("token estimates before any observation use the defaults", "[estimator][tokens]") {
  ModelLearner l;
  CHECK(l.chars_per_token("m") == 4.0);
  CHECK(l.output_mean_tokens("m") == 256.0);
  CHECK(l.prompt_tokens(facts("m", 1000)) == 250);     // ceil(1000 / 4)
  CHECK(l.prompt_tokens(facts("m", 1001)) == 251);     // ceil(250.25)
  CHECK(l.prompt_tokens(facts("m", 1000, 2)) == 258);  // + 4 per chat message
  CHECK(l.prompt_tokens(facts("m", 0)) == 1);          // never 0
  RequestFacts ids = facts("m", 0);
  ids.prompt_token_ids = 300;
  CHECK(l.prompt_tokens(ids) == 300);  // token ids are exact
  RequestFacts huge = facts("m", std::numeric_limits<uint64_t>::max());
  CHECK(l.prompt_tokens(huge) == std::numeric_limits<uint32_t>::max());  // saturates
  CHECK(l.output_tokens(facts("m", 10)) == 256);
  CHECK(l.output_tokens(facts("m", 10, 0, 100)) == 100);  // min(cap, mean)
  CHECK(l.output_tokens(facts("m", 10, 0, 4096)) == 256);
  CHECK(l.output_tokens(facts("m", 10, 0, 0)) == 256);  // 0 reads as no cap
  CHECK(l.models() == 0);
}

TEST_CASE("chars per token is learned per model", "[estimator][tokens]") {
  ModelLearner l;
  for (int i = 0; i < 200; ++i) {
    l.observe_usage("a", 3000, 0, 1000);  // 3.0
    l.observe_usage("b", 2500, 5, 520);   // chat: 520 - 5 * 4 = 500 text tokens -> 5.0
  }
  // Decayed sums after 200 observations: T = 1000 * (1 - 0.98^200) / 0.02 = 49121;
  // (3 * T + 4 * 64) / (T + 64) = 3.0013.
  CHECK(l.chars_per_token("a") == Approx(3.0).epsilon(0.002));
  CHECK(l.chars_per_token("b") == Approx(5.0).epsilon(0.003));
  CHECK(l.prompt_tokens(facts("a", 3000)) == 1000);  // ceil(3000 / 3.0013) = ceil(999.6)
  // b: T = 500 * (1 - 0.98^200) / 0.02 = 24560, (5 * T + 256) / (T + 64) = 4.9974,
  // ceil(5000 / 4.9974) = 1001, + 3 messages * 4.
  CHECK(l.prompt_tokens(facts("b", 5000, 3)) == 1001 + 12);
  CHECK(l.models() == 2);
  // A model never observed uses the shared entry: the mix of a and b, weighted
  // by tokens (1000 at 3.0, 500 at 5.0): (3000 + 2500) / 1500 = 3.667.
  CHECK(l.chars_per_token("c") == Approx(3.667).epsilon(0.003));
  CHECK(l.chars_per_token("") == l.chars_per_token("c"));
}

TEST_CASE("chars per token: bounds, garbage and outsized observations", "[estimator][tokens]") {
  SECTION("clamped into [1, 12]") {
    ModelLearner l;
    for (int i = 0; i < 300; ++i)
      l.observe_usage("wide", 20000, 0, 1000);  // 20 chars/token: plausible, clamped
    CHECK(l.chars_per_token("wide") == 12.0);
    for (int i = 0; i < 300; ++i)
      l.observe_usage("narrow", 800, 0, 1000);  // 0.8
    CHECK(l.chars_per_token("narrow") == 1.0);
  }
  SECTION("implausible or empty observations are ignored") {
    ModelLearner l;
    l.observe_usage("m", 300, 0, 1000);    // 0.3 chars/token: an image, token ids
    l.observe_usage("m", 30000, 0, 1000);  // 30
    l.observe_usage("m", 0, 0, 1000);
    l.observe_usage("m", 1000, 0, 0);
    l.observe_usage("m", 1000, 10, 30);  // fewer tokens than the template overhead
    l.observe_prompt_totals("m", -5000, 1000);
    l.observe_prompt_totals("m", 5000, -1000);
    l.observe_prompt_totals("m", std::nan(""), 1000);
    l.observe_prompt_totals("m", 5000, std::numeric_limits<double>::infinity());
    CHECK(l.chars_per_token("m") == 4.0);
    CHECK(l.models() == 0);
  }
  SECTION("one huge prompt does not erase the history") {
    ModelLearner l;
    for (int i = 0; i < 100; ++i)
      l.observe_usage("m", 3000, 0, 1000);
    l.observe_usage("m", 6'000'000, 0, 1'000'000);  // 6.0, weighs as 8192 tokens
    // T = 1000 * (1 - 0.98^100) / 0.02 = 43369; after: 0.98 T = 42502 at 3.0 plus
    // 8192 at 6.0 -> (127506 + 49152 + 256) / (42502 + 8192 + 64) = 3.485
    CHECK(l.chars_per_token("m") == Approx(3.485).epsilon(0.003));
  }
  SECTION("scrape totals") {
    ModelLearner l;
    for (int i = 0; i < 100; ++i)
      l.observe_prompt_totals("m", 350000, 100000);  // 3.5, each weighs 8192 tokens
    CHECK(l.chars_per_token("m") == Approx(3.5).epsilon(0.002));
  }
}

TEST_CASE("the model table is bounded; later models share one entry", "[estimator][tokens]") {
  ModelLearner l;
  std::vector<std::string> names;
  for (size_t i = 0; i < tr::estimator::kModelsMax + 10; ++i)
    names.push_back("org/model-" + std::to_string(i));
  for (size_t i = 0; i < names.size(); ++i)
    l.observe_usage(names[i], i < tr::estimator::kModelsMax ? 2000 : 8000, 0, 1000);
  CHECK(l.models() == tr::estimator::kModelsMax);
  CHECK(l.chars_per_token(names[0]) == Approx((2000 + 256) / 1064.0));
  CHECK(l.chars_per_token(names[tr::estimator::kModelsMax - 1]) == Approx((2000 + 256) / 1064.0));
  // The overflow ones read the shared entry (all 74 observations).
  CHECK(l.chars_per_token(names.back()) == l.chars_per_token("never-seen"));
  CHECK(l.chars_per_token(names.back()) > 2.0);
  // A name longer than kModelNameBytesMax never gets an entry.
  ModelLearner m;
  std::string long_name(tr::estimator::kModelNameBytesMax + 1, 'x');
  m.observe_usage(long_name, 3000, 0, 1000);
  CHECK(m.models() == 0);
  std::string max_name(tr::estimator::kModelNameBytesMax, 'y');
  m.observe_usage(max_name, 3000, 0, 1000);
  CHECK(m.models() == 1);
}

TEST_CASE("output tokens: natural mean, capped by max_tokens, censoring", "[estimator][tokens]") {
  ModelLearner l;
  l.observe_finished("m", 100, -1);
  // Warm-up: the prior counts as one observation: 256 + (100 - 256) / 2 = 178.
  CHECK(l.output_mean_tokens("m") == Approx(178));
  for (int i = 0; i < 200; ++i)
    l.observe_finished("m", 300, 4096);  // stops naturally at 300
  CHECK(l.output_mean_tokens("m") == Approx(300).epsilon(0.001));
  CHECK(l.output_tokens(facts("m", 10)) == 300);
  CHECK(l.output_tokens(facts("m", 10, 0, 4096)) == 300);
  CHECK(l.output_tokens(facts("m", 10, 0, 16)) == 16);
  // A classifier that always hits max_tokens 16: censored below the mean, no news.
  for (int i = 0; i < 200; ++i)
    l.observe_finished("m", 16, 16);
  CHECK(l.output_mean_tokens("m") == Approx(300).epsilon(0.001));
  CHECK(l.output_tokens(facts("m", 10, 0, 16)) == 16);
  // Requests cut off at 2048 say the natural length is longer: the mean rises.
  for (int i = 0; i < 20; ++i)
    l.observe_finished("m", 2048, 2048);
  CHECK(l.output_mean_tokens("m") > 1000);
  CHECK(l.output_mean_tokens("m") < 2048);
  // Zero tokens (nothing learned) is ignored.
  double before = l.output_mean_tokens("m");
  l.observe_finished("m", 0, -1);
  CHECK(l.output_mean_tokens("m") == before);
  // Other models are untouched, the shared entry saw everything.
  CHECK(l.output_mean_tokens("other") != 256.0);
  ModelLearner fresh;
  fresh.observe_finished("x", 50, -1);
  CHECK(fresh.output_mean_tokens("y") == Approx(153));  // shared: 256 + (50 - 256) / 2
}

TEST_CASE("output tokens under a cap: E[min(X, cap)] of the learned distribution",
          "[estimator][tokens]") {
  ModelLearner l;
  // Answers are 10 or 1,000 tokens, in equal numbers (max_tokens absent).
  for (int i = 0; i < 100; ++i)
    l.observe_finished("m", i % 2 ? 1000 : 10, -1);
  // No cap: the mean (~505).
  CHECK(l.output_tokens(facts("m", 10)) == Approx(505).margin(30));
  // Cap 100: half stop at 10, half are cut at 100: 0.5 * 10 + 0.5 * 100 = 55,
  // where min(cap, mean) would say 100.
  CHECK(l.expected_output_tokens("m", 100) == Approx(55).margin(3));
  CHECK(l.output_tokens(facts("m", 10, 0, 100)) == Approx(55).margin(3));
  // A cap above every length: the mean again; a cap of 5: 5.
  CHECK(l.output_tokens(facts("m", 10, 0, 4096)) == Approx(505).margin(30));
  CHECK(l.output_tokens(facts("m", 10, 0, 5)) == 5);
  // Before kOutputHistWarm observations, min(cap, mean).
  ModelLearner cold;
  cold.observe_finished("c", 10, -1);
  CHECK(cold.expected_output_tokens("c", 100) < 0);
  CHECK(cold.output_tokens(facts("c", 10, 0, 100)) == 100);  // mean 133 (with the prior)
}

// ---------------------------------------------------------------------------
// Calibration

namespace {

using tr::estimator::ScrapeDeltas;

struct Engine {
  double base_s;
  double per_token_s;
};

// Feeds <cal> one scrape interval of an engine that ran <decodes> decodes and
// <prefill> prefill tokens in every step for <busy> of <interval_s>, its mean
// step time off by <noise> (relative). Prompts are 1000 tokens. The engine's
// step count is given (iteration histogram) when <steps_known>.
bool feed(StepCalibrator* cal, const Engine& e, double decodes, double prefill, double noise,
          double interval_s = 5.0, double busy = 1.0, bool steps_known = false) {
  double step_s = e.base_s + e.per_token_s * (decodes + prefill);
  double steps = busy * interval_s / step_s;
  ScrapeDeltas d;
  d.interval_s = interval_s;
  d.itl_count = steps * decodes;
  d.itl_sum_s = d.itl_count * step_s * (1 + noise);
  d.prompt_tokens = steps * prefill;
  d.ttft_count = d.prompt_tokens / 1000;
  d.ttft_sum_s = d.ttft_count * 0.2;
  d.generation_tokens = d.itl_count + d.ttft_count;
  d.steps = steps_known ? steps : -1;
  d.running_start = decodes;
  d.running_end = decodes;
  return cal->observe(d);
}

// A vLLM V1 engine at step granularity, for calibration tests: each step runs
// every decoding request (one token each), then prefill chunks FCFS within
// the token budget, and costs base + per_token * tokens. Its metrics follow
// V1: a request's prompt tokens, first token and TTFT are counted in the step
// that completes its prefill (however many steps its chunks took), then one
// inter-token latency per token; iteration_tokens_total counts the steps that
// output a token. Scraped every scrape_s, each interval's deltas go to the
// calibrator. Workload: Poisson arrivals at <rate>, prompts 50-600 tokens,
// with probability <long_frac> 5,000-15,000 instead; outputs 50-400 tokens.
struct V1Engine {
  struct Req {
    double arrival_s;
    uint32_t prompt;
    uint32_t prefilled = 0;
    uint32_t output_left;
    double last_token_s = 0;
  };
  struct Totals {  // cumulative, as scraped
    double itl_sum = 0, itl_count = 0, ttft_sum = 0, ttft_count = 0, prompt = 0, gen = 0,
           iterations = 0;
    double running = 0;
  };

  Engine e;
  double rate;
  double long_frac;
  bool expose_iterations = true;
  uint32_t budget = 2048;
  double scrape_s = 0.1;
  uint64_t seed = 1;

  // Runs for <seconds>; returns the number of intervals the calibrator took.
  int run(StepCalibrator* cal, double seconds) {
    std::mt19937_64 rng(seed);
    std::exponential_distribution<double> gap(rate);
    std::uniform_real_distribution<double> u01(0, 1);
    std::uniform_int_distribution<uint32_t> short_prompt(50, 600);
    std::uniform_int_distribution<uint32_t> long_prompt(5000, 15000);
    std::uniform_int_distribution<uint32_t> output_len(50, 400);
    std::vector<Req> running;  // admission order
    double now = 0;
    double next_arrival = gap(rng);
    double next_scrape = scrape_s;
    Totals tot, prev;
    int taken = 0;
    auto scrape = [&](double at) {
      tot.running = static_cast<double>(running.size());
      ScrapeDeltas d;
      d.interval_s = scrape_s;
      d.itl_sum_s = tot.itl_sum - prev.itl_sum;
      d.itl_count = tot.itl_count - prev.itl_count;
      d.ttft_sum_s = tot.ttft_sum - prev.ttft_sum;
      d.ttft_count = tot.ttft_count - prev.ttft_count;
      d.prompt_tokens = tot.prompt - prev.prompt;
      d.generation_tokens = tot.gen - prev.gen;
      d.steps = expose_iterations ? tot.iterations - prev.iterations : -1;
      d.running_start = prev.running;
      d.running_end = tot.running;
      if (at > 0) taken += cal->observe(d) ? 1 : 0;
      prev = tot;
    };
    while (now < seconds) {
      while (next_arrival <= now) {
        uint32_t p = u01(rng) < long_frac ? long_prompt(rng) : short_prompt(rng);
        running.push_back(Req{next_arrival, p, 0, output_len(rng)});
        next_arrival += gap(rng);
      }
      if (running.empty()) {  // idle until the next arrival
        while (next_scrape <= next_arrival && next_scrape < seconds) {
          scrape(next_scrape);
          next_scrape += scrape_s;
        }
        now = next_arrival;
        continue;
      }
      // Schedule: decodes first, then prefill chunks FCFS.
      uint32_t left = budget;
      std::vector<uint32_t> chunk(running.size(), 0);
      for (size_t i = 0; i < running.size() && left > 0; ++i) {
        if (running[i].prefilled == running[i].prompt) {
          chunk[i] = 1;
          --left;
        }
      }
      for (size_t i = 0; i < running.size() && left > 0; ++i) {
        if (running[i].prefilled < running[i].prompt) {
          chunk[i] = std::min(left, running[i].prompt - running[i].prefilled);
          left -= chunk[i];
        }
      }
      const double end = now + e.base_s + e.per_token_s * (budget - left);
      while (next_scrape <= end && next_scrape < seconds) {  // the step is still running
        scrape(next_scrape);
        next_scrape += scrape_s;
      }
      now = end;
      bool output = false;
      for (size_t i = 0; i < running.size(); ++i) {
        Req& r = running[i];
        if (chunk[i] == 0) continue;
        if (r.prefilled == r.prompt) {  // a decode
          tot.itl_sum += now - r.last_token_s;
          tot.itl_count += 1;
        } else {
          r.prefilled += chunk[i];
          if (r.prefilled < r.prompt) continue;  // more chunks to come
          tot.prompt += r.prompt;                // V1: the whole prompt, now
          tot.ttft_sum += now - r.arrival_s;
          tot.ttft_count += 1;
        }
        tot.gen += 1;
        output = true;
        r.last_token_s = now;
        r.output_left -= 1;
      }
      if (output) tot.iterations += 1;
      std::erase_if(running, [](const Req& r) { return r.output_left == 0; });
    }
    return taken;
  }
};

}  // namespace

TEST_CASE("calibration starts at the prior", "[estimator][calibration]") {
  StepCalibrator cal;
  CHECK(cal.step_base_s() == kA);
  CHECK(cal.step_per_token_s() == kB);
  CHECK(cal.step_time_s(1000) == Approx(kA + 1000 * kB));
  CHECK(cal.samples() == 0);
  CalibrationOptions o;
  o.base_prior_s = 0.030;
  o.per_token_prior_s = 20e-6;
  StepCalibrator custom(o);
  CHECK(custom.step_base_s() == 0.030);
  CHECK(custom.step_per_token_s() == 20e-6);
  o.base_prior_s = -1;  // out of range: the default
  o.forgetting = 7;
  StepCalibrator fixed(o);
  CHECK(fixed.step_base_s() == kA);
}

TEST_CASE("calibration converges to the engine's a and b under noise", "[estimator][calibration]") {
  const Engine e{0.022, 55e-6};
  for (bool steps_known : {false, true}) {
    StepCalibrator cal;
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<double> d(1, 128);
    std::uniform_real_distribution<double> p01(0, 1);
    std::uniform_real_distribution<double> noise(-0.05, 0.05);
    for (int i = 0; i < 300; ++i) {
      double decodes = d(rng);
      double prefill = p01(rng) < 0.3 ? 0 : p01(rng) * (2048 - decodes);
      REQUIRE(feed(&cal, e, decodes, prefill, noise(rng), 5.0, 1.0, steps_known));
    }
    CHECK(cal.samples() == 300);  // each 5 s interval closes a window
    CHECK(cal.step_base_s() == Approx(e.base_s).epsilon(0.10));
    CHECK(cal.step_per_token_s() == Approx(e.per_token_s).epsilon(0.05));
    CHECK(cal.step_time_s(2048) == Approx(e.base_s + 2048 * e.per_token_s).epsilon(0.03));
    CHECK(cal.itl_mean_s() > 0);
    CHECK(cal.ttft_mean_s() == Approx(0.2));
  }
}

TEST_CASE("calibration tracks a change (forgetting)", "[estimator][calibration]") {
  StepCalibrator cal;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> d(1, 64);
  std::uniform_real_distribution<double> p(0, 1900);
  for (int i = 0; i < 600; ++i)
    feed(&cal, {0.010, 20e-6}, d(rng), p(rng), 0);
  CHECK(cal.step_base_s() == Approx(0.010).epsilon(0.05));
  CHECK(cal.step_per_token_s() == Approx(20e-6).epsilon(0.05));
  for (int i = 0; i < 600; ++i)
    feed(&cal, {0.030, 60e-6}, d(rng), p(rng), 0);
  CHECK(cal.step_base_s() == Approx(0.030).epsilon(0.05));
  CHECK(cal.step_per_token_s() == Approx(60e-6).epsilon(0.05));
}

TEST_CASE("calibration is stable when samples lack variety", "[estimator][calibration]") {
  const Engine e{0.020, 30e-6};  // step(1000) = 0.050; the prior says 0.055
  StepCalibrator cal;
  for (int i = 0; i < 2000; ++i)
    REQUIRE(feed(&cal, e, 20, 980, 0));
  // Exact where the samples are; elsewhere the line leans on the prior
  // (15 ms + 40 us/token), so neither parameter has run away.
  CHECK(cal.step_time_s(1000) == Approx(0.050).epsilon(0.01));
  CHECK(cal.step_base_s() > 0.005);
  CHECK(cal.step_base_s() < 0.030);
  CHECK(cal.step_per_token_s() > 10e-6);
  CHECK(cal.step_per_token_s() < 60e-6);
}

TEST_CASE("calibration counts steps from the batch when the engine idled",
          "[estimator][calibration]") {
  const Engine e{0.018, 45e-6};
  StepCalibrator cal;
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> d(1, 128);
  std::uniform_real_distribution<double> p(0, 1900);
  std::uniform_real_distribution<double> busy(0.2, 1.0);
  for (int i = 0; i < 300; ++i) {
    ScrapeDeltas idle_end;  // the engine idled at the end: no requests at the scrape
    const double decodes = d(rng);
    const double prefill = p(rng);
    const double step_s = e.base_s + e.per_token_s * (decodes + prefill);
    const double steps = busy(rng) * 5.0 / step_s;
    idle_end.interval_s = 5.0;
    idle_end.itl_count = steps * decodes;
    idle_end.itl_sum_s = idle_end.itl_count * step_s;
    idle_end.prompt_tokens = steps * prefill;
    idle_end.generation_tokens = idle_end.itl_count;
    idle_end.running_start = 2 * decodes;  // mean running: the batch while busy
    idle_end.running_end = 0;
    REQUIRE(cal.observe(idle_end));
  }
  CHECK(cal.step_base_s() == Approx(e.base_s).epsilon(0.05));
  CHECK(cal.step_per_token_s() == Approx(e.per_token_s).epsilon(0.05));
}

// The cause of the old underestimate (5-10 us/token against a true 40-80 us on
// vllm-sim): V1 counts a chunked prompt when its prefill completes, so a
// 100 ms interval of 90 ms full-budget steps shows a few decode tokens, and a
// later one a 12,000-token "step". Per-interval samples fit a slope near zero.
TEST_CASE("calibration bridges chunked prefills counted at completion (V1 metrics)",
          "[estimator][calibration]") {
  struct Case {
    Engine e;
    double rate;
  };
  // ~75% load for these prompt/output mixes: a normal and a slow replica.
  for (const Case& c : {Case{{0.008, 40e-6}, 11.0}, Case{{0.016, 80e-6}, 5.5}}) {
    for (bool iterations : {true, false}) {
      CAPTURE(c.e.base_s, iterations);
      V1Engine eng{c.e, c.rate, 0.05};
      eng.expose_iterations = iterations;
      StepCalibrator cal;
      eng.run(&cal, 60);
      CHECK(cal.samples() > 30);
      CHECK(cal.step_base_s() == Approx(c.e.base_s).epsilon(0.15));
      CHECK(cal.step_per_token_s() == Approx(c.e.per_token_s).epsilon(0.10));

      // The same deltas, one sample per interval (no windows), show the bias.
      CalibrationOptions per_interval;
      per_interval.window_min_s = 0;
      per_interval.window_min_steps = 0;
      per_interval.prefill_pending_ratio = 1e9;
      StepCalibrator naive(per_interval);
      eng.run(&naive, 60);
      CHECK(naive.step_per_token_s() < 0.5 * c.e.per_token_s);
    }
  }
}

TEST_CASE("calibration at light and decode-only load stays near the engine",
          "[estimator][calibration]") {
  for (const Engine& e : {Engine{0.008, 40e-6}, Engine{0.016, 80e-6}}) {
    CAPTURE(e.base_s);
    V1Engine light{e, 1.5, 0.05};  // a handful of requests at a time
    StepCalibrator cal;
    light.run(&cal, 60);
    CHECK(cal.step_base_s() == Approx(e.base_s).epsilon(0.15));
    CHECK(cal.step_per_token_s() == Approx(e.per_token_s).epsilon(0.25));

    V1Engine decode_only{e, 10, 0};  // short prompts only
    StepCalibrator dec;
    decode_only.run(&dec, 60);
    CHECK(dec.step_base_s() == Approx(e.base_s).epsilon(0.15));
    CHECK(dec.step_per_token_s() == Approx(e.per_token_s).epsilon(0.25));
  }
}

TEST_CASE("calibration windows wait for a prefill whose tokens are not counted yet",
          "[estimator][calibration]") {
  // Hand-made: an 8 ms + 40 us engine with 50 decodes. Two decode intervals
  // (10 steps of 10 ms), then a 6,000-token prompt in three 90 ms steps with
  // 1,998-token chunks: the intervals show 90 ms steps and 50 tokens each,
  // until the third counts the whole prompt.
  CalibrationOptions o;
  o.base_prior_s = 0.008;
  o.per_token_prior_s = 40e-6;
  o.window_min_s = 0.15;
  o.window_min_steps = 1;
  StepCalibrator cal(o);
  auto interval = [&](double steps, double step_s, double prompt, double first) {
    ScrapeDeltas d;
    d.interval_s = 0.1;
    d.itl_count = 50 * steps;
    d.itl_sum_s = d.itl_count * step_s;
    d.prompt_tokens = prompt;
    d.ttft_count = first;
    d.ttft_sum_s = first * 0.27;
    d.generation_tokens = d.itl_count + first;
    d.steps = steps;
    d.running_start = 51;
    d.running_end = 51;
    return cal.observe(d);
  };
  REQUIRE(interval(10, 0.010, 0, 0));
  REQUIRE(interval(10, 0.010, 0, 0));  // 0.2 s, 20 steps: a window
  CHECK(cal.samples() == 1);
  REQUIRE(interval(1, 0.090, 0, 0));  // a chunk: 90 ms for 50 counted tokens
  REQUIRE(interval(1, 0.090, 0, 0));  // 0.2 s, but the prefill is pending
  CHECK(cal.samples() == 1);
  REQUIRE(interval(1, 0.090, 6000, 1));  // completed: 6,000 + 150 tokens in 3 steps
  CHECK(cal.samples() == 2);
  // The window: x = 6150 / 3 = 2050 tokens per step, y = 90 ms, on the line.
  CHECK(cal.step_time_s(2050) == Approx(0.090).epsilon(0.01));
  CHECK(cal.step_per_token_s() == Approx(40e-6).epsilon(0.02));
}

TEST_CASE("calibration ignores garbage intervals", "[estimator][calibration]") {
  StepCalibrator cal;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> d(1, 64);
  std::uniform_real_distribution<double> p(0, 1900);
  for (int i = 0; i < 100; ++i)
    feed(&cal, {0.012, 35e-6}, d(rng), p(rng), 0);
  const double a = cal.step_base_s();
  const double b = cal.step_per_token_s();
  const uint32_t n = cal.samples();
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  // interval, itl_sum, itl_count, ttft_sum, ttft_count, prompt, generation, running
  auto obs = [&](double interval, double itl_sum, double itl_count, double ttft_sum,
                 double ttft_count, double prompt, double gen, double running) {
    ScrapeDeltas x;
    x.interval_s = interval;
    x.itl_sum_s = itl_sum;
    x.itl_count = itl_count;
    x.ttft_sum_s = ttft_sum;
    x.ttft_count = ttft_count;
    x.prompt_tokens = prompt;
    x.generation_tokens = gen;
    x.running_start = running;
    x.running_end = running;
    return cal.observe(x);
  };
  CHECK_FALSE(obs(5, 0, 0, 0, 0, 0, 0, 0));             // idle
  CHECK_FALSE(obs(5, -3, -200, 0, 0, -1e6, -1e5, 10));  // counter reset
  CHECK_FALSE(obs(5, 2, 100, 0, 0, -5000, 100, 10));    // prompt counter reset
  CHECK_FALSE(obs(5, 2, 100, -1, -3, 5000, 100, 10));   // ttft histogram reset
  CHECK_FALSE(obs(0, 2, 100, 0, 0, 5000, 100, 10));     // no time passed
  CHECK_FALSE(obs(-5, 2, 100, 0, 0, 5000, 100, 10));
  CHECK_FALSE(obs(nan, 2, 100, 0, 0, 5000, 100, 10));
  CHECK_FALSE(obs(5, nan, 100, 0, 0, 5000, 100, 10));
  CHECK_FALSE(obs(5, 2, inf, 0, 0, 5000, 100, 10));
  CHECK_FALSE(obs(5, 2, 100, 0, 0, inf, 100, 10));
  CHECK_FALSE(obs(5, 0, 100, 0, 0, 5000, 100, 10));     // zero ITL sum
  CHECK_FALSE(obs(5, 1000, 100, 0, 0, 5000, 100, 10));  // 10 s steps in 5 s
  CHECK(cal.samples() == n);
  CHECK(cal.ignored() == 12);
  CHECK(cal.step_base_s() == a);
  CHECK(cal.step_per_token_s() == b);
  CHECK(cal.itl_mean_s() == Approx(10.0));  // the last interval's own mean, ignored or not
  CHECK(cal.ttft_mean_s() == -1);
}

TEST_CASE("calibration drops windows without enough to fit", "[estimator][calibration]") {
  CalibrationOptions o;  // every interval is a window
  o.window_min_s = 0;
  o.window_min_steps = 0;
  o.prefill_pending_ratio = 1e9;
  StepCalibrator cal(o);
  auto obs = [&](double itl_sum, double itl_count, double prompt, double gen) {
    ScrapeDeltas x;
    x.interval_s = 5;
    x.itl_sum_s = itl_sum;
    x.itl_count = itl_count;
    x.prompt_tokens = prompt;
    x.generation_tokens = gen;
    x.running_start = 10;
    x.running_end = 10;
    return cal.observe(x);
  };
  CHECK(obs(0.06, 3, 100, 3));     // too few inter-token events
  CHECK(obs(2, 100, 0, 0));        // no tokens counted
  CHECK(obs(2, 100, 1e300, 100));  // absurd token count
  CHECK(cal.samples() == 0);
  CHECK(cal.step_base_s() == kA);
  CHECK(cal.step_per_token_s() == kB);
  CHECK(obs(2, 100, 5000, 100));  // fine
  CHECK(cal.samples() == 1);
}

TEST_CASE("calibration clamps an absurd but consistent engine", "[estimator][calibration]") {
  StepCalibrator cal;
  for (int i = 0; i < 200; ++i)
    feed(&cal, {4.0, 0}, 10, 0, 0, 100.0);  // 4 s per step whatever it holds
  CHECK(cal.step_base_s() == tr::estimator::kStepBaseMaxS);
  CHECK(cal.step_per_token_s() >= tr::estimator::kStepPerTokenMinS);
  CHECK(std::isfinite(cal.step_time_s(1e6)));
}

TEST_CASE("prompt tokens of mixed text: per-class weights learned from usage",
          "[estimator][tokens]") {
  // A tokenizer like vllm-sim --tokenizer mixed: prose 4.2, code 2.5, CJK 1.5
  // characters per token. Three kinds of prompts of 1,200 characters.
  auto fact = [](uint64_t chars, uint64_t symbols, uint64_t wide) {
    RequestFacts f = facts("m", chars);
    f.prompt_symbol_chars = symbols;
    f.prompt_wide_chars = wide;
    return f;
  };
  // prose: 40 punctuation marks, no wide; code: 400 symbols; CJK: 1,100 wide.
  const RequestFacts prose = fact(1200, 40, 0), code = fact(1200, 400, 0),
                     cjk = fact(1200, 0, 1100);
  const uint64_t t_prose = 286, t_code = 480, t_cjk = 800;
  ModelLearner l;
  for (int i = 0; i < 300; ++i) {
    l.observe_usage(prose, t_prose);
    l.observe_usage(code, t_code);
    l.observe_usage(cjk, t_cjk);
  }
  auto within = [](uint32_t got, uint64_t want) { return got >= want * 0.9 && got <= want * 1.1; };
  CHECK(within(l.prompt_tokens(prose), t_prose));
  CHECK(within(l.prompt_tokens(code), t_code));
  CHECK(within(l.prompt_tokens(cjk), t_cjk));
  // One ratio for all three (what the model was before) misses CJK by far.
  double one_ratio_cjk = 1200 / l.chars_per_token("m");
  CHECK(one_ratio_cjk < 0.75 * t_cjk);
  // Other models keep the priors until they see their own traffic... the
  // shared entry learned from everything.
  CHECK(l.prompt_tokens(fact(1200, 0, 1100)) == l.prompt_tokens(cjk));
}

TEST_CASE("decode is no faster than the engine's measured inter-token latency", "[estimator]") {
  ReplicaLoad r;
  r.step_base_s = 0.010;
  r.step_per_token_s = 100e-6;
  r.running = 9;  // we make the batch 10: step = 10 ms + 100 us x 10 = 11 ms
  RequestCost q{100, 101};
  Prediction plain = predict(r, q);
  // Measured 40 ms between tokens (long prompts keep arriving): decode is
  // 100 x (40 ms + 0.1 ms) instead of 100 x 11 ms.
  r.observed_itl_s = 0.040;
  Prediction slow = predict(r, q);
  CHECK(slow.ttft_s == Approx(plain.ttft_s));
  CHECK(slow.completion_s - slow.ttft_s == Approx(100 * 0.0401));
  CHECK(plain.completion_s - plain.ttft_s == Approx(100 * 0.011));
  // A measured ITL below the model's step changes nothing.
  r.observed_itl_s = 0.005;
  CHECK(predict(r, q).completion_s == Approx(plain.completion_s));
}
