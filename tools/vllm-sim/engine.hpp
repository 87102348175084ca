// One simulated vLLM V1 engine: continuous batching with chunked prefill, a
// paged KV block pool with preemption, and a prefix cache. Pure: no I/O and no
// clock; the caller passes "now" and calls back at deadline_ns().
//
// Step life cycle: start_step() picks the work of one step (running requests
// first, then waiting ones in queue order within the token budget and the
// LoRA limit), reserves KV blocks, and computes when the step ends;
// finish_step() at that time applies the work and reports every produced
// token through EngineSink::on_token().
//
// The waiting queue is FCFS, or ordered by (priority, arrival) under the
// priority policy, which also picks the preemption victim by that key
// (vLLM V1's scheduler.py does both).
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <unordered_map>
#include <vector>

#include "metrics.hpp"

namespace tr::sim {

enum class SchedulingPolicy : uint8_t { fcfs, priority };

struct EngineConfig {
  SchedulingPolicy policy = SchedulingPolicy::fcfs;
  uint32_t max_num_batched_tokens = 2048;
  uint32_t max_num_seqs = 256;
  uint32_t kv_blocks = 4096;
  uint32_t block_size = 16;
  bool prefix_caching = true;
  double step_base_ms = 8.0;
  double step_per_token_us = 40.0;
  double step_per_ctx_ns = 20.0;
  uint32_t max_loras = 1;      // distinct adapters in one step
  uint32_t max_cpu_loras = 1;  // adapters kept resident (LRU), >= max_loras
  double lora_load_ms = 50.0;  // added to a step per adapter it makes resident
};

// The engine's view of one request. The owner fills the inputs, submits it,
// and must keep it alive until on_token() reported a finish or abort() ran.
struct Seq {
  // Inputs (set before submit, never changed by the engine).
  uint32_t prompt_tokens = 0;
  uint32_t max_tokens = 0;             // the request's limit (finish_reason "length" at it)
  uint32_t target_tokens = 0;          // tokens it will produce (<= max_tokens; less = "stop")
  std::vector<uint64_t> block_hashes;  // chained hashes of the prompt's full blocks
  int64_t priority = 0;                // lower is served first (priority policy only)
  uint32_t lora = 0;                   // adapter id, 0 = the base model
  void* owner = nullptr;

  // Engine state.
  enum class State : uint8_t { idle, waiting, running, finished };
  State state = State::idle;
  uint32_t generated = 0;             // tokens produced so far
  uint32_t num_computed = 0;          // tokens whose KV is in cache
  uint32_t blocks_held = 0;           // logical blocks (shared prefix blocks included)
  std::vector<uint64_t> held_hashes;  // prefix-cache blocks referenced, prompt order
  int32_t sched_slot = -1;            // index in the step in flight, -1 when not in it
  bool prompt_counted = false;
  int64_t arrival_ns = 0;
  uint64_t arrival_seq = 0;  // submit order: breaks arrival_ns ties
  int64_t first_token_ns = 0;
  int64_t last_token_ns = 0;

  uint32_t total_len() const { return prompt_tokens + generated; }
};

class EngineSink {
 public:
  virtual ~EngineSink() = default;
  // One token of <seq> was produced; <reason> is none unless it was the last.
  // When <reason> != none the engine has already released <seq>. Must not call
  // back into the engine (defer submit/abort until finish_step() returns).
  virtual void on_token(Seq& seq, FinishReason reason, int64_t now_ns) = 0;
};

class Engine {
 public:
  Engine(const EngineConfig& cfg, EngineSink* sink);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues <seq> (state idle): at the back (fcfs) or by (priority, arrival).
  void submit(Seq* seq, int64_t now_ns);
  // Removes <seq> wherever it is, frees its blocks and counts an abort. No-op
  // for a finished or never-submitted seq.
  void abort(Seq* seq);

  bool step_in_flight() const { return step_end_ns_ >= 0; }
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  // End of the step in flight, or -1 when none.
  int64_t deadline_ns() const { return step_end_ns_; }
  // Starts a step when idle with work. <speed> divides the step time.
  void start_step(int64_t now_ns, double speed);
  // Completes the step in flight; reports tokens through the sink.
  void finish_step(int64_t now_ns);

  uint32_t running() const { return static_cast<uint32_t>(running_.size()); }
  uint32_t waiting() const { return static_cast<uint32_t>(waiting_.size()); }
  uint32_t free_blocks() const { return free_blocks_; }
  double kv_usage() const;
  // Distinct adapter ids (ascending, base model excluded) of the running or
  // the waiting requests, as vllm:lora_requests_info lists them.
  std::vector<uint32_t> running_loras() const;
  std::vector<uint32_t> waiting_loras() const;
  const EngineMetrics& metrics() const { return metrics_; }
  EngineMetrics& metrics() { return metrics_; }

 private:
  struct CachedBlock {
    uint32_t refs = 0;
    std::list<uint64_t>::iterator lru_pos;  // valid when refs == 0
  };
  struct Scheduled {
    Seq* seq;
    uint32_t tokens;
  };

  uint32_t blocks_for(uint32_t tokens) const;
  void allocate(uint32_t blocks);
  void release(Seq* seq);
  Seq* pick_victim() const;
  void preempt(Seq* victim, size_t* next_running, uint32_t* budget);
  void enqueue_waiting(Seq* seq, bool preempted);
  bool loras_allow(const Seq* seq) const;
  uint32_t load_step_loras();
  void register_prefix_blocks(Seq* seq);
  void finish(Seq* seq, FinishReason reason, int64_t now_ns);
  void add_scheduled(Seq* seq, uint32_t tokens);
  bool admit(Seq* seq, uint32_t budget, uint32_t* scheduled_tokens);

  EngineConfig cfg_;
  EngineSink* sink_;
  EngineMetrics metrics_;
  std::vector<Seq*> running_;             // admission order: back = most recently admitted
  std::deque<Seq*> waiting_;              // front = admitted next (see enqueue_waiting)
  std::vector<Scheduled> sched_;          // the step in flight; capacity kept across steps
  std::vector<uint32_t> step_loras_;      // distinct adapters of the step being built
  std::vector<uint32_t> resident_loras_;  // LRU order: front = least recently used
  uint64_t next_arrival_seq_ = 0;
  int64_t step_end_ns_ = -1;
  int64_t step_start_ns_ = 0;  // of the step in flight
  uint64_t step_tokens_ = 0;   // scheduled in the step in flight

  // KV pool. free_blocks_ counts every unreferenced block, including those
  // still holding a cached prefix (lru_), which are evicted oldest first.
  uint32_t free_blocks_;
  std::unordered_map<uint64_t, CachedBlock> cached_;
  std::list<uint64_t> lru_;
};

}  // namespace tr::sim
