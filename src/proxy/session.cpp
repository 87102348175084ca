#include "proxy/session.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "http/rewrite.hpp"
#include "proxy/worker.hpp"

namespace tr::proxy {

namespace {

enum TimerTag : uintptr_t { kTimerState = 1, kTimerPhase = 2 };

// Bytes of pipelined input held while a request is in progress; beyond this the
// client connection stops being read until the current exchange ends.
constexpr size_t kPendingInputMax = 64 * 1024;

std::string_view path_of(std::string_view target) {
  size_t q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

// A splice into the request body: <remove> bytes at <at> replaced by <insert>.
struct BodyEdit {
  size_t at = 0;
  size_t remove = 0;
  std::string insert;
};

// X-Priority: "high" (-1), "normal" (0), "low" (1), or an integer in
// [-1e6, 1e6] (vLLM's priority: lower is served first).
bool parse_priority(std::string_view v, int64_t* out) {
  if (http::ieq(v, "high")) {
    *out = -1;
  } else if (http::ieq(v, "normal")) {
    *out = 0;
  } else if (http::ieq(v, "low")) {
    *out = 1;
  } else {
    int64_t x = 0;
    auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || ptr != v.data() + v.size() || x < -1000000 || x > 1000000)
      return false;
    *out = x;
  }
  return true;
}

// An object member [at, at + n) of <body> ("key": value) as an edit that
// removes it with one adjacent comma, so the object stays valid JSON.
BodyEdit remove_member(std::string_view body, size_t at, size_t n) {
  constexpr std::string_view kSpace = " \t\r\n";
  BodyEdit e{at, n, {}};
  size_t after = body.find_first_not_of(kSpace, at + n);
  if (after != std::string_view::npos && body[after] == ',') {
    e.remove = after + 1 - at;  // "k": v ,  -> gone (the next member keeps its place)
    return e;
  }
  size_t before = at == 0 ? std::string_view::npos : body.find_last_not_of(kSpace, at - 1);
  if (before != std::string_view::npos && body[before] == ',') {
    e.at = before;  // , "k": v  (the last member)
    e.remove = at + n - before;
  }
  return e;
}

void format_peer(int fd, char* out, size_t len) {
  sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  out[0] = '\0';
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) return;
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, out, len);
  } else if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, out, len);
  }
}

}  // namespace

// ===========================================================================
// ClientConn
// ===========================================================================

ClientConn::ClientConn(Worker* w, int fd)
    : w_(w), req_(http::MessageParser::Kind::request, w->parse_limits()) {
  sock_.fd = fd;
  sock_.handler = this;
  timer_.handler = this;
  timer_.tag = kTimerState;
  phase_timer_.handler = this;
  phase_timer_.tag = kTimerPhase;
  format_peer(fd, client_ip_, sizeof client_ip_);
  req_.set_body_sink(
      [](void* self, const char* p, size_t n) {
        auto* c = static_cast<ClientConn*>(self);
        c->body_.append(p, n);
      },
      this);
}

ClientConn::~ClientConn() {
  TR_ASSERT(up_ == nullptr);
}

void ClientConn::start() {
  w_->loop().recv_start(&sock_);
  arm_timer_for_state();
}

bool ClientConn::idle_between_requests() const {
  return state_ == State::kReading && !req_.in_message() && out_.empty() && pending_.empty();
}

void ClientConn::drain(bool close_idle) {
  draining_ = true;
  if (!close_idle) {
    // The next response carries Connection: close; an idle client gets
    // kDrainIdleGraceMs to send its next request.
    if (idle_between_requests()) arm_timer_for_state();
    return;
  }
  if (idle_between_requests()) {
    close_now();
  } else {
    close_after_ = true;
  }
}

void ClientConn::arm_timer_for_state() {
  const TimeoutsConfig& t = w_->cfg().timeouts;
  int64_t now = mono_ms();
  switch (state_) {
    case State::kReading:
      // Header: a total budget from the first byte. Body: idle time between reads.
      // Between requests: keep-alive idle (or the write timeout while flushing).
      // Draining (reload): an idle client gets a short grace for a request that
      // may already be on its way, not the whole keep-alive time.
      w_->loop().timers().arm(
          &timer_, now,
          !req_.in_message()
              ? (draining_ ? std::min<uint32_t>(t.keepalive_idle_ms, kDrainIdleGraceMs)
                           : t.keepalive_idle_ms)
          : req_.head_done() ? t.client_body_idle_ms
                             : t.client_header_ms);
      break;
    case State::kWaiting:
      w_->loop().timers().arm(&timer_, now, t.upstream_first_byte_ms);
      break;
    case State::kRelaying:
      last_upstream_ms_ = now;
      w_->loop().timers().arm(&timer_, now, std::min(t.upstream_idle_ms, t.client_write_ms));
      break;
    case State::kClosing:
      w_->loop().timers().disarm(&timer_);
      break;
  }
}

void ClientConn::on_timer(uintptr_t tag) {
  if (tag == kTimerPhase) {
    dispatch_first_token();  // a non-streaming request's predicted TTFT has passed
    return;
  }
  const TimeoutsConfig& t = w_->cfg().timeouts;
  switch (state_) {
    case State::kReading:
      if (!out_.empty() && client_write_stalled()) {
        w_->stats().failures[static_cast<size_t>(Failure::client_timeout)].add();
        close_now();  // a finished response the client never read
        return;
      }
      if (req_.in_message() && req_.head_done()) {
        int64_t now = mono_ms();
        int64_t idle = now - last_client_ms_;
        if (idle < static_cast<int64_t>(t.client_body_idle_ms)) {
          w_->loop().timers().arm(&timer_, now, t.client_body_idle_ms - idle);
          return;
        }
        w_->stats().failures[static_cast<size_t>(Failure::client_timeout)].add();
        close_after_ = true;
        reply_error(408, "request body not received in time", "invalid_request_error",
                    "request_timeout");
        return;
      }
      if (!out_.empty()) {  // flushing: the write timeout governs, checked above
        w_->loop().timers().arm(&timer_, mono_ms(), t.client_write_ms);
        return;
      }
      if (req_.in_message()) {
        w_->stats().failures[static_cast<size_t>(Failure::bad_request)].add();
        close_after_ = true;
        reply_error(408, "request not received in time", "invalid_request_error",
                    "request_timeout");
      } else {
        close_now();  // keep-alive idle
      }
      return;
    case State::kWaiting:
      if (queued_) {
        w_->dequeue(this);
        routing::ReplicaView v;
        bool any_usable = false;
        for (size_t i = 0; i < w_->replicas().size() && !any_usable; ++i) {
          w_->replicas().view(i, &v);
          any_usable = v.usable;
        }
        reject_saturated(any_usable);
        return;
      }
      if (backend_ >= 0) w_->report_replica_result(static_cast<uint32_t>(backend_), false);
      fail_before_head(Failure::upstream_timeout, 504,
                       "the replica did not start a response in time", "upstream_timeout");
      return;
    case State::kRelaying: {
      // Re-armed lazily: progress moves last_*_ms_ forward without touching the heap.
      int64_t now = mono_ms();
      if (client_write_stalled()) {
        // A client that stopped reading: its replica is paused by back-pressure;
        // after client_write_ms the stream is abandoned (and vLLM told, by FIN).
        abort_exchange(Failure::client_timeout);
        return;
      }
      // While back-pressure holds the replica, its silence is ours, not its.
      if (up_ && !up_->sock_.recv_on()) last_upstream_ms_ = now;
      int64_t idle = now - last_upstream_ms_;
      if (idle >= static_cast<int64_t>(t.upstream_idle_ms)) {
        fail_mid_stream(Failure::upstream_timeout, "the replica stopped sending tokens");
        return;
      }
      // Look again within client_write_ms: the client may stop reading any time.
      int64_t write_left = out_.empty() ? static_cast<int64_t>(t.client_write_ms)
                                        : t.client_write_ms - (now - last_send_progress_ms_);
      int64_t next = std::min<int64_t>(t.upstream_idle_ms - idle, write_left);
      w_->loop().timers().arm(&timer_, now, std::max<int64_t>(next, 1));
      return;
    }
    case State::kClosing:
      return;
  }
}

// ---- client input ----------------------------------------------------------

// True when bytes wait for the client and none were taken for client_write_ms.
bool ClientConn::client_write_stalled() const {
  return !out_.empty() && mono_ms() - last_send_progress_ms_ >=
                              static_cast<int64_t>(w_->cfg().timeouts.client_write_ms);
}

void ClientConn::on_recv(io::Socket* s, uint16_t bid, char* data, uint32_t len) {
  (void)s;
  last_client_ms_ = mono_ms();
  if (state_ == State::kReading && pending_.empty()) {
    feed_request_bytes(data, len);
  } else if (state_ != State::kClosing) {
    pending_.append(data, len);  // pipelined behind the current exchange
    check_backpressure();
  }
  w_->loop().pool().unref(bid);
}

void ClientConn::check_backpressure() {
  if (!recv_paused_ && pending_.size() > kPendingInputMax) {
    recv_paused_ = true;
    w_->loop().recv_stop(&sock_);
  }
}

void ClientConn::feed_request_bytes(const char* data, size_t len) {
  size_t off = 0;
  bool after_head = false;  // a bodyless message completes with no further bytes
  while ((off < len || after_head) && state_ == State::kReading && !close_after_) {
    after_head = false;
    bool started = req_.in_message();
    size_t used = 0;
    http::MessageParser::Status st = req_.feed(data + off, len - off, &used);
    off += used;
    if (!started && req_.in_message()) arm_timer_for_state();  // header timeout starts
    switch (st) {
      case http::MessageParser::Status::kNeedMore:
      case http::MessageParser::Status::kChunk:
        if (req_.head_done() && body_.size() > w_->cfg().limits.body_bytes) {
          close_after_ = true;
          w_->stats().failures[static_cast<size_t>(Failure::bad_request)].add();
          reply_error(413, "request body too large", "invalid_request_error", "body_too_large");
          return;
        }
        break;
      case http::MessageParser::Status::kHead:
        on_request_head();
        after_head = true;
        break;
      case http::MessageParser::Status::kDone:
        if (body_.size() > w_->cfg().limits.body_bytes) {
          close_after_ = true;
          reply_error(413, "request body too large", "invalid_request_error", "body_too_large");
          return;
        }
        on_request_complete();
        break;
      case http::MessageParser::Status::kError: {
        w_->stats().failures[static_cast<size_t>(Failure::bad_request)].add();
        close_after_ = true;
        int status = req_.error_status();
        const char* code = status == 501   ? "unsupported_transfer_coding"
                           : status == 414 ? "uri_too_long"
                           : status == 431 ? "headers_too_large"
                           : status == 405 ? "method_not_allowed"
                                           : "malformed_request";
        reply_error(status, req_.error_reason(), "invalid_request_error", code);
        return;
      }
    }
  }
  if (off < len && state_ != State::kClosing && !close_after_) {
    pending_.append(data + off, len - off);
    check_backpressure();
  }
}

void ClientConn::process_pending() {
  if (pending_.empty()) return;
  std::string bytes;
  bytes.swap(pending_);
  feed_request_bytes(bytes.data(), bytes.size());
  if (pending_.empty()) {
    bytes.clear();
    pending_.swap(bytes);  // keep the capacity
  }
  if (recv_paused_ && pending_.size() <= kPendingInputMax && state_ != State::kClosing) {
    recv_paused_ = false;
    w_->loop().recv_start(&sock_);
  }
}

void ClientConn::on_request_head() {
  last_client_ms_ = mono_ms();
  arm_timer_for_state();  // the body idle timeout from here on
  logged_ = false;
  termination_ = "ok";
  t_request_wall_ms_ = wall_ms();
  ttft_ms_ = -1;
  bytes_out_ = 0;
  completion_tokens_ = 0;
  usage_prompt_tokens_ = 0;
  status_ = 0;
  backend_ = -1;
  t_request_ns_ = 0;
  facts_ = RequestFacts{};
  cost_ = estimator::RequestCost{};
  request_id_.clear();
  if (!authorized()) return;
  client_http10_ = req_.http_minor() == 0;
  client_keep_alive_ = req_.keep_alive();
  is_head_ = req_.is_head_method();
  if (req_.has_content_length() && req_.content_length() > w_->cfg().limits.body_bytes) {
    close_after_ = true;
    reply_error(413, "request body too large", "invalid_request_error", "body_too_large");
    return;
  }
  body_.clear();
  if (req_.has_content_length()) {
    body_.reserve(req_.content_length() + BodyInspector::kPadding);
  }
  // The body is read by the proxy before it picks a replica, so answer
  // "Expect: 100-continue" here rather than make the client wait for it.
  bool found = false;
  std::string_view expect = req_.find("expect", &found);
  if (found && http::ieq(expect, "100-continue") && !client_http10_) {
    out_.push_copy("HTTP/1.1 100 Continue\r\n\r\n");
    flush();
  }
}

// API keys ([auth] api_keys_file): checked at the head, before the body is
// read, so an unauthenticated client cannot make the proxy buffer a body. Only
// GET /health is open. The key is never logged nor forwarded.
bool ClientConn::authorized() {
  const auth::KeySet* keys = w_->shared().keys;
  if (!keys) return true;
  if (req_.method() == "GET" && path_of(req_.target()) == "/health") return true;
  bool found = false;
  std::string_view value = req_.find("authorization", &found);
  size_t count = 0;
  for (size_t i = 0; i < req_.header_count(); ++i) {
    if (http::ieq(req_.header(i).name, "authorization")) ++count;
  }
  std::string_view token;
  if (found && count == 1 && auth::parse_bearer(value, &token) && keys->check(token)) return true;
  w_->stats().auth_failures.add();
  close_after_ = true;
  termination_ = "auth_failed";
  reply_error(401, found ? "Incorrect API key provided" : "Missing API key", "authentication_error",
              found ? "invalid_api_key" : "missing_api_key");
  return false;
}

void ClientConn::on_request_complete() {
  t_request_ns_ = mono_ns();
  state_ = State::kWaiting;
  w_->loop().timers().disarm(&timer_);
  status_ = 0;
  head_sent_ = false;
  backend_ = -1;
  first_event_seen_ = false;
  resp_is_sse_ = false;
  facts_ = RequestFacts{};
  bool found = false;
  std::string_view id = req_.find("x-request-id", &found);
  if (found && !id.empty() && id.size() <= 200) {
    request_id_.assign(id);
  } else {
    w_->new_request_id(&request_id_);
  }
  if (answer_locally()) return;
  was_queued_ = false;
  if (!body_.empty()) {
    if (body_.capacity() < body_.size() + BodyInspector::kPadding) {
      body_.reserve(body_.size() + BodyInspector::kPadding);
    }
    if (!w_->inspector().inspect(body_.data(), body_.size(), body_.capacity(), &facts_)) {
      w_->stats().json_malformed.add();  // forwarded unchanged: the replica owns the error
    }
  }
  // Priority: the body's "priority" (vLLM's field), else X-Priority: an
  // integer, or high (-1) / normal (0) / low (1). Lower is more urgent; below
  // 0 also jumps the admission queue.
  priority_ = 0;
  priority_from_header_ = false;
  if (facts_.has_priority) {
    priority_ = facts_.priority;
  } else {
    bool has_header = false;
    std::string_view xp = req_.find("x-priority", &has_header);
    if (has_header && parse_priority(xp, &priority_)) priority_from_header_ = priority_ != 0;
  }
  high_priority_ = priority_ < 0;
  if (!resolve_model()) return;
  route_and_dispatch();
}

bool ClientConn::answer_locally() {
  std::string_view method = req_.method();
  std::string_view path = path_of(req_.target());
  if (method != "GET" && method != "HEAD") return false;
  if (path == "/health") {
    bool up = w_->shared().table->any_up();
    reply_local(up ? 200 : 503, up ? "{\"status\":\"ok\"}" : "{\"status\":\"no replica is up\"}");
    return true;
  }
  if (path == "/v1/models") {
    std::shared_ptr<const std::string> models = w_->shared().models_json();
    reply_local(200, *models);
    return true;
  }
  return false;
}

// ---- routing and the upstream leg ------------------------------------------

// Picks the model pool (models/catalog.hpp). False when the request was
// answered here: unknown model (404) or no model where one is needed (400).
bool ClientConn::resolve_model() {
  catalog_ = w_->catalog();
  auto usable = [this](uint32_t r) {
    routing::ReplicaView v;
    w_->replicas().view(r, &v);
    return v.usable;
  };
  w_->replicas().set_now(mono_ms());
  models::Resolution res = catalog_->resolve(facts_.json_ok, !facts_.model.empty(), facts_.model,
                                             w_->random_unit(), usable);
  model_slot_ = res.slot;
  if (model_slot_ != models::kNone) {  // until log_access(), at the end of the exchange
    std::atomic<int64_t>& g = w_->stats().models[model_slot_].inflight;
    g.store(g.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  pool_ = res.pool;
  rewrite_ = res.rewrite;
  switch (res.kind) {
    case models::Resolution::Kind::pool:
      break;
    case models::Resolution::Kind::unknown_model: {
      std::string msg = "The model `" + facts_.model.substr(0, 256) + "` does not exist.";
      msg += catalog_->available().empty() ? std::string(" No model is being served right now.")
                                           : " Available models: " + catalog_->available() + ".";
      termination_ = "model_not_found";
      reply_error(404, msg, "invalid_request_error", "model_not_found", -1, "model");
      return false;
    }
    case models::Resolution::Kind::model_required: {
      std::string msg =
          "The request names no model and several are served; set \"model\" to "
          "one of: " +
          catalog_->available() + ".";
      termination_ = "model_required";
      reply_error(400, msg, "invalid_request_error", "model_required", -1, "model");
      return false;
    }
  }
  if (!rewrite_.empty()) facts_.model.assign(rewrite_);  // learn and log the served model
  adapter_hash_ = res.model != nullptr && !res.model->parent.empty()
                      ? scores::lora_hash(res.model->id.data(), res.model->id.size())
                      : 0;
  return true;
}

// Ranks the replicas of the request's pool, best first, into ranked_.
routing::Ranking ClientConn::rank_in_pool(const routing::RouteRequest& rr) {
  uint32_t max = w_->cfg().upstream.max_attempts < kMaxRanked ? w_->cfg().upstream.max_attempts
                                                              : static_cast<uint32_t>(kMaxRanked);
  const TableSource& all = w_->replicas();
  all.set_request(adapter_hash_, priority_);
  if (pool_.size() == all.size()) {  // the whole fleet (pools are ascending: identity)
    return w_->policy().rank(rr, all, std::span<uint32_t>(ranked_, max));
  }
  PoolSource pool(all, pool_);
  routing::Ranking rk = w_->policy().rank(rr, pool, std::span<uint32_t>(ranked_, max));
  for (size_t k = 0; k < rk.count; ++k)
    ranked_[k] = pool_[ranked_[k]];
  return rk;
}

void ClientConn::route_and_dispatch() {
  const Config& cfg = w_->cfg();
  routing::RouteRequest rr;
  rr.facts = &facts_;
  rr.cost.prompt_tokens = w_->learner().prompt_tokens(facts_);
  rr.cost.output_tokens = w_->learner().output_tokens(facts_);
  rr.cost.priority = static_cast<int32_t>(std::clamp<int64_t>(priority_, INT32_MIN, INT32_MAX));
  rr.cost.adapter = adapter_hash_ != 0;
  cost_ = rr.cost;
  int64_t t0 = mono_ns();
  w_->replicas().set_now(t0 / 1'000'000);
  routing::Ranking rk = rank_in_pool(rr);
  w_->stats().observe_route_decision(static_cast<double>(mono_ns() - t0) / 1e9);
  nranked_ = static_cast<uint32_t>(rk.count);
  next_rank_ = 0;
  predicted_ttft_s_ = rk.predicted_ttft_s;
  if (nranked_ == 0) {
    if (rk.saturated) {
      // Every usable replica is at its in-flight limit: wait in the bounded queue.
      if (w_->enqueue(this, high_priority_)) {
        was_queued_ = true;
        w_->loop().timers().arm(&timer_, mono_ms(), cfg.admission.queue_timeout_ms);
        return;
      }
      reject_saturated(true);
      return;
    }
    reject_saturated(false);
    return;
  }
  w_->stats().backend(ranked_[0]).route_decisions.add();
  try_next_replica();
}

bool ClientConn::admit_from_queue() {
  routing::RouteRequest rr;
  rr.facts = &facts_;
  rr.cost = cost_;
  w_->replicas().set_now(mono_ms());
  routing::Ranking rk = rank_in_pool(rr);
  if (rk.count == 0 && rk.saturated) return false;
  w_->loop().timers().disarm(&timer_);
  if (rk.count == 0) {
    reject_saturated(false);
    return true;
  }
  w_->stats().queue_admitted.add();
  nranked_ = static_cast<uint32_t>(rk.count);
  next_rank_ = 0;
  predicted_ttft_s_ = rk.predicted_ttft_s;
  w_->stats().backend(ranked_[0]).route_decisions.add();
  try_next_replica();
  return true;
}

// 429 when replicas are there but saturated (the queue is full or the wait was
// too long), 503 when none is usable. Both say when to come back.
void ClientConn::reject_saturated(bool any_usable) {
  int retry_after = static_cast<int>(w_->cfg().admission.retry_after_s);
  if (any_usable) {
    w_->stats().queue_rejected.add();
    reply_error(429, "all replicas are saturated; retry later", "rate_limit_error",
                "replicas_saturated", retry_after);
  } else {
    reply_error(503, "no replica is available", "server_error", "no_replica_available",
                retry_after);
  }
}

// Dispatch accounting (src/scores/table.hpp): the request is credited to the
// replica it is sent to as prefill work; at its first token it moves to decode;
// at the end (or when it moves to another replica) it is debited.
bool ClientConn::credit_dispatch() {
  TR_ASSERT(phase_ == Phase::kNone && backend_ >= 0);
  // What the replica had queued ahead of this request, for learning its prefill
  // cost from the TTFT this request will show (Worker::learn_prefill_cost).
  routing::ReplicaView v;
  w_->replicas().view(static_cast<size_t>(backend_), &v);
  learn_load_ = v.load;
  scores::Dispatch& d = w_->shared().table->at(static_cast<size_t>(backend_)).dispatch;
  int64_t before = d.inflight.fetch_add(1, std::memory_order_relaxed);
  uint32_t limit = w_->replicas().max_inflight(static_cast<size_t>(backend_));
  if (limit && before >= static_cast<int64_t>(limit)) {
    d.inflight.fetch_sub(1, std::memory_order_relaxed);  // another worker took the last slot
    return false;
  }
  size_t cls = estimator::priority_class(cost_.priority);
  d.prefill_requests.fetch_add(1, std::memory_order_relaxed);
  d.prefill_tokens.fetch_add(cost_.prompt_tokens, std::memory_order_relaxed);
  d.prefill_requests_by_class[cls].fetch_add(1, std::memory_order_relaxed);
  d.prefill_tokens_by_class[cls].fetch_add(cost_.prompt_tokens, std::memory_order_relaxed);
  d.decode_tokens.fetch_add(cost_.output_tokens, std::memory_order_relaxed);
  decode_credit_ = cost_.output_tokens;
  events_unaccounted_ = 0;
  phase_ = Phase::kPrefill;
  // A non-streaming response shows no first token: it moves to decode when
  // its predicted TTFT has passed (it is then most likely decoding).
  if (!facts_.stream) {
    double ms = predicted_ttft_s_ > 0 ? predicted_ttft_s_ * 1000 : 1;
    w_->loop().timers().arm(&phase_timer_, mono_ms(),
                            static_cast<int64_t>(std::clamp(ms, 1.0, 3600e3)));
  }
  return true;
}

// Prefill work leaves the replica's queue (first token, or its prediction).
void ClientConn::debit_prefill(scores::Dispatch& d) {
  size_t cls = estimator::priority_class(cost_.priority);
  d.prefill_requests.fetch_sub(1, std::memory_order_relaxed);
  d.prefill_tokens.fetch_sub(cost_.prompt_tokens, std::memory_order_relaxed);
  d.prefill_requests_by_class[cls].fetch_sub(1, std::memory_order_relaxed);
  d.prefill_tokens_by_class[cls].fetch_sub(cost_.prompt_tokens, std::memory_order_relaxed);
}

// Token events relayed since the last call: the output still to come shrinks.
void ClientConn::debit_relayed_tokens() {
  if (events_unaccounted_ == 0 || phase_ == Phase::kNone) return;
  int64_t n = std::min<int64_t>(events_unaccounted_, decode_credit_);
  events_unaccounted_ = 0;
  if (n <= 0) return;
  decode_credit_ -= n;
  w_->shared()
      .table->at(static_cast<size_t>(backend_))
      .dispatch.decode_tokens.fetch_sub(n, std::memory_order_relaxed);
}

void ClientConn::dispatch_first_token() {
  if (phase_ != Phase::kPrefill) return;
  scores::Dispatch& d = w_->shared().table->at(static_cast<size_t>(backend_)).dispatch;
  debit_prefill(d);
  d.decode_requests.fetch_add(1, std::memory_order_relaxed);
  phase_ = Phase::kDecode;
  w_->loop().timers().disarm(&phase_timer_);
}

void ClientConn::release_dispatch() {
  if (phase_ == Phase::kNone) return;
  scores::Dispatch& d = w_->shared().table->at(static_cast<size_t>(backend_)).dispatch;
  if (phase_ == Phase::kPrefill) {
    debit_prefill(d);
  } else {
    d.decode_requests.fetch_sub(1, std::memory_order_relaxed);
  }
  d.decode_tokens.fetch_sub(decode_credit_, std::memory_order_relaxed);
  decode_credit_ = 0;
  d.inflight.fetch_sub(1, std::memory_order_relaxed);
  phase_ = Phase::kNone;
  w_->loop().timers().disarm(&phase_timer_);
}

void ClientConn::try_next_replica() {
  const Config& cfg = w_->cfg();
  bool lost_race = false;
  while (next_rank_ < nranked_) {
    uint32_t b = ranked_[next_rank_++];
    release_dispatch();
    backend_ = static_cast<int>(b);
    if (!credit_dispatch()) {
      lost_race = true;
      continue;
    }
    if (UpstreamConn* u = w_->take_idle(b)) {
      w_->stats().upstream_reuses.add();
      u->attach(this);
      up_ = u;
      send_request(u);
      arm_timer_for_state();
      return;
    }
    auto* u = new UpstreamConn(w_, b);
    int err = 0;
    if (!u->connect(&err)) {
      delete u;
      TR_LOG_WARN("replica %s: socket: %s", cfg.backends[b].name.c_str(), std::strerror(-err));
      continue;
    }
    w_->track_upstream(u);
    w_->stats().upstream_connects.add();
    u->attach(this);
    up_ = u;
    arm_timer_for_state();
    return;  // upstream_connected() continues
  }
  if (lost_race && w_->enqueue(this, high_priority_)) {
    // The slots were taken between ranking and credit: wait like any saturated request.
    was_queued_ = true;
    w_->loop().timers().arm(&timer_, mono_ms(), cfg.admission.queue_timeout_ms);
    return;
  }
  fail_before_head(Failure::upstream_connect, 502, "could not connect to any replica",
                   "upstream_connect_failed");
}

// Back-pressure thresholds. Bytes bound memory; segments bound how many pool
// buffers one slow client can pin (a small SSE event still holds a whole buffer).
bool ClientConn::client_is_behind() const {
  return out_.bytes() > w_->cfg().limits.stream_buffer_bytes ||
         out_.segments() > kStreamSegmentsMax;
}

bool ClientConn::client_caught_up() const {
  return out_.bytes() <= w_->cfg().limits.stream_buffer_bytes / 2 &&
         out_.segments() <= kStreamSegmentsMax / 2;
}

void ClientConn::upstream_connected(UpstreamConn* u, int res) {
  TR_ASSERT(u == up_);
  if (res == 0) {
    send_request(u);
    return;
  }
  const BackendConfig& b = w_->cfg().backends[u->backend()];
  TR_LOG_WARN("replica %s (%s): connect: %s", b.name.c_str(), b.url.c_str(), std::strerror(-res));
  release_upstream(false);
  w_->stats().backend(static_cast<size_t>(backend_)).retries.add();
  try_next_replica();  // nothing was written: safe to try the next one
}

void ClientConn::send_request(UpstreamConn* u) {
  const BackendConfig& b = w_->cfg().backends[u->backend()];
  std::string head;
  head.reserve(512 + req_.header_count() * 48);
  http::UpstreamRequestParams p;
  p.client_ip = client_ip_;
  p.request_id = request_id_;
  p.host = b.host;
  p.base_path = b.base_path;
  p.has_body = req_.has_content_length() || req_.chunked();
  p.strip_authorization = w_->shared().keys != nullptr;
  p.api_key = b.api_key;
  // The body goes out from the client's buffer, with up to two edits spliced
  // in as separate segments (the body is never copied): an alias's "model"
  // replaced by its target; and "priority" inserted (from X-Priority) for a
  // replica that schedules by it, or removed (nonzero, from the body) for one
  // that does not, which vLLM would refuse with a 400.
  std::string_view body(body_);
  BodyEdit edits[2];
  size_t nedits = 0;
  if (!rewrite_.empty() && facts_.model_token_bytes) {
    BodyEdit& e = edits[nedits++];
    e.at = facts_.model_token_offset;
    e.remove = facts_.model_token_bytes;
    e.insert = "\"";
    json_escape_append(e.insert, rewrite_);
    e.insert += '"';
  }
  const bool by_priority = b.scheduling == "priority";
  if (facts_.json_ok && by_priority && priority_from_header_) {
    size_t open_brace = body.find('{');
    size_t next = body.find_first_not_of(" \t\r\n", open_brace + 1);
    bool empty_object = next != std::string_view::npos && body[next] == '}';
    BodyEdit& e = edits[nedits++];
    e.at = open_brace + 1;
    e.insert = "\"priority\":" + std::to_string(priority_) + (empty_object ? "" : ",");
  } else if (facts_.json_ok && !by_priority && facts_.priority != 0 &&
             facts_.priority_member_bytes) {
    edits[nedits++] =
        remove_member(body, facts_.priority_member_offset, facts_.priority_member_bytes);
  }
  if (nedits == 2 && edits[1].at < edits[0].at) std::swap(edits[0], edits[1]);
  size_t bytes = body.size();
  for (size_t k = 0; k < nedits; ++k)
    bytes = bytes - edits[k].remove + edits[k].insert.size();
  p.body_bytes = bytes;
  http::build_upstream_request(req_, p, &head);
  u->out().push_copy(head);
  w_->shared()
      .table->at(u->backend())
      .dispatch.prompt_chars_sent.fetch_add(facts_.prompt_chars, std::memory_order_relaxed);
  size_t pos = 0;
  for (size_t k = 0; k < nedits; ++k) {
    if (edits[k].at > pos) {
      u->out().push_ref(body.data() + pos, static_cast<uint32_t>(edits[k].at - pos));
    }
    if (!edits[k].insert.empty()) u->out().push_copy(edits[k].insert);
    pos = edits[k].at + edits[k].remove;
  }
  if (body.size() > pos) {
    u->out().push_ref(body.data() + pos, static_cast<uint32_t>(body.size() - pos));
  }
  u->parser().expect_no_body(is_head_);
  u->flush();
}

void ClientConn::upstream_send_failed(UpstreamConn* u, int err) {
  (void)err;
  TR_ASSERT(u == up_);
  if (head_sent_) return;  // the replica answered early; its response decides
  w_->report_replica_result(u->backend(), false);
  // Nothing of the request reached the replica: one retry on another replica is
  // safe. Once any byte was written the replica may be working on it: no retry.
  if (u->bytes_sent() == 0 && next_rank_ < nranked_) {
    release_upstream(false);
    w_->stats().backend(static_cast<size_t>(backend_)).retries.add();
    try_next_replica();
    return;
  }
  fail_before_head(Failure::upstream_reset, 502, "the replica closed the connection",
                   "upstream_reset");
}

void ClientConn::upstream_data(UpstreamConn* u, uint16_t bid, char* data, uint32_t len) {
  TR_ASSERT(u == up_);
  http::MessageParser& resp = u->parser();
  cur_bid_ = bid;
  cur_base_ = data;
  last_upstream_ms_ = mono_ms();
  size_t off = 0;
  size_t seg = 0;  // first byte of this buffer not yet queued or skipped
  bool done = false;
  bool after_head = false;
  while ((off < len || after_head) && !done) {
    after_head = false;
    size_t used = 0;
    http::MessageParser::Status st = resp.feed(data + off, len - off, &used);
    off += used;
    switch (st) {
      case http::MessageParser::Status::kHead:
        on_response_head(u);
        if (state_ != State::kRelaying) return;  // failed
        seg = off;
        after_head = true;
        break;
      case http::MessageParser::Status::kChunk:
        relay_raw(bid, data + seg, off - seg, true);
        commit_staged();
        seg = off;
        break;
      case http::MessageParser::Status::kNeedMore:
        relay_raw(bid, data + seg, off - seg, false);
        seg = off;
        break;
      case http::MessageParser::Status::kDone:
        if (!head_sent_) {  // HEAD answer: the head and the end arrive together
          on_response_head(u);
          if (state_ != State::kRelaying) return;
          seg = off;
        }
        relay_raw(bid, data + seg, off - seg, true);
        commit_staged();
        done = true;
        break;
      case http::MessageParser::Status::kError:
        if (!head_sent_) {
          fail_before_head(Failure::upstream_protocol, 502,
                           "the replica sent an invalid HTTP response", "upstream_protocol_error");
        } else {
          fail_mid_stream(Failure::upstream_protocol, "the replica sent an invalid HTTP response");
        }
        return;
    }
  }
  debit_relayed_tokens();  // once per receive, not per event: one atomic on the shared line
  if (done) {
    bool reusable = off == len && resp.keep_alive() && u->request_fully_sent();
    response_done(reusable);
  }
  flush();
}

// Queues body bytes [p, p+n) of the current upstream buffer. Before the head is
// relayed they are head bytes and are skipped. Chunked responses are relayed in
// whole chunks: bytes of an incomplete chunk wait in staged_.
void ClientConn::relay_raw(uint16_t bid, const char* p, size_t n, bool whole_chunks) {
  (void)whole_chunks;
  if (n == 0 || !head_sent_ || dechunk_) return;
  io::BufferPool& pool = w_->loop().pool();
  pool.ref(bid);
  bytes_out_ += n;
  if (resp_chunked_) {
    staged_.push_buf(&pool, bid, p, static_cast<uint32_t>(n));
  } else {
    out_.push_buf(&pool, bid, p, static_cast<uint32_t>(n));
  }
}

void ClientConn::commit_staged() {
  staged_.move_all_to(&out_);
}

void ClientConn::upstream_body_piece(const char* p, size_t n) {
  if (!resp_is_sse_) {
    // Keep the last bytes of a JSON body: its "usage" object comes at the end.
    if (n >= sizeof usage_tail_) {
      std::memcpy(usage_tail_, p + n - sizeof usage_tail_, sizeof usage_tail_);
      usage_tail_len_ = sizeof usage_tail_;
    } else {
      size_t keep = std::min<size_t>(usage_tail_len_, sizeof usage_tail_ - n);
      std::memmove(usage_tail_, usage_tail_ + usage_tail_len_ - keep, keep);
      std::memcpy(usage_tail_ + keep, p, n);
      usage_tail_len_ = static_cast<uint16_t>(keep + n);
    }
  }
  if (resp_is_sse_) {
    sse_.feed(std::string_view(p, n), [this](const SseScanner::Event& e) {
      if (!e.is_data() || e.done) return;
      w_->stats().stream_events.add();
      ++events_unaccounted_;
      if (!first_event_seen_) {
        first_event_seen_ = true;
        double ttft_s = static_cast<double>(mono_ns() - t_request_ns_) / 1e9;
        ttft_ms_ = ttft_s * 1000;
        w_->stats().observe_ttft(ttft_s);
        if (predicted_ttft_s_ >= 0) w_->stats().observe_ttft_error(predicted_ttft_s_ - ttft_s);
        if (phase_ == Phase::kPrefill) {
          w_->learn_prefill_cost(static_cast<uint32_t>(backend_), learn_load_, cost_.prompt_tokens,
                                 ttft_s);
        }
        dispatch_first_token();
      }
    });
  }
  if (dechunk_) {
    // HTTP/1.0 client: relay the body without chunk framing, from the same buffer.
    io::BufferPool& pool = w_->loop().pool();
    pool.ref(cur_bid_);
    bytes_out_ += n;
    out_.push_buf(&pool, cur_bid_, p, static_cast<uint32_t>(n));
  }
}

void ClientConn::on_response_head(UpstreamConn* u) {
  http::MessageParser& resp = u->parser();
  status_ = resp.status_code();
  w_->report_replica_result(u->backend(), status_ < 500);
  resp_chunked_ = resp.chunked();
  dechunk_ = client_http10_ && resp_chunked_;
  bool keep =
      client_keep_alive_ && !close_after_ && !draining_ && !dechunk_ && !resp.close_delimited();
  if (!keep) close_after_ = true;
  std::string_view ctype = resp.find("content-type");
  resp_is_sse_ = ctype.size() >= 17 && http::ieq(ctype.substr(0, 17), "text/event-stream");
  sse_.reset();
  usage_tail_len_ = 0;
  http::ClientResponseParams p;
  p.request_id = request_id_;
  p.client_http10 = client_http10_;
  p.keep_alive = keep;
  p.dechunk = dechunk_;
  std::string head;
  head.reserve(256 + resp.header_count() * 48);
  http::build_client_response(resp, p, &head);
  bytes_out_ += head.size();
  out_.push_copy(head);
  head_sent_ = true;
  state_ = State::kRelaying;
  arm_timer_for_state();
}

void ClientConn::upstream_ended(UpstreamConn* u, int err) {
  TR_ASSERT(u == up_);
  http::MessageParser& resp = u->parser();
  if (head_sent_ && err == 0 && resp.finish() == http::MessageParser::Status::kDone) {
    response_done(false);  // close-delimited body ended with the connection
    flush();
    return;
  }
  if (!head_sent_) {
    // The request was written: the replica may have started on it, so it is
    // not retried (that would run it twice on the GPUs).
    w_->report_replica_result(u->backend(), false);
    fail_before_head(Failure::upstream_reset, 502,
                     "the replica closed the connection before responding", "upstream_reset");
    return;
  }
  fail_mid_stream(Failure::upstream_midstream, "the replica closed the stream unexpectedly");
}

// Reads "name":<digits> inside <text>; false when absent.
static bool find_count(std::string_view text, std::string_view name, uint64_t* out) {
  size_t p = text.find(name);
  if (p == std::string_view::npos) return false;
  p += name.size();
  while (p < text.size() && (text[p] == ' ' || text[p] == ':'))
    ++p;
  uint64_t v = 0;
  size_t digits = 0;
  while (p < text.size() && text[p] >= '0' && text[p] <= '9' && digits < 18) {
    v = v * 10 + static_cast<uint64_t>(text[p++] - '0');
    ++digits;
  }
  *out = v;
  return digits > 0;
}

// A response ended normally: teach the worker's estimator what the request
// really cost (usage from the SSE usage chunk or the JSON body's tail).
void ClientConn::learn_from_response() {
  if (status_ != 200 || facts_.model.empty()) return;
  estimator::ModelLearner& learner = w_->learner();
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  bool have_usage = false;
  if (resp_is_sse_) {
    if (sse_.has_usage()) {
      prompt_tokens = sse_.prompt_tokens();
      completion_tokens = sse_.completion_tokens();
      have_usage = true;
    } else {
      // No usage chunk: one event per token, less the chat role chunk.
      uint64_t events = sse_.data_events() - sse_.error_events();
      completion_tokens = facts_.messages > 0 && events > 0 ? events - 1 : events;
    }
  } else {
    std::string_view tail(usage_tail_, usage_tail_len_);
    size_t u = tail.rfind("\"usage\"");
    if (u != std::string_view::npos) {
      tail.remove_prefix(u);
      have_usage = find_count(tail, "\"prompt_tokens\"", &prompt_tokens) &&
                   find_count(tail, "\"completion_tokens\"", &completion_tokens);
    }
  }
  if (have_usage && prompt_tokens > 0) {
    learner.observe_usage(facts_, prompt_tokens);
  }
  completion_tokens_ = completion_tokens;
  usage_prompt_tokens_ = have_usage ? prompt_tokens : 0;
  if (completion_tokens > 0) {
    learner.observe_finished(facts_.model, static_cast<uint32_t>(completion_tokens),
                             facts_.max_tokens);
  }
}

void ClientConn::response_done(bool upstream_reusable) {
  w_->stats().backend(static_cast<size_t>(backend_)).requests[code_slot(status_)].add();
  learn_from_response();
  release_upstream(upstream_reusable);
  finish_exchange();
}

void ClientConn::release_upstream(bool reusable) {
  if (up_) {
    UpstreamConn* u = up_;
    up_ = nullptr;
    u->detach();
    if (reusable && !draining_) {
      w_->give_idle(u);
    } else {
      u->close_now();
    }
  }
}

// Once per exchange, at its end: the per-model counters.
void ClientConn::account_model() {
  if (model_slot_ == models::kNone) return;
  ModelStats& m = w_->stats().models[model_slot_];
  m.requests[code_slot(status_ ? status_ : 499)].add();
  if (usage_prompt_tokens_) m.prompt_tokens.add(usage_prompt_tokens_);
  if (completion_tokens_) m.completion_tokens.add(completion_tokens_);
  m.inflight.store(m.inflight.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  model_slot_ = models::kNone;
}

void ClientConn::log_access() {
  if (logged_) return;
  logged_ = true;
  account_model();
  accesslog::AccessLogWriter* log = w_->access_log();
  if (!log) return;
  accesslog::Record r;
  r.time_ms = t_request_wall_ms_;
  r.request_id = request_id_;
  r.client = client_ip_;
  r.method = req_.head_done() ? req_.method() : std::string_view();
  r.path = req_.head_done() ? path_of(req_.target()) : std::string_view();
  r.model = facts_.model;
  r.backend =
      backend_ >= 0 ? std::string_view(w_->cfg().backends[backend_].name) : std::string_view();
  r.termination = termination_;
  r.status = status_;
  r.ttft_ms = ttft_ms_;
  r.duration_ms = t_request_ns_ ? static_cast<double>(mono_ns() - t_request_ns_) / 1e6 : 0;
  r.prompt_tokens_est = cost_.prompt_tokens;
  r.completion_tokens = completion_tokens_;
  r.bytes_out = bytes_out_;
  r.stream = facts_.stream;
  log->write(r);
}

void ClientConn::finish_exchange() {
  log_access();
  bool freed = phase_ != Phase::kNone;
  release_dispatch();
  if (freed) w_->pump_queue();  // a slot opened here: offer it to a waiting request
  staged_.clear();
  state_ = State::kReading;
  if (close_after_) {
    if (out_.empty() && !sock_.send_busy()) close_now();
    return;  // on_send closes after the last byte
  }
  arm_timer_for_state();
  process_pending();
}

void ClientConn::fail_before_head(Failure why, int status, const char* message, const char* code) {
  w_->stats().failures[static_cast<size_t>(why)].add();
  termination_ = kFailureNames[static_cast<size_t>(why)];
  release_upstream(false);
  const char* type = status == 504 ? "timeout_error" : "server_error";
  reply_error(status, message, type, code);
}

void ClientConn::fail_mid_stream(Failure why, const char* message) {
  w_->stats().failures[static_cast<size_t>(why)].add();
  termination_ = kFailureNames[static_cast<size_t>(why)];
  if (backend_ >= 0) {
    const BackendConfig& b = w_->cfg().backends[static_cast<size_t>(backend_)];
    TR_LOG_WARN("replica %s: stream %s failed: %s", b.name.c_str(), request_id_.c_str(), message);
  }
  staged_.clear();  // an incomplete chunk is dropped: the client sees whole chunks only
  http::ErrorReply e{502, message, "server_error", "upstream_stream_failed"};
  std::string ev;
  http::build_error_event(e, &ev);
  if (resp_chunked_ && !dechunk_) {
    char size_line[32];
    int n = std::snprintf(size_line, sizeof size_line, "%zx\r\n", ev.size());
    std::string framed(size_line, static_cast<size_t>(n));
    framed += ev;
    framed += "\r\n0\r\n\r\n";
    out_.push_copy(framed);
  } else if (dechunk_ || resp_is_sse_) {
    out_.push_copy(ev);  // close-delimited to the client: the close ends it
    close_after_ = true;
  } else {
    close_after_ = true;  // Content-Length body cut short: only closing is honest
  }
  w_->stats().backend(static_cast<size_t>(backend_)).requests[code_slot(status_)].add();
  release_upstream(false);
  finish_exchange();
  flush();
}

void ClientConn::reply_local(int status, std::string_view json_body) {
  status_ = status;
  std::string resp;
  bool keep = client_keep_alive_ && !close_after_ && !draining_;
  if (!keep) close_after_ = true;
  http::build_json_response(status, is_head_ ? std::string_view() : json_body, keep, &resp);
  bytes_out_ += resp.size();
  out_.push_copy(resp);
  w_->stats().none().requests[code_slot(status)].add();
  state_ = State::kRelaying;  // finish_exchange() moves on
  finish_exchange();
  flush();
}

void ClientConn::reply_error(int status, std::string_view message, const char* type,
                             const char* code, int retry_after_s, const char* param) {
  status_ = status;
  std::string resp;
  bool keep =
      client_keep_alive_ && !close_after_ && !draining_ && req_.head_done() && !req_.in_message();
  if (!keep) close_after_ = true;
  if (request_id_.empty()) w_->new_request_id(&request_id_);
  http::build_error_response(http::ErrorReply{status, message, type, code, param}, request_id_,
                             keep, &resp, retry_after_s);
  bytes_out_ += resp.size();
  out_.push_copy(resp);
  BackendStats& bs =
      backend_ >= 0 ? w_->stats().backend(static_cast<size_t>(backend_)) : w_->stats().none();
  bs.requests[code_slot(status)].add();
  if (close_after_) pending_.clear();  // nothing after an error is read
  finish_exchange();
  flush();
}

void ClientConn::abort_exchange(Failure why) {
  w_->stats().failures[static_cast<size_t>(why)].add();
  if (backend_ >= 0 && state_ != State::kReading) {
    w_->stats().backend(static_cast<size_t>(backend_)).requests[code_slot(499)].add();
  }
  // Closing the upstream connection now is what makes vLLM abort the request and
  // free its KV cache; it is never returned to the pool.
  release_upstream(false);
  termination_ = kFailureNames[static_cast<size_t>(why)];
  if (status_ == 0) status_ = 499;
  log_access();
  bool freed = phase_ != Phase::kNone;
  release_dispatch();
  close_now();
  if (freed) w_->pump_queue();
}

// ---- client output ---------------------------------------------------------

void ClientConn::flush() {
  if (state_ == State::kClosing || sock_.send_busy() || out_.empty()) return;
  if (!sending_) last_send_progress_ms_ = mono_ms();  // the clock starts with the bytes
  sending_ = true;
  out_.fill(&sock_);
  w_->loop().send(&sock_);
}

void ClientConn::on_send(io::Socket* s, int res) {
  (void)s;
  if (res < 0) {
    if (state_ == State::kWaiting || state_ == State::kRelaying) {
      abort_exchange(Failure::client_abort);
    } else {
      close_now();
    }
    return;
  }
  out_.consume(static_cast<uint64_t>(res));
  if (res > 0) last_send_progress_ms_ = mono_ms();
  if (out_.empty()) sending_ = false;
  if (up_ && state_ == State::kRelaying && !up_->sock_.recv_on() && !up_->closing_ &&
      client_caught_up()) {
    w_->loop().recv_start(&up_->sock_);  // the client caught up: read the replica again
  }
  if (!out_.empty()) {
    flush();
    return;
  }
  if (close_after_ && state_ == State::kReading) close_now();
}

void ClientConn::on_recv_end(io::Socket* s, int err) {
  (void)s;
  (void)err;
  if (state_ == State::kWaiting || state_ == State::kRelaying) {
    abort_exchange(Failure::client_abort);
    return;
  }
  if (state_ == State::kReading && (!out_.empty() || sock_.send_busy())) {
    close_after_ = true;  // the client finished sending; let it read what is queued
    pending_.clear();
    return;
  }
  close_now();
}

void ClientConn::close_now() {
  if (state_ == State::kClosing) return;
  w_->dequeue(this);
  if (up_) release_upstream(false);
  release_dispatch();
  state_ = State::kClosing;
  w_->loop().timers().disarm(&timer_);
  staged_.clear();
  out_.clear();
  w_->loop().close(&sock_);
}

void ClientConn::on_closed(io::Socket* s) {
  (void)s;
  w_->on_client_closed(this);  // deletes this
}

// ===========================================================================
// UpstreamConn
// ===========================================================================

UpstreamConn::UpstreamConn(Worker* w, uint32_t backend)
    : w_(w), backend_(backend), resp_(http::MessageParser::Kind::response, http::ParseLimits{}) {
  sock_.handler = this;
  idle_timer_.handler = this;
  resp_.set_body_sink(&UpstreamConn::body_thunk, this);
  resp_.stop_at_chunks(true);
}

UpstreamConn::~UpstreamConn() = default;

void UpstreamConn::body_thunk(void* self, const char* p, size_t n) {
  auto* u = static_cast<UpstreamConn*>(self);
  if (u->client_) u->client_->upstream_body_piece(p, n);
}

bool UpstreamConn::peer_closed() const {
  char c;
  ssize_t n = ::recv(sock_.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;  // bytes on an idle connection: out of step, not reusable
  if (n == 0) return true;
  return errno != EAGAIN && errno != EWOULDBLOCK;
}

bool UpstreamConn::connect(int* err) {
  const BackendConfig& b = w_->cfg().backends[backend_];
  int fd = w_->loop().new_stream_socket(b.addr.storage.ss_family);
  if (fd < 0) {
    *err = fd;
    return false;
  }
  sock_.fd = fd;
  w_->loop().connect(&sock_, b.addr.sa(), b.addr.len, w_->cfg().timeouts.upstream_connect_ms);
  return true;
}

void UpstreamConn::attach(ClientConn* c) {
  client_ = c;
  got_bytes_ = false;
  bytes_sent_ = 0;
  w_->loop().timers().disarm(&idle_timer_);
}

void UpstreamConn::park() {
  reused_ = true;
  w_->loop().timers().arm(&idle_timer_, mono_ms(), w_->cfg().upstream.keepalive_idle_ms);
  if (!sock_.recv_on()) w_->loop().recv_start(&sock_);
}

void UpstreamConn::flush() {
  if (closing_ || sock_.send_busy() || out_.empty()) return;
  out_.fill(&sock_);
  w_->loop().send(&sock_);
}

void UpstreamConn::close_now() {
  if (closing_) return;
  closing_ = true;
  client_ = nullptr;
  if (in_pool) w_->forget_idle(this);
  w_->loop().timers().disarm(&idle_timer_);
  out_.clear();
  w_->loop().close(&sock_);
}

void UpstreamConn::on_connect(io::Socket* s, int res) {
  (void)s;
  if (res == 0) {
    connected_ = true;
    w_->loop().recv_start(&sock_);
  }
  if (client_) {
    client_->upstream_connected(this, res);
  } else {
    close_now();
  }
}

void UpstreamConn::on_recv(io::Socket* s, uint16_t bid, char* data, uint32_t len) {
  (void)s;
  if (!client_) {
    // Bytes on an idle pooled connection: the replica is out of step. Drop it.
    w_->loop().pool().unref(bid);
    close_now();
    return;
  }
  got_bytes_ = true;
  w_->stats().upstream_bytes_in.add(len);
  ClientConn* c = client_;
  c->upstream_data(this, bid, data, len);
  w_->loop().pool().unref(bid);
  // Back-pressure: a client that does not read stops us reading its replica.
  if (client_ == c && !closing_ && sock_.recv_on() && c->client_is_behind()) {
    w_->loop().recv_stop(&sock_);
  }
}

void UpstreamConn::on_recv_end(io::Socket* s, int err) {
  (void)s;
  if (client_) {
    client_->upstream_ended(this, err);
  } else {
    close_now();
  }
}

void UpstreamConn::on_send(io::Socket* s, int res) {
  (void)s;
  if (res < 0) {
    out_.clear();
    send_failed_ = true;
    if (client_) {
      client_->upstream_send_failed(this, res);
    } else {
      close_now();
    }
    return;
  }
  out_.consume(static_cast<uint64_t>(res));
  bytes_sent_ += static_cast<uint64_t>(res);
  flush();
}

void UpstreamConn::on_timer(uintptr_t tag) {
  (void)tag;
  if (!client_) close_now();  // idle too long in the pool
}

void UpstreamConn::on_closed(io::Socket* s) {
  (void)s;
  w_->on_upstream_closed(this);  // deletes this
}

}  // namespace tr::proxy
