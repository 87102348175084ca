// The simulator's I/O layer: one thread, one epoll loop, non-blocking
// sockets, HTTP/1.1 via llhttp (keep-alive, pipelining, chunked bodies).
// server.cpp owns sockets, parsing and the write path; routes.cpp answers
// requests and turns engine tokens into response bytes.
//
// Write path: write first (writev straight from the per-request pieces),
// queue only what the socket did not take, and arm EPOLLOUT only then.
#pragma once

#include <llhttp.h>
#include <simdjson.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api.hpp"
#include "engine.hpp"
#include "options.hpp"

namespace tr::sim {

constexpr size_t kRecvChunkBytes = 64 * 1024;
constexpr size_t kHeaderBytesMax = 64 * 1024;
constexpr size_t kHeaderCountMax = 128;
constexpr size_t kBodyBytesMax = 32 * 1024 * 1024;
// Unparsed input kept while a response is in progress (pipelining).
constexpr size_t kInputBacklogBytesMax = kBodyBytesMax + kHeaderBytesMax;
// Unsent output per connection before the client is deemed stuck.
constexpr size_t kOutputBacklogBytesMax = 256 * 1024 * 1024;
constexpr int kEpollEventsMax = 1024;
constexpr int kIovMax = 24;
static_assert(kRecvChunkBytes >= 4096);

struct Header {
  std::string name;  // lower-cased
  std::string value;
};

// One parsed HTTP request (buffers reused across keep-alive requests).
struct HttpRequest {
  llhttp_method_t method = HTTP_GET;
  std::string url;
  std::vector<Header> headers;
  size_t header_count = 0;  // live entries of <headers>
  size_t header_bytes = 0;
  std::string body;
  bool keep_alive = true;
  bool expect_continue = false;
  enum class Limit : uint8_t { none, headers, body };
  Limit limit = Limit::none;  // which limit stopped the parse (431 / 413)

  void reset();
  // Value of the header named <lower_name>, or nullptr.
  const std::string* header(std::string_view lower_name) const;
};

// The inference a connection is answering (at most one: pipelined requests
// wait in Conn::in). Embedded in Conn and reused across requests.
struct Stream {
  Seq seq;
  size_t engine = 0;
  Endpoint ep = Endpoint::chat;
  bool active = false;     // submitted (or stalled) and not finished
  bool streaming = false;  // SSE response
  bool include_usage = false;
  uint64_t token_key = 0;  // picks the token text
  uint32_t sent_tokens = 0;
  std::string head;  // JSON prefix of every event / the body
  std::string text;  // non-streaming: escaped output so far
};

struct Conn {
  int fd = -1;
  uint64_t id = 0;  // unique per connection, never reused
  llhttp_t parser;
  std::string in;  // received bytes not yet parsed
  HttpRequest req;
  bool in_header = false;  // between a header name's first byte and its value's end
  bool busy = false;       // a request is being answered; parsing paused
  bool closing = false;    // close requested; no more input or output
  bool close_after_flush = false;
  bool epollout = false;
  bool continue_sent = false;
  std::string out;  // unsent output
  size_t out_off = 0;
  Stream stream;
};

struct RuntimeConfig {
  int health_status = 200;
  double speed = 1.0;
  uint32_t fault_close_after_tokens = 0;
  uint32_t fault_stall_first_byte_ms = 0;
};

class Server : public EngineSink {
 public:
  explicit Server(const Options& opts);
  ~Server() override;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens on --host:--port. Returns false (logged) on failure.
  bool listen();
  uint16_t bound_port() const { return bound_port_; }
  // Serves until SIGTERM or SIGINT (blocked by the caller and delivered here
  // through a signalfd). Returns the process exit code.
  int run();

  void on_token(Seq& seq, FinishReason reason, int64_t now_ns) override;

 private:
  struct StallTimer {
    int64_t deadline_ns;
    int fd;
    uint64_t conn_id;
    bool operator>(const StallTimer& o) const { return deadline_ns > o.deadline_ns; }
  };

  // server.cpp: sockets, parsing, writing.
  void accept_all();
  void on_readable(Conn* c);
  void on_writable(Conn* c);
  void process_input(Conn* c);
  void send_iov(Conn* c, const iovec* iov, int count);
  void send_bytes(Conn* c, std::string_view bytes);
  void set_epollout(Conn* c, bool on);
  void request_close(Conn* c);
  void close_now(Conn* c);
  void run_deferred();
  void arm_timer(int64_t deadline_ns);
  int64_t next_deadline() const;
  void fire_stall_timers(int64_t now_ns);
  void request_done(Conn* c);

  // routes.cpp: request handling.
  void dispatch(Conn* c);
  void respond(Conn* c, int status, std::string_view content_type, std::string_view body,
               std::string_view extra_headers = {});
  void respond_error(Conn* c, const ApiError& err);
  void handle_inference(Conn* c, Endpoint ep);
  void start_inference(Conn* c, int64_t now_ns);
  size_t pick_engine();
  std::string adapter_names(const std::vector<uint32_t>& ids) const;
  void handle_stats(Conn* c);
  void handle_config(Conn* c);
  void handle_metrics(Conn* c);
  void record_headers(const HttpRequest& req);

  Options opts_;
  RuntimeConfig rt_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int signal_fd_ = -1;
  uint16_t bound_port_ = 0;
  int64_t armed_deadline_ns_ = -1;
  uint64_t next_conn_id_ = 1;
  uint64_t id_rng_ = 0;
  size_t next_engine_ = 0;  // where pick_engine() starts looking (breaks ties)
  double metrics_created_s_ = 0;
  bool stopping_ = false;

  std::vector<Conn*> conns_;  // indexed by fd
  std::vector<std::unique_ptr<Engine>> engines_;
  std::vector<int64_t> step_ended_ns_;  // per engine: deadline of the step finished this turn
  std::priority_queue<StallTimer, std::vector<StallTimer>, std::greater<>> stall_timers_;
  std::vector<Conn*> to_close_;   // closes deferred to the end of the loop turn
  std::vector<Conn*> to_resume_;  // finished a response; parse pipelined input
  std::vector<Conn*> graveyard_;  // closed; freed at the end of the loop turn
  llhttp_settings_t http_settings_;
  simdjson::ondemand::parser json_;
  std::string scratch_;  // response assembly, capacity reused

  // /sim/stats
  uint64_t requests_received_ = 0;
  uint64_t requests_completed_ = 0;
  uint64_t requests_aborted_ = 0;
  uint32_t connections_open_ = 0;
  std::vector<Header> last_headers_;
};

}  // namespace tr::sim
