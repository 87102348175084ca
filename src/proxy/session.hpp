// The two legs of a proxied exchange.
//
// ClientConn: one accepted client connection. Reads requests (one at a time;
// pipelined bytes wait their turn), answers local endpoints, routes the rest,
// and relays the replica's response back.
// UpstreamConn: one connection to a replica, either idle in the worker's pool or
// attached to exactly one ClientConn for the duration of one exchange.
//
// Life of a request (see docs/ARCHITECTURE.md for the picture):
//   client bytes -> MessageParser (head copied, body copied into a padded buffer)
//   -> BodyInspector (model, stream, max_tokens, prompt size) -> Policy::rank
//   -> pooled or new UpstreamConn -> request head + body sent
//   -> response bytes arrive in pool buffers -> head rebuilt for the client,
//      body bytes queued to the client straight from those buffers (whole chunks)
//   -> end of response: upstream back to the pool, client reads the next request.
#pragma once

#include <cstdint>
#include <string>

#include "estimator/predict.hpp"
#include "http/message.hpp"
#include "io/loop.hpp"
#include "io/out_queue.hpp"
#include "models/catalog.hpp"
#include "proxy/stats.hpp"
#include "routing/policy.hpp"
#include "scores/table.hpp"
#include "sse/sse.hpp"
#include "tokenrelay/request_facts.hpp"

namespace tr::proxy {

class Worker;
class UpstreamConn;

inline constexpr size_t kMaxRanked = 16;  // replicas tried for one request, at most
// Pool buffers one stream may hold queued for a slow client before its replica
// stops being read. With the default 4096 buffers per worker, 64 stalled streams
// would pin them all: issue 4 adds compaction of stalled queues.
inline constexpr uint32_t kStreamSegmentsMax = 64;

// After a reload, how long an idle keep-alive client of the old configuration
// may take to send its next request (answered, then closed) before it is closed.
inline constexpr uint32_t kDrainIdleGraceMs = 2000;

class ClientConn final : public io::SocketHandler, public io::TimerHandler {
  friend class UpstreamConn;
  friend class Worker;  // the admission queue links

 public:
  ClientConn(Worker* w, int fd);
  ~ClientConn();
  void start();
  // Drain: close after the current response (Connection: close). Between
  // requests: close now when <close_idle>, else at the next response or after
  // kDrainIdleGraceMs (at most the keep-alive timeout) without a request.
  void drain(bool close_idle);
  bool idle_between_requests() const;
  // Drain deadline passed: close whatever state the exchange is in.
  void force_close() { close_now(); }
  uint32_t list_index = 0;  // position in the worker's list

  // ---- called by the attached UpstreamConn ----
  void upstream_connected(UpstreamConn* u, int res);
  void upstream_data(UpstreamConn* u, uint16_t bid, char* data, uint32_t len);
  void upstream_ended(UpstreamConn* u, int err);
  void upstream_send_failed(UpstreamConn* u, int err);
  void upstream_body_piece(const char* p, size_t n);  // de-chunked response body
  // Called by the worker's queue pump: routes again; false if still saturated.
  bool admit_from_queue();

 private:
  enum class State : uint8_t {
    kReading,   // reading a request (or idle between requests)
    kWaiting,   // request complete; connecting / sending / waiting for the head
    kRelaying,  // response head sent; relaying the body
    kClosing,
  };

  // io::SocketHandler
  void on_recv(io::Socket* s, uint16_t bid, char* data, uint32_t len) override;
  void on_recv_end(io::Socket* s, int err) override;
  void on_send(io::Socket* s, int res) override;
  void on_closed(io::Socket* s) override;
  // io::TimerHandler
  void on_timer(uintptr_t tag) override;

  void feed_request_bytes(const char* data, size_t len);
  void process_pending();
  void on_request_head();
  void on_request_complete();
  bool answer_locally();
  void route_and_dispatch();
  bool resolve_model();
  routing::Ranking rank_in_pool(const routing::RouteRequest& rr);
  void try_next_replica();
  void send_request(UpstreamConn* u);
  void on_response_head(UpstreamConn* u);
  void relay_raw(uint16_t bid, const char* p, size_t n, bool whole_chunks);
  void commit_staged();
  void response_done(bool upstream_reusable);
  void fail_before_head(Failure why, int status, const char* message, const char* code);
  void fail_mid_stream(Failure why, const char* message);
  void reply_local(int status, std::string_view json_body);
  void reply_error(int status, std::string_view message, const char* type, const char* code,
                   int retry_after_s = -1, const char* param = "");
  void reject_saturated(bool any_usable);
  void finish_exchange();
  void learn_from_response();
  bool authorized();
  void log_access();
  void account_model();
  bool credit_dispatch();
  void dispatch_first_token();
  void debit_prefill(scores::Dispatch& d);
  void debit_relayed_tokens();
  void release_dispatch();
  void release_upstream(bool reusable);
  void abort_exchange(Failure why);
  void flush();
  void close_now();
  void arm_timer_for_state();
  void check_backpressure();
  bool client_is_behind() const;
  bool client_write_stalled() const;
  bool client_caught_up() const;

  Worker* w_;
  io::Socket sock_;
  io::OutQueue out_;
  io::Timer timer_;
  io::Timer phase_timer_;  // non-streaming: the predicted first token moves it to decode
  State state_ = State::kReading;
  bool close_after_ = false;  // close once the current response is flushed
  bool draining_ = false;
  bool recv_paused_ = false;  // pipelined input over its bound
  char client_ip_[64] = "";

  http::MessageParser req_;
  std::string pending_;  // received bytes not parsed yet (pipelined requests)
  std::string body_;     // request body, de-chunked, with simdjson padding room

  // ---- the current exchange ----
  std::string request_id_;
  RequestFacts facts_;
  bool client_http10_ = false;
  bool client_keep_alive_ = true;
  bool is_head_ = false;
  uint32_t ranked_[kMaxRanked];
  uint32_t nranked_ = 0;
  uint32_t next_rank_ = 0;
  int backend_ = -1;  // replica of the current attempt; -1 = none yet
  // The model pool of the current request (models/catalog.hpp). The catalog
  // is held so the pool and the rewrite target stay valid while it waits.
  std::shared_ptr<const models::Catalog> catalog_;
  std::span<const uint32_t> pool_;
  std::string_view rewrite_;             // [model NAME] alias: the target written into the body
  uint32_t model_slot_ = models::kNone;  // per-model metrics; kNone = not a model request
  int64_t priority_ = 0;  // vLLM priority (lower first): body "priority", else X-Priority
  bool priority_from_header_ = false;  // X-Priority gave it: inserted for priority replicas
  uint64_t usage_prompt_tokens_ = 0;
  enum class Phase : uint8_t { kNone, kPrefill, kDecode };
  Phase phase_ = Phase::kNone;  // dispatch accounting of the current attempt
  estimator::RequestCost cost_{};
  uint32_t adapter_hash_ = 0;            // scores::lora_hash of a LoRA adapter model; 0 = not one
  int64_t decode_credit_ = 0;            // output tokens of this attempt still in decode_tokens
  uint32_t events_unaccounted_ = 0;      // token events relayed since decode_tokens was reduced
  estimator::ReplicaLoad learn_load_{};  // the replica's load when this attempt was sent
  double predicted_ttft_s_ = -1;
  // Admission queue (owned by the worker; links valid while queued_).
  ClientConn* qprev_ = nullptr;
  ClientConn* qnext_ = nullptr;
  bool queued_ = false;
  uint8_t qprio_ = 1;
  bool high_priority_ = false;  // "X-Priority: high"
  bool was_queued_ = false;
  // Access log facts of the exchange.
  const char* termination_ = "ok";
  int64_t t_request_wall_ms_ = 0;
  double ttft_ms_ = -1;
  uint64_t bytes_out_ = 0;
  uint64_t completion_tokens_ = 0;
  bool logged_ = true;  // nothing to log until a request begins
  UpstreamConn* up_ = nullptr;
  int64_t t_request_ns_ = 0;
  int64_t last_upstream_ms_ = 0;
  int64_t last_client_ms_ = 0;         // last bytes from the client
  int64_t last_send_progress_ms_ = 0;  // last time the client took bytes (or a send began)
  bool sending_ = false;               // out_ has been non-empty since last_send_progress_ms_
  int status_ = 0;
  bool head_sent_ = false;
  bool resp_chunked_ = false;  // relaying chunked framing as received
  bool dechunk_ = false;       // HTTP/1.0 client: relay de-chunked, close at end
  bool resp_is_sse_ = false;
  bool first_event_seen_ = false;
  io::OutQueue staged_;  // bytes of a chunk not yet complete
  SseScanner sse_;
  char usage_tail_[512];  // last bytes of a non-SSE body (its usage object)
  uint16_t usage_tail_len_ = 0;
  uint16_t cur_bid_ = 0;
  char* cur_base_ = nullptr;
};

class UpstreamConn final : public io::SocketHandler, public io::TimerHandler {
 public:
  UpstreamConn(Worker* w, uint32_t backend);
  ~UpstreamConn();
  // Starts a non-blocking connect. Returns false if no socket could be made.
  bool connect(int* err);
  void attach(ClientConn* c);
  void detach() { client_ = nullptr; }
  // Pooled: keep reading so a close by the replica is seen, arm the idle timer.
  void park();
  // The replica already closed this (idle) connection: EOF or an error pending.
  bool peer_closed() const;
  // Bytes of the request the kernel accepted (0: nothing was written upstream).
  uint64_t bytes_sent() const { return bytes_sent_; }
  void close_now();
  void flush();

  uint32_t backend() const { return backend_; }
  bool reused() const { return reused_; }
  bool got_response_bytes() const { return got_bytes_; }
  bool request_fully_sent() const { return !send_failed_ && out_.empty() && !sock_.send_busy(); }
  http::MessageParser& parser() { return resp_; }
  io::OutQueue& out() { return out_; }
  uint32_t list_index = 0;
  uint32_t idle_index = 0;
  bool in_pool = false;

 private:
  friend class ClientConn;
  void on_recv(io::Socket* s, uint16_t bid, char* data, uint32_t len) override;
  void on_recv_end(io::Socket* s, int err) override;
  void on_send(io::Socket* s, int res) override;
  void on_connect(io::Socket* s, int res) override;
  void on_closed(io::Socket* s) override;
  void on_timer(uintptr_t tag) override;
  static void body_thunk(void* self, const char* p, size_t n);

  Worker* w_;
  uint32_t backend_;
  io::Socket sock_;
  io::OutQueue out_;
  io::Timer idle_timer_;
  http::MessageParser resp_;
  ClientConn* client_ = nullptr;
  bool connected_ = false;
  bool reused_ = false;
  bool got_bytes_ = false;
  bool send_failed_ = false;
  bool closing_ = false;
  uint64_t bytes_sent_ = 0;
};

}  // namespace tr::proxy
