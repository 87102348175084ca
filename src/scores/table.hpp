// The replica-score table: one slot per configured replica, shared by every
// thread of the process. Fixed capacity, allocated once at start, never resized
// while workers run.
//
// Two kinds of data live in a slot, written by different threads:
//
//  1. What the poller learned (health, the last scrape, calibration): written only
//     by the poller thread, published with a **seqlock**. Readers (workers, admin)
//     copy it out and retry if a write overlapped. Why a seqlock and not a
//     snapshot swapped by pointer: the payload is a small fixed-size POD (about
//     100 bytes), the writer is a single thread at ~10 Hz per slot, and readers are
//     many and hot (every routing decision reads a few slots). A seqlock costs the
//     reader two loads of the sequence plus the copy, never allocates, and needs no
//     memory reclamation scheme (a swapped pointer would need hazard pointers,
//     epochs or reference counts to free old snapshots safely). The payload is
//     stored as relaxed atomic words so the concurrent copy is not a data race under
//     the C++ memory model (and ThreadSanitizer agrees).
//
//  2. Dispatch accounting: workers credit a request to a replica at the moment they
//     route it and debit it as it progresses (first token, end). These are plain
//     atomic counters (fetch_add) on their own cache line. They make a burst of
//     requests between two scrapes spread out instead of all landing on the replica
//     that looked idlest at the last scrape; the scrape then tells what the replica
//     really runs, including traffic that did not come through this process.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

namespace tr::scores {

// Running LoRA adapters a RoutingState carries, as name hashes (lora_hash()).
inline constexpr size_t kLoraHashesMax = 8;

// FNV-1a of an adapter name: what RoutingState::lora_hashes holds.
inline uint32_t lora_hash(const char* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i)
    h = (h ^ static_cast<unsigned char>(p[i])) * 16777619u;
  return h ? h : 1;  // 0 marks an empty entry
}

// Published by the poller for one replica. Plain data; copied whole.
struct ScrapedState {
  int64_t scraped_at_ms = 0;  // monotonic ms of the last good scrape (0 = never)
  uint32_t scrapes_ok = 0;
  uint32_t scrape_errors = 0;
  bool metrics_ok = false;  // the last scrape parsed as vLLM metrics
  // Engine state from the last scrape (sums over engines; -1 unknown).
  float running = -1;
  float waiting = -1;
  float kv_usage = -1;
  float prefix_hit_rate = -1;  // hits/queries over the last interval
  uint32_t engines = 0;
  uint32_t block_size = 0;
  uint64_t num_gpu_blocks = 0;
  // Calibration (step_time = base + per_token * tokens) and recent means.
  float step_base_s = 0;
  float step_per_token_s = 0;
  uint32_t calibration_samples = 0;
  float ttft_mean_s = -1;  // over the last interval
  float itl_mean_s = -1;   // over the last interval
  float prompt_tokens_per_s = -1;
  float generation_tokens_per_s = -1;
  // Prompt characters per prompt token this replica's tokenizer produced: the
  // characters workers sent it over vllm:prompt_tokens_total, per interval,
  // smoothed. -1 until traffic was seen.
  float chars_per_token = -1;
  // Data-parallel engines and the engine a new request would join (vLLM's DP
  // front end picks the least loaded: fewest 4 x waiting + running).
  float kv_free_tokens = -1;    // free KV of that engine, tokens; -1 unknown
  float preemptions_per_s = 0;  // vllm:num_preemptions_total rate, smoothed
  float itl_ewma_s = 0;         // mean inter-token latency, smoothed over ~2 s (0 = none)
  uint32_t peak_running = 0;    // most requests one engine has run at once, seen
  uint32_t learned_seqs = 0;    // max_num_seqs learned (0 = use the default)
  uint32_t learned_budget = 0;  // max_num_batched_tokens learned (0 = default)
  int32_t max_lora = -1;        // vllm:lora_requests_info max_lora; -1 unknown
  uint32_t loras_running = 0;   // adapters running (per engine)
};
static_assert(std::is_trivially_copyable_v<ScrapedState>);

// What routing reads on every decision: the few scraped numbers the policies
// and the estimator use, small enough to copy in two words.
struct RoutingState {
  float running = -1;  // -1 unknown (no good scrape)
  float waiting = -1;
  float kv_usage = -1;
  float step_base_s = 0;  // 0 = not calibrated yet
  float step_per_token_s = 0;
  float kv_free_tokens = -1;  // of the engine a request would join; -1 unknown
  float preemptions_per_s = 0;
  float itl_ewma_s = 0;  // smoothed inter-token latency; 0 unknown
  uint16_t engines = 1;
  int16_t max_lora = -1;  // -1 unknown
  uint16_t loras_running = 0;
  uint32_t learned_seqs = 0;                  // 0 = not learned
  uint32_t learned_budget = 0;                // 0 = not learned
  uint32_t lora_hashes[kLoraHashesMax] = {};  // running adapters (lora_hash); 0 = empty
  uint32_t flags = 0;                         // kMetricsOk | kCalibrated
  static constexpr uint32_t kMetricsOk = 1;
  static constexpr uint32_t kCalibrated = 2;
};
static_assert(std::is_trivially_copyable_v<RoutingState>);

// A single-writer seqlock over a trivially copyable payload.
template <class T>
class Seqlock {
 public:
  // Single writer (the poller thread).
  void store(const T& s) {
    uint64_t words[kWords] = {};
    std::memcpy(words, &s, sizeof s);
    uint32_t seq = seq_.load(std::memory_order_relaxed);
    seq_.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    for (size_t i = 0; i < kWords; ++i)
      words_[i].store(words[i], std::memory_order_relaxed);
    seq_.store(seq + 2, std::memory_order_release);
  }
  // Any thread. Never blocks the writer; retries while a write is in progress.
  T load() const {
    uint64_t words[kWords];
    for (;;) {
      uint32_t s1 = seq_.load(std::memory_order_acquire);
      if (s1 & 1) continue;
      for (size_t i = 0; i < kWords; ++i)
        words[i] = words_[i].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq_.load(std::memory_order_relaxed) == s1) break;
    }
    T s;
    std::memcpy(&s, words, sizeof s);
    return s;
  }
  uint32_t version() const { return seq_.load(std::memory_order_acquire) / 2; }

 private:
  static constexpr size_t kWords = (sizeof(T) + 7) / 8;
  std::atomic<uint32_t> seq_{0};
  std::atomic<uint64_t> words_[kWords] = {};
};

// What this process's own traffic says about one replica, summed over all
// workers: dispatch accounting and passive health. One per replica for the
// life of the process: the tables of successive configurations (reload) that
// keep a replica (same name and URL) share it, so streams still running under
// the old configuration count against the replica's limits in the new one,
// and an ejection outlives a reload.
struct alignas(64) Dispatch {
  std::atomic<int64_t> inflight{0};          // routed here, not finished
  std::atomic<int64_t> prefill_requests{0};  // routed, first token not seen yet
  std::atomic<int64_t> prefill_tokens{0};    // their estimated prompt tokens
  std::atomic<int64_t> decode_requests{0};   // first token seen, not finished
  std::atomic<int64_t> decode_tokens{0};     // estimated output tokens still to come
  // The prefill requests and tokens above by priority class
  // (estimator::priority_class: urgent, normal, background).
  std::atomic<int64_t> prefill_requests_by_class[3] = {};
  std::atomic<int64_t> prefill_tokens_by_class[3] = {};
  std::atomic<uint64_t> prompt_chars_sent{0};  // prompt characters sent there (cumulative)
  // Passive health: a replica that keeps failing requests is ejected until
  // <ejected_until_ms> (mono ms); after that its weight ramps up.
  std::atomic<int64_t> ejected_until_ms{0};
  std::atomic<uint32_t> consecutive_failures{0};
  std::atomic<uint32_t> ejections{0};  // in a row: each doubles the next
};

using SeqlockState = Seqlock<ScrapedState>;

// Laid out so a routing decision touches two cache lines per replica: the
// first holds health and the routing state, the second the dispatch counters.
struct alignas(64) ReplicaSlot {
  explicit ReplicaSlot(Dispatch& d) : dispatch(d) {}
  ReplicaSlot(const ReplicaSlot&) = delete;
  ReplicaSlot& operator=(const ReplicaSlot&) = delete;

  // Health, written by the poller (independent words: relaxed is enough).
  std::atomic<bool> up{true};
  std::atomic<int32_t> last_health_status{0};  // HTTP status, or -errno
  Seqlock<RoutingState> routing;               // written by the poller; read per decision
  std::atomic<int64_t> last_health_ms{0};      // mono ms of the last completed check
  Dispatch& dispatch;                          // written by workers (maybe shared, see Dispatch)
  SeqlockState scraped;                        // written by the poller; /status, metrics
};

// Time from sending a /metrics request to having its answer, all replicas.
// Written by the poller (single writer), read by the admin thread.
struct ScrapeTiming {
  static constexpr double kBounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
  static constexpr size_t kBuckets = sizeof(kBounds) / sizeof(kBounds[0]);
  std::atomic<uint64_t> buckets[kBuckets + 1] = {};  // last = +Inf; not cumulative
  std::atomic<uint64_t> count{0};
  std::atomic<double> sum{0};
  void observe(double seconds) {
    size_t i = 0;
    while (i < kBuckets && seconds > kBounds[i])
      ++i;
    buckets[i].store(buckets[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    sum.store(sum.load(std::memory_order_relaxed) + seconds, std::memory_order_relaxed);
  }
};

class Table {
 public:
  // <n> replicas with their own Dispatch blocks.
  explicit Table(size_t n) : Table(n, {}) {}
  // Slot i uses <shared>[i] when given (not null), else a block of its own.
  Table(size_t n, std::vector<std::shared_ptr<Dispatch>> shared)
      : n_(n), dispatch_(std::move(shared)) {
    dispatch_.resize(n);
    for (auto& d : dispatch_) {
      if (!d) d = std::make_shared<Dispatch>();
    }
    slots_ = static_cast<ReplicaSlot*>(
        ::operator new[](n * sizeof(ReplicaSlot), std::align_val_t{alignof(ReplicaSlot)}));
    for (size_t i = 0; i < n; ++i)
      new (&slots_[i]) ReplicaSlot(*dispatch_[i]);
  }
  ~Table() {
    for (size_t i = 0; i < n_; ++i)
      slots_[i].~ReplicaSlot();
    ::operator delete[](slots_, std::align_val_t{alignof(ReplicaSlot)});
  }
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  size_t size() const { return n_; }
  ReplicaSlot& at(size_t i) { return slots_[i]; }
  const ReplicaSlot& at(size_t i) const { return slots_[i]; }
  const std::shared_ptr<Dispatch>& dispatch_block(size_t i) const { return dispatch_[i]; }
  ScrapeTiming scrape_timing;
  bool any_up() const {
    for (size_t i = 0; i < n_; ++i) {
      if (slots_[i].up.load(std::memory_order_relaxed)) return true;
    }
    return false;
  }

 private:
  size_t n_;
  std::vector<std::shared_ptr<Dispatch>> dispatch_;
  ReplicaSlot* slots_ = nullptr;
};

}  // namespace tr::scores
