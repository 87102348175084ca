// PrefixIndex: set-associative tables of atomic slots, approximate LRU by a
// per-replica clock of allocated KV blocks (see index.hpp).
#include "prefix/index.hpp"

#include <bit>
#include <limits>

#include "core/assert.hpp"

namespace tr::prefix {

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

// Tables below this many slots count age in single blocks; larger ones in
// ticks of slots / 1024 blocks (so a table's worth of inserts is ~1000 ticks).
constexpr uint32_t kTicksPerTableLog2 = 10;

inline uint64_t bucket_of(uint64_t hash, uint64_t nbuckets) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(hash) * nbuckets) >> 64);
}

inline uint32_t tag_of(uint64_t hash) {
  uint32_t t = static_cast<uint32_t>(hash);
  return t != 0 ? t : 1;  // 0 is the empty slot's tag
}

inline uint64_t slot_value(uint32_t tag, uint32_t stamp) {
  return (static_cast<uint64_t>(tag) << 32) | stamp;
}

inline uint32_t slot_tag(uint64_t v) {
  return static_cast<uint32_t>(v >> 32);
}
inline uint32_t slot_stamp(uint64_t v) {
  return static_cast<uint32_t>(v);
}

}  // namespace

size_t PrefixIndex::min_budget_bytes(size_t replicas) {
  return sizeof(PrefixIndex) + replicas * sizeof(Replica);
}

PrefixIndex::PrefixIndex(size_t replicas, size_t budget_bytes)
    : n_(replicas), budget_bytes_(budget_bytes) {
  TR_ASSERT(replicas > 0);
  TR_ASSERT(budget_bytes >= min_budget_bytes(replicas));
  size_t per_replica_buckets =
      (budget_bytes - min_budget_bytes(replicas)) / replicas / kBucketBytes;
  replicas_.reset(new Replica[n_]);
  if (per_replica_buckets > 0) buckets_.reset(new Bucket[per_replica_buckets * n_]);  // zeroed
  for (size_t i = 0; i < n_; ++i) {
    Replica& r = replicas_[i];
    r.buckets = per_replica_buckets > 0 ? &buckets_[i * per_replica_buckets] : nullptr;
    r.nbuckets = per_replica_buckets;
    uint64_t slots = r.nbuckets * kWays;
    uint32_t log2 = slots == 0 ? 0 : static_cast<uint32_t>(std::bit_width(slots) - 1);
    r.tick_shift = log2 > kTicksPerTableLog2 ? log2 - kTicksPerTableLog2 : 0;
    r.capacity_blocks.store(slots, kRelaxed);
  }
  bytes_ = min_budget_bytes(n_) + per_replica_buckets * n_ * kBucketBytes;
  TR_ASSERT(bytes_ <= budget_bytes_);
}

size_t PrefixIndex::slots(size_t replica) const {
  TR_ASSERT(replica < n_);
  return replicas_[replica].nbuckets * kWays;
}

void PrefixIndex::set_capacity(size_t replica, uint64_t blocks) {
  TR_ASSERT(replica < n_);
  replicas_[replica].capacity_blocks.store(blocks, kRelaxed);
}

uint64_t PrefixIndex::capacity(size_t replica) const {
  TR_ASSERT(replica < n_);
  return replicas_[replica].capacity_blocks.load(kRelaxed);
}

PrefixIndex::Window PrefixIndex::window(const Replica& r) const {
  Window w;
  uint64_t cap = r.capacity_blocks.load(kRelaxed);
  w.enabled = cap != 0 && r.nbuckets != 0;
  w.now = static_cast<uint32_t>(r.clock_blocks.load(kRelaxed) >> r.tick_shift);
  uint64_t max_age = cap >> r.tick_shift;
  w.max_age = max_age > std::numeric_limits<uint32_t>::max() ? std::numeric_limits<uint32_t>::max()
                                                             : static_cast<uint32_t>(max_age);
  return w;
}

bool PrefixIndex::present(const Replica& r, const Window& w, uint64_t hash) const {
  const Bucket& b = r.buckets[bucket_of(hash, r.nbuckets)];
  uint32_t tag = tag_of(hash);
  for (size_t i = 0; i < kWays; ++i) {
    uint64_t v = b.slot[i].load(kRelaxed);
    if (slot_tag(v) == tag && static_cast<uint32_t>(w.now - slot_stamp(v)) <= w.max_age)
      return true;
  }
  return false;
}

bool PrefixIndex::contains(size_t replica, uint64_t hash) const {
  TR_ASSERT(replica < n_);
  const Replica& r = replicas_[replica];
  Window w = window(r);
  return w.enabled && present(r, w, hash);
}

size_t PrefixIndex::match(size_t replica, std::span<const uint64_t> chain) const {
  TR_ASSERT(replica < n_);
  Replica& r = replicas_[replica];  // const: only its counters change
  Window w = window(r);
  size_t good = 0;  // blocks [0, good) present (assumed: prefix closure)
  if (w.enabled) {
    size_t bad = chain.size();  // block <bad> absent, or the end of the chain
    // Gallop: probe good + 0, +1, +3, +7 ... past the last block found.
    for (size_t step = 1; good + step - 1 < bad; step *= 2) {
      size_t i = good + step - 1;
      if (!present(r, w, chain[i])) {
        bad = i;
        break;
      }
      good = i + 1;
    }
    // The first absent block is in [good, bad].
    while (good < bad) {
      size_t mid = good + (bad - good) / 2;
      if (present(r, w, chain[mid])) {
        good = mid + 1;
      } else {
        bad = mid;
      }
    }
  }
  r.matches.fetch_add(1, kRelaxed);
  r.matched_blocks.fetch_add(good, kRelaxed);
  return good;
}

PrefixIndex::Inserted PrefixIndex::insert(size_t replica, std::span<const uint64_t> chain) {
  TR_ASSERT(replica < n_);
  Replica& r = replicas_[replica];
  Window w = window(r);
  Inserted out;
  r.inserts.fetch_add(1, kRelaxed);
  r.sent_blocks.fetch_add(chain.size(), kRelaxed);
  if (!w.enabled) return out;
  constexpr size_t kPrefetchAhead = 8;
  // Entries younger than this are left as they are (not rewritten, not
  // counted again): a hot block costs the clock at most once per quarter of
  // the capacity instead of once per request.
  const uint32_t keep_age = w.max_age / 4;
  // The stamp written: now, or the oldest stamp of a block kept so far, so
  // that along the chain stamps never increase (prefix closure, index.hpp).
  uint32_t stamp_age = 0;  // now - stamp
  uint64_t counted = 0;    // blocks written: new ones and refreshed ones
  bool leading = true;
  for (size_t k = 0; k < chain.size(); ++k) {
    if (k + kPrefetchAhead < chain.size()) {
      __builtin_prefetch(&r.buckets[bucket_of(chain[k + kPrefetchAhead], r.nbuckets)], 1);
    }
    uint64_t hash = chain[k];
    Bucket& b = r.buckets[bucket_of(hash, r.nbuckets)];
    uint32_t tag = tag_of(hash);
    uint64_t written = slot_value(tag, w.now - stamp_age);
    // One pass: the entry if present, else the best victim: an empty slot,
    // else an absent (aged-out) entry, else the oldest present one.
    size_t victim = 0;
    uint64_t victim_rank = 0;
    uint64_t victim_value = 0;
    bool found = false;
    for (size_t i = 0; i < kWays; ++i) {
      uint64_t v = b.slot[i].load(kRelaxed);
      uint32_t age = w.now - slot_stamp(v);
      if (v != 0 && slot_tag(v) == tag && age <= w.max_age) {
        found = true;
        if (age <= keep_age) {
          if (age > stamp_age) stamp_age = age;
        } else if (b.slot[i].compare_exchange_strong(v, written, kRelaxed)) {
          ++counted;
        }
        break;
      }
      uint64_t rank = v == 0            ? uint64_t{3} << 32
                      : age > w.max_age ? (uint64_t{2} << 32) | age
                                        : age;
      if (rank >= victim_rank) {
        victim_rank = rank;
        victim = i;
        victim_value = v;
      }
    }
    if (found) {
      out.leading += leading;
      continue;
    }
    leading = false;
    ++out.new_blocks;
    // Lossy: a CAS lost to a concurrent insert into this bucket is not retried.
    if (b.slot[victim].compare_exchange_strong(victim_value, written, kRelaxed)) ++counted;
  }
  if (counted != 0) r.clock_blocks.fetch_add(counted, kRelaxed);
  r.hit_blocks.fetch_add(out.leading, kRelaxed);
  r.new_blocks.fetch_add(out.new_blocks, kRelaxed);
  return out;
}

void PrefixIndex::advance(size_t replica, uint64_t blocks) {
  TR_ASSERT(replica < n_);
  if (blocks != 0) replicas_[replica].clock_blocks.fetch_add(blocks, kRelaxed);
}

void PrefixIndex::clear(size_t replica) {
  TR_ASSERT(replica < n_);
  Replica& r = replicas_[replica];
  for (uint64_t i = 0; i < r.nbuckets; ++i) {
    for (auto& s : r.buckets[i].slot) {
      if (s.load(kRelaxed) != 0) s.store(0, kRelaxed);
    }
  }
}

size_t PrefixIndex::entries(size_t replica) const {
  TR_ASSERT(replica < n_);
  const Replica& r = replicas_[replica];
  Window w = window(r);
  if (!w.enabled) return 0;
  size_t n = 0;
  for (uint64_t i = 0; i < r.nbuckets; ++i) {
    for (const auto& s : r.buckets[i].slot) {
      uint64_t v = s.load(kRelaxed);
      n += v != 0 && static_cast<uint32_t>(w.now - slot_stamp(v)) <= w.max_age;
    }
  }
  return n;
}

PrefixIndex::Stats PrefixIndex::stats(size_t replica) const {
  TR_ASSERT(replica < n_);
  const Replica& r = replicas_[replica];
  Stats s;
  s.matches = r.matches.load(kRelaxed);
  s.matched_blocks = r.matched_blocks.load(kRelaxed);
  s.inserts = r.inserts.load(kRelaxed);
  s.sent_blocks = r.sent_blocks.load(kRelaxed);
  s.hit_blocks = r.hit_blocks.load(kRelaxed);
  s.new_blocks = r.new_blocks.load(kRelaxed);
  return s;
}

}  // namespace tr::prefix
