// A worker: one thread, pinned to one CPU, owning one event loop, one
// SO_REUSEPORT listener, its client connections and its own keep-alive pool of
// upstream connections per replica. Nothing here is touched by another thread
// except through Shared (read-only config, the replica table's atomics, the
// published model list) and the drain request (an atomic flag + loop wake-up).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "accesslog/accesslog.hpp"
#include "auth/auth.hpp"
#include "estimator/engine_defaults.hpp"
#include "estimator/tokens.hpp"
#include "http/message.hpp"
#include "io/loop.hpp"
#include "models/catalog.hpp"
#include "openai/body.hpp"
#include "proxy/stats.hpp"
#include "routing/policy.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

namespace tr::proxy {

class ClientConn;
class UpstreamConn;

// The replica table as routing policies read it: health, this process's
// dispatch accounting and the last scrape, combined into the best-known load.
class TableSource final : public routing::ReplicaSource {
 public:
  TableSource(const Config* cfg, const scores::Table* table);
  size_t size() const override { return table_->size(); }
  void view(size_t i, routing::ReplicaView* out) const override;
  // The time decisions are made at (ejection, slow start); set once per decision.
  void set_now(int64_t now_ms) const { now_ms_ = now_ms; }
  // The request being routed, for what depends on it: its LoRA adapter
  // (scores::lora_hash of its model; 0 = not an adapter) and priority class.
  void set_request(uint32_t adapter_hash, int64_t priority) const {
    adapter_hash_ = adapter_hash;
    priority_ = priority;
  }
  // Per-token prefill cost learned by this worker from observed TTFTs (0 = none yet).
  void set_learned_per_token(const std::vector<double>* v, const std::vector<int64_t>* at_ms) {
    learned_per_token_ = v;
    learned_at_ms_ = at_ms;
  }

 private:
  // Per-replica constants from the config, dense so a decision does not walk
  // the (large) BackendConfig objects.
  struct Fixed {
    double weight;
    uint32_t budget_tokens;  // configured; 0 = learned or the default
    uint32_t max_num_seqs;   // configured; 0 = learned or the default
    uint32_t max_inflight;   // 0 = no limit
    bool limit_per_engine;   // max_inflight is max_num_seqs: x the replica's engines
    uint32_t long_prefill_threshold;
    bool priority_scheduling;
  };

 public:
  // The in-flight limit of replica <i> now (0 = none).
  uint32_t max_inflight(size_t i) const;

 private:
  const scores::Table* table_;
  std::vector<Fixed> fixed_;
  uint32_t slow_start_ms_;
  bool use_observed_itl_;
  mutable int64_t now_ms_ = 0;
  mutable uint32_t adapter_hash_ = 0;
  mutable int64_t priority_ = 0;
  const std::vector<double>* learned_per_token_ = nullptr;
  const std::vector<int64_t>* learned_at_ms_ = nullptr;  // time of the last sample
};

// Process-wide state a worker reads. Owned by main; outlives every worker.
struct Shared {
  const Config* cfg = nullptr;
  const auth::KeySet* keys = nullptr;          // API keys; nullptr = no authentication
  accesslog::AccessLog* access_log = nullptr;  // nullptr = no access log
  uint32_t workers = 1;
  scores::Table* table = nullptr;
  // Merged /v1/models body (from the poller). Called on worker threads.
  std::function<std::shared_ptr<const std::string>()> models_json;
  const models::CatalogCell* catalog = nullptr;  // model pools (from the poller)
};

// The replicas of one model pool, as a ReplicaSource: index k is replica
// members[k] of <base>.
class PoolSource final : public routing::ReplicaSource {
 public:
  PoolSource(const routing::ReplicaSource& base, std::span<const uint32_t> members)
      : base_(base), members_(members) {}
  size_t size() const override { return members_.size(); }
  void view(size_t i, routing::ReplicaView* out) const override { base_.view(members_[i], out); }

 private:
  const routing::ReplicaSource& base_;
  std::span<const uint32_t> members_;
};

// How a worker stops. Both stop accepting at once and let exchanges in flight
// finish (bounded by a deadline, after which connections are cut).
enum class DrainMode : uint8_t {
  reload,    // a new configuration took over: idle keep-alive clients are kept
             // until their next request (answered, Connection: close) or timeout
  shutdown,  // the process exits: idle keep-alive clients are closed now
};

struct WorkerOptions {
  uint32_t index = 0;
  int cpu = -1;        // pin to this CPU; -1 = no pinning
  int listen_fd = -1;  // bound SO_REUSEPORT socket, already listening; the worker closes it
  bool accept_at_start = true;  // false: accept only after start_accepting()
  io::LoopOptions loop;         // backend choice and buffer sizes
};

class Worker final : public io::SocketHandler, public io::TimerHandler {
 public:
  Worker(Shared* shared, const WorkerOptions& opt);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Starts the thread and waits until its loop exists. Returns false (with
  // <err>) when the loop cannot be created (e.g. io = io_uring on a kernel without it).
  bool start(std::string* err);
  // Thread-safe: stop accepting, finish in-flight exchanges (cut after
  // <timeout_ms>), then exit the thread. May be called again: a shutdown after
  // a reload drain closes idle clients, and the earliest deadline wins.
  void request_drain(DrainMode mode, uint32_t timeout_ms);
  // Thread-safe: begin accepting (with accept_at_start = false: once every
  // worker of a configuration has started, so a failed start drops nothing).
  void start_accepting();
  // True once the thread has exited (every connection closed); join() is then immediate.
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  void join();

  const WorkerStats& stats() const { return stats_; }
  const char* backend_description() const { return loop_desc_; }

  // ---- used by connections, on this worker's thread ----
  io::Loop& loop() { return *loop_; }
  const Config& cfg() const { return *shared_->cfg; }
  Shared& shared() { return *shared_; }
  WorkerStats& stats() { return stats_; }
  BodyInspector& inspector() { return inspector_; }
  routing::Policy& policy() { return *policy_; }
  const TableSource& replicas() const { return replicas_; }
  // Passive health: outcome of one attempt on replica <b>. Failures are connect
  // errors, resets before the response and 5xx answers; enough in a row eject the
  // replica ([eject]), never more than max_percent of the pool.
  void report_replica_result(uint32_t b, bool ok);
  // A request's first token arrived <ttft_s> after it was sent to replica <b>,
  // whose load was <load>: learn the replica's per-token prefill cost from it.
  void learn_prefill_cost(uint32_t b, const estimator::ReplicaLoad& load, uint32_t prompt_tokens,
                          double ttft_s);
  estimator::ModelLearner& learner() { return learner_; }
  // The model pools as last published, refreshed when the poller published a
  // newer one (one atomic load per call otherwise). Never null.
  const std::shared_ptr<const models::Catalog>& catalog();
  // Uniform in [0, 1), from this worker's generator.
  double random_unit();
  accesslog::AccessLogWriter* access_log() { return alog_.get(); }
  const http::ParseLimits& parse_limits() const { return parse_limits_; }
  bool draining() const { return drain_started_; }
  // A fresh request id: 32 lowercase hex characters.
  void new_request_id(std::string* out);
  // Idle pooled connection to replica <b>, or nullptr.
  UpstreamConn* take_idle(uint32_t b);
  // Returns a healthy connection to the pool (or closes it if the pool is full).
  void give_idle(UpstreamConn* u);
  void forget_idle(UpstreamConn* u);
  void on_client_closed(ClientConn* c);
  // Admission queue: requests waiting while every usable replica is saturated.
  // Returns false when this worker's share of [admission] max_queue is full.
  bool enqueue(ClientConn* c, bool high_priority);
  void dequeue(ClientConn* c);
  void requeue_front(ClientConn* c, int q);
  // Offers capacity to queued requests, oldest (high priority first) first.
  void pump_queue();
  size_t queued() const { return queued_; }
  void on_upstream_closed(UpstreamConn* u);
  void track_upstream(UpstreamConn* u);

  // io::SocketHandler for the listener.
  void on_accept(io::Socket* listener, int fd) override;
  void on_recv(io::Socket*, uint16_t, char*, uint32_t) override {}
  void on_recv_end(io::Socket*, int) override {}
  void on_send(io::Socket*, int) override {}
  void on_closed(io::Socket* s) override;
  // io::TimerHandler: drain deadline.
  void on_timer(uintptr_t tag) override;

 private:
  void thread_main();
  static void wake_thunk(void* self);
  void begin_drain();
  void open_listener();
  void maybe_finish_drain();

  Shared* shared_;
  WorkerOptions opt_;
  std::thread thread_;
  io::Loop* loop_ = nullptr;
  char loop_desc_[256] = "";
  std::string start_error_;
  std::atomic<int> started_{0};  // 0 pending, 1 ok, -1 failed
  std::atomic<bool> accept_requested_{false};
  std::atomic<bool> drain_requested_{false};
  std::atomic<bool> drain_hard_{false};
  std::atomic<int64_t> drain_deadline_ms_{INT64_MAX};
  std::atomic<bool> finished_{false};
  bool drain_started_ = false;
  bool drain_hard_applied_ = false;
  int64_t drain_deadline_applied_ = INT64_MAX;
  io::Socket listener_;
  bool listener_open_ = false;
  io::Timer drain_timer_;
  io::Timer queue_timer_;                           // re-offers capacity while requests wait
  ClientConn* queue_head_[2] = {nullptr, nullptr};  // [0] high priority, [1] normal
  ClientConn* queue_tail_[2] = {nullptr, nullptr};
  size_t queued_ = 0;
  size_t queue_max_ = 1;
  bool pumping_ = false;

  WorkerStats stats_;
  friend class ClientConn;
  BodyInspector inspector_;
  std::unique_ptr<routing::Policy> policy_;
  TableSource replicas_;
  estimator::ModelLearner learner_;
  std::unique_ptr<accesslog::AccessLogWriter> alog_;  // created on the worker's thread
  std::vector<double> learned_per_token_;             // per replica, EWMA; 0 = no sample yet
  std::vector<uint32_t> learned_samples_;
  std::vector<int64_t> learned_at_ms_;
  http::ParseLimits parse_limits_;
  uint64_t rng_state_[2];
  std::shared_ptr<const models::Catalog> catalog_;
  uint64_t catalog_seen_ = 0;

  // Connection tracking: every live connection is in one of these lists.
  std::vector<ClientConn*> clients_;  // index stored in the conn (swap-remove)
  std::vector<UpstreamConn*> upstreams_;
  std::vector<std::vector<UpstreamConn*>> idle_;  // per replica, most recent last
};

}  // namespace tr::proxy
