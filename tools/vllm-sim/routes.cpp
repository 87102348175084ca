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
    append_models_body(&body, opts_.models, opts_.loras, created, opts_.max_model_len, opts_.seed);
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
  ir.tokenizer_mixed = opts_.tokenizer == "mixed";
  ApiError err;
  if (!parse_inference_request(&json_, ep, &r.body, &ir, &err)) {
    respond_error(c, err);
    return;
  }
  const std::string& model = ir.model.empty() ? opts_.models.front() : ir.model;
  uint32_t lora = 0;  // an adapter's id is its --lora-modules position + 1
  if (std::find(opts_.models.begin(), opts_.models.end(), model) == opts_.models.end()) {
    auto adapter = std::find_if(opts_.loras.begin(), opts_.loras.end(),
                                [&](const LoraModule& m) { return m.name == model; });
    if (adapter == opts_.loras.end()) {
      respond_error(c, ApiError{404, "NotFoundError", "The model `" + model + "` does not exist."});
      return;
    }
    lora = static_cast<uint32_t>(adapter - opts_.loras.begin()) + 1;
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
  // vLLM's engine input processor rejects this as a ValueError, which the
  // server turns into a 400.
  if (ir.priority != 0 && opts_.scheduling_policy != "priority") {
    std::snprintf(msg, sizeof msg,
                  "Got priority %" PRId64 " but Priority scheduling is not enabled.", ir.priority);
    respond_error(c, ApiError{400, "BadRequestError", msg});
    return;
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
  s.target_tokens = max_tokens;
  if (!ir.ignore_eos && opts_.output_len_mean > 0) {
    // Keyed by the prompt alone (not X-Request-Id): every front end of a
    // benchmark sees the same lengths for the same prompts.
    const uint64_t prompt_key = hash_bytes(ir.prefix_bytes.data(), ir.prefix_bytes.size(), prompt);
    s.target_tokens = std::min(
        max_tokens,
        natural_output_len(opts_.seed, prompt_key, opts_.output_len_mean, opts_.output_len_sigma));
  } else if (!ir.ignore_eos) {
    s.target_tokens = stop_point(opts_.seed, st.token_key, max_tokens);
  }
  s.priority = ir.priority;
  s.lora = lora;
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

  if (rt_.fault_stall_first_byte_ms > 0) {
    stall_timers_.push(StallTimer{
        mono_ns() + static_cast<int64_t>(rt_.fault_stall_first_byte_ms) * 1'000'000, c->fd, c->id});
    return;
  }
  start_inference(c, mono_ns());
}

// The engine for a request entering now, as vLLM's data-parallel front end
// (DPLBAsyncMPClient) picks it: the lowest waiting * 4 + running, scanning
// from a start index. vLLM keeps that index per API server and reads counts
// up to 100 ms old; the sim reads live counts and moves the start past each
// pick, so equally loaded (idle) engines take turns.
size_t Server::pick_engine() {
  const size_t n = engines_.size();
  size_t best = next_engine_;
  uint64_t best_score = UINT64_MAX;
  for (size_t i = 0; i < n; ++i) {
    const size_t e = (next_engine_ + i) % n;
    const uint64_t score = 4ull * engines_[e]->waiting() + engines_[e]->running();
    if (score < best_score) {
      best_score = score;
      best = e;
    }
  }
  next_engine_ = (best + 1) % n;
  return best;
}

// Sends the SSE response head (as uvicorn does before the first token) and
// queues the request in the least loaded engine.
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
  st.engine = pick_engine();
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
  const bool lora = !opts_.loras.empty();
  std::vector<EngineGauges> gauges;
  gauges.reserve(engines_.size());
  for (const auto& e : engines_) {
    EngineGauges g{&e->metrics(), e->running(), e->waiting(), e->kv_usage(), {}, {}};
    if (lora) {
      g.running_lora_adapters = adapter_names(e->running_loras());
      g.waiting_lora_adapters = adapter_names(e->waiting_loras());
    }
    gauges.push_back(std::move(g));
  }
  scratch_.clear();
  render_metrics(&scratch_, opts_.models.front(), gauges,
                 CacheInfo{opts_.block_size, opts_.kv_blocks, opts_.prefix_caching},
                 LoraInfo{lora, opts_.max_loras, static_cast<double>(wall_ms()) / 1000.0},
                 metrics_created_s_);
  respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", scratch_);
}

// "a,b" for adapter ids {1, 2}: names in --lora-modules order.
std::string Server::adapter_names(const std::vector<uint32_t>& ids) const {
  std::string names;
  for (uint32_t id : ids) {
    TR_ASSERT(id >= 1 && id <= opts_.loras.size());
    if (!names.empty()) names.push_back(',');
    names.append(opts_.loras[id - 1].name);
  }
  return names;
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
