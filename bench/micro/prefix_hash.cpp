// Prefix-cache affinity cost (src/prefix): hashing throughput over a 400 KB
// prompt fed in realistic pieces, and the routing-decision cost of a
// 100k-token (400 KB) prompt: hash once + match against 12 replicas whose
// indexes are warm and larger than the CPU caches. Not a test: prints figures.
// Run: taskset -c 0 build/bench/prefix_hash [iterations]
// Issue 9 goals: hashing >= 2 GB/s; a 400 KB prompt adds < 200 us to routing.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "prefix/hasher.hpp"
#include "prefix/index.hpp"

using tr::prefix::PrefixHasher;
using tr::prefix::PrefixIndex;

namespace {

using Clock = std::chrono::steady_clock;

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

std::string text(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, ' ');
  for (char& c : s)
    c = static_cast<char>(' ' + rng() % 95);
  return s;
}

// A chat request as the inspector would feed it: (role, content) per
// message, contents as whole string tokens.
struct Chat {
  std::vector<std::string> roles;
  std::vector<std::string> contents;
  size_t bytes = 0;
};

Chat make_chat(size_t total, size_t message_bytes, uint32_t seed) {
  Chat c;
  for (uint32_t m = 0; c.bytes < total; ++m) {
    c.roles.push_back(m == 0 ? "system" : m % 2 ? "user" : "assistant");
    c.contents.push_back(text(std::min(message_bytes, total - c.bytes), seed * 1000 + m));
    c.bytes += c.contents.back().size();
  }
  return c;
}

void hash_chat(PrefixHasher& h, const Chat& c, uint64_t seed) {
  h.reset(seed);
  for (size_t m = 0; m < c.contents.size(); ++m)
    h.message(c.roles[m], c.contents[m]);
}

// Pulls <bytes> of other data through the caches (not timed).
volatile uint64_t g_sink = 0;
void flush_caches(std::vector<uint64_t>& junk) {
  uint64_t s = 0;
  for (size_t i = 0; i < junk.size(); i += 8)
    s += junk[i]++;
  g_sink = g_sink + s;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 2000;
  constexpr size_t kPromptBytes = 400 * 1024;  // ~100k tokens
  constexpr size_t kReplicas = 12;
  constexpr size_t kBudgetBytes = 96u << 20;  // 8 MiB per replica: ~1M blocks each
  uint64_t seed = tr::prefix::seed_for("meta-llama/Llama-3.1-8B-Instruct");
  PrefixHasher h;

  // --- 1. Hashing throughput --------------------------------------------
  std::printf("hashing a %zu KB prompt (kBlockChars = %zu)\n", kPromptBytes / 1024,
              tr::prefix::kBlockChars);
  std::string prompt = text(kPromptBytes, 1);
  struct Shape {
    const char* name;
    Chat chat;
  };
  std::vector<Shape> shapes;
  shapes.push_back({"1 piece (completions prompt)", {}});
  shapes.push_back({"chat, 40 messages of 10 KB", make_chat(kPromptBytes, 10 * 1024, 2)});
  shapes.push_back({"chat, 800 messages of 512 B", make_chat(kPromptBytes, 512, 3)});
  shapes.push_back({"chat, 4000 messages of 100 B", make_chat(kPromptBytes, 100, 4)});
  for (const Shape& s : shapes) {
    size_t blocks = 0;
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) {
      if (s.chat.contents.empty()) {
        h.reset(seed);
        h.prompt(prompt);
      } else {
        hash_chat(h, s.chat, seed);
      }
      blocks += h.blocks();
    }
    double us = us_since(t0) / iters;
    double bytes = static_cast<double>(h.bytes_fed());
    std::printf("  %-32s %8.1f us/prompt %7.2f GB/s  (%zu blocks)\n", s.name, us,
                bytes / (us * 1e3), blocks / static_cast<size_t>(iters));
  }

  // --- 2. Route decision: hash + match on 12 warm replicas ----------------
  PrefixIndex idx(kReplicas, kBudgetBytes);
  std::printf("\nindex: %zu replicas, %.1f MiB, %zu slots each\n", kReplicas,
              static_cast<double>(idx.bytes()) / (1 << 20), idx.slots(0));
  // Warm every replica to its capacity with unrelated chains (the table far
  // larger than the caches, as in production).
  std::string filler = text(64 * 1024, 5);
  for (size_t r = 0; r < kReplicas; ++r) {
    for (uint64_t k = 0; k < idx.slots(r) / 256; ++k) {
      h.reset(r * 1000003 + k);
      h.prompt(filler);
      idx.insert(r, h.hashes());
    }
  }
  // The request: a 400 KB chat whose prefix replica 0 holds whole, replicas
  // 1-3 hold its first quarter (an earlier turn), the rest not at all.
  Chat big = make_chat(kPromptBytes, 10 * 1024, 7);
  Chat quarter = big;
  quarter.contents.resize(10);
  hash_chat(h, quarter, seed);
  for (size_t r = 1; r <= 3; ++r)
    idx.insert(r, h.hashes());
  hash_chat(h, big, seed);
  idx.insert(0, h.hashes());
  size_t blocks = h.blocks();
  std::printf("request: %zu bytes, %zu blocks; match on replicas:", big.bytes, blocks);
  for (size_t r = 0; r < kReplicas; ++r)
    std::printf(" %zu", idx.match(r, h.hashes()));
  std::printf("\n");

  std::vector<uint64_t> junk((64u << 20) / 8);  // 64 MiB to push the index out of cache
  for (bool cold : {false, true}) {
    int n = cold ? std::max(1, iters / 10) : iters;
    double hash_us = 0, match_us = 0, scan_us = 0, insert_us = 0;
    size_t total = 0;
    for (int i = 0; i < n; ++i) {
      if (cold) flush_caches(junk);
      auto t0 = Clock::now();
      hash_chat(h, big, seed);
      hash_us += us_since(t0);
      t0 = Clock::now();
      for (size_t r = 0; r < kReplicas; ++r)
        total += idx.match(r, h.hashes());
      match_us += us_since(t0);
      if (cold) flush_caches(junk);
      // The exact alternative: scan every replica from block 0 to the first miss.
      t0 = Clock::now();
      for (size_t r = 0; r < kReplicas; ++r) {
        size_t k = 0;
        while (k < blocks && idx.contains(r, h.hashes()[k]))
          ++k;
        total += k;
      }
      scan_us += us_since(t0);
      if (cold) flush_caches(junk);
      // After routing: the insert on the chosen replica (replica 0: present,
      // young, so read-only).
      t0 = Clock::now();
      total += idx.insert(0, h.hashes()).leading;
      insert_us += us_since(t0);
    }
    std::printf("\n%s (%d runs), per request:\n", cold ? "cache-cold index" : "hot loop", n);
    std::printf("  hash 400 KB                 %8.1f us\n", hash_us / n);
    std::printf("  match x %zu (gallop+bisect) %8.1f us\n", kReplicas, match_us / n);
    std::printf("  routing total (hash+match)  %8.1f us\n", (hash_us + match_us) / n);
    std::printf("  scan x %zu (exact, linear)  %8.1f us (instead of match)\n", kReplicas,
                scan_us / n);
    std::printf("  insert on the chosen one    %8.1f us (%zu blocks present)\n", insert_us / n,
                blocks);
    g_sink = g_sink + total;
  }

  // Insert of a new 400 KB chain (every block written: misses + CAS).
  {
    int n = std::max(1, iters / 10);
    double us = 0;
    for (int i = 0; i < n; ++i) {
      hash_chat(h, big, seed + 1 + static_cast<uint64_t>(i));
      auto t0 = Clock::now();
      idx.insert(5, h.hashes());
      us += us_since(t0);
    }
    std::printf("  insert of a new chain       %8.1f us (%zu blocks written)\n", us / n, blocks);
  }
  return 0;
}
