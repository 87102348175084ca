// The replica table's seqlock and dispatch counters under concurrent use.
// Built with -fsanitize=thread (tests/unit/meson.build): ThreadSanitizer checks
// there is no data race, and the assertions check there is no torn read.
#include <atomic>
#include <catch.hpp>
#include <thread>
#include <vector>

#include "scores/table.hpp"

using tr::scores::ScrapedState;
using tr::scores::Table;

namespace {

// Every field derived from one number: a torn copy mixes two numbers.
ScrapedState make_state(uint32_t k) {
  ScrapedState s;
  s.scraped_at_ms = k;
  s.scrapes_ok = k;
  s.scrape_errors = k ^ 0x5a5a5a5au;
  s.metrics_ok = (k & 1) != 0;
  s.running = static_cast<float>(k % 1000);
  s.waiting = static_cast<float>(k % 1000) + 1;
  s.kv_usage = static_cast<float>(k % 100) / 100.0f;
  s.engines = k;
  s.num_gpu_blocks = static_cast<uint64_t>(k) * 3;
  s.step_base_s = static_cast<float>(k % 1000) * 2;
  s.chars_per_token = static_cast<float>(k % 1000) * 3;
  return s;
}

bool consistent(const ScrapedState& s) {
  uint32_t k = s.scrapes_ok;
  ScrapedState want = make_state(k);
  return s.scraped_at_ms == want.scraped_at_ms && s.scrape_errors == want.scrape_errors &&
         s.metrics_ok == want.metrics_ok && s.running == want.running &&
         s.waiting == want.waiting && s.kv_usage == want.kv_usage && s.engines == want.engines &&
         s.num_gpu_blocks == want.num_gpu_blocks && s.step_base_s == want.step_base_s &&
         s.chars_per_token == want.chars_per_token;
}

}  // namespace

TEST_CASE("seqlock: readers never see a torn state while one writer publishes", "[scores]") {
  Table t(4);
  t.at(1).scraped.store(make_state(0));  // readers start from a consistent state
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> torn{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      uint64_t n = 0;
      uint32_t last = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        ScrapedState s = t.at(1).scraped.load();
        if (!consistent(s) || s.scrapes_ok < last) torn.fetch_add(1);
        last = s.scrapes_ok;
        ++n;
      }
      reads.fetch_add(n);
    });
  }
  std::thread writer([&] {
    for (uint32_t k = 1; k <= 200000; ++k)
      t.at(1).scraped.store(make_state(k));
  });
  writer.join();
  stop.store(true);
  for (auto& th : readers)
    th.join();
  CHECK(torn.load() == 0);
  CHECK(reads.load() > 0);
  CHECK(t.at(1).scraped.load().scrapes_ok == 200000);
  CHECK(t.at(1).scraped.version() == 200001);
}

TEST_CASE("dispatch counters balance under concurrent credit and debit", "[scores]") {
  Table t(2);
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&t, w] {
      for (int i = 0; i < 50000; ++i) {
        tr::scores::Dispatch& d = t.at(static_cast<size_t>((i + w) % 2)).dispatch;
        d.inflight.fetch_add(1, std::memory_order_relaxed);
        d.prefill_tokens.fetch_add(100, std::memory_order_relaxed);
        d.prefill_tokens.fetch_sub(100, std::memory_order_relaxed);
        d.inflight.fetch_sub(1, std::memory_order_relaxed);
      }
    });
  }
  for (auto& th : workers)
    th.join();
  for (size_t i = 0; i < 2; ++i) {
    CHECK(t.at(i).dispatch.inflight.load() == 0);
    CHECK(t.at(i).dispatch.prefill_tokens.load() == 0);
  }
}
