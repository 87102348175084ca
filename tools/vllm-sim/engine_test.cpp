// Engine tests without sockets or clocks: a fake sink records tokens and the
// test drives steps by hand with made-up times.
#define CATCH_CONFIG_MAIN
#include <catch.hpp>
#include <cmath>
#include <memory>
#include <vector>

#include "engine.hpp"
#include "vocab.hpp"

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

// The request that finished first (reason != none), or nullptr.
const Seq* first_finished(const RecordingSink& sink) {
  for (const Event& ev : sink.events) {
    if (ev.reason != FinishReason::none) return ev.seq;
  }
  return nullptr;
}

// Finish order of the requests, one entry per request.
std::vector<const Seq*> finish_order(const RecordingSink& sink) {
  std::vector<const Seq*> order;
  for (const Event& ev : sink.events) {
    if (ev.reason != FinishReason::none) order.push_back(ev.seq);
  }
  return order;
}

TEST_CASE("natural output lengths depend on the prompt key and the seed only") {
  const uint32_t a = natural_output_len(1, 0xabc, 200, 0.8);
  CHECK(natural_output_len(1, 0xabc, 200, 0.8) == a);
  // Across prompts: log-normal, mean as asked, spread as sigma says, >= 1.
  double sum = 0;
  double log_sum = 0;
  double log_sq = 0;
  uint32_t shortest = UINT32_MAX;
  constexpr int kPrompts = 20000;
  for (int k = 0; k < kPrompts; ++k) {
    const uint32_t n = natural_output_len(1, mix64(k), 200, 0.8);
    shortest = std::min(shortest, n);
    sum += n;
    log_sum += std::log(n);
    log_sq += std::log(n) * std::log(n);
  }
  CHECK(shortest >= 1);
  CHECK(sum / kPrompts == Approx(200).epsilon(0.03));
  const double log_mean = log_sum / kPrompts;
  CHECK(std::sqrt(log_sq / kPrompts - log_mean * log_mean) == Approx(0.8).epsilon(0.03));
  // Another seed moves most lengths; sigma 0 gives the mean itself.
  int moved = 0;
  for (int k = 0; k < 100; ++k)
    moved += natural_output_len(1, mix64(k), 200, 0.8) != natural_output_len(2, mix64(k), 200, 0.8);
  CHECK(moved > 90);
  CHECK(natural_output_len(1, 0xabc, 37, 0) == 37);
  CHECK(natural_output_len(1, 0xabc, 0.2, 0) == 1);
}

TEST_CASE("a natural length below max_tokens stops there whatever max_tokens is") {
  const uint32_t natural = 7;
  for (uint32_t max_tokens : {8u, 50u, 1000u}) {
    RecordingSink sink;
    Engine e(small_config(), &sink);
    auto s = make_seq(4, std::min(natural, max_tokens), max_tokens);
    int64_t now = 0;
    e.submit(s.get(), now);
    drain(e, &now);
    CHECK(tokens_of(sink, s.get()) == natural);
    CHECK(sink.events.back().reason == FinishReason::stop);
  }
  // A cap below the natural length ends it with "length".
  RecordingSink sink;
  Engine e(small_config(), &sink);
  auto s = make_seq(4, std::min(natural, 5u), 5);
  int64_t now = 0;
  e.submit(s.get(), now);
  drain(e, &now);
  CHECK(tokens_of(sink, s.get()) == 5);
  CHECK(sink.events.back().reason == FinishReason::length);
}

TEST_CASE(
    "max_loras skips a waiting request whose adapter does not fit but not the ones behind it") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.max_loras = 1;
  c.max_cpu_loras = 1;
  c.lora_load_ms = 5;
  Engine e(c, &sink);
  auto a = make_seq(4, 3);
  auto b = make_seq(4, 3);
  auto a2 = make_seq(4, 3);
  auto base = make_seq(4, 3);
  a->lora = 1;
  b->lora = 2;
  a2->lora = 1;
  for (Seq* s : {a.get(), b.get(), a2.get(), base.get()})
    e.submit(s, 0);
  e.start_step(0, 1.0);
  // a takes the only adapter slot; b waits; a2 shares a's adapter and the
  // base-model request needs none.
  CHECK(e.running() == 3);
  CHECK(e.waiting() == 1);
  CHECK(e.running_loras() == std::vector<uint32_t>{1});
  CHECK(e.waiting_loras() == std::vector<uint32_t>{2});
  CHECK(b->state == Seq::State::waiting);
  // The step loaded adapter 1: base 1 ms + 12 tokens * 10 us + 5 ms.
  CHECK(e.deadline_ns() == 1'000'000 + 120'000 + 5'000'000);
  CHECK(e.metrics().lora_loads == 1);
  int64_t now = e.deadline_ns();
  e.finish_step(now);
  drain(e, &now);
  const std::vector<const Seq*> order = finish_order(sink);
  REQUIRE(order.size() == 4);
  CHECK(order.back() == b.get());
  // Adapter 2 evicted adapter 1 from the single resident slot.
  CHECK(e.metrics().lora_loads == 2);
  CHECK(e.running_loras().empty());
}

TEST_CASE("resident adapters load once; the least recently used is evicted") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.max_loras = 1;
  c.max_cpu_loras = 2;
  Engine e(c, &sink);
  int64_t now = 0;
  std::vector<std::unique_ptr<Seq>> seqs;
  // Adapters used one after the other: 1, 2, 1 (resident), 3 (evicts 2), 2.
  for (uint32_t lora : {1u, 2u, 1u, 3u, 2u}) {
    seqs.push_back(make_seq(4, 1));
    seqs.back()->lora = lora;
    e.submit(seqs.back().get(), now);
    drain(e, &now);
  }
  CHECK(e.metrics().lora_loads == 4);
}

TEST_CASE("the priority policy admits by (priority, arrival)") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.policy = SchedulingPolicy::priority;
  c.max_num_seqs = 1;
  Engine e(c, &sink);
  auto late_low = make_seq(4, 2);
  auto urgent = make_seq(4, 2);
  auto normal_1 = make_seq(4, 2);
  auto normal_2 = make_seq(4, 2);
  auto negative = make_seq(4, 2);
  late_low->priority = 5;
  urgent->priority = 0;
  normal_1->priority = 1;
  normal_2->priority = 1;
  negative->priority = -3;
  e.submit(late_low.get(), 0);
  e.submit(normal_1.get(), 10);
  e.submit(urgent.get(), 20);
  e.submit(normal_2.get(), 20);
  e.submit(negative.get(), 30);
  int64_t now = 40;
  drain(e, &now);
  CHECK(finish_order(sink) == std::vector<const Seq*>{negative.get(), urgent.get(), normal_1.get(),
                                                      normal_2.get(), late_low.get()});
}

TEST_CASE("fcfs ignores priority") {
  RecordingSink sink;
  EngineConfig c = small_config();
  c.max_num_seqs = 1;
  Engine e(c, &sink);
  auto first = make_seq(4, 2);
  auto second = make_seq(4, 2);
  first->priority = 9;
  e.submit(first.get(), 0);
  e.submit(second.get(), 0);
  int64_t now = 0;
  drain(e, &now);
  CHECK(first_finished(sink) == first.get());
}

// a (priority 1) is admitted first, b (priority 0) a step later; both grow
// until the 5-block pool runs out.
struct PreemptionRace {
  RecordingSink sink;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Seq> a = make_seq(4, 16);
  std::unique_ptr<Seq> b = make_seq(2, 16);

  explicit PreemptionRace(SchedulingPolicy policy) {
    EngineConfig c = small_config();
    c.kv_blocks = 5;  // 20 tokens: a alone fits, a and b together do not
    c.prefix_caching = false;
    c.policy = policy;
    engine = std::make_unique<Engine>(c, &sink);
    a->priority = 1;
    int64_t now = 0;
    engine->submit(a.get(), now);
    engine->start_step(now, 1.0);
    now = engine->deadline_ns();
    engine->finish_step(now);
    engine->submit(b.get(), now);
    drain(*engine, &now);
  }
};

TEST_CASE("the priority policy preempts the lowest-priority request rather than the newest") {
  PreemptionRace fcfs(SchedulingPolicy::fcfs);
  PreemptionRace prio(SchedulingPolicy::priority);
  for (PreemptionRace* r : {&fcfs, &prio}) {
    CHECK(r->engine->metrics().preemptions > 0);
    CHECK(tokens_of(r->sink, r->a.get()) == 16);
    CHECK(tokens_of(r->sink, r->b.get()) == 16);
    CHECK(r->engine->free_blocks() == 5);
  }
  // fcfs preempts the newest (b), so a finishes first; priority preempts a
  // (priority 1 > 0) although b was admitted later, even when a was already
  // scheduled in the step where b ran out of blocks.
  CHECK(first_finished(fcfs.sink) == fcfs.a.get());
  CHECK(first_finished(prio.sink) == prio.b.get());
}

TEST_CASE("the mixed tokenizer counts words, CJK and symbols at their own ratios") {
  CHECK(mixed_tokens("") == 0);
  // A space before a word is part of it; a word costs ceil(letters / 5).
  CHECK(mixed_tokens("the model") == 2);
  CHECK(mixed_tokens("Hello, world!") == 4);  // Hello | , | world | !
  CHECK(mixed_tokens("schedules") == 2);
  // CJK: 1.5 code points per token, per run.
  CHECK(mixed_tokens("東京は") == 2);
  CHECK(mixed_tokens("한국어 텍스트") == 4);  // 3 Hangul, a space (symbol), 3 Hangul
  // Symbols: 2.5 code points per token, per run; malformed bytes are symbols.
  CHECK(mixed_tokens("x = f(y);\n") == 7);
  CHECK(mixed_tokens("\xff\xfe") == 1);
  // Non-ASCII letters outside CJK are word characters.
  CHECK(mixed_tokens(" naïve") == 1);
  // Over longer texts the ratios differ by kind, as with a BPE tokenizer.
  std::string prose;
  std::string code;
  std::string cjk;
  for (int i = 0; i < 50; ++i) {
    prose += " the engine schedules every request in steps of prefill and decode";
    code += "    if (x->next != nullptr) { total += x->len * 2; }\n";
    cjk += "模型在每一步中调度请求。";
  }
  const auto ratio = [](const std::string& s) {
    size_t cps = 0;
    for (char c : s)
      cps += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    return static_cast<double>(cps) / static_cast<double>(mixed_tokens(s));
  };
  CHECK(ratio(prose) > 4.0);
  CHECK(ratio(prose) < 5.5);
  CHECK(ratio(code) > 2.0);
  CHECK(ratio(code) < 3.0);
  CHECK(ratio(cjk) == Approx(1.5).epsilon(0.05));
}

}  // namespace
}  // namespace tr::sim
