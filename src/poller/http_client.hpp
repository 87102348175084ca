// A small non-blocking HTTP/1.1 GET client for the poller thread: one epoll set,
// one thread, requests to every target in flight at once. Each target has a fixed
// number of channels (health, models, later metrics); a channel is one keep-alive
// connection that carries one request at a time, so a slow answer on one channel
// or one target never holds up another.
//
// Every request has an absolute deadline (mono ms) that covers connect, send and
// the whole response; past it the connection is closed and the request ends with
// -ETIMEDOUT. Responses are framed by llhttp (Content-Length, chunked, or close)
// and bounded (Limits). A request sent on a reused connection that the server had
// already closed (keep-alive race) is retried once on a fresh connection.
//
// The handler is called only from run(), never from get(), so a handler may start
// new requests (on any channel) from inside its callback.
#pragma once

#include <llhttp.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tr::poller {

inline constexpr size_t kResponseBodyBytesMax = 4 * 1024 * 1024;  // larger -> -EMSGSIZE
inline constexpr size_t kResponseHeadBytesMax = 64 * 1024;        // larger -> -EMSGSIZE
inline constexpr size_t kRecvChunkBytes = 64 * 1024;              // one recv(2) at most
inline constexpr size_t kRequestPathBytesMax = 2048;
inline constexpr size_t kTargetsMax = 4096;
inline constexpr uint32_t kChannelsMax = 8;
// uvicorn (vLLM) closes idle keep-alive connections after 5 s; reconnect before that.
inline constexpr int64_t kKeepAliveIdleMaxMs = 4000;

static_assert(kResponseHeadBytesMax <= kResponseBodyBytesMax);
static_assert(kRecvChunkBytes <= kResponseBodyBytesMax);

// Where a request failed; names the phase for logs ("connect: Connection refused").
enum class Stage : uint8_t { none, socket, connect, send, recv, parse };
const char* stage_name(Stage s);

struct Target {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string host_header;  // value of Host:, e.g. "10.0.0.5:8000"
};

struct Response {
  // HTTP status (> 0) when a complete response arrived, whatever its code;
  // otherwise -errno: -ETIMEDOUT (deadline), -ECONNREFUSED, -ECONNRESET (closed
  // before the response was complete), -EMSGSIZE (over Limits), -EPROTO (malformed).
  int32_t status = 0;
  Stage stage = Stage::none;  // Stage::none iff status > 0
  // De-chunked body. Valid during the callback, until the handler starts a new
  // request on the same channel.
  std::string_view body;
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // One call per get() that returned true, from inside run().
  virtual void on_response(uint32_t target, uint32_t channel, const Response& r) = 0;
};

struct ClientLimits {
  size_t body_bytes_max = kResponseBodyBytesMax;
  size_t head_bytes_max = kResponseHeadBytesMax;
  int64_t keepalive_idle_max_ms = kKeepAliveIdleMaxMs;
};

struct ClientStats {
  uint64_t requests = 0;  // get() calls that started a request
  uint64_t connects = 0;  // new connections opened
  uint64_t reuses = 0;    // requests sent on a kept-alive connection
  uint64_t retries = 0;   // stale keep-alive connections retried once
  uint64_t timeouts = 0;  // requests ended by their deadline
  uint64_t failures = 0;  // requests ended with any -errno (timeouts included)
};

class HttpClient {
 public:
  // <targets> are fixed for the client's life (a reload builds a new client).
  // <handler> must outlive the client. Aborts if epoll_create1(2) fails.
  HttpClient(std::vector<Target> targets, uint32_t channels, HttpHandler* handler,
             ClientLimits limits = {});
  ~HttpClient();  // closes every socket; calls no handler
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  size_t targets() const { return targets_.size(); }
  uint32_t channels() const { return channels_; }

  // Starts GET <path> on (<target>, <channel>), ending by <deadline_ms> (mono).
  // Returns false, changing nothing, if that channel already has a request in
  // flight (the caller skips the round). Never calls the handler: failures found
  // at once (socket, connect refused) are reported from the next run().
  bool get(uint32_t target, uint32_t channel, std::string_view path, int64_t deadline_ms);
  bool busy(uint32_t target, uint32_t channel) const;
  size_t in_flight() const { return in_flight_; }

  // Registers <fd> (eventfd or pipe) for readability: run() returns true when it
  // is readable; the caller drains it. At most one; -1 unregisters.
  void set_wake_fd(int fd);

  // Waits for I/O until <wait_until_ms> (mono) at the latest, or the earliest
  // request deadline if sooner; handles what is ready, expires deadlines and
  // calls the handler for every request that ended. Returns true if the wake fd
  // was readable.
  bool run(int64_t wait_until_ms);

  const ClientStats& stats() const { return stats_; }

 private:
  enum class Sock : uint8_t { closed, connecting, sending, receiving, idle };
  struct Conn {
    int fd = -1;
    Sock sock = Sock::closed;
    uint32_t armed = 0;    // epoll events registered for fd (0 = not registered)
    bool busy = false;     // a request is in flight or its result awaits delivery
    bool reused = false;   // this request went out on a connection that served before
    bool retried = false;  // the stale-connection retry was used
    bool head_done = false;
    bool complete = false;
    bool too_large = false;
    uint32_t target = 0;
    uint32_t channel = 0;
    int64_t deadline_ms = 0;
    int64_t idle_since_ms = 0;
    size_t resp_bytes = 0;  // raw bytes received for this request
    size_t head_bytes = 0;
    size_t out_off = 0;
    int32_t result_status = 0;
    Stage result_stage = Stage::none;
    int32_t dl_prev = -1;  // deadline list (in-flight requests, earliest first)
    int32_t dl_next = -1;
    std::string out;   // request text; capacity kept between requests
    std::string body;  // response body; capacity kept between requests
    llhttp_t parser;
    HttpClient* owner = nullptr;
  };

  static int cb_headers_complete(llhttp_t* p);
  static int cb_body(llhttp_t* p, const char* at, size_t n);
  static int cb_message_complete(llhttp_t* p);

  uint32_t index(const Conn& c) const { return static_cast<uint32_t>(&c - conns_.get()); }
  // Registers or updates <c>'s epoll interest. Returns false (errno set) only if
  // the first registration fails for lack of kernel resources.
  bool arm(Conn& c, uint32_t events);
  void close_conn(Conn& c);
  void start_connect(Conn& c);
  void start_send(Conn& c);
  void do_send(Conn& c);
  void do_recv(Conn& c);
  void on_idle_event(Conn& c);
  void on_connect_event(Conn& c);
  bool try_retry(Conn& c);
  void succeed(Conn& c, bool keep_alive);
  void fail(Conn& c, Stage stage, int err);
  void finish(Conn& c);
  void deadline_link(Conn& c);
  void deadline_unlink(Conn& c);
  void expire(int64_t now_ms);
  void deliver();

  std::vector<Target> targets_;
  uint32_t channels_;
  HttpHandler* handler_;
  ClientLimits limits_;
  llhttp_settings_t settings_;
  std::unique_ptr<Conn[]> conns_;  // targets * channels, never resized
  std::unique_ptr<char[]> recv_buf_;
  std::vector<uint32_t> done_;  // ended requests awaiting delivery
  std::vector<uint32_t> delivering_;
  int epfd_ = -1;
  int wake_fd_ = -1;
  int32_t dl_head_ = -1;
  int32_t dl_tail_ = -1;
  size_t in_flight_ = 0;
  ClientStats stats_;
};

}  // namespace tr::poller
