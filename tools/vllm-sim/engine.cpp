#include "engine.hpp"

#include <algorithm>
#include <tuple>

#include "core/assert.hpp"

namespace tr::sim {

Engine::Engine(const EngineConfig& cfg, EngineSink* sink)
    : cfg_(cfg), sink_(sink), free_blocks_(cfg.kv_blocks) {
  TR_ASSERT(cfg_.block_size > 0);
  TR_ASSERT(cfg_.max_num_batched_tokens > 0);
  TR_ASSERT(cfg_.max_num_seqs > 0);
  running_.reserve(cfg_.max_num_seqs);
  sched_.reserve(cfg_.max_num_seqs);
}

uint32_t Engine::blocks_for(uint32_t tokens) const {
  return (tokens + cfg_.block_size - 1) / cfg_.block_size;
}

double Engine::kv_usage() const {
  return 1.0 - static_cast<double>(free_blocks_) / static_cast<double>(cfg_.kv_blocks);
}

void Engine::submit(Seq* seq, int64_t now_ns) {
  TR_ASSERT(seq->state == Seq::State::idle);
  TR_ASSERT(seq->target_tokens >= 1);
  TR_ASSERT(seq->target_tokens <= seq->max_tokens);
  seq->state = Seq::State::waiting;
  seq->arrival_ns = now_ns;
  seq->arrival_seq = next_arrival_seq_++;
  enqueue_waiting(seq, false);
}

namespace {

// The priority policy's order: (priority, arrival), lower first, as vLLM's
// Request.__lt__; submit order breaks arrival-time ties.
bool served_before(const Seq* a, const Seq* b) {
  return std::tie(a->priority, a->arrival_ns, a->arrival_seq) <
         std::tie(b->priority, b->arrival_ns, b->arrival_seq);
}

bool contains(const std::vector<uint32_t>& ids, uint32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

std::vector<uint32_t> distinct_loras(const auto& seqs) {
  std::vector<uint32_t> ids;
  for (const Seq* s : seqs) {
    if (s->lora != 0 && !contains(ids, s->lora)) ids.push_back(s->lora);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace

// FCFS: new requests at the back, preempted ones at the front (they resume
// first). Priority: both by (priority, arrival), as vLLM's heap orders them.
void Engine::enqueue_waiting(Seq* seq, bool preempted) {
  if (cfg_.policy == SchedulingPolicy::fcfs) {
    if (preempted) {
      waiting_.push_front(seq);
    } else {
      waiting_.push_back(seq);
    }
    return;
  }
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), seq, served_before), seq);
}

std::vector<uint32_t> Engine::running_loras() const {
  return distinct_loras(running_);
}

std::vector<uint32_t> Engine::waiting_loras() const {
  return distinct_loras(waiting_);
}

// Takes <blocks> from the free pool, evicting the least recently freed cached
// prefix blocks once the never-cached ones run out.
void Engine::allocate(uint32_t blocks) {
  TR_ASSERT(blocks <= free_blocks_);
  const uint32_t uncached = free_blocks_ - static_cast<uint32_t>(lru_.size());
  if (blocks > uncached) {
    for (uint32_t i = 0; i < blocks - uncached; ++i) {
      TR_ASSERT(!lru_.empty());
      cached_.erase(lru_.front());
      lru_.pop_front();
    }
  }
  free_blocks_ -= blocks;
}

// Returns every block of <seq> to the pool; prefix blocks stay cached (LRU)
// once no one references them.
void Engine::release(Seq* seq) {
  TR_ASSERT(seq->held_hashes.size() <= seq->blocks_held);
  const uint32_t plain = seq->blocks_held - static_cast<uint32_t>(seq->held_hashes.size());
  free_blocks_ += plain;
  for (uint64_t h : seq->held_hashes) {
    auto it = cached_.find(h);
    TR_ASSERT(it != cached_.end());
    TR_ASSERT(it->second.refs > 0);
    if (--it->second.refs == 0) {
      it->second.lru_pos = lru_.insert(lru_.end(), h);
      free_blocks_ += 1;
    }
  }
  TR_ASSERT(free_blocks_ <= cfg_.kv_blocks);
  seq->held_hashes.clear();
  seq->blocks_held = 0;
  seq->num_computed = 0;
}

// The running request to preempt when blocks run out: the most recently
// admitted (fcfs), or the one served last by (priority, arrival).
Seq* Engine::pick_victim() const {
  TR_ASSERT(!running_.empty());
  if (cfg_.policy == SchedulingPolicy::fcfs) return running_.back();
  return *std::max_element(running_.begin(), running_.end(), served_before);
}

// Moves <victim> from running to waiting and frees its blocks. Under the
// priority policy the victim may sit before the request being scheduled
// (index <*next_running>) and already hold a slot of this step: the slot is
// emptied, its tokens go back to <budget>, and the index moves down with it.
void Engine::preempt(Seq* victim, size_t* next_running, uint32_t* budget) {
  auto it = std::find(running_.begin(), running_.end(), victim);
  TR_ASSERT(it != running_.end());
  const size_t index = static_cast<size_t>(it - running_.begin());
  running_.erase(it);
  if (index < *next_running) *next_running -= 1;
  if (victim->sched_slot >= 0) {
    Scheduled& slot = sched_[victim->sched_slot];
    TR_ASSERT(slot.seq == victim);
    *budget += slot.tokens;
    slot.seq = nullptr;
    victim->sched_slot = -1;
  }
  release(victim);
  victim->state = Seq::State::waiting;
  enqueue_waiting(victim, true);
  metrics_.preemptions += 1;
}

// vLLM V1 admits a request with an adapter only while the step holds fewer
// than max_loras distinct adapters or already holds its adapter.
bool Engine::loras_allow(const Seq* seq) const {
  if (seq->lora == 0 || contains(step_loras_, seq->lora)) return true;
  return step_loras_.size() < cfg_.max_loras;
}

// Makes the step's adapters resident, most recently used last, evicting the
// least recently used beyond max_cpu_loras. Returns how many were loaded.
uint32_t Engine::load_step_loras() {
  uint32_t loads = 0;
  for (uint32_t id : step_loras_) {
    auto it = std::find(resident_loras_.begin(), resident_loras_.end(), id);
    if (it != resident_loras_.end()) {
      resident_loras_.erase(it);
    } else {
      loads += 1;
    }
    resident_loras_.push_back(id);
  }
  // The step's own adapters are the most recent and fit (max_loras <=
  // max_cpu_loras), so eviction never drops one of them.
  while (resident_loras_.size() > cfg_.max_cpu_loras)
    resident_loras_.erase(resident_loras_.begin());
  metrics_.lora_loads += loads;
  return loads;
}

// Publishes the prompt blocks <seq> has fully computed so later requests can
// hit them. A block someone else published meanwhile is shared instead (our
// copy returns to the pool).
void Engine::register_prefix_blocks(Seq* seq) {
  if (!cfg_.prefix_caching) return;
  while (seq->held_hashes.size() < seq->block_hashes.size() &&
         (seq->held_hashes.size() + 1) * cfg_.block_size <= seq->num_computed) {
    const uint64_t h = seq->block_hashes[seq->held_hashes.size()];
    auto [it, inserted] = cached_.try_emplace(h);
    if (!inserted) {
      if (it->second.refs == 0) {
        lru_.erase(it->second.lru_pos);
        free_blocks_ -= 1;  // the cached block becomes referenced ...
      }
      free_blocks_ += 1;  // ... and our duplicate goes back
    }
    it->second.refs += 1;
    seq->held_hashes.push_back(h);
  }
}

void Engine::add_scheduled(Seq* seq, uint32_t tokens) {
  TR_ASSERT(tokens > 0);
  seq->sched_slot = static_cast<int32_t>(sched_.size());
  sched_.push_back(Scheduled{seq, tokens});
}

// Tries to admit the head of the waiting queue with at most <budget> tokens.
// Returns false (nothing changed) when the KV pool cannot hold its first chunk.
bool Engine::admit(Seq* seq, uint32_t budget, uint32_t* scheduled_tokens) {
  const uint32_t total = seq->total_len();
  // Prefix hits: leading prompt blocks already cached. At least one token is
  // always computed, as in vLLM, so a full hit still runs a step.
  uint32_t hit_blocks = 0;
  uint32_t lru_hits = 0;
  if (cfg_.prefix_caching) {
    const uint32_t max_hit = std::min<uint32_t>(static_cast<uint32_t>(seq->block_hashes.size()),
                                                (total - 1) / cfg_.block_size);
    while (hit_blocks < max_hit) {
      auto it = cached_.find(seq->block_hashes[hit_blocks]);
      if (it == cached_.end()) break;
      if (it->second.refs == 0) lru_hits += 1;
      hit_blocks += 1;
    }
  }
  const uint32_t computed = hit_blocks * cfg_.block_size;
  const uint32_t tokens = std::min(total - computed, budget);
  const uint32_t new_blocks = blocks_for(computed + tokens) - hit_blocks;
  if (static_cast<uint64_t>(new_blocks) + lru_hits > free_blocks_) return false;

  for (uint32_t i = 0; i < hit_blocks; ++i) {
    CachedBlock& b = cached_.at(seq->block_hashes[i]);
    if (b.refs == 0) {
      lru_.erase(b.lru_pos);
      free_blocks_ -= 1;
    }
    b.refs += 1;
    seq->held_hashes.push_back(seq->block_hashes[i]);
  }
  seq->blocks_held = hit_blocks;
  seq->num_computed = computed;
  allocate(new_blocks);
  seq->blocks_held += new_blocks;
  if (cfg_.prefix_caching) {
    metrics_.prefix_cache_queries += seq->prompt_tokens;
    metrics_.prefix_cache_hits += std::min(computed, seq->prompt_tokens);
  }
  *scheduled_tokens = tokens;
  return true;
}

void Engine::start_step(int64_t now_ns, double speed) {
  TR_ASSERT(!step_in_flight());
  TR_ASSERT(sched_.empty());
  if (!has_work()) return;

  uint32_t budget = cfg_.max_num_batched_tokens;
  bool preempted = false;

  // Running requests first, in admission order: a decode takes one token, a
  // prefill in progress continues with what the budget allows.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Seq* s = running_[i];
    TR_DASSERT(s->total_len() > s->num_computed);
    const uint32_t tokens = std::min(s->total_len() - s->num_computed, budget);
    const uint32_t need = blocks_for(s->num_computed + tokens) - s->blocks_held;
    bool fits = true;
    while (need > free_blocks_) {
      Seq* victim = pick_victim();
      preempt(victim, &i, &budget);
      preempted = true;
      if (victim == s) {
        fits = false;
        break;
      }
    }
    if (!fits) break;  // <s> itself was the victim: nothing behind it runs
    allocate(need);
    s->blocks_held += need;
    add_scheduled(s, tokens);
    budget -= tokens;
    ++i;
  }

  // The adapters of the running requests this step kept. Admission happens
  // only when every running request was scheduled, so this is the running
  // set's adapters and never more than max_loras.
  step_loras_.clear();
  for (const Scheduled& e : sched_) {
    if (e.seq != nullptr && e.seq->lora != 0 && !contains(step_loras_, e.seq->lora)) {
      step_loras_.push_back(e.seq->lora);
    }
  }
  TR_ASSERT(step_loras_.size() <= cfg_.max_loras);

  // Then waiting requests in queue order, unless this step had to preempt
  // (vLLM V1 admits nothing new in a step that preempted). A request whose
  // adapter would exceed max_loras is skipped and keeps its place; the ones
  // behind it may still be admitted.
  size_t w = 0;
  while (!preempted && budget > 0 && w < waiting_.size() && running_.size() < cfg_.max_num_seqs) {
    Seq* s = waiting_[w];
    if (!loras_allow(s)) {
      ++w;
      continue;
    }
    uint32_t tokens = 0;
    if (!admit(s, budget, &tokens)) break;
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(w));
    s->state = Seq::State::running;
    running_.push_back(s);
    add_scheduled(s, tokens);
    budget -= tokens;
    if (s->lora != 0 && !contains(step_loras_, s->lora)) step_loras_.push_back(s->lora);
  }
  const uint32_t lora_loads = load_step_loras();

  if (budget == cfg_.max_num_batched_tokens) {
    // Nothing fit (a slot a priority preemption emptied holds no tokens).
    // With --kv-blocks * --block-size >= --max-model-len this only follows
    // a step that preempted everything; retry after an empty step rather
    // than idling with work queued (nothing else would wake us).
    step_end_ns_ = now_ns + static_cast<int64_t>(cfg_.step_base_ms * 1e6 / speed);
    step_start_ns_ = now_ns;
    step_tokens_ = 0;
    return;
  }

  uint64_t tokens = cfg_.max_num_batched_tokens - budget;
  uint64_t context = 0;
  for (const Seq* s : running_)
    context += s->num_computed;
  const double ns = cfg_.step_base_ms * 1e6 + cfg_.step_per_token_us * 1e3 * tokens +
                    cfg_.step_per_ctx_ns * static_cast<double>(context + tokens) +
                    cfg_.lora_load_ms * 1e6 * lora_loads;
  step_end_ns_ = now_ns + static_cast<int64_t>(ns / speed);
  step_start_ns_ = now_ns;
  step_tokens_ = tokens;
}

void Engine::finish(Seq* seq, FinishReason reason, int64_t now_ns) {
  release(seq);
  seq->state = Seq::State::finished;
  metrics_.finished[static_cast<size_t>(reason)] += 1;
  metrics_.e2e.observe(static_cast<double>(now_ns - seq->arrival_ns) / 1e9);
}

void Engine::finish_step(int64_t now_ns) {
  TR_ASSERT(step_in_flight());
  // Ground truth, credited when the step ends, as vLLM's metrics are.
  metrics_.steps += 1;
  metrics_.step_seconds += static_cast<double>(step_end_ns_ - step_start_ns_) / 1e9;
  metrics_.step_tokens += step_tokens_;
  step_end_ns_ = -1;
  bool any_finished = false;
  uint64_t iteration_tokens = 0;  // vLLM V1: generated + prompts completed
  bool any_output = false;
  for (Scheduled& e : sched_) {
    Seq* s = e.seq;
    if (s == nullptr) continue;  // aborted during the step
    s->sched_slot = -1;
    s->num_computed += e.tokens;
    TR_ASSERT(s->num_computed <= s->total_len());
    register_prefix_blocks(s);
    if (s->num_computed < s->total_len()) continue;  // prefill continues next step

    // The step completed this request's context: it samples one token.
    s->generated += 1;
    metrics_.generation_tokens += 1;
    iteration_tokens += 1;
    any_output = true;
    if (s->generated == 1) {
      s->first_token_ns = now_ns;
      metrics_.ttft.observe(static_cast<double>(now_ns - s->arrival_ns) / 1e9);
    } else {
      metrics_.itl.observe(static_cast<double>(now_ns - s->last_token_ns) / 1e9);
    }
    if (!s->prompt_counted) {
      s->prompt_counted = true;
      metrics_.prompt_tokens += s->prompt_tokens;
      iteration_tokens += s->prompt_tokens;
    }
    s->last_token_ns = now_ns;
    FinishReason reason = FinishReason::none;
    if (s->generated >= s->target_tokens) {
      reason = s->generated >= s->max_tokens ? FinishReason::length : FinishReason::stop;
      finish(s, reason, now_ns);
      any_finished = true;
    }
    sink_->on_token(*s, reason, now_ns);
  }
  sched_.clear();
  if (any_output) metrics_.iteration_tokens.observe(static_cast<double>(iteration_tokens));
  if (any_finished) {
    std::erase_if(running_, [](const Seq* s) { return s->state == Seq::State::finished; });
  }
}

void Engine::abort(Seq* seq) {
  switch (seq->state) {
    case Seq::State::idle:
    case Seq::State::finished:
      return;
    case Seq::State::waiting: {
      auto it = std::find(waiting_.begin(), waiting_.end(), seq);
      TR_ASSERT(it != waiting_.end());
      waiting_.erase(it);
      break;
    }
    case Seq::State::running: {
      auto it = std::find(running_.begin(), running_.end(), seq);
      TR_ASSERT(it != running_.end());
      running_.erase(it);
      break;
    }
  }
  if (seq->sched_slot >= 0) {
    TR_ASSERT(static_cast<size_t>(seq->sched_slot) < sched_.size());
    TR_ASSERT(sched_[seq->sched_slot].seq == seq);
    sched_[seq->sched_slot].seq = nullptr;
    seq->sched_slot = -1;
  }
  release(seq);
  seq->state = Seq::State::finished;
  metrics_.finished[static_cast<size_t>(FinishReason::abort)] += 1;
  metrics_.aborted += 1;
}

}  // namespace tr::sim
