#include "proxy/worker.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"
#include "proxy/session.hpp"

namespace tr::proxy {

namespace {
enum : uintptr_t { kDrainTimer = 1, kQueueTimer = 2 };

std::vector<std::string> backend_names(const Config& cfg) {
  std::vector<std::string> names;
  names.reserve(cfg.backends.size());
  for (const BackendConfig& b : cfg.backends)
    names.push_back(b.name);
  return names;
}
constexpr int64_t kQueuePumpMs = 10;  // capacity freed on other workers is seen this fast

uint64_t xoroshiro_next(uint64_t s[2]) {
  uint64_t s0 = s[0];
  uint64_t s1 = s[1];
  uint64_t r = s0 + s1;
  s1 ^= s0;
  s[0] = ((s0 << 24) | (s0 >> 40)) ^ s1 ^ (s1 << 16);
  s[1] = (s1 << 37) | (s1 >> 27);
  return r;
}
}  // namespace

// Load assumed for requests a replica runs that did not come through this
// process (seen in its scrape but not in our accounting).
constexpr double kForeignPromptTokens = 256;
constexpr double kForeignOutputTokens = 128;
// How long a per-token cost learned from observed TTFTs stays in force.
constexpr int64_t kLearnedTtlMs = 30000;

TableSource::TableSource(const Config* cfg, const scores::Table* table)
    : table_(table),
      slow_start_ms_(cfg->eject.slow_start_ms),
      use_observed_itl_(cfg->routing.observed_itl != 0) {
  fixed_.reserve(cfg->backends.size());
  for (const BackendConfig& b : cfg->backends) {
    uint32_t limit = b.max_inflight                ? b.max_inflight
                     : cfg->admission.max_inflight ? cfg->admission.max_inflight
                                                   : b.max_num_seqs;
    bool per_engine = !b.max_inflight && !cfg->admission.max_inflight;
    fixed_.push_back(Fixed{b.weight, b.max_num_batched_tokens, b.max_num_seqs, limit, per_engine,
                           b.long_prefill_token_threshold, b.scheduling == "priority"});
  }
}

uint32_t TableSource::max_inflight(size_t i) const {
  const Fixed& f = fixed_[i];
  if (!f.limit_per_engine || f.max_inflight == 0) return f.max_inflight;
  scores::RoutingState st = table_->at(i).routing.load();
  uint32_t engines =
      (st.flags & scores::RoutingState::kMetricsOk) ? std::max<uint16_t>(st.engines, 1) : 1;
  return f.max_inflight * engines;
}

void TableSource::view(size_t i, routing::ReplicaView* v) const {
  const scores::ReplicaSlot& slot = table_->at(i);
  const Fixed& f = fixed_[i];
  const scores::Dispatch& d = slot.dispatch;
  int64_t ejected_until = slot.dispatch.ejected_until_ms.load(std::memory_order_relaxed);
  v->usable = slot.up.load(std::memory_order_relaxed) && now_ms_ >= ejected_until;
  v->weight = f.weight;
  if (ejected_until > 0 && now_ms_ - ejected_until < static_cast<int64_t>(slow_start_ms_)) {
    // Back from an ejection: its share grows from 10% to all of it over slow_start_ms.
    double ramp = static_cast<double>(now_ms_ - ejected_until) / slow_start_ms_;
    v->weight *= std::max(0.1, ramp);
  }
  int64_t inflight = d.inflight.load(std::memory_order_relaxed);
  double prefill_requests = std::max<double>(0, d.prefill_requests.load(std::memory_order_relaxed));
  double prefill_tokens = std::max<double>(0, d.prefill_tokens.load(std::memory_order_relaxed));
  double decode_requests = std::max<double>(0, d.decode_requests.load(std::memory_order_relaxed));
  double decode_tokens = std::max<double>(0, d.decode_tokens.load(std::memory_order_relaxed));
  v->inflight = inflight;
  scores::RoutingState st = slot.routing.load();
  bool scraped = st.flags & scores::RoutingState::kMetricsOk;
  double s_running = scraped ? std::max<float>(0, st.running) : 0;
  double s_waiting = scraped ? std::max<float>(0, st.waiting) : 0;
  // Engine limits: configured, else learned from the scrapes, else vLLM's defaults.
  const uint32_t engines = scraped ? std::max<uint16_t>(st.engines, 1) : 1;
  const uint32_t seqs = f.max_num_seqs    ? f.max_num_seqs
                        : st.learned_seqs ? st.learned_seqs
                                          : estimator::kDefaultMaxNumSeqs;
  const uint32_t budget = f.budget_tokens     ? f.budget_tokens
                          : st.learned_budget ? st.learned_budget
                                              : estimator::kDefaultBudgetTokens;
  // Our accounting is live; the scrape is up to one interval old but also sees
  // traffic from elsewhere. Take whichever shows more; what we sent beyond
  // the scrape runs if there is room (all engines' slots), else waits. The
  // scraped waiting count stays waiting: vLLM queues for budget or KV too,
  // not only for slots.
  double ahead = std::max(0.0, static_cast<double>(inflight) - (s_running + s_waiting));
  double slots = static_cast<double>(seqs) * engines;
  v->running = std::min(s_running + ahead, std::max(s_running, slots));
  v->waiting = s_waiting + (s_running + ahead - v->running);
  v->kv_usage = scraped ? st.kv_usage : -1;
  const uint64_t limit = f.limit_per_engine ? uint64_t{f.max_inflight} * engines : f.max_inflight;
  v->saturated = limit && inflight >= static_cast<int64_t>(limit);
  estimator::ReplicaLoad& l = v->load;
  l.budget_tokens = budget;
  l.max_num_seqs = seqs;
  l.engines = engines;
  l.long_prefill_threshold = f.long_prefill_threshold;
  l.kv_free_tokens = scraped ? st.kv_free_tokens : -1;
  l.preemptions_per_s = scraped ? st.preemptions_per_s : 0;
  l.observed_itl_s = scraped && use_observed_itl_ ? st.itl_ewma_s : 0;
  l.priority_scheduling = f.priority_scheduling;
  if (adapter_hash_ != 0) {
    l.adapter_resident = std::find(std::begin(st.lora_hashes), std::end(st.lora_hashes),
                                   adapter_hash_) != std::end(st.lora_hashes);
    l.max_loras = st.max_lora > 0 ? static_cast<uint32_t>(st.max_lora) : 0;
    l.loras_running = st.loras_running;
  } else {
    l.adapter_resident = false;
    l.max_loras = 0;
    l.loras_running = 0;
  }
  if ((st.flags & scores::RoutingState::kCalibrated) || st.step_base_s > 0) {
    l.step_base_s = st.step_base_s;  // its own, or the fleet's until it has its own
    l.step_per_token_s = st.step_per_token_s;
    // The scrape fit cannot separate per-token cost well under mixed load; what
    // this worker learned from real TTFTs wins when it says prefill costs more.
    // Only while fresh: a replica that stopped getting traffic because of a bad
    // spell is judged by its scrapes again after kLearnedTtlMs.
    if (learned_per_token_ && (*learned_per_token_)[i] > l.step_per_token_s &&
        now_ms_ - (*learned_at_ms_)[i] < kLearnedTtlMs) {
      l.step_per_token_s = (*learned_per_token_)[i];
    }
  } else {
    l.step_base_s = estimator::kDefaultStepBaseS;
    l.step_per_token_s = estimator::kDefaultStepPerTokenS;
  }
  l.running = v->running;
  l.waiting = v->waiting;
  double foreign_waiting = std::max(0.0, s_waiting - prefill_requests);
  double foreign_running = std::max(0.0, s_running - decode_requests - prefill_requests);
  l.prefill_tokens_queued = prefill_tokens + foreign_waiting * kForeignPromptTokens;
  l.decode_tokens_remaining = decode_tokens + foreign_running * kForeignOutputTokens;
  l.kv_usage = v->kv_usage;
  // The KV the running requests will still take as they decode is not free
  // for a newcomer: vLLM admits on what is free now and preempts when decode
  // growth runs out of blocks (the preemptions this prevents).
  if (l.kv_free_tokens >= 0) {
    l.kv_free_tokens = std::max(0.0, l.kv_free_tokens - l.decode_tokens_remaining / engines);
  }
  if (f.priority_scheduling) {
    // What waits ahead, by class; foreign load counts as normal (class 1).
    for (size_t c = 0; c < estimator::kPriorityClasses; ++c) {
      l.waiting_by_class[c] =
          std::max<double>(0, d.prefill_requests_by_class[c].load(std::memory_order_relaxed));
      l.prefill_tokens_by_class[c] =
          std::max<double>(0, d.prefill_tokens_by_class[c].load(std::memory_order_relaxed));
    }
  }
}

Worker::Worker(Shared* shared, const WorkerOptions& opt)
    : shared_(shared),
      opt_(opt),
      stats_(backend_names(*shared->cfg)),
      replicas_(shared->cfg, shared->table) {
  const LimitsConfig& l = shared->cfg->limits;
  parse_limits_.request_line_bytes = l.request_line_bytes;
  parse_limits_.header_bytes = l.header_bytes;
  parse_limits_.header_count = l.header_count;
  routing::PolicyOptions po;
  const RoutingConfig& rc = shared->cfg->routing;
  if (!routing::parse_policy(rc.policy, &po.kind)) po.kind = routing::PolicyKind::latency;
  po.ttft_weight = rc.ttft_weight;
  po.imposed_weight = rc.imposed_weight;
  po.imposed_cap = rc.imposed_cap;
  po.sample_above = rc.sample_above;
  po.sample_size = rc.sample_size;
  po.seed = (static_cast<uint64_t>(opt.index) + 1) * 0x9e3779b97f4a7c15ull ^
            static_cast<uint64_t>(mono_ns());
  policy_ = routing::make_policy(po);
  idle_.resize(shared->cfg->backends.size());
  learned_per_token_.assign(shared->cfg->backends.size(), 0.0);
  learned_samples_.assign(shared->cfg->backends.size(), 0);
  learned_at_ms_.assign(shared->cfg->backends.size(), INT64_MIN / 2);
  replicas_.set_learned_per_token(&learned_per_token_, &learned_at_ms_);
  if (getrandom(rng_state_, sizeof rng_state_, 0) != sizeof rng_state_) {
    rng_state_[0] = static_cast<uint64_t>(mono_ns()) ^ (opt.index + 1);
    rng_state_[1] = 0x9e3779b97f4a7c15ull;
  }
  drain_timer_.handler = this;
  drain_timer_.tag = kDrainTimer;
  queue_timer_.handler = this;
  queue_timer_.tag = kQueueTimer;
  queue_max_ =
      std::max<size_t>(1, shared->cfg->admission.max_queue / std::max(1u, shared->workers));
  if (shared->cfg->admission.max_queue == 0) queue_max_ = 0;
  listener_.handler = this;
}

Worker::~Worker() {
  join();
  delete loop_;
}

bool Worker::start(std::string* err) {
  thread_ = std::thread([this] { thread_main(); });
  while (started_.load(std::memory_order_acquire) == 0)
    sched_yield();
  if (started_.load() < 0) {
    *err = start_error_;
    thread_.join();
    return false;
  }
  return true;
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::request_drain(DrainMode mode, uint32_t timeout_ms) {
  int64_t deadline = mono_ms() + timeout_ms;
  int64_t cur = drain_deadline_ms_.load(std::memory_order_relaxed);
  while (deadline < cur && !drain_deadline_ms_.compare_exchange_weak(cur, deadline)) {
  }
  if (mode == DrainMode::shutdown) drain_hard_.store(true, std::memory_order_relaxed);
  drain_requested_.store(true, std::memory_order_release);
  if (loop_) loop_->wake();
}

void Worker::start_accepting() {
  accept_requested_.store(true, std::memory_order_release);
  if (loop_) loop_->wake();
}

void Worker::wake_thunk(void* self) {
  auto* w = static_cast<Worker*>(self);
  if (w->accept_requested_.load(std::memory_order_acquire)) w->open_listener();
  if (w->drain_requested_.load(std::memory_order_acquire)) w->begin_drain();
}

void Worker::open_listener() {
  if (listener_open_ || drain_started_ || opt_.listen_fd < 0) return;
  // The listener is blocking for io_uring (the ring waits) and non-blocking for
  // epoll. (A flag of the socket, shared by every generation's dup of it: all
  // generations use the same backend.)
  int fl = fcntl(opt_.listen_fd, F_GETFL);
  if (loop_->backend() == io::Backend::epoll) {
    fcntl(opt_.listen_fd, F_SETFL, fl | O_NONBLOCK);
  } else {
    fcntl(opt_.listen_fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  listener_.fd = opt_.listen_fd;
  opt_.listen_fd = -1;  // the loop owns it now
  loop_->listen(&listener_);
  listener_open_ = true;
}

void Worker::thread_main() {
  char name[16];
  std::snprintf(name, sizeof name, "tr-worker-%u", opt_.index);
  pthread_setname_np(pthread_self(), name);
  if (opt_.cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(opt_.cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (rc != 0)
      TR_LOG_WARN("worker %u: cannot pin to CPU %d: %s", opt_.index, opt_.cpu, std::strerror(rc));
  }
  char why[256];
  loop_ = io::make_loop(opt_.loop, why, sizeof why);
  if (!loop_) {
    start_error_ = why;
    finished_.store(true, std::memory_order_release);
    started_.store(-1, std::memory_order_release);
    return;
  }
  std::snprintf(loop_desc_, sizeof loop_desc_, "%s", why);
  loop_->set_wake_handler(&Worker::wake_thunk, this);
  if (shared_->access_log)
    alog_ = std::make_unique<accesslog::AccessLogWriter>(shared_->access_log);
  if (opt_.accept_at_start) accept_requested_.store(true, std::memory_order_relaxed);
  if (accept_requested_.load(std::memory_order_acquire)) open_listener();
  started_.store(1, std::memory_order_release);
  if (drain_requested_.load(std::memory_order_acquire)) begin_drain();
  loop_->run();
  // Loop stopped: every connection is closed (drain finished or timed out).
  finished_.store(true, std::memory_order_release);
}

const std::shared_ptr<const models::Catalog>& Worker::catalog() {
  shared_->catalog->refresh(&catalog_, &catalog_seen_);
  return catalog_;
}

double Worker::random_unit() {
  return static_cast<double>(xoroshiro_next(rng_state_) >> 11) * 0x1.0p-53;
}

void Worker::new_request_id(std::string* out) {
  static const char kHex[] = "0123456789abcdef";
  uint64_t a = xoroshiro_next(rng_state_);
  uint64_t b = xoroshiro_next(rng_state_);
  out->resize(32);
  for (int i = 0; i < 16; ++i) {
    (*out)[i] = kHex[(a >> (i * 4)) & 15];
    (*out)[16 + i] = kHex[(b >> (i * 4)) & 15];
  }
}

void Worker::on_accept(io::Socket* listener, int fd) {
  (void)listener;
  if (clients_.size() >= cfg().limits.connections_per_worker) {
    stats_.connections_rejected.add();
    ::close(fd);
    return;
  }
  stats_.connections_accepted.add();
  auto* c = new ClientConn(this, fd);
  c->list_index = static_cast<uint32_t>(clients_.size());
  clients_.push_back(c);
  stats_.connections_open.store(static_cast<int64_t>(clients_.size()), std::memory_order_relaxed);
  c->start();
  // Accepted while the listener was being closed: served once, then closed.
  if (drain_started_) c->drain(false);
}

void Worker::on_client_closed(ClientConn* c) {
  uint32_t i = c->list_index;
  TR_ASSERT(i < clients_.size() && clients_[i] == c);
  clients_[i] = clients_.back();
  clients_[i]->list_index = i;
  clients_.pop_back();
  stats_.connections_open.store(static_cast<int64_t>(clients_.size()), std::memory_order_relaxed);
  delete c;
  if (drain_started_) maybe_finish_drain();
}

void Worker::track_upstream(UpstreamConn* u) {
  u->list_index = static_cast<uint32_t>(upstreams_.size());
  upstreams_.push_back(u);
}

void Worker::on_upstream_closed(UpstreamConn* u) {
  uint32_t i = u->list_index;
  TR_ASSERT(i < upstreams_.size() && upstreams_[i] == u);
  upstreams_[i] = upstreams_.back();
  upstreams_[i]->list_index = i;
  upstreams_.pop_back();
  delete u;
  if (drain_started_) maybe_finish_drain();
}

UpstreamConn* Worker::take_idle(uint32_t b) {
  std::vector<UpstreamConn*>& pool = idle_[b];
  while (!pool.empty()) {
    UpstreamConn* u = pool.back();  // most recently used: least likely closed by the replica
    pool.pop_back();
    u->in_pool = false;
    // A replica that closed the idle connection (uvicorn: after 5 s) may have sent
    // its FIN before our recv completion arrived: check before writing a request
    // into it, since a request written there cannot be retried.
    if (u->peer_closed()) {
      u->close_now();
      continue;
    }
    return u;
  }
  return nullptr;
}

// TTFT on a replica ~= n * (base + per_token * D) + per_token * P, where P is the
// prefill queued ahead plus this prompt, D the running decodes and n the steps
// prefill takes (estimator/predict.hpp). With base from the scrape calibration,
// one observation gives per_token; an EWMA over requests with enough prefill to
// be informative gives the replica's cost as this proxy sees it.
void Worker::learn_prefill_cost(uint32_t b, const estimator::ReplicaLoad& load,
                                uint32_t prompt_tokens, double ttft_s) {
  constexpr double kMinPrefillTokens = 512;  // below this, TTFT is mostly fixed cost
  double p = load.prefill_tokens_queued + prompt_tokens;
  if (p < kMinPrefillTokens || !(ttft_s > 0)) return;
  double d = std::max(0.0, std::min<double>(load.running, load.max_num_seqs));
  double budget = load.budget_tokens ? load.budget_tokens : estimator::kDefaultBudgetTokens;
  double c = std::max(budget - d, budget / 8);
  double n = std::ceil(p / c);
  double sample = (ttft_s - n * load.step_base_s) / (n * d + p);
  if (!(sample > 0)) return;
  sample = std::clamp(sample, estimator::kStepPerTokenMinS, estimator::kStepPerTokenMaxS);
  double& v = learned_per_token_[b];
  int64_t now = mono_ms();
  bool fresh = now - learned_at_ms_[b] < kLearnedTtlMs;
  v = (v == 0 || !fresh) ? sample : 0.8 * v + 0.2 * sample;
  ++learned_samples_[b];
  learned_at_ms_[b] = now;
}

void Worker::report_replica_result(uint32_t b, bool ok) {
  scores::ReplicaSlot& slot = shared_->table->at(b);
  if (ok) {
    if (slot.dispatch.consecutive_failures.load(std::memory_order_relaxed) != 0) {
      slot.dispatch.consecutive_failures.store(0, std::memory_order_relaxed);
    }
    return;
  }
  const EjectConfig& ec = cfg().eject;
  uint32_t n = slot.dispatch.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n < ec.failures) return;
  int64_t now = mono_ms();
  int64_t until = slot.dispatch.ejected_until_ms.load(std::memory_order_relaxed);
  if (until > now) return;  // already ejected
  size_t total = shared_->table->size();
  size_t ejected = 0;
  for (size_t i = 0; i < total; ++i) {
    if (shared_->table->at(i).dispatch.ejected_until_ms.load(std::memory_order_relaxed) > now)
      ++ejected;
  }
  if ((ejected + 1) * 100 > static_cast<size_t>(ec.max_percent) * total) return;
  uint32_t k = slot.dispatch.ejections.fetch_add(1, std::memory_order_relaxed);
  // A replica that stayed healthy since its last ejection starts again from base_ms.
  if (until > 0 && now - until > static_cast<int64_t>(ec.max_ms) * 2) {
    k = 0;
    slot.dispatch.ejections.store(1, std::memory_order_relaxed);
  }
  uint64_t dur = static_cast<uint64_t>(ec.base_ms) << std::min<uint32_t>(k, 20);
  dur = std::min<uint64_t>(dur, ec.max_ms);
  if (!slot.dispatch.ejected_until_ms.compare_exchange_strong(
          until, now + static_cast<int64_t>(dur), std::memory_order_relaxed)) {
    return;  // another worker ejected it just now
  }
  slot.dispatch.consecutive_failures.store(0, std::memory_order_relaxed);
  TR_LOG_WARN("replica %s (%s) ejected for %llu ms after %u failures in a row",
              cfg().backends[b].name.c_str(), cfg().backends[b].url.c_str(),
              static_cast<unsigned long long>(dur), n);
}

void Worker::give_idle(UpstreamConn* u) {
  std::vector<UpstreamConn*>& pool = idle_[u->backend()];
  if (drain_started_ || pool.size() >= cfg().upstream.keepalive_per_backend) {
    u->close_now();
    return;
  }
  u->idle_index = static_cast<uint32_t>(pool.size());
  u->in_pool = true;
  pool.push_back(u);
  u->park();
}

void Worker::forget_idle(UpstreamConn* u) {
  std::vector<UpstreamConn*>& pool = idle_[u->backend()];
  uint32_t i = u->idle_index;
  TR_ASSERT(i < pool.size() && pool[i] == u);
  pool[i] = pool.back();
  pool[i]->idle_index = i;
  pool.pop_back();
  u->in_pool = false;
}

void Worker::on_closed(io::Socket* s) {
  (void)s;  // the listener
  listener_open_ = false;
  if (drain_started_) maybe_finish_drain();
}

void Worker::begin_drain() {
  bool hard = drain_hard_.load(std::memory_order_relaxed);
  int64_t deadline = drain_deadline_ms_.load(std::memory_order_relaxed);
  if (drain_started_ && (!hard || drain_hard_applied_) && deadline >= drain_deadline_applied_) {
    return;  // nothing new
  }
  if (!drain_started_) {
    drain_started_ = true;
    // Stops accepting. The listening socket stays open (this was this worker's
    // dup of it): connections the kernel queued meanwhile wait for the next
    // configuration's worker instead of being reset.
    if (listener_open_) loop_->close(&listener_);
    if (opt_.listen_fd >= 0) {  // never accepted (its generation did not start)
      ::close(opt_.listen_fd);
      opt_.listen_fd = -1;
    }
    // Idle pooled connections go now; exchanges in flight do not reuse theirs.
    for (auto& pool : idle_) {
      while (!pool.empty())
        pool.back()->close_now();
    }
  }
  if (deadline < drain_deadline_applied_) {
    drain_deadline_applied_ = deadline;
    int64_t now = mono_ms();
    loop_->timers().arm(&drain_timer_, now,
                        static_cast<uint32_t>(std::max<int64_t>(0, deadline - now)));
  }
  // Every client finishes its current exchange, then closes. A reload leaves
  // idle keep-alive connections open until their next request (answered with
  // Connection: close) or their keep-alive timeout, so a request already on
  // its way is never met by a close; shutdown closes them now.
  if (hard) drain_hard_applied_ = true;
  std::vector<ClientConn*> snapshot = clients_;
  for (ClientConn* c : snapshot)
    c->drain(hard);
  maybe_finish_drain();
}

void Worker::maybe_finish_drain() {
  if (listener_open_ || !clients_.empty() || !upstreams_.empty()) return;
  loop_->timers().disarm(&drain_timer_);
  loop_->stop();
}

bool Worker::enqueue(ClientConn* c, bool high_priority) {
  if (queued_ >= queue_max_) return false;
  int q = high_priority ? 0 : 1;
  c->qprio_ = static_cast<uint8_t>(q);
  c->qprev_ = queue_tail_[q];
  c->qnext_ = nullptr;
  if (queue_tail_[q]) {
    queue_tail_[q]->qnext_ = c;
  } else {
    queue_head_[q] = c;
  }
  queue_tail_[q] = c;
  c->queued_ = true;
  ++queued_;
  stats_.queued.store(static_cast<int64_t>(queued_), std::memory_order_relaxed);
  if (!queue_timer_.armed()) loop_->timers().arm(&queue_timer_, mono_ms(), kQueuePumpMs);
  return true;
}

void Worker::requeue_front(ClientConn* c, int q) {
  c->qprio_ = static_cast<uint8_t>(q);
  c->qprev_ = nullptr;
  c->qnext_ = queue_head_[q];
  if (queue_head_[q]) {
    queue_head_[q]->qprev_ = c;
  } else {
    queue_tail_[q] = c;
  }
  queue_head_[q] = c;
  c->queued_ = true;
  ++queued_;
  stats_.queued.store(static_cast<int64_t>(queued_), std::memory_order_relaxed);
  if (!queue_timer_.armed()) loop_->timers().arm(&queue_timer_, mono_ms(), kQueuePumpMs);
}

void Worker::dequeue(ClientConn* c) {
  if (!c->queued_) return;
  int q = c->qprio_;
  if (c->qprev_) {
    c->qprev_->qnext_ = c->qnext_;
  } else {
    queue_head_[q] = c->qnext_;
  }
  if (c->qnext_) {
    c->qnext_->qprev_ = c->qprev_;
  } else {
    queue_tail_[q] = c->qprev_;
  }
  c->qprev_ = c->qnext_ = nullptr;
  c->queued_ = false;
  --queued_;
  stats_.queued.store(static_cast<int64_t>(queued_), std::memory_order_relaxed);
  if (queued_ == 0) loop_->timers().disarm(&queue_timer_);
}

void Worker::pump_queue() {
  if (pumping_ || queued_ == 0) return;
  pumping_ = true;
  for (int q = 0; q < 2; ++q) {
    while (ClientConn* c = queue_head_[q]) {
      dequeue(c);
      if (!c->admit_from_queue()) {  // still saturated: back to the front, stop here
        requeue_front(c, q);
        pumping_ = false;
        return;
      }
    }
  }
  pumping_ = false;
}

void Worker::on_timer(uintptr_t tag) {
  if (tag == kQueueTimer) {
    pump_queue();
    if (queued_ > 0) loop_->timers().arm(&queue_timer_, mono_ms(), kQueuePumpMs);
    return;
  }
  // Drain deadline: cut what is left.
  if (!clients_.empty()) {
    TR_LOG_WARN("worker %u: drain timeout: closing %zu connections", opt_.index, clients_.size());
  }
  std::vector<ClientConn*> snapshot = clients_;
  for (ClientConn* c : snapshot)
    c->force_close();
  std::vector<UpstreamConn*> ups = upstreams_;
  for (UpstreamConn* u : ups)
    u->close_now();
}

}  // namespace tr::proxy
