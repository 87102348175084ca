// Engine tests without sockets or clocks: a fake sink records tokens and the
// test drives steps by hand with made-up times.
#define CATCH_CONFIG_MAIN
#include <catch.hpp>
#include <memory>
#include <vector>

#include "engine.hpp"

namespace tr::sim {
namespace {

struct Event {
  Seq* seq;
  FinishReason reason;
};

class RecordingSink : public EngineSink {
 public:
  void on_token(Seq& seq, FinishReason reason, int64_t) override {
    events.push_back(Event{&seq, reason});
  }
  std::vector<Event> events;
};

std::unique_ptr<Seq> make_seq(uint32_t prompt, uint32_t target, uint32_t max = 0) {
  auto s = std::make_unique<Seq>();
  s->prompt_tokens = prompt;
  s->target_tokens = target;
  s->max_tokens = max == 0 ? target : max;
  return s;
}

// Runs steps until the engine is idle; returns the number of steps.
int drain(Engine& e, int64_t* now, int max_steps = 100000) {
  int steps = 0;
  while (e.has_work() && steps < max_steps) {
    e.start_step(*now, 1.0);
    REQUIRE(e.step_in_flight());
    *now = e.deadline_ns();
    e.finish_step(*now);
    ++steps;
  }
  return steps;
}

size_t tokens_of(const RecordingSink& sink, const Seq* s) {
  size_t n = 0;
  for (const Event& ev : sink.events)
    n += ev.seq == s;
  return n;
}

EngineConfig small_config() {
  EngineConfig c;
  c.max_num_batched_tokens = 64;
  c.max_num_seqs = 8;
  c.kv_blocks = 64;
  c.block_size = 4;
  c.step_base_ms = 1;
  c.step_per_token_us = 10;
  c.step_per_ctx_ns = 0;
  return c;
}

TEST_CASE("a request prefills in one step then decodes one token per step") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(10, 5);
  int64_t now = 0;
  e.submit(s.get(), now);
  CHECK(e.waiting() == 1);
  CHECK(drain(e, &now) == 5);
  REQUIRE(sink.events.size() == 5);
  CHECK(sink.events.back().reason == FinishReason::length);
  CHECK(e.free_blocks() == 64);
  CHECK(e.metrics().generation_tokens == 5);
  CHECK(e.metrics().prompt_tokens == 10);
  CHECK(e.metrics().ttft.count == 1);
  CHECK(e.metrics().itl.count == 4);
  CHECK(e.metrics().finished[static_cast<size_t>(FinishReason::length)] == 1);
}

TEST_CASE("a target below max_tokens finishes with stop") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(4, 3, 6);
  int64_t now = 0;
  e.submit(s.get(), now);
  drain(e, &now);
  REQUIRE(sink.events.size() == 3);
  CHECK(sink.events.back().reason == FinishReason::stop);
}

TEST_CASE("a long prompt is prefilled in budget-sized chunks") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(200, 1);
  int64_t now = 0;
  e.submit(s.get(), now);
  // 200 tokens at 64 per step: 64, 64, 64, 8 -> the 4th step samples.
  CHECK(drain(e, &now) == 4);
  CHECK(sink.events.size() == 1);
}

TEST_CASE("a chunked prompt counts in the step that completes it, as in vLLM V1") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto a = make_seq(8, 3);    // decodes while b prefills
  auto b = make_seq(150, 2);  // 150 tokens over several steps
  int64_t now = 0;
  e.submit(a.get(), now);
  e.submit(b.get(), now);
  // Step 1: a 8 + b 56 (budget 64). Step 2: a 1 + b 63. Step 3: a 1 + b 31:
  // b completes and samples. Step 4: b 1 (a is done).
  CHECK(drain(e, &now) == 4);
  const EngineMetrics& m = e.metrics();
  CHECK(m.prompt_tokens == 158);  // whole prompts, each when it completed
  // vllm:iteration_tokens_total: one observation per step that output a
  // token (all four here), of its generated tokens plus completed prompts.
  CHECK(m.iteration_tokens.count == 4);
  CHECK(m.iteration_tokens.sum == (8 + 1) + 1 + (150 + 1 + 1) + 1);
  // Ground truth: every token scheduled, in the step that computed it.
  CHECK(m.steps == 4);
  CHECK(m.step_tokens == 64 + 64 + 32 + 1);
  // 4 steps of 1 ms + 10 us per token.
  CHECK(m.step_seconds == Approx(4 * 1e-3 + 161 * 10e-6));
}

TEST_CASE("a step that outputs no token is not an iteration") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(200, 1);
  int64_t now = 0;
  e.submit(s.get(), now);
  CHECK(drain(e, &now) == 4);  // 64, 64, 64, 8: only the last samples
  CHECK(e.metrics().iteration_tokens.count == 1);
  CHECK(e.metrics().iteration_tokens.sum == 201);
  CHECK(e.metrics().steps == 4);
  CHECK(e.metrics().step_tokens == 200);
}

TEST_CASE("step time follows base + per token, divided by speed") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(20, 2);
  e.submit(s.get(), 1000);
  e.start_step(1000, 2.0);
  // (1 ms + 10 us * 20) / 2 = 0.6 ms
  CHECK(e.deadline_ns() == 1000 + 600'000);
}

TEST_CASE("a short request admitted behind a long prefill waits for budget") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto long_seq = make_seq(256, 1);
  auto short_seq = make_seq(4, 1);
  int64_t now = 0;
  e.submit(long_seq.get(), now);
  e.submit(short_seq.get(), now);
  int steps = 0;
  while (tokens_of(sink, short_seq.get()) == 0) {
    e.start_step(now, 1.0);
    now = e.deadline_ns();
    e.finish_step(now);
    ++steps;
  }
  // 64 * 4 = 256: the budget is all the long prompt's for 4 steps; the short
  // request is admitted in the 5th.
  CHECK(steps == 5);
}

TEST_CASE("max_num_seqs bounds the running set") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.max_num_seqs = 2;
  Engine e(c, &sink);
  std::vector<std::unique_ptr<Seq>> seqs;
  for (int i = 0; i < 5; ++i) {
    seqs.push_back(make_seq(4, 10));
    e.submit(seqs.back().get(), 0);
  }
  e.start_step(0, 1.0);
  CHECK(e.running() == 2);
  CHECK(e.waiting() == 3);
  int64_t now = e.deadline_ns();
  e.finish_step(now);
  drain(e, &now);
  for (auto& s : seqs)
    CHECK(tokens_of(sink, s.get()) == 10);
}

TEST_CASE("a full KV pool preempts the newest request, which recomputes later") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.kv_blocks = 6;  // 24 tokens
  c.prefix_caching = false;
  Engine e(c, &sink);
  auto a = make_seq(4, 16);  // 20 tokens each: both cannot fit
  auto b = make_seq(4, 16);
  int64_t now = 0;
  e.submit(a.get(), now);
  e.submit(b.get(), now);
  drain(e, &now);
  CHECK(e.metrics().preemptions > 0);
  CHECK(tokens_of(sink, a.get()) == 16);
  CHECK(tokens_of(sink, b.get()) == 16);
  // The oldest request was never the victim: it finished first.
  const Event* first_finish = nullptr;
  for (const Event& ev : sink.events) {
    if (ev.reason != FinishReason::none) {
      first_finish = &ev;
      break;
    }
  }
  REQUIRE(first_finish != nullptr);
  CHECK(first_finish->seq == a.get());
  CHECK(e.free_blocks() == 6);
}

TEST_CASE("prefix blocks are reused by a later request with the same prompt") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto a = make_seq(40, 1);
  auto b = make_seq(40, 1);
  for (uint64_t i = 0; i < 10; ++i) {
    a->block_hashes.push_back(100 + i);
    b->block_hashes.push_back(100 + i);
  }
  int64_t now = 0;
  e.submit(a.get(), now);
  drain(e, &now);
  CHECK(e.metrics().prefix_cache_hits == 0);
  CHECK(e.free_blocks() == 64);  // cached blocks count as free
  e.submit(b.get(), now);
  drain(e, &now);
  CHECK(e.metrics().prefix_cache_queries == 80);
  CHECK(e.metrics().prefix_cache_hits == 36);  // 9 of 10 blocks: one token always runs
  CHECK(e.free_blocks() == 64);
}

TEST_CASE("abort frees blocks at once, even during a step") {
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto a = make_seq(30, 50);
  auto b = make_seq(30, 50);
  int64_t now = 0;
  e.submit(a.get(), now);
  e.submit(b.get(), now);
  e.start_step(now, 1.0);
  CHECK(e.free_blocks() < 64);
  e.abort(a.get());
  CHECK(e.running() == 1);
  e.finish_step(e.deadline_ns());
  CHECK(tokens_of(sink, a.get()) == 0);
  CHECK(tokens_of(sink, b.get()) == 1);
  e.abort(b.get());
  CHECK(e.free_blocks() == 64);
  CHECK(!e.has_work());
  CHECK(e.metrics().finished[static_cast<size_t>(FinishReason::abort)] == 2);
  e.abort(b.get());  // idempotent
  CHECK(e.metrics().aborted == 2);
}

}  // namespace
}  // namespace tr::sim
