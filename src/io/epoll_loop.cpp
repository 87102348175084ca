// epoll backend: the same completion interface over readiness. Level-triggered;
// reads go into pool buffers taken from a free stack (LIFO keeps hot buffers hot);
// sends are written at once ("write first") and wait for EPOLLOUT only when the
// socket buffer is full. Every completion is queued and delivered from the loop,
// never from inside the call that started the operation.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"
#include "io/loop.hpp"

namespace tr::io {

namespace {
enum class Done : uint8_t { send, connect, closed };
constexpr int kReadsPerWakeup = 16;
}  // namespace

class EpollLoop final : public Loop, private TimerHandler {
 public:
  explicit EpollLoop(const LoopOptions& opt) : Loop(opt.buf_bytes, opt.buf_count) {}

  ~EpollLoop() override {
    if (epfd_ >= 0) ::close(epfd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  bool init(char* why, size_t why_len) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epfd_ < 0 || wake_fd_ < 0) {
      std::snprintf(why, why_len, "epoll_create1/eventfd: %s", std::strerror(errno));
      return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &wake_fd_;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev);
    free_.reserve(pool_.count());
    for (uint32_t i = pool_.count(); i-- > 0;)
      free_.push_back(static_cast<uint16_t>(i));
    pool_.set_recycler(&EpollLoop::recycle_thunk, this);
    return true;
  }

  Backend backend() const override { return Backend::epoll; }
  const char* describe() const override { return "epoll"; }

  void listen(Socket* s) override {
    s->listener_ = true;
    s->want_recv_ = true;
    update(s);
  }

  void recv_start(Socket* s) override {
    if (s->closing_) return;
    s->want_recv_ = true;
    update(s);
  }

  void recv_stop(Socket* s) override {
    s->want_recv_ = false;
    forget_buffer_waiter(s);
    update(s);
  }

  void send(Socket* s) override {
    TR_ASSERT(!s->send_inflight_);
    TR_ASSERT(!s->closing_);
    TR_ASSERT(s->iovcnt > 0);
    s->send_inflight_ = true;
    ++s->pending_;
    try_send(s);
  }

  void connect(Socket* s, const sockaddr* addr, socklen_t len, uint32_t timeout_ms) override {
    ++s->pending_;
    int rc = ::connect(s->fd, addr, len);
    if (rc == 0) {
      defer(s, Done::connect, 0);
      return;
    }
    if (errno != EINPROGRESS) {
      defer(s, Done::connect, -errno);
      return;
    }
    s->connecting_ = true;
    s->conn_timer_.handler = this;
    s->conn_timer_.tag = reinterpret_cast<uintptr_t>(s);
    timers_.arm(&s->conn_timer_, mono_ms(), timeout_ms);
    update(s);
  }

  void close(Socket* s) override {
    if (s->closing_) return;
    s->closing_ = true;
    s->want_recv_ = false;
    forget_buffer_waiter(s);
    timers_.disarm(&s->conn_timer_);
    if (s->ep_registered_) epoll_ctl(epfd_, EPOLL_CTL_DEL, s->fd, nullptr);
    s->ep_registered_ = false;
    if (s->fd >= 0) {
      if (!s->listener_) ::shutdown(s->fd, SHUT_RDWR);
      ::close(s->fd);
    }
    s->fd = -1;
    // Operations that were waiting on readiness will never complete; completions
    // already queued are skipped (closing) and on_closed comes after them.
    s->send_inflight_ = false;
    s->send_blocked_ = false;
    s->connecting_ = false;
    defer(s, Done::closed, 0);
  }

  void wake() override {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
  }

  void run() override {
    epoll_event events[256];
    while (!stopping_) {
      deliver_deferred();
      if (stopping_) break;
      int64_t now = mono_ms();
      int64_t wait_ms = timers_.next_in_ms(now);
      if (!deferred_.empty()) wait_ms = 0;
      int n = epoll_wait(epfd_, events, 256, static_cast<int>(wait_ms));
      if (n < 0 && errno != EINTR) TR_LOG_ERROR("epoll_wait: %s", std::strerror(errno));
      for (int i = 0; i < n; ++i) {
        if (events[i].data.ptr == &wake_fd_) {
          uint64_t v;
          ssize_t r = ::read(wake_fd_, &v, sizeof v);
          (void)r;
          fire_wake();
          continue;
        }
        on_event(static_cast<Socket*>(events[i].data.ptr), events[i].events);
      }
      deliver_deferred();
      timers_.fire_due(mono_ms());
    }
  }

 private:
  struct Deferred {
    Socket* s;
    Done what;
    int res;
  };

  static void recycle_thunk(void* self, uint16_t bid) {
    static_cast<EpollLoop*>(self)->recycle(bid);
  }

  void recycle(uint16_t bid) {
    free_.push_back(bid);
    pool_.on_returned();
    if (Socket* w = take_buffer_waiter()) update(w);
  }

  void defer(Socket* s, Done what, int res) { deferred_.push_back(Deferred{s, what, res}); }

  void deliver_deferred() {
    while (!deferred_.empty()) {
      batch_.clear();
      batch_.swap(deferred_);
      for (const Deferred& d : batch_) {
        Socket* s = d.s;
        if (d.what == Done::closed) {
          s->pending_ = 0;
          s->handler->on_closed(s);
          continue;
        }
        if (s->closing_) continue;
        --s->pending_;
        if (d.what == Done::send) {
          s->send_inflight_ = false;
          s->handler->on_send(s, d.res);
        } else {
          s->connecting_ = false;
          s->handler->on_connect(s, d.res);
        }
      }
    }
  }

  // Registers exactly the events this socket's state needs.
  void update(Socket* s) {
    if (s->closing_ || s->fd < 0) return;
    uint32_t mask = 0;
    if (s->want_recv_ && !s->waiting_bufs_) mask |= EPOLLIN | EPOLLRDHUP;
    if (s->send_blocked_ || s->connecting_) mask |= EPOLLOUT;
    if (s->ep_registered_ && mask == s->ep_mask_) return;
    epoll_event ev{};
    ev.events = mask;
    ev.data.ptr = s;
    int rc = epoll_ctl(epfd_, s->ep_registered_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev);
    if (rc != 0) TR_LOG_ERROR("epoll_ctl fd %d: %s", s->fd, std::strerror(errno));
    s->ep_registered_ = true;
    s->ep_mask_ = mask;
  }

  void try_send(Socket* s) {
    s->msg_.msg_iov = s->iov;
    s->msg_.msg_iovlen = static_cast<size_t>(s->iovcnt);
    ssize_t n;
    do {
      n = ::sendmsg(s->fd, &s->msg_, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!s->send_blocked_) {
        s->send_blocked_ = true;
        update(s);
      }
      return;
    }
    if (s->send_blocked_) {
      s->send_blocked_ = false;
      update(s);
    }
    defer(s, Done::send, n < 0 ? -errno : static_cast<int>(n));
  }

  void on_event(Socket* s, uint32_t ev) {
    if (s->closing_) return;
    if (s->listener_) {
      accept_some(s);
      return;
    }
    if (s->connecting_ && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      s->connecting_ = false;
      timers_.disarm(&s->conn_timer_);
      update(s);
      defer(s, Done::connect, -err);
      return;
    }
    if (s->send_blocked_ && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) try_send(s);
    if (s->closing_) return;
    if (s->want_recv_ && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) read_some(s);
  }

  void accept_some(Socket* s) {
    for (int i = 0; i < 64 && !s->closing_; ++i) {
      int fd = accept4(s->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED) {
          TR_LOG_WARN("accept: %s", std::strerror(errno));
        }
        return;
      }
      tune_accepted(fd);
      s->handler->on_accept(s, fd);
    }
  }

  void read_some(Socket* s) {
    for (int i = 0; i < kReadsPerWakeup && s->want_recv_ && !s->closing_; ++i) {
      if (free_.empty()) {
        wait_for_buffers(s);
        update(s);
        return;
      }
      uint16_t bid = free_.back();
      free_.pop_back();
      char* data = pool_.data(bid);
      ssize_t n = ::recv(s->fd, data, pool_.buf_bytes(), 0);
      if (n > 0) {
        pool_.on_handed_out(bid);
        s->handler->on_recv(s, bid, data, static_cast<uint32_t>(n));
        if (static_cast<uint32_t>(n) < pool_.buf_bytes()) return;  // drained for now
        continue;
      }
      free_.push_back(bid);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n < 0 && errno == EINTR) continue;
      s->want_recv_ = false;
      update(s);
      s->handler->on_recv_end(s, n == 0 ? 0 : -errno);
      return;
    }
  }

  void on_timer(uintptr_t tag) override {
    Socket* s = reinterpret_cast<Socket*>(tag);
    if (!s->connecting_ || s->closing_) return;
    s->connecting_ = false;
    update(s);
    defer(s, Done::connect, -ETIMEDOUT);
  }

  int epfd_ = -1;
  int wake_fd_ = -1;
  std::vector<uint16_t> free_;
  std::vector<Deferred> deferred_;
  std::vector<Deferred> batch_;
};

Loop* make_epoll_loop(const LoopOptions& opt, char* why, size_t why_len) {
  auto* l = new EpollLoop(opt);
  if (!l->init(why, why_len)) {
    delete l;
    return nullptr;
  }
  return l;
}

}  // namespace tr::io
