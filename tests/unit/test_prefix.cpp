// Prefix hashing and the prefix index (src/prefix): chaining over raw pieces,
// approximate LRU by KV capacity, prefix closure of matches, the memory bound,
// no allocation once warm, and concurrent workers (this file is also built
// with -fsanitize=thread as unit_prefix_tsan).
#include <xxhash.h>

#include <atomic>
#include <catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "prefix/hasher.hpp"
#include "prefix/index.hpp"

using tr::prefix::kBlockChars;
using tr::prefix::kMaxBlocks;
using tr::prefix::Mark;
using tr::prefix::PrefixHasher;
using tr::prefix::PrefixIndex;

namespace {

using Chain = std::vector<uint64_t>;

// Printable text of <n> bytes, different for each <seed>.
std::string text(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, ' ');
  for (char& c : s)
    c = static_cast<char>('a' + rng() % 26);
  return s;
}

Chain hash_prompt(std::string_view raw, uint64_t seed = 0) {
  static PrefixHasher h;  // 32 KiB: one, reused (as a worker would)
  h.reset(seed);
  h.prompt(raw);
  return Chain(h.hashes().begin(), h.hashes().end());
}

// Feeds <stream> to <h> cut at random points (1 byte up to ~3 blocks).
void feed_split(PrefixHasher& h, std::string_view stream, uint32_t seed) {
  std::mt19937 rng(seed);
  size_t at = 0;
  while (at < stream.size()) {
    size_t n = rng() % 4 == 0 ? 1 : rng() % (3 * kBlockChars);
    n = std::min(n, stream.size() - at);
    h.feed(stream.substr(at, n));
    at += n;
  }
}

// Chains of <blocks> synthetic hashes: chain(id, n) and chain(id, m) share
// their first min(n, m) blocks, as chains of one prompt's prefixes do.
Chain chain(uint64_t id, size_t blocks) {
  Chain c(blocks);
  uint64_t prev = id * 0x9E3779B97F4A7C15ull + 1;
  for (size_t k = 0; k < blocks; ++k) {
    prev = XXH3_64bits_withSeed(&k, sizeof k, prev);
    c[k] = prev;
  }
  return c;
}

// A chain that shares the first <shared> blocks of <base> and then diverges.
Chain fork(const Chain& base, size_t shared, size_t blocks, uint64_t id) {
  Chain c = chain(id, blocks);
  for (size_t k = 0; k < shared && k < blocks; ++k)
    c[k] = base[k];
  // Later blocks of a real chain depend on the shared ones; synthetic ones
  // differ from <base>'s anyway (other id), which is all that matters here.
  return c;
}

// The exact leading run, by scanning (what match() must agree with when
// presence is prefix-closed).
size_t scan(const PrefixIndex& idx, size_t r, const Chain& c) {
  size_t k = 0;
  while (k < c.size() && idx.contains(r, c[k]))
    ++k;
  return k;
}

// A budget giving each of <replicas> replicas exactly <slots> slots.
size_t budget_for(size_t replicas, size_t slots) {
  return PrefixIndex::min_budget_bytes(replicas) +
         replicas * (slots / PrefixIndex::kWays) * PrefixIndex::kBucketBytes;
}

}  // namespace

// ---------------------------------------------------------------- hasher ---

TEST_CASE("hasher: only full blocks are hashed", "[prefix]") {
  std::string s = text(3 * kBlockChars, 1);
  PrefixHasher h;
  h.reset();
  h.feed(std::string_view(s).substr(0, kBlockChars - 1));
  CHECK(h.blocks() == 0);
  h.feed(std::string_view(s).substr(kBlockChars - 1, 1));
  CHECK(h.blocks() == 1);
  h.feed(std::string_view(s).substr(kBlockChars, kBlockChars - 1));
  CHECK(h.blocks() == 1);
  h.feed(std::string_view(s).substr(2 * kBlockChars - 1, kBlockChars + 1));
  CHECK(h.blocks() == 3);
  CHECK(h.bytes_fed() == 3 * kBlockChars);
  h.reset();
  CHECK(h.blocks() == 0);
  CHECK(h.bytes_fed() == 0);
}

TEST_CASE("hasher: each block's hash is chained on the previous one", "[prefix]") {
  std::string s = text(4 * kBlockChars + 100, 2);
  PrefixHasher h;
  h.reset(77);
  h.feed(s);
  REQUIRE(h.blocks() == 4);
  uint64_t prev = 77;
  for (size_t k = 0; k < 4; ++k) {
    prev = XXH3_64bits_withSeed(s.data() + k * kBlockChars, kBlockChars, prev);
    CHECK(h.hashes()[k] == prev);
  }
  // Changing block 0 changes every later hash, though blocks 1.. are equal.
  std::string t = s;
  t[3] ^= 1;
  PrefixHasher g;
  g.reset(77);
  g.feed(t);
  for (size_t k = 0; k < 4; ++k)
    CHECK(g.hashes()[k] != h.hashes()[k]);
  // Changing block 2 keeps blocks 0 and 1.
  t = s;
  t[2 * kBlockChars + 5] ^= 1;
  g.reset(77);
  g.feed(t);
  CHECK(g.hashes()[0] == h.hashes()[0]);
  CHECK(g.hashes()[1] == h.hashes()[1]);
  CHECK(g.hashes()[2] != h.hashes()[2]);
  CHECK(g.hashes()[3] != h.hashes()[3]);
}

TEST_CASE("hasher: the same stream split into any pieces gives the same chain", "[prefix]") {
  PrefixHasher whole;
  whole.reset(5);
  std::string stream;
  for (int m = 0; m < 6; ++m) {
    std::string role = m % 2 ? "assistant" : "user";
    std::string content = text(100 + 300 * m, 10 + m);
    whole.message(role, content);
    stream += '\x01' + role + '\x02' + content;
  }
  REQUIRE(whole.blocks() == stream.size() / kBlockChars);
  Chain want(whole.hashes().begin(), whole.hashes().end());
  for (uint32_t seed = 0; seed < 50; ++seed) {
    PrefixHasher split;
    split.reset(5);
    feed_split(split, stream, seed);
    CHECK(Chain(split.hashes().begin(), split.hashes().end()) == want);
    CHECK(split.bytes_fed() == stream.size());
  }
  // Byte by byte.
  PrefixHasher bytes;
  bytes.reset(5);
  for (char c : stream)
    bytes.feed(std::string_view(&c, 1));
  CHECK(Chain(bytes.hashes().begin(), bytes.hashes().end()) == want);
}

TEST_CASE("hasher: role and content boundaries are part of the stream", "[prefix]") {
  std::string a = text(300, 3);
  std::string b = text(300, 4);
  auto run = [](auto&& fn) {
    PrefixHasher h;
    h.reset();
    fn(h);
    return Chain(h.hashes().begin(), h.hashes().end());
  };
  Chain two = run([&](PrefixHasher& h) {
    h.message("user", a + "ab");
    h.message("assistant", "c" + b);
  });
  Chain one = run([&](PrefixHasher& h) {
    h.message("user", a + "abc");
    h.message("assistant", b);
  });
  Chain merged = run([&](PrefixHasher& h) { h.message("user", a + "abc" + b); });
  REQUIRE(two.size() >= 2);
  CHECK(two[0] == one[0]);  // the first block is "\1user\2" + a's head in all three
  CHECK(two[0] == merged[0]);
  CHECK(two[1] != one[1]);  // the block holding the boundary differs
  CHECK(two[1] != merged[1]);
  CHECK(one[1] != merged[1]);
  // Role matters; a completions prompt differs from a chat message.
  Chain sys = run([&](PrefixHasher& h) { h.message("system", a + b); });
  Chain usr = run([&](PrefixHasher& h) { h.message("user", a + b); });
  Chain prm = run([&](PrefixHasher& h) { h.prompt(a + b); });
  CHECK(sys[0] != usr[0]);
  CHECK(prm[0] != usr[0]);
  // Text parts are separated too.
  Chain parts = run([&](PrefixHasher& h) {
    h.mark(Mark::message);
    h.feed("user");
    h.mark(Mark::content);
    h.feed(a);
    h.mark(Mark::part);
    h.feed(b);
  });
  CHECK(parts[1] != usr[1]);
}

TEST_CASE("hasher: raw (escaped) JSON bytes are hashed as they are", "[prefix]") {
  std::string head = text(250, 6);
  std::string escaped = head + R"(\"caf\u00e9\"\n\\)" + text(300, 7);
  std::string plain = head + "\"caf\xc3\xa9\"\n\\" + text(300, 7);
  Chain e = hash_prompt(escaped);
  Chain p = hash_prompt(plain);
  REQUIRE(e.size() == 2);
  CHECK(e[0] != p[0]);  // different bytes (a missed hit, never a false one)
  CHECK(hash_prompt(escaped) == e);
  // The escape sequences are plain bytes to the hasher, wherever a piece ends.
  PrefixHasher h;
  h.reset();
  h.mark(Mark::prompt);
  for (size_t at = 0; at < escaped.size(); at += 7)
    h.feed(std::string_view(escaped).substr(at, 7));
  CHECK(Chain(h.hashes().begin(), h.hashes().end()) == e);
}

TEST_CASE("hasher: the seed (model) starts a different chain", "[prefix]") {
  std::string s = text(2 * kBlockChars, 8);
  uint64_t m1 = tr::prefix::seed_for("llama-3-8b");
  uint64_t m2 = tr::prefix::seed_for("llama-3-8b-lora-a");
  CHECK(m1 != m2);
  CHECK(hash_prompt(s, m1) == hash_prompt(s, m1));
  CHECK(hash_prompt(s, m1)[0] != hash_prompt(s, m2)[0]);
}

TEST_CASE("hasher: at most kMaxBlocks hashes; stop() ends the chain", "[prefix]") {
  std::string block = text(kBlockChars, 9);
  PrefixHasher h;
  h.reset();
  for (size_t k = 0; k < kMaxBlocks; ++k)
    h.feed(block);
  CHECK(h.blocks() == kMaxBlocks);
  CHECK_FALSE(h.truncated());
  h.feed(std::string_view(block).substr(0, kBlockChars - 1));  // not a full block yet
  CHECK_FALSE(h.truncated());
  h.feed("x");
  CHECK(h.truncated());
  h.feed(block);
  CHECK(h.blocks() == kMaxBlocks);
  CHECK(h.bytes_fed() == (kMaxBlocks + 2) * kBlockChars);
  // One big piece past the bound.
  std::string big = text((kMaxBlocks + 5) * kBlockChars, 10);
  h.reset();
  h.feed(big);
  CHECK(h.blocks() == kMaxBlocks);
  CHECK(h.truncated());

  h.reset();
  h.feed(block);
  h.stop();
  h.feed(block);
  h.feed(block);
  CHECK(h.blocks() == 1);
  CHECK_FALSE(h.truncated());
  h.reset();
  h.feed(block);
  CHECK(h.blocks() == 1);  // reset() undoes stop()
}

// ----------------------------------------------------------------- index ---

TEST_CASE("index: match counts the leading blocks of a chain a replica was sent", "[prefix]") {
  PrefixIndex idx(3, budget_for(3, 1024));
  Chain a = chain(1, 40);
  CHECK(idx.match(0, a) == 0);
  PrefixIndex::Inserted ins = idx.insert(0, a);
  CHECK(ins.leading == 0);
  CHECK(ins.new_blocks == 40);
  CHECK(idx.match(0, a) == 40);
  CHECK(idx.match(1, a) == 0);  // another replica
  CHECK(idx.match(0, Chain(a.begin(), a.begin() + 10)) == 10);
  CHECK(idx.match(0, {}) == 0);
  // A longer chain with the same head (a follow-up turn) matches the head.
  Chain longer = fork(a, 40, 90, 2);
  CHECK(idx.match(0, longer) == 40);
  ins = idx.insert(0, longer);
  CHECK(ins.leading == 40);
  CHECK(ins.new_blocks == 50);
  CHECK(idx.match(0, longer) == 90);
  // Diverging after block 7.
  CHECK(idx.match(0, fork(a, 7, 30, 3)) == 7);
  CHECK(idx.match(0, chain(4, 30)) == 0);
  PrefixIndex::Stats st = idx.stats(0);
  CHECK(st.inserts == 2);
  CHECK(st.sent_blocks == 130);
  CHECK(st.hit_blocks == 40);
  CHECK(st.new_blocks == 90);
  CHECK(st.matches == 8);
  CHECK(st.matched_blocks == 0 + 40 + 10 + 0 + 40 + 90 + 7 + 0);
  CHECK(idx.entries(0) == 90);
  CHECK(idx.entries(1) == 0);
}

TEST_CASE("index: approximate LRU: recently sent prefixes survive, old ones go", "[prefix]") {
  PrefixIndex idx(1, budget_for(1, 1024));  // below 2048 slots: age counted in blocks
  idx.set_capacity(0, 130);
  Chain a = chain(1, 40), b = chain(2, 40), c = chain(3, 40), d = chain(4, 40);
  idx.insert(0, a);                         // clock 0 -> 40
  idx.insert(0, b);                         // 40 -> 80
  CHECK(idx.insert(0, a).new_blocks == 0);  // a used again: refreshed at 80 -> 120
  idx.insert(0, c);                         // 120 -> 160
  idx.insert(0, d);                         // 160 -> 200: b, unused since 40, is gone
  CHECK(idx.match(0, a) == 40);
  CHECK(idx.match(0, b) == 0);
  CHECK(idx.match(0, c) == 40);
  CHECK(idx.match(0, d) == 40);
  CHECK(idx.entries(0) == 120);
  // Sent again while young (under capacity / 4): left as it is, no clock tick.
  Chain e = chain(5, 4);
  idx.insert(0, e);  // 200 -> 204
  CHECK(idx.insert(0, e).new_blocks == 0);
  CHECK(idx.stats(0).new_blocks == 164);
  CHECK(idx.match(0, a) == 40);  // written at 80: age 124, the clock did not move
  // Foreign KV use (output tokens) ages entries too.
  idx.advance(0, 15);
  CHECK(idx.match(0, a) == 0);  // now 219
  CHECK(idx.match(0, c) == 40);
  idx.advance(0, 32);
  CHECK(idx.match(0, c) == 0);   // written at 120, now 251
  CHECK(idx.match(0, d) == 40);  // written at 160
  // Slots aged out are reused, and re-sending an aged-out chain counts its
  // blocks as new KV again.
  CHECK(idx.insert(0, b).new_blocks == 40);
  CHECK(idx.match(0, b) == 40);
}

TEST_CASE("index: a hot shared head does not flush the others", "[prefix]") {
  PrefixIndex idx(1, budget_for(1, 1024));
  idx.set_capacity(0, 400);
  Chain sys = chain(1, 8);  // a system prompt in front of every request
  Chain doc = fork(sys, 8, 100, 2);
  idx.insert(0, doc);
  for (uint64_t q = 0; q < 2000; ++q) {
    Chain req = fork(sys, 8, 9, 100 + q);  // a one-block question each
    idx.insert(0, req);
    if (q % 500 == 0) idx.insert(0, doc);  // the document is used now and then
  }
  // 2000 unique questions are 2000 blocks of new KV: far beyond the capacity,
  // so what was not used recently is gone; the hot head and the last
  // questions stay, and the present entries stay near the capacity.
  CHECK(idx.match(0, sys) == 8);
  CHECK(idx.match(0, doc) == 8);  // its tail, last used 500 questions ago, is gone
  CHECK(idx.entries(0) <= 400 + 400 / 4 + 8);
  CHECK(idx.entries(0) >= 300);
}

TEST_CASE("index: a physical table smaller than the capacity evicts the oldest per bucket",
          "[prefix]") {
  PrefixIndex idx(1, budget_for(1, 256));
  REQUIRE(idx.slots(0) == 256);
  CHECK(idx.capacity(0) == 256);  // default: the physical slots
  idx.set_capacity(0, 1000000);
  Chain old_chain = chain(1, 20);
  idx.insert(0, old_chain);
  for (uint64_t id = 2; id < 200; ++id)
    idx.insert(0, chain(id, 20));  // ~15 tables' worth
  CHECK(idx.entries(0) <= 256);
  CHECK(idx.match(0, old_chain) == 0);
  Chain recent = chain(500, 20);
  idx.insert(0, recent);
  CHECK(idx.match(0, recent) >= 15);  // a few may lose to full buckets
}

TEST_CASE("index: capacity changes take effect at once; shrinking evicts", "[prefix]") {
  PrefixIndex idx(2, budget_for(2, 1024));
  Chain a = chain(1, 40), b = chain(2, 40);
  idx.insert(0, a);
  idx.insert(0, b);  // clock 80: a sent at 0, b at 40
  CHECK(idx.match(0, a) == 40);
  idx.set_capacity(0, 60);
  CHECK(idx.capacity(0) == 60);
  CHECK(idx.match(0, a) == 0);
  CHECK(idx.match(0, b) == 40);
  CHECK(idx.entries(0) == 40);
  idx.set_capacity(0, 0);  // disabled
  CHECK(idx.match(0, b) == 0);
  CHECK(idx.insert(0, chain(3, 10)).new_blocks == 0);
  CHECK(idx.entries(0) == 0);
  idx.set_capacity(0, 1000);  // growing again: what was not overwritten is back
  CHECK(idx.match(0, a) == 40);
  CHECK(idx.match(0, b) == 40);
  // Another replica is not affected by any of this.
  idx.insert(1, a);
  idx.set_capacity(0, 1);
  CHECK(idx.match(1, a) == 40);
}

TEST_CASE("index: presence stays prefix-closed under eviction; match agrees with a scan",
          "[prefix]") {
  PrefixIndex idx(1, budget_for(1, 1024));
  idx.set_capacity(0, 100);
  Chain x = chain(1, 50);
  Chain y = fork(x, 20, 50, 2);  // shares x's first 20 blocks
  idx.insert(0, x);              // stamps 0
  idx.insert(0, y);              // x's head refreshed at 50
  idx.insert(0, chain(3, 40));   // clock 120: x's tail (sent at 0) is gone, its head is not
  CHECK(scan(idx, 0, x) == 20);
  CHECK(idx.match(0, x) == 20);
  CHECK(idx.match(0, y) == 50);

  // A random workload of conversations that grow and share heads, in a table
  // big enough that no bucket overflows: match() == scan() every time.
  PrefixIndex big(1, budget_for(1, 1024));
  big.set_capacity(0, 150);  // ~1.2 present entries per 8-way bucket
  std::mt19937 rng(42);
  std::vector<Chain> convs;
  for (uint64_t id = 0; id < 8; ++id)
    convs.push_back(chain(100 + id, 1 + rng() % 60));
  for (int step = 0; step < 2000; ++step) {
    Chain& c = convs[rng() % convs.size()];
    if (rng() % 3 == 0) {  // a new turn: the history grows
      Chain grown = fork(c, c.size(), c.size() + 1 + rng() % 8, 1000 + step);
      c = grown;
    }
    if (c.size() > 150 || rng() % 50 == 0)
      c = chain(5000 + step, 1 + rng() % 60);  // new conversation
    size_t m = big.match(0, c);
    REQUIRE(m == scan(big, 0, c));
    for (const Chain& other : convs)
      REQUIRE(big.match(0, other) == scan(big, 0, other));
    big.insert(0, c);
    REQUIRE(big.match(0, c) == c.size());
  }
}

TEST_CASE("index: clear forgets one replica", "[prefix]") {
  PrefixIndex idx(2, budget_for(2, 1024));
  Chain a = chain(1, 30);
  idx.insert(0, a);
  idx.insert(1, a);
  idx.clear(0);
  CHECK(idx.match(0, a) == 0);
  CHECK(idx.entries(0) == 0);
  CHECK(idx.match(1, a) == 30);
  idx.insert(0, a);
  CHECK(idx.match(0, a) == 30);
}

TEST_CASE("index: bytes stay within the budget under a stream of unique prefixes", "[prefix]") {
  constexpr size_t kBudget = 256 * 1024;
  PrefixIndex idx(4, kBudget);
  CHECK(idx.bytes() <= kBudget);
  CHECK(idx.bytes() > kBudget - 4 * PrefixIndex::kBucketBytes);  // the rest is used
  size_t bytes = idx.bytes();
  size_t slots = idx.slots(0);
  CHECK(slots >= 7000);
  CHECK(slots % PrefixIndex::kWays == 0);
  PrefixHasher h;
  std::string prompt = text(64 * kBlockChars, 11);
  for (uint32_t i = 0; i < 3000; ++i) {
    h.reset(i);  // a unique chain every time
    h.prompt(prompt);
    idx.insert(i % 4, h.hashes());
    if (i % 250 == 0) {
      CHECK(idx.bytes() == bytes);
      for (size_t r = 0; r < 4; ++r)
        CHECK(idx.entries(r) <= idx.slots(r));
    }
  }
  CHECK(idx.bytes() == bytes);
  CHECK(idx.bytes() <= kBudget);
  h.reset(2999);
  h.prompt(prompt);
  CHECK(idx.match(2999 % 4, h.hashes()) >= 32);  // the newest survives (mostly)

  // Smaller than the fixed overhead plus one bucket per replica: no slots,
  // nothing stored, still within budget.
  PrefixIndex tiny(4, PrefixIndex::min_budget_bytes(4) + 100);
  CHECK(tiny.slots(0) == 0);
  CHECK(tiny.bytes() <= PrefixIndex::min_budget_bytes(4) + 100);
  tiny.insert(0, chain(1, 10));
  CHECK(tiny.match(0, chain(1, 10)) == 0);
}

TEST_CASE("index: large tables count age in ticks and still forget", "[prefix]") {
  PrefixIndex idx(1, budget_for(1, 65536));  // tick = 64 blocks
  idx.set_capacity(0, 1000);
  Chain a = chain(1, 100);
  idx.insert(0, a);
  CHECK(idx.match(0, a) == 100);
  for (uint64_t id = 2; id < 12; ++id)
    idx.insert(0, chain(id, 100));  // 1000 more new blocks: a is at the edge
  for (uint64_t id = 12; id < 14; ++id)
    idx.insert(0, chain(id, 100));  // 200 more: beyond the capacity plus a tick
  CHECK(idx.match(0, a) == 0);
  CHECK(idx.match(0, chain(13, 100)) == 100);
  // The window is the capacity to within a tick, in whole chains of 100.
  size_t e = idx.entries(0);
  CHECK(e >= 1000 - 64 - 100);
  CHECK(e <= 1000 + 64 + 100);
}

TEST_CASE("index and hasher: no allocation per request once warm", "[prefix]") {
  PrefixIndex idx(12, 4 << 20);
  PrefixHasher h;
  std::string sys = text(8 * kBlockChars, 12);
  std::string q = text(3000, 13);
  uint64_t seed = tr::prefix::seed_for("m");
  // Warm: nothing to warm really (fixed arrays), but run once.
  h.reset(seed);
  h.message("system", sys);
  h.message("user", q);
  idx.insert(0, h.hashes());
  uint64_t before = g_allocations.load();
  size_t total = 0;
  for (int i = 0; i < 200; ++i) {
    h.reset(seed);
    h.message("system", sys);
    h.message("user", std::string_view(q).substr(0, 1000 + i));
    for (size_t r = 0; r < 12; ++r)
      total += idx.match(r, h.hashes());
    idx.insert(static_cast<size_t>(i) % 12, h.hashes());
  }
  uint64_t after = g_allocations.load();
  CHECK(after == before);
  CHECK(total > 0);
}

TEST_CASE("index: concurrent workers insert and match the same and different replicas",
          "[prefix]") {
  constexpr size_t kReplicas = 4;
  PrefixIndex idx(kReplicas, budget_for(kReplicas, 4096));
  // Shared prefixes (a system prompt and customers' documents) behind unique
  // questions, as hashed by each worker's own hasher.
  std::vector<std::string> heads;
  for (uint32_t i = 0; i < 6; ++i)
    heads.push_back(text((2 + i) * kBlockChars + 17, 100 + i));
  std::atomic<bool> go{false};
  std::atomic<uint64_t> bad{0};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      PrefixHasher h;
      std::mt19937 rng(t);
      while (!go.load(std::memory_order_acquire)) {
      }
      for (int i = 0; i < 3000; ++i) {
        const std::string& head = heads[rng() % heads.size()];
        h.reset(1);
        h.message("system", head);
        h.message("user", text(rng() % (3 * kBlockChars), static_cast<uint32_t>(t * 100000 + i)));
        size_t best = 0, best_r = 0;
        for (size_t r = 0; r < kReplicas; ++r) {
          size_t m = idx.match(r, h.hashes());
          if (m > h.blocks()) bad.fetch_add(1);
          if (m > best) best = m, best_r = r;
        }
        size_t r = best > 0 && rng() % 4 != 0 ? best_r : rng() % kReplicas;
        PrefixIndex::Inserted ins = idx.insert(r, h.hashes());
        if (ins.leading + ins.new_blocks > h.blocks()) bad.fetch_add(1);
        if (i % 500 == 0) (void)idx.entries(r);
      }
    });
  }
  // The poller: capacities change, a replica restarts.
  std::thread poller([&] {
    while (!go.load(std::memory_order_acquire)) {
    }
    for (int i = 0; i < 200; ++i) {
      idx.set_capacity(static_cast<size_t>(i) % kReplicas, 500 + 50 * (i % 40));
      if (i % 50 == 49) idx.clear(3);
      (void)idx.stats(static_cast<size_t>(i) % kReplicas);
      std::this_thread::yield();
    }
  });
  go.store(true, std::memory_order_release);
  for (auto& w : workers)
    w.join();
  poller.join();
  CHECK(bad.load() == 0);
  uint64_t matches = 0, inserts = 0;
  for (size_t r = 0; r < kReplicas; ++r) {
    matches += idx.stats(r).matches;
    inserts += idx.stats(r).inserts;
    CHECK(idx.entries(r) <= idx.slots(r));
  }
  CHECK(matches == 4 * 3000 * kReplicas);
  CHECK(inserts == 4 * 3000);
  // Quiet again: a chain sent now is found whole.
  for (size_t r = 0; r < kReplicas; ++r)
    idx.set_capacity(r, 2000);
  PrefixHasher h;
  h.reset(1);
  h.message("system", heads[0]);
  idx.insert(2, h.hashes());
  CHECK(idx.match(2, h.hashes()) == h.blocks());
}
