#include "poller/http_client.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <utility>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"

namespace tr::poller {

namespace {

constexpr uint64_t kWakeTag = UINT64_MAX;
constexpr uint32_t kEventsIn = EPOLLIN | EPOLLRDHUP;
constexpr uint32_t kEventsOut = EPOLLOUT;
constexpr int kEpollBatch = 256;

}  // namespace

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::none:
      return "ok";
    case Stage::socket:
      return "socket";
    case Stage::connect:
      return "connect";
    case Stage::send:
      return "send";
    case Stage::recv:
      return "recv";
    case Stage::parse:
      return "parse";
  }
  return "?";
}

HttpClient::HttpClient(std::vector<Target> targets, uint32_t channels, HttpHandler* handler,
                       ClientLimits limits)
    : targets_(std::move(targets)), channels_(channels), handler_(handler), limits_(limits) {
  TR_ASSERT(handler_ != nullptr);
  TR_ASSERT(channels_ >= 1);
  TR_ASSERT(channels_ <= kChannelsMax);
  TR_ASSERT(targets_.size() <= kTargetsMax);
  TR_ASSERT(limits_.head_bytes_max >= 1);
  llhttp_settings_init(&settings_);
  settings_.on_headers_complete = &HttpClient::cb_headers_complete;
  settings_.on_body = &HttpClient::cb_body;
  settings_.on_message_complete = &HttpClient::cb_message_complete;
  size_t n = targets_.size() * channels_;
  conns_ = std::make_unique<Conn[]>(n);
  for (size_t i = 0; i < n; ++i) {
    conns_[i].target = static_cast<uint32_t>(i / channels_);
    conns_[i].channel = static_cast<uint32_t>(i % channels_);
    conns_[i].owner = this;
  }
  recv_buf_ = std::make_unique<char[]>(kRecvChunkBytes);
  done_.reserve(n);
  delivering_.reserve(n);
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    TR_LOG_ERROR("poller: epoll_create1: %m");
    TR_ASSERT(epfd_ >= 0);
  }
}

HttpClient::~HttpClient() {
  size_t n = targets_.size() * channels_;
  for (size_t i = 0; i < n; ++i) {
    if (conns_[i].fd >= 0) ::close(conns_[i].fd);
  }
  if (epfd_ >= 0) ::close(epfd_);
}

void HttpClient::set_wake_fd(int fd) {
  if (wake_fd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, wake_fd_, nullptr);
  wake_fd_ = fd;
  if (fd < 0) return;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  int rc = epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  TR_ASSERT(rc == 0);
}

bool HttpClient::busy(uint32_t target, uint32_t channel) const {
  TR_ASSERT(target < targets_.size());
  TR_ASSERT(channel < channels_);
  return conns_[target * channels_ + channel].busy;
}

bool HttpClient::get(uint32_t target, uint32_t channel, std::string_view path,
                     int64_t deadline_ms) {
  TR_ASSERT(target < targets_.size());
  TR_ASSERT(channel < channels_);
  TR_ASSERT(!path.empty());
  TR_ASSERT(path.size() <= kRequestPathBytesMax);
  TR_ASSERT(path.find_first_of("\r\n ") == std::string_view::npos);
  Conn& c = conns_[target * channels_ + channel];
  if (c.busy) return false;

  c.busy = true;
  c.retried = false;
  c.deadline_ms = deadline_ms;
  c.result_status = 0;
  c.result_stage = Stage::none;
  c.out.clear();
  c.out.append("GET ").append(path).append(" HTTP/1.1\r\nHost: ");
  c.out.append(targets_[target].host_header);
  c.out.append("\r\nUser-Agent: tokenrelay-poller\r\nAccept: */*\r\n\r\n");
  ++in_flight_;
  ++stats_.requests;
  deadline_link(c);

  if (c.sock == Sock::idle && mono_ms() - c.idle_since_ms > limits_.keepalive_idle_max_ms) {
    close_conn(c);  // the server may be closing it right now; do not race it
  }
  if (c.sock == Sock::idle) {
    c.reused = true;
    ++stats_.reuses;
    start_send(c);
  } else {
    TR_DASSERT(c.sock == Sock::closed);
    c.reused = false;
    start_connect(c);
  }
  return true;
}

bool HttpClient::arm(Conn& c, uint32_t events) {
  if (c.armed == events) return true;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = index(c);
  int rc = epoll_ctl(epfd_, c.armed == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd, &ev);
  if (rc != 0) {
    // ADD may hit ENOMEM or ENOSPC (fs.epoll.max_user_watches); anything else is a bug.
    TR_ASSERT(c.armed == 0);
    TR_ASSERT(errno == ENOMEM || errno == ENOSPC);
    return false;
  }
  c.armed = events;
  return true;
}

void HttpClient::close_conn(Conn& c) {
  if (c.fd >= 0) ::close(c.fd);  // also drops it from the epoll set
  c.fd = -1;
  c.armed = 0;
  c.sock = Sock::closed;
}

void HttpClient::start_connect(Conn& c) {
  TR_DASSERT(c.fd < 0);
  const Target& t = targets_[c.target];
  int fd = ::socket(t.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(c, Stage::socket, errno);
  c.fd = fd;
  ++stats_.connects;
  if (t.addr.ss_family == AF_INET || t.addr.ss_family == AF_INET6) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&t.addr), t.addr_len);
  } while (rc < 0 && errno == EINTR);
  if (rc == 0) {
    start_send(c);
    return;
  }
  if (errno != EINPROGRESS) return fail(c, Stage::connect, errno);
  c.sock = Sock::connecting;
  if (!arm(c, kEventsOut)) return fail(c, Stage::connect, errno);
}

void HttpClient::start_send(Conn& c) {
  c.sock = Sock::sending;
  c.out_off = 0;
  c.resp_bytes = 0;
  c.head_bytes = 0;
  c.head_done = false;
  c.complete = false;
  c.too_large = false;
  c.body.clear();
  llhttp_init(&c.parser, HTTP_RESPONSE, &settings_);
  c.parser.data = &c;
  do_send(c);  // write first; arm writability only after a short write
}

void HttpClient::do_send(Conn& c) {
  while (c.out_off < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!arm(c, kEventsOut)) return fail(c, Stage::send, errno);
      return;
    }
    int err = n < 0 ? errno : EPIPE;
    if ((err == EPIPE || err == ECONNRESET) && try_retry(c)) return;
    return fail(c, Stage::send, err);
  }
  c.sock = Sock::receiving;
  if (!arm(c, kEventsIn)) return fail(c, Stage::recv, errno);
}

void HttpClient::on_connect_event(Conn& c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err != 0) return fail(c, Stage::connect, err);
  start_send(c);
}

// Readable while idle: the server closed the connection (or sent bytes nobody
// asked for). Either way it cannot carry the next request.
void HttpClient::on_idle_event(Conn& c) {
  close_conn(c);
}

void HttpClient::do_recv(Conn& c) {
  ssize_t n;
  do {
    n = ::recv(c.fd, recv_buf_.get(), kRecvChunkBytes, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    int err = errno;
    if (err == ECONNRESET && c.resp_bytes == 0 && try_retry(c)) return;
    return fail(c, Stage::recv, err);
  }
  if (n == 0) {
    if (c.resp_bytes == 0 && try_retry(c)) return;
    // Completes a close-delimited response; anything else was cut short.
    llhttp_finish(&c.parser);
    if (c.complete) return succeed(c, false);
    return fail(c, Stage::recv, ECONNRESET);
  }

  size_t len = static_cast<size_t>(n);
  c.resp_bytes += len;
  const char* data = recv_buf_.get();
  llhttp_errno_t e = llhttp_execute(&c.parser, data, len);
  if (c.too_large) return fail(c, Stage::recv, EMSGSIZE);
  if (!c.head_done) {
    c.head_bytes += len;
    if (c.head_bytes > limits_.head_bytes_max) return fail(c, Stage::recv, EMSGSIZE);
  }
  if (e == HPE_PAUSED && c.complete) {
    size_t used = static_cast<size_t>(llhttp_get_error_pos(&c.parser) - data);
    // Bytes after a response we asked for alone: the stream is out of step.
    bool keep = llhttp_should_keep_alive(&c.parser) != 0 && used == len;
    return succeed(c, keep);
  }
  if (e != HPE_OK) return fail(c, Stage::parse, EPROTO);
}

bool HttpClient::try_retry(Conn& c) {
  if (!c.reused || c.retried) return false;
  c.retried = true;
  ++stats_.retries;
  close_conn(c);
  c.reused = false;
  start_connect(c);
  return true;
}

void HttpClient::succeed(Conn& c, bool keep_alive) {
  c.result_status = static_cast<int32_t>(c.parser.status_code);
  c.result_stage = Stage::none;
  if (keep_alive) {
    TR_DASSERT(c.armed == kEventsIn);  // armed when the request went out: MOD-free
    c.sock = Sock::idle;
    c.idle_since_ms = mono_ms();
  } else {
    close_conn(c);
  }
  finish(c);
}

void HttpClient::fail(Conn& c, Stage stage, int err) {
  TR_DASSERT(err > 0);
  close_conn(c);
  c.result_status = -err;
  c.result_stage = stage;
  ++stats_.failures;
  if (err == ETIMEDOUT) ++stats_.timeouts;
  finish(c);
}

void HttpClient::finish(Conn& c) {
  TR_DASSERT(c.busy);
  deadline_unlink(c);
  done_.push_back(index(c));
}

int HttpClient::cb_headers_complete(llhttp_t* p) {
  Conn* c = static_cast<Conn*>(p->data);
  c->head_done = true;
  // We never send Expect: or Upgrade:, so an informational answer is a protocol error.
  if (p->status_code < 200) return -1;
  return 0;
}

int HttpClient::cb_body(llhttp_t* p, const char* at, size_t n) {
  Conn* c = static_cast<Conn*>(p->data);
  if (c->body.size() + n > c->owner->limits_.body_bytes_max) {
    c->too_large = true;
    return -1;
  }
  c->body.append(at, n);
  return 0;
}

int HttpClient::cb_message_complete(llhttp_t* p) {
  Conn* c = static_cast<Conn*>(p->data);
  c->complete = true;
  return HPE_PAUSED;  // stop right after the message
}

void HttpClient::deadline_link(Conn& c) {
  // Requests mostly arrive with non-decreasing deadlines: walk from the tail.
  int32_t i = index(c);
  int32_t after = dl_tail_;
  while (after >= 0 && conns_[after].deadline_ms > c.deadline_ms)
    after = conns_[after].dl_prev;
  c.dl_prev = after;
  c.dl_next = after >= 0 ? conns_[after].dl_next : dl_head_;
  if (c.dl_next >= 0) {
    conns_[c.dl_next].dl_prev = i;
  } else {
    dl_tail_ = i;
  }
  if (after >= 0) {
    conns_[after].dl_next = i;
  } else {
    dl_head_ = i;
  }
}

void HttpClient::deadline_unlink(Conn& c) {
  if (c.dl_prev >= 0) {
    conns_[c.dl_prev].dl_next = c.dl_next;
  } else {
    TR_DASSERT(dl_head_ == static_cast<int32_t>(index(c)));
    dl_head_ = c.dl_next;
  }
  if (c.dl_next >= 0) {
    conns_[c.dl_next].dl_prev = c.dl_prev;
  } else {
    TR_DASSERT(dl_tail_ == static_cast<int32_t>(index(c)));
    dl_tail_ = c.dl_prev;
  }
  c.dl_prev = -1;
  c.dl_next = -1;
}

void HttpClient::expire(int64_t now_ms) {
  while (dl_head_ >= 0 && conns_[dl_head_].deadline_ms <= now_ms) {
    Conn& c = conns_[dl_head_];
    Stage stage = c.sock == Sock::connecting ? Stage::connect
                  : c.sock == Sock::sending  ? Stage::send
                                             : Stage::recv;
    fail(c, stage, ETIMEDOUT);  // unlinks c
  }
}

void HttpClient::deliver() {
  // The handler may start requests, which may end at once and queue more.
  while (!done_.empty()) {
    delivering_.swap(done_);
    for (uint32_t i : delivering_) {
      Conn& c = conns_[i];
      TR_DASSERT(c.busy);
      c.busy = false;
      --in_flight_;
      Response r;
      r.status = c.result_status;
      r.stage = c.result_stage;
      if (r.status > 0) r.body = c.body;
      handler_->on_response(c.target, c.channel, r);
    }
    delivering_.clear();
  }
}

bool HttpClient::run(int64_t wait_until_ms) {
  int64_t now = mono_ms();
  int64_t until = wait_until_ms;
  if (dl_head_ >= 0) until = std::min(until, conns_[dl_head_].deadline_ms);
  int timeout_ms = 0;
  if (done_.empty() && until > now) {
    timeout_ms = static_cast<int>(std::min<int64_t>(until - now, INT_MAX));
  }
  epoll_event events[kEpollBatch];
  int n = epoll_wait(epfd_, events, kEpollBatch, timeout_ms);
  if (n < 0) {
    TR_ASSERT(errno == EINTR);  // EBADF/EFAULT/EINVAL would be our bug
    n = 0;
  }
  bool woke = false;
  for (int k = 0; k < n; ++k) {
    if (events[k].data.u64 == kWakeTag) {
      woke = true;
      continue;
    }
    Conn& c = conns_[events[k].data.u64];
    if (c.fd < 0) continue;  // closed by an earlier event in this batch
    switch (c.sock) {
      case Sock::idle:
        on_idle_event(c);
        break;
      case Sock::connecting:
        on_connect_event(c);
        break;
      case Sock::sending:
        do_send(c);
        break;
      case Sock::receiving:
        do_recv(c);
        break;
      case Sock::closed:
        break;
    }
  }
  expire(mono_ms());
  deliver();
  return woke;
}

}  // namespace tr::poller
