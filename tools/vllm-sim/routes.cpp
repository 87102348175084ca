// Request handling: routing, the OpenAI endpoints, /metrics, /health and the
// test-control endpoints, and the engine -> response byte path (on_token).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "server.hpp"
#include "vocab.hpp"

namespace tr::sim {

namespace {

const char* status_text(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Request Entity Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

std::string_view path_of(const std::string& url) {
  std::string_view p = url;
  if (size_t q = p.find('?'); q != std::string_view::npos) p = p.substr(0, q);
  return p;
}

// Token at which a request "emits EOS": uniform in [ceil(max/2), max].
uint32_t stop_point(uint64_t seed, uint64_t key, uint32_t max_tokens) {
  const uint32_t lo = (max_tokens + 1) / 2;
  const uint64_t span = static_cast<uint64_t>(max_tokens - lo) + 1;
  const uint32_t t = lo + static_cast<uint32_t>(mix64(seed ^ mix64(key ^ 0x5704)) % span);
  return t == 0 ? 1 : t;
}

constexpr std::string_view kSseHeaders =
    "HTTP/1.1 200 OK\r\n"
    "content-type: text/event-stream; charset=utf-8\r\n"
    "transfer-encoding: chunked\r\n";

}  // namespace

void Server::respond(Conn* c, int status, std::string_view content_type, std::string_view body,
                     std::string_view extra_headers) {
  char head[512];
  int n = std::snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n", status, status_text(status));
  if (!content_type.empty()) {
    n += std::snprintf(head + n, sizeof head - n, "content-type: %.*s\r\n",
                       static_cast<int>(content_type.size()), content_type.data());
  }
  n += std::snprintf(head + n, sizeof head - n, "content-length: %zu\r\n%.*s%s\r\n", body.size(),
                     static_cast<int>(extra_headers.size()), extra_headers.data(),
                     c->req.keep_alive ? "" : "connection: close\r\n");
  TR_ASSERT(n > 0 && static_cast<size_t>(n) < sizeof head);
  iovec iov[2] = {{head, static_cast<size_t>(n)}, {const_cast<char*>(body.data()), body.size()}};
  send_iov(c, iov, body.empty() ? 1 : 2);
  request_done(c);
}

void Server::respond_error(Conn* c, const ApiError& err) {
  std::string body;
  append_error_body(&body, err);
  respond(c, err.status, "application/json", body);
}

void Server::dispatch(Conn* c) {
  const HttpRequest& r = c->req;
  const std::string_view path = path_of(r.url);
  const bool get = r.method == HTTP_GET;
  const bool post = r.method == HTTP_POST;
  struct Route {
    std::string_view path;
    bool is_post;
  };
  static constexpr Route kRoutes[] = {
      {"/v1/chat/completions", true},
      {"/v1/completions", true},
      {"/v1/models", false},
      {"/health", false},
      {"/metrics", false},
      {"/sim/stats", false},
      {"/sim/config", true},
      {"/version", false},
  };
  const Route* route = nullptr;
  for (const Route& rt : kRoutes) {
    if (rt.path == path) route = &rt;
  }
  if (route == nullptr) {
    respond_error(c, ApiError{404, "NotFoundError", "Not Found"});
    return;
  }
  if (route->is_post ? !post : !get) {
    respond(
        c, 405, "application/json",
        R"({"error":{"message":"Method Not Allowed","type":"MethodNotAllowedError","param":null,"code":405}})",
        route->is_post ? "allow: POST\r\n" : "allow: GET\r\n");
    return;
  }
  if (path == "/v1/chat/completions") {
    handle_inference(c, Endpoint::chat);
  } else if (path == "/v1/completions") {
    handle_inference(c, Endpoint::completion);
  } else if (path == "/v1/models") {
    record_headers(r);
    std::string body;
    const int64_t created = opts_.created >= 0 ? opts_.created : wall_ms() / 1000;
    append_models_body(&body, opts_.models, created, opts_.max_model_len, opts_.seed);
    respond(c, 200, "application/json", body);
  } else if (path == "/health") {
    respond(c, rt_.health_status, "", "");
  } else if (path == "/metrics") {
    handle_metrics(c);
  } else if (path == "/sim/stats") {
    handle_stats(c);
  } else if (path == "/sim/config") {
    handle_config(c);
  } else {
    respond(c, 200, "application/json", R"({"version":"vllm-sim"})");
  }
}

void Server::record_headers(const HttpRequest& req) {
  last_headers_.assign(req.headers.begin(), req.headers.begin() + req.header_count);
}

void Server::handle_inference(Conn* c, Endpoint ep) {
  requests_received_ += 1;
  HttpRequest& r = c->req;
  record_headers(r);
  r.body.reserve(r.body.size() + simdjson::SIMDJSON_PADDING);

  InferenceRequest ir;
  ApiError err;
  if (!parse_inference_request(&json_, ep, &r.body, &ir, &err)) {
    respond_error(c, err);
    return;
  }
  const std::string& model = ir.model.empty() ? opts_.models.front() : ir.model;
  if (std::find(opts_.models.begin(), opts_.models.end(), model) == opts_.models.end()) {
    respond_error(c, ApiError{404, "NotFoundError", "The model `" + model + "` does not exist."});
    return;
  }
  const uint32_t prompt = ir.prompt_tokens();
  const uint32_t limit = opts_.max_model_len;
  char msg[320];
  if (prompt >= limit) {
    std::snprintf(msg, sizeof msg,
                  "This model's maximum context length is %u tokens. However, you requested %u "
                  "tokens in the messages, Please reduce the length of the messages.",
                  limit, prompt);
    respond_error(c, ApiError{400, "BadRequestError", msg});
    return;
  }
  uint32_t max_tokens = 0;
  if (ir.max_tokens > 0) {
    if (static_cast<uint64_t>(prompt) + static_cast<uint64_t>(ir.max_tokens) > limit) {
      std::snprintf(msg, sizeof msg,
                    "This model's maximum context length is %u tokens. However, you requested "
                    "%" PRIu64 " tokens (%u in the messages, %" PRId64
                    " in the completion). Please reduce the length of the messages or "
                    "completion.",
                    limit, static_cast<uint64_t>(prompt) + static_cast<uint64_t>(ir.max_tokens),
                    prompt, ir.max_tokens);
      respond_error(c, ApiError{400, "BadRequestError", msg});
      return;
    }
    max_tokens = static_cast<uint32_t>(ir.max_tokens);
  } else {
    max_tokens = std::min(opts_.default_max_tokens, limit - prompt);
  }

  Stream& st = c->stream;
  st.active = true;
  st.ep = ep;
  st.streaming = ir.stream;
  st.include_usage = ir.stream && ir.include_usage;
  st.sent_tokens = 0;
  st.text.clear();
  if (!ir.stream) st.text.reserve(std::min<size_t>(max_tokens * 8ull, 1 << 20));

  // vLLM names the response after X-Request-Id when the client sends one.
  std::string id = ep == Endpoint::chat ? "chatcmpl-" : "cmpl-";
  const std::string* xrid = r.header("x-request-id");
  if (xrid != nullptr) {
    id += *xrid;
    st.token_key = hash_bytes(xrid->data(), xrid->size(), 0x71d);
  } else {
    char hex[33];
    const uint64_t a = mix64(id_rng_++);
    const uint64_t b = mix64(id_rng_++ ^ 0xabcdef);
    std::snprintf(hex, sizeof hex, "%016" PRIx64 "%016" PRIx64, a, b);
    id.append(hex, 32);
    st.token_key = hash_bytes(ir.prefix_bytes.data(), ir.prefix_bytes.size(), prompt);
  }
  const int64_t created = opts_.created >= 0 ? opts_.created : static_cast<int64_t>(time(nullptr));
  build_head(&st.head, ep, ir.stream, id, created, model);

  Seq& s = st.seq;
  s.prompt_tokens = prompt;
  s.max_tokens = max_tokens;
  s.target_tokens = ir.ignore_eos ? max_tokens : stop_point(opts_.seed, st.token_key, max_tokens);
  s.owner = c;
  s.state = Seq::State::idle;
  s.generated = 0;
  s.num_computed = 0;
  s.blocks_held = 0;
  s.held_hashes.clear();
  s.sched_slot = -1;
  s.prompt_counted = false;
  // Prefix-cache identity: chained hashes of 4 * block_size prompt bytes per
  // block (one token ~ 4 bytes), for the prompt's full blocks only.
  s.block_hashes.clear();
  const size_t block_bytes = 4ull * opts_.block_size;
  const size_t blocks =
      std::min<size_t>(ir.prefix_bytes.size() / block_bytes, prompt / opts_.block_size);
  uint64_t h = hash_bytes(model.data(), model.size(), opts_.seed);
  for (size_t i = 0; i < blocks; ++i) {
    h = hash_bytes(ir.prefix_bytes.data() + i * block_bytes, block_bytes, h);
    s.block_hashes.push_back(h);
  }
  st.engine = next_engine_;
  next_engine_ = (next_engine_ + 1) % engines_.size();

  if (rt_.fault_stall_first_byte_ms > 0) {
    stall_timers_.push(StallTimer{
        mono_ns() + static_cast<int64_t>(rt_.fault_stall_first_byte_ms) * 1'000'000, c->fd, c->id});
    return;
  }
  start_inference(c, mono_ns());
}

// Sends the SSE response head (as uvicorn does before the first token) and
// queues the request in its engine.
void Server::start_inference(Conn* c, int64_t now_ns) {
  Stream& st = c->stream;
  if (st.streaming) {
    iovec iov[3] = {{const_cast<char*>(kSseHeaders.data()), kSseHeaders.size()},
                    {const_cast<char*>("connection: close\r\n"), 19},
                    {const_cast<char*>("\r\n"), 2}};
    if (c->req.keep_alive) {
      iov[1] = iov[2];
      send_iov(c, iov, 2);
    } else {
      send_iov(c, iov, 3);
    }
  }
  engines_[st.engine]->submit(&st.seq, now_ns);
}

void Server::on_token(Seq& seq, FinishReason reason, int64_t now_ns) {
  (void)now_ns;
  Conn* c = static_cast<Conn*>(seq.owner);
  Stream& st = c->stream;
  TR_DASSERT(&st.seq == &seq);
  TR_DASSERT(st.active);
  const uint32_t index = st.sent_tokens++;
  const bool finished = reason != FinishReason::none;
  if (finished) requests_completed_ += 1;
  if (c->closing || c->close_after_flush) {
    if (finished) st.active = false;
    return;
  }
  const Word& w = token_word(opts_.seed, st.token_key, index);

  if (!st.streaming) {
    st.text.append(w.escaped);
    if (finished) {
      scratch_.clear();
      append_full_body(&scratch_, st.ep, st.head, st.text, reason, seq.prompt_tokens,
                       seq.generated);
      respond(c, 200, "application/json", scratch_);
      return;
    }
  } else {
    // One HTTP chunk per step: [role event] token event [usage event] [DONE].
    iovec iov[kIovMax];
    int n = 1;
    size_t payload = 0;
    auto add = [&](std::string_view s) {
      TR_DASSERT(n < kIovMax);
      iov[n++] = iovec{const_cast<char*>(s.data()), s.size()};
      payload += s.size();
    };
    const EventPieces& p = event_pieces(st.ep);
    if (index == 0 && !p.role.empty()) {
      add(st.head);
      add(p.role);
    }
    add(st.head);
    add(p.token_open);
    add(w.escaped);
    if (!finished) {
      add(p.token_mid);
    } else {
      add(reason == FinishReason::stop ? p.token_end_stop : p.token_end_length);
    }
    char usage[kUsageTailBytesMax];
    if (finished) {
      if (st.include_usage) {
        add(st.head);
        add(std::string_view(
            usage, format_usage_tail(usage, sizeof usage, seq.prompt_tokens, seq.generated)));
      }
      add(kDoneEvent);
    }
    char size_line[24];
    const int sl = std::snprintf(size_line, sizeof size_line, "%zx\r\n", payload);
    iov[0] = iovec{size_line, static_cast<size_t>(sl)};
    const std::string_view tail = finished ? std::string_view("\r\n0\r\n\r\n") : "\r\n";
    iov[n++] = iovec{const_cast<char*>(tail.data()), tail.size()};
    send_iov(c, iov, n);
    if (finished) {
      request_done(c);
      return;
    }
  }

  const uint32_t cut = rt_.fault_close_after_tokens;
  if (cut > 0 && st.sent_tokens >= cut) {
    // Fault injection: drop the connection mid-response (no terminating chunk).
    c->close_after_flush = true;
    if (c->out_off >= c->out.size()) request_close(c);
  }
}

void Server::handle_metrics(Conn* c) {
  std::vector<EngineGauges> gauges;
  gauges.reserve(engines_.size());
  for (const auto& e : engines_) {
    gauges.push_back(EngineGauges{&e->metrics(), e->running(), e->waiting(), e->kv_usage()});
  }
  scratch_.clear();
  render_metrics(&scratch_, opts_.models.front(), gauges,
                 CacheInfo{opts_.block_size, opts_.kv_blocks, opts_.prefix_caching},
                 metrics_created_s_);
  respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", scratch_);
}

void Server::handle_stats(Conn* c) {
  uint64_t running = 0;
  uint64_t waiting = 0;
  for (const auto& e : engines_) {
    running += e->running();
    waiting += e->waiting();
  }
  scratch_.clear();
  char buf[256];
  int n = std::snprintf(buf, sizeof buf,
                        "{\"requests_received\":%" PRIu64 ",\"requests_completed\":%" PRIu64
                        ",\"requests_aborted\":%" PRIu64 ",\"running\":%" PRIu64
                        ",\"waiting\":%" PRIu64 ",\"connections_open\":%u",
                        requests_received_, requests_completed_, requests_aborted_, running,
                        waiting, connections_open_);
  scratch_.append(buf, n);
  scratch_.append(",\"last_request_headers\":{");
  for (size_t i = 0; i < last_headers_.size(); ++i) {
    if (i > 0) scratch_.push_back(',');
    scratch_.push_back('"');
    json_escape_append(&scratch_, last_headers_[i].name);
    scratch_.append("\":\"");
    json_escape_append(&scratch_, last_headers_[i].value);
    scratch_.push_back('"');
  }
  scratch_.append("}}");
  respond(c, 200, "application/json", scratch_);
}

// POST /sim/config: the body replaces the whole runtime fault set; a field that
// is absent or 0 goes back to its command-line value.
void Server::handle_config(Conn* c) {
  HttpRequest& r = c->req;
  r.body.reserve(r.body.size() + simdjson::SIMDJSON_PADDING);
  RuntimeConfig next;
  next.health_status = opts_.fault_health_503 ? 503 : 200;
  next.speed = opts_.speed;
  next.fault_close_after_tokens = opts_.fault_close_after_tokens;
  next.fault_stall_first_byte_ms = opts_.fault_stall_first_byte_ms;

  auto fail = [&](const char* what) { respond_error(c, ApiError{400, "BadRequestError", what}); };
  simdjson::ondemand::document doc;
  simdjson::ondemand::object obj;
  if (json_.iterate(r.body.data(), r.body.size(), r.body.capacity()).get(doc) !=
          simdjson::SUCCESS ||
      doc.get_object().get(obj) != simdjson::SUCCESS) {
    return fail("the body must be a JSON object");
  }
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key) != simdjson::SUCCESS) return fail("invalid JSON");
    if (key == "speed") {
      double v = 0;
      if (field.value().get_double().get(v) != simdjson::SUCCESS || v < 0) {
        return fail("'speed' must be a number >= 0");
      }
      if (v > 0) next.speed = v;
      continue;
    }
    uint64_t v = 0;
    const bool known = key == "health_status" || key == "fault_close_after_tokens" ||
                       key == "fault_stall_first_byte_ms";
    if (!known)
      return fail(
          "unknown field (health_status, speed, fault_close_after_tokens, "
          "fault_stall_first_byte_ms)");
    if (field.value().get_uint64().get(v) != simdjson::SUCCESS || v > UINT32_MAX) {
      return fail("fields must be non-negative integers");
    }
    if (v == 0) continue;
    if (key == "health_status") {
      if (v < 100 || v > 599) return fail("'health_status' must be an HTTP status");
      next.health_status = static_cast<int>(v);
    } else if (key == "fault_close_after_tokens") {
      next.fault_close_after_tokens = static_cast<uint32_t>(v);
    } else {
      next.fault_stall_first_byte_ms = static_cast<uint32_t>(v);
    }
  }
  rt_ = next;
  respond(c, 200, "application/json", "{}");
}

}  // namespace tr::sim
