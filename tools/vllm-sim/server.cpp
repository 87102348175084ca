#include "server.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"
#include "vocab.hpp"

namespace tr::sim {

namespace {

Conn* conn_of(llhttp_t* p) {
  return static_cast<Conn*>(p->data);
}

int on_message_begin(llhttp_t* p) {
  Conn* c = conn_of(p);
  c->req.reset();
  c->in_header = false;
  c->continue_sent = false;
  return 0;
}

int on_url(llhttp_t* p, const char* at, size_t len) {
  HttpRequest& r = conn_of(p)->req;
  r.header_bytes += len;
  if (r.header_bytes > kHeaderBytesMax) {
    r.limit = HttpRequest::Limit::headers;
    return -1;
  }
  r.url.append(at, len);
  return 0;
}

// Header names and values may arrive in pieces; a name piece after a value
// starts the next header.
int on_header_field(llhttp_t* p, const char* at, size_t len) {
  Conn* c = conn_of(p);
  HttpRequest& r = c->req;
  r.header_bytes += len;
  if (r.header_bytes > kHeaderBytesMax) {
    r.limit = HttpRequest::Limit::headers;
    return -1;
  }
  if (!c->in_header) {  // first piece of the next header's name
    if (r.header_count == kHeaderCountMax) {
      r.limit = HttpRequest::Limit::headers;
      return -1;
    }
    if (r.headers.size() <= r.header_count) r.headers.emplace_back();
    r.headers[r.header_count].name.clear();  // slots are reused across requests
    r.headers[r.header_count].value.clear();
    c->in_header = true;
  }
  Header& h = r.headers[r.header_count];
  for (size_t i = 0; i < len; ++i) {
    char ch = at[i];
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    h.name.push_back(ch);
  }
  return 0;
}

int on_header_value(llhttp_t* p, const char* at, size_t len) {
  HttpRequest& r = conn_of(p)->req;
  r.header_bytes += len;
  if (r.header_bytes > kHeaderBytesMax) {
    r.limit = HttpRequest::Limit::headers;
    return -1;
  }
  r.headers[r.header_count].value.append(at, len);
  return 0;
}

int on_header_value_complete(llhttp_t* p) {
  Conn* c = conn_of(p);
  HttpRequest& r = c->req;
  if (r.header_count < r.headers.size() && r.headers[r.header_count].name == "expect") {
    const std::string& v = r.headers[r.header_count].value;
    r.expect_continue = strcasecmp(v.c_str(), "100-continue") == 0;
  }
  r.header_count += 1;
  c->in_header = false;
  return 0;
}

int on_headers_complete(llhttp_t* p) {
  HttpRequest& r = conn_of(p)->req;
  r.method = static_cast<llhttp_method_t>(p->method);
  if ((p->flags & F_CONTENT_LENGTH) != 0) {
    if (p->content_length > kBodyBytesMax) {
      r.limit = HttpRequest::Limit::body;
      return -1;
    }
    r.body.reserve(p->content_length + simdjson::SIMDJSON_PADDING);
  }
  return 0;
}

int on_body(llhttp_t* p, const char* at, size_t len) {
  HttpRequest& r = conn_of(p)->req;
  if (r.body.size() + len > kBodyBytesMax) {
    r.limit = HttpRequest::Limit::body;
    return -1;
  }
  r.body.append(at, len);
  return 0;
}

int on_message_complete(llhttp_t* p) {
  HttpRequest& r = conn_of(p)->req;
  r.keep_alive = llhttp_should_keep_alive(p) != 0;
  return HPE_PAUSED;  // one request at a time; pipelined bytes wait in Conn::in
}

}  // namespace

void HttpRequest::reset() {
  method = HTTP_GET;
  url.clear();
  header_count = 0;
  header_bytes = 0;
  body.clear();
  keep_alive = true;
  expect_continue = false;
  limit = Limit::none;
}

const std::string* HttpRequest::header(std::string_view lower_name) const {
  for (size_t i = 0; i < header_count; ++i) {
    if (headers[i].name == lower_name) return &headers[i].value;
  }
  return nullptr;
}

Server::Server(const Options& opts) : opts_(opts) {
  rt_.health_status = opts_.fault_health_503 ? 503 : 200;
  rt_.speed = opts_.speed;
  rt_.fault_close_after_tokens = opts_.fault_close_after_tokens;
  rt_.fault_stall_first_byte_ms = opts_.fault_stall_first_byte_ms;

  EngineConfig ec;
  ec.policy =
      opts_.scheduling_policy == "priority" ? SchedulingPolicy::priority : SchedulingPolicy::fcfs;
  ec.max_loras = opts_.max_loras;
  ec.max_cpu_loras = opts_.max_cpu_loras;
  ec.lora_load_ms = opts_.lora_load_ms;
  ec.max_num_batched_tokens = opts_.max_num_batched_tokens;
  ec.max_num_seqs = opts_.max_num_seqs;
  ec.kv_blocks = opts_.kv_blocks;
  ec.block_size = opts_.block_size;
  ec.prefix_caching = opts_.prefix_caching;
  ec.step_base_ms = opts_.step_base_ms;
  ec.step_per_token_us = opts_.step_per_token_us;
  ec.step_per_ctx_ns = opts_.step_per_ctx_ns;
  for (uint32_t i = 0; i < opts_.engines; ++i) {
    engines_.push_back(std::make_unique<Engine>(ec, this));
  }
  step_ended_ns_.assign(engines_.size(), -1);

  llhttp_settings_init(&http_settings_);
  http_settings_.on_message_begin = on_message_begin;
  http_settings_.on_url = on_url;
  http_settings_.on_header_field = on_header_field;
  http_settings_.on_header_value = on_header_value;
  http_settings_.on_header_value_complete = on_header_value_complete;
  http_settings_.on_headers_complete = on_headers_complete;
  http_settings_.on_body = on_body;
  http_settings_.on_message_complete = on_message_complete;

  id_rng_ = mix64(static_cast<uint64_t>(mono_ns()) ^ (static_cast<uint64_t>(getpid()) << 32) ^
                  mix64(static_cast<uint64_t>(wall_ms())));
  metrics_created_s_ = static_cast<double>(wall_ms()) / 1000.0;
  scratch_.reserve(64 * 1024);
}

Server::~Server() {
  for (Conn* c : conns_) {
    if (c == nullptr) continue;
    ::close(c->fd);
    delete c;
  }
  for (Conn* c : graveyard_)
    delete c;
  for (int fd : {listen_fd_, epoll_fd_, timer_fd_, signal_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

bool Server::listen() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(opts_.port);
  int rc = getaddrinfo(opts_.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    TR_LOG_ERROR("vllm-sim: cannot resolve %s: %s", opts_.host.c_str(), gai_strerror(rc));
    return false;
  }
  int saved_errno = 0;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      saved_errno = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 4096) != 0) {
      saved_errno = errno;
      ::close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    bound_port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                 : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    listen_fd_ = fd;
    break;
  }
  freeaddrinfo(res);
  if (listen_fd_ < 0) {
    TR_LOG_ERROR("vllm-sim: cannot listen on %s:%u: %s", opts_.host.c_str(), opts_.port,
                 std::strerror(saved_errno));
    return false;
  }

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  signal_fd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (epoll_fd_ < 0 || timer_fd_ < 0 || signal_fd_ < 0) {
    TR_LOG_ERROR("vllm-sim: epoll/timerfd/signalfd setup failed: %s", std::strerror(errno));
    return false;
  }
  for (int fd : {listen_fd_, timer_fd_, signal_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      TR_LOG_ERROR("vllm-sim: epoll_ctl: %s", std::strerror(errno));
      return false;
    }
  }
  return true;
}

void Server::accept_all() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // Out of descriptors: the listener stays readable, so warn at most
        // once a second instead of once per loop turn.
        static int64_t last_warn_ms = -1000;
        const int64_t now_ms = mono_ms();
        if (now_ms - last_warn_ms >= 1000) {
          last_warn_ms = now_ms;
          TR_LOG_WARN("vllm-sim: accept: %s", std::strerror(errno));
        }
      }
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto* c = new Conn();
    c->fd = fd;
    c->id = next_conn_id_++;
    llhttp_init(&c->parser, HTTP_REQUEST, &http_settings_);
    c->parser.data = c;
    if (conns_.size() <= static_cast<size_t>(fd)) conns_.resize(fd + 1, nullptr);
    TR_ASSERT(conns_[fd] == nullptr);
    conns_[fd] = c;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      TR_LOG_WARN("vllm-sim: epoll_ctl add: %s", std::strerror(errno));
      conns_[fd] = nullptr;
      ::close(fd);
      delete c;
      continue;
    }
    connections_open_ += 1;
  }
}

void Server::on_readable(Conn* c) {
  static char buf[kRecvChunkBytes];
  for (int i = 0; i < 8; ++i) {
    ssize_t r = ::read(c->fd, buf, sizeof buf);
    if (r > 0) {
      if (c->in.size() + static_cast<size_t>(r) > kInputBacklogBytesMax) {
        request_close(c);
        return;
      }
      c->in.append(buf, static_cast<size_t>(r));
      if (static_cast<size_t>(r) < sizeof buf) break;
      continue;
    }
    if (r == 0) {  // the client went away: abort whatever it was waiting for
      request_close(c);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    request_close(c);
    return;
  }
  process_input(c);
}

// Parses buffered input one request at a time; stops while a response is in
// progress (busy) so pipelined requests are answered in order.
void Server::process_input(Conn* c) {
  while (!c->busy && !c->closing && !c->in.empty()) {
    const char* data = c->in.data();
    llhttp_errno_t e = llhttp_execute(&c->parser, data, c->in.size());
    if (e == HPE_OK) {
      c->in.clear();
      if (c->req.expect_continue && !c->continue_sent) {
        c->continue_sent = true;
        send_bytes(c, "HTTP/1.1 100 Continue\r\n\r\n");
      }
      return;
    }
    if (e == HPE_PAUSED) {
      const size_t used = static_cast<size_t>(llhttp_get_error_pos(&c->parser) - data);
      TR_ASSERT(used <= c->in.size());
      c->in.erase(0, used);
      llhttp_resume(&c->parser);
      c->busy = true;
      dispatch(c);
      continue;
    }
    // Malformed or over a limit: answer once and close.
    c->busy = true;
    c->req.keep_alive = false;
    ApiError err;
    if (c->req.limit == HttpRequest::Limit::headers) {
      err.status = 431;
      err.type = "BadRequestError";
      err.message = "Request header fields too large";
    } else if (c->req.limit == HttpRequest::Limit::body) {
      err.status = 413;
      err.type = "BadRequestError";
      err.message = "Request body too large";
    } else {
      err.status = 400;
      err.type = "BadRequestError";
      err.message = std::string("Malformed HTTP request: ") + llhttp_errno_name(e);
    }
    c->in.clear();
    respond_error(c, err);
    return;
  }
}

void Server::set_epollout(Conn* c, bool on) {
  if (c->epollout == on) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u);
  ev.data.fd = c->fd;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
    request_close(c);
    return;
  }
  c->epollout = on;
}

// Writes now; queues only the part the socket did not take.
void Server::send_iov(Conn* c, const iovec* iov, int count) {
  if (c->closing) return;
  size_t total = 0;
  for (int i = 0; i < count; ++i)
    total += iov[i].iov_len;
  if (c->out_off < c->out.size()) {  // earlier bytes still queued: keep order
    if (c->out.size() - c->out_off + total > kOutputBacklogBytesMax) {
      request_close(c);
      return;
    }
    for (int i = 0; i < count; ++i) {
      c->out.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    }
    return;
  }
  ssize_t w = ::writev(c->fd, iov, count);
  if (w < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      request_close(c);
      return;
    }
    w = 0;
  }
  if (static_cast<size_t>(w) == total) return;
  c->out.clear();
  c->out_off = 0;
  size_t skip = static_cast<size_t>(w);
  for (int i = 0; i < count; ++i) {
    const size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    c->out.append(static_cast<const char*>(iov[i].iov_base) + skip, len - skip);
    skip = 0;
  }
  set_epollout(c, true);
}

void Server::send_bytes(Conn* c, std::string_view bytes) {
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  send_iov(c, &iov, 1);
}

void Server::on_writable(Conn* c) {
  while (c->out_off < c->out.size()) {
    ssize_t w = ::write(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      request_close(c);
      return;
    }
    c->out_off += static_cast<size_t>(w);
  }
  c->out.clear();
  c->out_off = 0;
  set_epollout(c, false);
  if (c->close_after_flush) request_close(c);
}

void Server::request_close(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  to_close_.push_back(c);
}

// Aborts the connection's inference (if any) and releases the socket. The
// Conn object itself is freed at the end of the loop turn.
void Server::close_now(Conn* c) {
  TR_ASSERT(c->closing);
  Stream& st = c->stream;
  if (st.active) {
    st.active = false;
    engines_[st.engine]->abort(&st.seq);
    requests_aborted_ += 1;
  }
  TR_ASSERT(conns_[c->fd] == c);
  conns_[c->fd] = nullptr;
  ::close(c->fd);
  connections_open_ -= 1;
  graveyard_.push_back(c);
}

// A response is complete (queued): go on with pipelined input, or close.
void Server::request_done(Conn* c) {
  c->stream.active = false;
  if (!c->req.keep_alive) {
    c->close_after_flush = true;  // busy stays set: no further request is parsed
    if (c->out_off >= c->out.size()) request_close(c);
    return;
  }
  c->busy = false;
  if (!c->in.empty()) to_resume_.push_back(c);
}

void Server::run_deferred() {
  while (!to_close_.empty() || !to_resume_.empty()) {
    for (size_t i = 0; i < to_close_.size(); ++i)
      close_now(to_close_[i]);
    to_close_.clear();
    std::vector<Conn*> resume;
    resume.swap(to_resume_);
    for (Conn* c : resume) {
      if (!c->closing) process_input(c);
    }
  }
  for (Conn* c : graveyard_)
    delete c;
  graveyard_.clear();
}

void Server::arm_timer(int64_t deadline_ns) {
  if (deadline_ns == armed_deadline_ns_) return;
  itimerspec its{};
  if (deadline_ns >= 0) {
    // 0 would disarm: an already-due deadline becomes 1 ns (fires at once).
    const int64_t at = deadline_ns > 0 ? deadline_ns : 1;
    its.it_value.tv_sec = at / 1'000'000'000;
    its.it_value.tv_nsec = at % 1'000'000'000;
  }
  timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr);
  armed_deadline_ns_ = deadline_ns;
}

int64_t Server::next_deadline() const {
  int64_t d = -1;
  for (const auto& e : engines_) {
    const int64_t t = e->deadline_ns();
    if (t >= 0 && (d < 0 || t < d)) d = t;
  }
  if (!stall_timers_.empty()) {
    const int64_t t = stall_timers_.top().deadline_ns;
    if (d < 0 || t < d) d = t;
  }
  return d;
}

void Server::fire_stall_timers(int64_t now_ns) {
  while (!stall_timers_.empty() && stall_timers_.top().deadline_ns <= now_ns) {
    const StallTimer t = stall_timers_.top();
    stall_timers_.pop();
    if (static_cast<size_t>(t.fd) >= conns_.size()) continue;
    Conn* c = conns_[t.fd];
    if (c == nullptr || c->id != t.conn_id || c->closing) continue;
    if (!c->stream.active || c->stream.seq.state != Seq::State::idle) continue;
    start_inference(c, now_ns);
  }
}

int Server::run() {
  epoll_event events[kEpollEventsMax];
  while (!stopping_) {
    arm_timer(next_deadline());
    const int n = epoll_wait(epoll_fd_, events, kEpollEventsMax, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      TR_LOG_ERROR("vllm-sim: epoll_wait: %s", std::strerror(errno));
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      const uint32_t ev = events[i].events;
      if (fd == listen_fd_) {
        accept_all();
      } else if (fd == timer_fd_) {
        uint64_t expirations;
        ssize_t ignored = ::read(timer_fd_, &expirations, sizeof expirations);
        (void)ignored;
        armed_deadline_ns_ = -1;  // expired: re-arm whatever is next
      } else if (fd == signal_fd_) {
        signalfd_siginfo si;
        while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
          stopping_ = true;
        }
      } else {
        Conn* c = static_cast<size_t>(fd) < conns_.size() ? conns_[fd] : nullptr;
        if (c == nullptr || c->closing) continue;
        if ((ev & EPOLLOUT) != 0) on_writable(c);
        if (!c->closing && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
          on_readable(c);
        }
      }
    }
    int64_t now = mono_ns();
    fire_stall_timers(now);
    for (size_t i = 0; i < engines_.size(); ++i) {
      Engine& e = *engines_[i];
      step_ended_ns_[i] = -1;
      if (e.step_in_flight() && e.deadline_ns() <= now) {
        step_ended_ns_[i] = e.deadline_ns();
        e.finish_step(now);
      }
    }
    run_deferred();
    now = mono_ns();
    for (size_t i = 0; i < engines_.size(); ++i) {
      Engine& e = *engines_[i];
      if (e.step_in_flight() || !e.has_work()) continue;
      // Back-to-back steps are timed from the previous step's end, as a GPU
      // does not wait for the HTTP writes: the sim's own write time only
      // stretches steps once it exceeds them (then it is CPU-bound).
      e.start_step(step_ended_ns_[i] >= 0 ? step_ended_ns_[i] : now, rt_.speed);
    }
  }
  return 0;
}

}  // namespace tr::sim
