// The prefix index: per replica, which block hashes (PrefixHasher chains) it
// was recently sent, so routing can predict how much of a prompt's prefix a
// replica still holds in its prefix cache. Pure code (no I/O, no clocks);
// shared by every worker thread, no lock anywhere.
//
// Data structure: one set-associative table per replica
// -------------------------------------------------------
// A replica's share of the memory budget is a fixed array of 64-byte buckets
// of kWays = 8 atomic 64-bit slots (one cache line per bucket), allocated and
// zeroed once at construction. A block hash h lives only in bucket
// (h * buckets) >> 64 (high bits); its slot holds
//     tag (32 bits: the low half of h, never 0) << 32  |  stamp (32 bits)
// and 0 is an empty slot. A lookup reads one cache line; an insert reads that
// line and does at most one compare-and-swap. Nothing is allocated or freed
// after construction, so no reclamation scheme is needed, and the memory is
// bounded by construction: bytes() is fixed and never exceeds the budget.
// False positives: a different hash with the same bucket and the same 32-bit
// tag, ~8 / 2^32 per lookup, i.e. one wrong extra block in ~10^8 lookups.
//
// Why not a lock (striped or per replica): the request path does one match()
// per candidate replica (up to ~12) and one insert() on the chosen one; with a
// lock per replica every worker routing to a popular replica would serialize
// on it for up to 1600 block operations, and a preempted holder would stall
// them all. Why not an exact LRU (hash map + list): it needs a lock or a
// concurrent list, and allocation per entry. A set-associative table gives up
// exactness (eviction is per bucket, and two workers racing on one bucket may
// lose one of their inserts) for one cache line per block and no lock; the
// index is a prediction, and every later insert of a chain repairs it.
//
// Approximate LRU sized by the replica's KV capacity
// ---------------------------------------------------
// vLLM's free-block queue is LRU: a cached block survives while fewer than
// num_gpu_blocks other blocks have been used (sent again or computed) since
// it was last used. Each replica here has a clock counting block *uses*: a
// block written by insert() (new, or refreshed: its stamp moved) adds one,
// and advance() adds what the caller knows takes KV without being a prefix
// the index tracks (output tokens). An entry's stamp is the clock when it was
// last written, in ticks of 2^tick_shift blocks (tick_shift = log2(slots) -
// 10, so a table's worth of writes is ~1000 ticks; 0 below 2048 slots). An
// entry is present while the clock has moved by at most capacity blocks
// since its stamp (capacity from set_capacity(): the replica's num_gpu_blocks
// x block_size tokens x chars per token / kBlockChars, computed by the
// caller). A present entry younger than capacity / 4 is not rewritten when
// sent again (no write, no cache-line transfer, no clock tick), so a hot
// block (a shared system prompt) costs the clock at most 4 uses per capacity
// window, not one per request: the others age somewhat faster than in an
// exact LRU when a hot set is a large part of the capacity (conservative:
// fewer hits predicted, never more), and the present entries number at most
// ~1.25 x capacity. Capacity changes take effect at once, shrinking and
// growing alike (no entry moves; a shrink makes the older ones absent, a grow
// may bring back entries that aged out but were not overwritten). Until
// set_capacity() is called, capacity is the physical slots of the replica's
// share. The physical table evicts within a bucket: an empty slot, else an
// absent (aged-out) entry, else the oldest.
//
// Prefix closure and match()
// --------------------------
// Invariant: along any chain, stamps never increase (block j is at least as
// recent as block k > j). insert() gets a whole chain from block 0 and writes
// each block it rewrites with now or, once it has kept a younger-than-
// capacity/4 block unchanged, that block's older stamp; so a chain's blocks
// leave the age window tail first (as vLLM frees a request's blocks tail
// first), and presence along a chain is "true ... true false ... false".
// match() therefore finds the first absent block by galloping (probe blocks
// 0, 2, 6, 14, ... until a miss) then binary search: 1 lookup when block 0 is
// absent (most candidates), ~2 log2(n) otherwise (~22 for 1600 blocks),
// instead of scanning up to 1600. Closure can break in two ways only: a bucket
// holding 8 present entries must evict a present one (when a replica's share
// of the budget is smaller than its capacity, or by hash skew), and a lost
// insert race; the search may then step over the hole and overestimate. The
// next insert() of that chain refills the hole, and insert() reports the
// exact leading run it found (scanning, it visits every block anyway), which
// is the figure to count as the index's predicted hit.
//
// Hotspots: match() on every candidate is the data. A prefix present on every
// candidate gives each the same discount, so it earns no affinity when the
// estimator prices the hit; the caller can see it as min(match) == max(match)
// over the candidates (or min(match) > 0: a shared head everywhere), with no
// extra lookups, and use max - min as the part that differs.
//
// Memory model: every shared word is a std::atomic accessed relaxed. Nothing
// is published through a slot (a slot is the whole fact: tag and stamp), the
// table geometry is immutable after construction, and clock and capacity are
// independent words whose staleness only shifts the age window by a few
// blocks. So there is no data race and no torn state; the anomalies allowed
// are a lost insert or refresh (a CAS that fails is not retried) and a match
// that sees part of a concurrent insert.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace tr::prefix {

class PrefixIndex {
 public:
  static constexpr size_t kWays = 8;  // slots per bucket
  static constexpr size_t kBucketBytes = 64;

  struct alignas(64) Bucket {
    std::atomic<uint64_t> slot[kWays];
  };
  static_assert(sizeof(Bucket) == kBucketBytes);

  // What insert() found.
  struct Inserted {
    size_t leading = 0;     // blocks of the chain present before, from block 0 (scan: exact)
    size_t new_blocks = 0;  // blocks that were absent (now inserted, or lost to a race)
  };

  // Per replica, cumulative (relaxed counters: for /metrics and /status).
  struct Stats {
    uint64_t matches = 0;         // match() calls
    uint64_t matched_blocks = 0;  // sum of their results
    uint64_t inserts = 0;         // insert() calls (requests sent)
    uint64_t sent_blocks = 0;     // blocks in those chains
    uint64_t hit_blocks = 0;      // sum of Inserted::leading: predicted cache hits of requests sent
    uint64_t new_blocks = 0;      // sum of Inserted::new_blocks
  };

  // The smallest budget for <replicas> replicas (fixed overhead, no slots).
  static size_t min_budget_bytes(size_t replicas);

  // <replicas> replicas, numbered 0..replicas-1 for the life of the index.
  // <budget_bytes> (>= min_budget_bytes(replicas)) bounds everything the
  // index allocates; after the fixed overhead it is split evenly into whole
  // buckets per replica. All memory is allocated and zeroed here.
  PrefixIndex(size_t replicas, size_t budget_bytes);
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  size_t replicas() const { return n_; }
  size_t budget_bytes() const { return budget_bytes_; }
  // Bytes allocated (constant; <= budget_bytes()).
  size_t bytes() const { return bytes_; }
  // Physical slots of a replica (its share of the budget).
  size_t slots(size_t replica) const;

  // Any thread, any time (the poller, after a scrape). The replica remembers
  // roughly the last <blocks> blocks of KV (in kBlockChars units); 0 disables
  // it (match() returns 0, insert() stores nothing).
  void set_capacity(size_t replica, uint64_t blocks);
  uint64_t capacity(size_t replica) const;

  // Request path, any thread. The number of leading blocks of <chain> (a
  // PrefixHasher chain, from block 0) the replica is predicted to hold.
  size_t match(size_t replica, std::span<const uint64_t> chain) const;
  // One block hash present (a lookup; match() is made of these).
  bool contains(size_t replica, uint64_t hash) const;
  // Request path, any thread: <chain> was sent to the replica. Refreshes the
  // blocks present (those older than capacity / 4) and inserts the others;
  // advances the replica's clock by the blocks it wrote.
  Inserted insert(size_t replica, std::span<const uint64_t> chain);
  // Advances the replica's clock by <blocks> of KV that are not a prompt
  // prefix the index tracks (output tokens, traffic from elsewhere).
  void advance(size_t replica, uint64_t blocks);
  // Forgets everything about the replica (removed, restarted). Any thread;
  // inserts racing with it may survive. O(slots).
  void clear(size_t replica);

  // Present entries of a replica: scans its slots, O(slots) (for /status).
  size_t entries(size_t replica) const;
  Stats stats(size_t replica) const;

 private:
  struct alignas(64) Replica {
    // Immutable after construction.
    Bucket* buckets = nullptr;
    uint64_t nbuckets = 0;
    uint32_t tick_shift = 0;
    // Written by the poller.
    std::atomic<uint64_t> capacity_blocks{0};
    // Blocks written (the LRU clock); by every insert (its own line).
    alignas(64) std::atomic<uint64_t> clock_blocks{0};
    alignas(64) std::atomic<uint64_t> matches{0};
    std::atomic<uint64_t> matched_blocks{0};
    std::atomic<uint64_t> inserts{0};
    std::atomic<uint64_t> sent_blocks{0};
    std::atomic<uint64_t> hit_blocks{0};
    std::atomic<uint64_t> new_blocks{0};
  };

  // What a lookup needs from a replica's words, read once per call.
  struct Window {
    uint32_t now = 0;      // clock, in ticks
    uint32_t max_age = 0;  // capacity, in ticks
    bool enabled = false;
  };
  Window window(const Replica& r) const;
  bool present(const Replica& r, const Window& w, uint64_t hash) const;

  size_t n_;
  size_t budget_bytes_;
  size_t bytes_ = 0;
  std::unique_ptr<Replica[]> replicas_;
  std::unique_ptr<Bucket[]> buckets_;
};

}  // namespace tr::prefix
