// io_uring backend. One ring per worker thread, created on that thread.
//  - setup flags: a ladder from SINGLE_ISSUER|DEFER_TASKRUN down to none, first
//    the kernel accepts wins (describe() says which);
//  - accept: multishot; recv: multishot into one provided-buffer ring (group 0)
//    whose buffers are the BufferPool's, so received bytes can be sent onward
//    from where the kernel put them; falls back to single-shot buffer-select recv
//    if the kernel rejects multishot recv;
//  - send: sendmsg over the socket's iovecs; connect: linked timeout;
//  - close: shutdown (peer sees FIN now) + cancel by fd, close when the last
//    CQE for the socket has arrived.
// user_data = Socket* | Op (Sockets are 8-byte aligned).
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/assert.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"
#include "io/loop.hpp"

namespace tr::io {

namespace {

enum Op : uint64_t {
  kAccept = 1,
  kRecv = 2,
  kSend = 3,
  kConnect = 4,
  kLinkTimeout = 5,
  kWake = 6,
  kIgnore = 7,
};
constexpr uint64_t kOpMask = 7;
constexpr int kBufGroup = 0;

uint64_t tag(Socket* s, Op op) {
  return reinterpret_cast<uint64_t>(s) | op;
}

struct SetupRung {
  unsigned flags;
  const char* name;
};
const SetupRung kLadder[] = {
    {IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
     "single_issuer+defer_taskrun"},
    {IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
    {IORING_SETUP_SUBMIT_ALL, "submit_all"},
    {0, "no setup flags"},
};

}  // namespace

class UringLoop final : public Loop {
 public:
  UringLoop(const LoopOptions& opt) : Loop(opt.buf_bytes, opt.buf_count) {}

  ~UringLoop() override {
    if (br_) {
      io_uring_unregister_buf_ring(&ring_, kBufGroup);
      munmap(br_, br_bytes_);
    }
    if (ring_ok_) io_uring_queue_exit(&ring_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  // Returns false with <why> set when this kernel or sandbox cannot run us.
  bool init(const LoopOptions& opt, char* why, size_t why_len) {
    int err = -EINVAL;
    const char* rung_name = nullptr;
    for (const SetupRung& rung : kLadder) {
      io_uring_params p;
      std::memset(&p, 0, sizeof p);
      p.flags = rung.flags;
      err = io_uring_queue_init_params(opt.ring_entries, &ring_, &p);
      if (err == 0) {
        rung_name = rung.name;
        features_ = p.features;
        break;
      }
      if (err != -EINVAL) break;  // ENOSYS, EPERM, ENOMEM: no rung will help
    }
    if (err != 0) {
      std::snprintf(why, why_len, "io_uring_setup: %s", std::strerror(-err));
      return false;
    }
    ring_ok_ = true;
    if (!(features_ & IORING_FEAT_NODROP) || !(features_ & IORING_FEAT_FAST_POLL)) {
      std::snprintf(why, why_len, "kernel io_uring lacks NODROP/FAST_POLL (needs >= 5.19)");
      return false;
    }
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (!probe) {
      std::snprintf(why, why_len, "io_uring probe failed");
      return false;
    }
    const int needed[] = {IORING_OP_ACCEPT,  IORING_OP_RECV,         IORING_OP_SENDMSG,
                          IORING_OP_CONNECT, IORING_OP_LINK_TIMEOUT, IORING_OP_ASYNC_CANCEL,
                          IORING_OP_POLL_ADD};
    for (int op : needed) {
      if (!io_uring_opcode_supported(probe, op)) {
        io_uring_free_probe(probe);
        std::snprintf(why, why_len, "io_uring opcode %d not supported", op);
        return false;
      }
    }
    io_uring_free_probe(probe);

    // Provided-buffer ring over the pool's memory.
    br_bytes_ = sizeof(io_uring_buf) * pool_.count();
    void* mem =
        mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      std::snprintf(why, why_len, "mmap buffer ring: %s", std::strerror(errno));
      return false;
    }
    br_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg;
    std::memset(&reg, 0, sizeof reg);
    reg.ring_addr = reinterpret_cast<uint64_t>(br_);
    reg.ring_entries = pool_.count();
    reg.bgid = kBufGroup;
    err = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (err != 0) {
      munmap(br_, br_bytes_);
      br_ = nullptr;
      std::snprintf(why, why_len, "io_uring_register_buf_ring: %s (needs >= 5.19)",
                    std::strerror(-err));
      return false;
    }
    br_mask_ = io_uring_buf_ring_mask(pool_.count());
    for (uint32_t i = 0; i < pool_.count(); ++i) {
      io_uring_buf_ring_add(br_, pool_.data(i), pool_.buf_bytes(), i, br_mask_, i);
    }
    io_uring_buf_ring_advance(br_, static_cast<int>(pool_.count()));
    pool_.set_recycler(&UringLoop::recycle_thunk, this);

    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
      std::snprintf(why, why_len, "eventfd: %s", std::strerror(errno));
      return false;
    }
    arm_wake();
    std::snprintf(describe_, sizeof describe_,
                  "io_uring (%s, multishot accept+recv, provided buffers %ux%u B)", rung_name,
                  pool_.count(), pool_.buf_bytes());
    return true;
  }

  Backend backend() const override { return Backend::io_uring; }
  const char* describe() const override { return describe_; }

  void listen(Socket* s) override {
    s->listener_ = true;
    arm_accept(s);
  }

  void recv_start(Socket* s) override {
    if (s->closing_) return;
    s->want_recv_ = true;
    if (!s->recv_armed_ && !s->waiting_bufs_) arm_recv(s);
  }

  void recv_stop(Socket* s) override {
    s->want_recv_ = false;
    forget_buffer_waiter(s);
    if (s->recv_armed_ && !s->closing_) {
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, tag(s, kRecv), 0);
      io_uring_sqe_set_data64(sqe, kIgnore);
    }
  }

  void send(Socket* s) override {
    TR_ASSERT(!s->send_inflight_);
    TR_ASSERT(!s->closing_);
    TR_ASSERT(s->iovcnt > 0);
    s->msg_.msg_iov = s->iov;
    s->msg_.msg_iovlen = static_cast<size_t>(s->iovcnt);
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_sendmsg(sqe, s->fd, &s->msg_, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(s, kSend));
    s->send_inflight_ = true;
    ++s->pending_;
  }

  void connect(Socket* s, const sockaddr* addr, socklen_t len, uint32_t timeout_ms) override {
    TR_ASSERT(len <= sizeof s->peer_);
    std::memcpy(&s->peer_, addr, len);
    s->peer_len_ = len;
    s->ts_.tv_sec = timeout_ms / 1000;
    s->ts_.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1'000'000;
    io_uring_sqe* sqe = get_sqe2();
    io_uring_prep_connect(sqe, s->fd, reinterpret_cast<sockaddr*>(&s->peer_), s->peer_len_);
    io_uring_sqe_set_data64(sqe, tag(s, kConnect));
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe* t = io_uring_get_sqe(&ring_);
    io_uring_prep_link_timeout(t, &s->ts_, 0);
    io_uring_sqe_set_data64(t, tag(s, kLinkTimeout));
    s->connecting_ = true;
    s->pending_ += 2;
  }

  void close(Socket* s) override {
    if (s->closing_) return;
    s->closing_ = true;
    s->want_recv_ = false;
    forget_buffer_waiter(s);
    if (s->fd >= 0 && !s->listener_) ::shutdown(s->fd, SHUT_RDWR);
    if (s->pending_ > 0) {
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel_fd(sqe, s->fd, IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, kIgnore);
      return;  // finish_close() when the last CQE arrives
    }
    finish_close(s);
  }

  void wake() override {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
  }

  void run() override {
    while (!stopping_) {
      flush_buffer_returns();
      int64_t now = mono_ms();
      int64_t wait_ms = timers_.next_in_ms(now);
      if (!closed_.empty()) wait_ms = 0;
      io_uring_cqe* cqe = nullptr;
      int rc;
      if (wait_ms < 0) {
        rc = io_uring_submit_and_wait(&ring_, 1);
      } else {
        __kernel_timespec ts;
        ts.tv_sec = wait_ms / 1000;
        ts.tv_nsec = (wait_ms % 1000) * 1'000'000;
        rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      }
      if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
        TR_LOG_ERROR("io_uring_submit_and_wait: %s", std::strerror(-rc));
      }
      unsigned head;
      unsigned n = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++n;
        dispatch(cqe->user_data, cqe->res, cqe->flags);
      }
      io_uring_cq_advance(&ring_, n);
      report_closed();
      timers_.fire_due(mono_ms());
    }
    flush_buffer_returns();
    io_uring_submit(&ring_);
  }

 private:
  static void recycle_thunk(void* self, uint16_t bid) {
    static_cast<UringLoop*>(self)->recycle(bid);
  }

  void recycle(uint16_t bid) {
    io_uring_buf_ring_add(br_, pool_.data(bid), pool_.buf_bytes(), bid, br_mask_, br_pending_++);
    pool_.on_returned();
    // A multishot recv stopped with ENOBUFS: restart one waiter per freed buffer.
    if (Socket* w = take_buffer_waiter()) {
      if (w->want_recv_ && !w->closing_ && !w->recv_armed_) arm_recv(w);
    }
  }

  void flush_buffer_returns() {
    if (br_pending_ == 0) return;
    io_uring_buf_ring_advance(br_, br_pending_);
    br_pending_ = 0;
  }

  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe) return sqe;
    flush_buffer_returns();
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    TR_ASSERT(sqe != nullptr);
    return sqe;
  }

  // Two SQEs in a row (a linked pair must not straddle a submit).
  io_uring_sqe* get_sqe2() {
    if (io_uring_sq_space_left(&ring_) < 2) {
      flush_buffer_returns();
      io_uring_submit(&ring_);
    }
    return get_sqe();
  }

  void arm_accept(Socket* s) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, s->fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(s, kAccept));
    s->recv_armed_ = true;
    ++s->pending_;
  }

  void arm_recv(Socket* s) {
    io_uring_sqe* sqe = get_sqe();
    if (multishot_recv_) {
      io_uring_prep_recv_multishot(sqe, s->fd, nullptr, 0, 0);
    } else {
      io_uring_prep_recv(sqe, s->fd, nullptr, pool_.buf_bytes(), 0);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kBufGroup;
    io_uring_sqe_set_data64(sqe, tag(s, kRecv));
    s->recv_armed_ = true;
    ++s->pending_;
  }

  void arm_wake() {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_multishot(sqe, wake_fd_, POLLIN);
    io_uring_sqe_set_data64(sqe, kWake);
  }

  void dispatch(uint64_t ud, int res, unsigned flags) {
    uint64_t op = ud & kOpMask;
    if (op == kIgnore) return;
    if (op == kWake) {
      uint64_t v;
      ssize_t n = ::read(wake_fd_, &v, sizeof v);
      (void)n;
      if (!(flags & IORING_CQE_F_MORE)) arm_wake();
      fire_wake();
      return;
    }
    Socket* s = reinterpret_cast<Socket*>(ud & ~kOpMask);
    switch (op) {
      case kAccept:
        on_accept_cqe(s, res, flags);
        break;
      case kRecv:
        on_recv_cqe(s, res, flags);
        break;
      case kSend:
        --s->pending_;
        s->send_inflight_ = false;
        if (!s->closing_) s->handler->on_send(s, res);
        break;
      case kConnect:
        --s->pending_;
        s->connecting_ = false;
        if (!s->closing_) s->handler->on_connect(s, res == -ECANCELED ? -ETIMEDOUT : res);
        break;
      case kLinkTimeout:
        --s->pending_;
        break;
      default:
        TR_ASSERT(false && "unknown io_uring op tag");
    }
    if (s->closing_ && s->pending_ == 0 && s->fd >= 0) finish_close(s);
  }

  void on_accept_cqe(Socket* s, int res, unsigned flags) {
    bool more = flags & IORING_CQE_F_MORE;
    if (!more) {
      --s->pending_;
      s->recv_armed_ = false;
    }
    if (res >= 0) {
      // Also while the listener is closing (the cancel is not submitted yet):
      // the kernel has completed the handshake and the client may already have
      // sent its request; closing here would reset it. The handler serves it.
      tune_accepted(res);
      s->handler->on_accept(s, res);
    } else if (res != -ECANCELED) {
      TR_LOG_WARN("accept: %s", std::strerror(-res));
    }
    if (!more && !s->closing_) arm_accept(s);
  }

  void on_recv_cqe(Socket* s, int res, unsigned flags) {
    bool more = (flags & IORING_CQE_F_MORE) && multishot_recv_;
    if (!more) {
      --s->pending_;
      s->recv_armed_ = false;
    }
    if (res > 0) {
      TR_ASSERT(flags & IORING_CQE_F_BUFFER);
      uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      pool_.on_handed_out(bid);
      if (s->closing_) {
        pool_.unref(bid);
        return;
      }
      // Delivered even after recv_stop: the bytes were already taken off the socket.
      s->handler->on_recv(s, bid, pool_.data(bid), static_cast<uint32_t>(res));
      if (!more && s->want_recv_ && !s->closing_ && !s->recv_armed_) arm_recv(s);
      return;
    }
    if (s->closing_) return;
    if (res == 0) {
      s->want_recv_ = false;
      s->handler->on_recv_end(s, 0);
      return;
    }
    switch (-res) {
      case ENOBUFS:
        if (s->want_recv_) wait_for_buffers(s);
        return;
      case ECANCELED:
        if (s->want_recv_ && !s->recv_armed_) arm_recv(s);  // stop then start again
        return;
      case EINVAL:
        if (multishot_recv_) {
          multishot_recv_ = false;
          TR_LOG_WARN("io_uring: multishot recv rejected; using single-shot recv");
          if (s->want_recv_) arm_recv(s);
          return;
        }
        break;
      default:
        break;
    }
    s->want_recv_ = false;
    s->handler->on_recv_end(s, res);
  }

  void finish_close(Socket* s) {
    if (s->fd >= 0) ::close(s->fd);
    s->fd = -1;
    closed_.push_back(s);
  }

  void report_closed() {
    while (!closed_.empty()) {
      std::vector<Socket*> batch;
      batch.swap(closed_);
      for (Socket* s : batch)
        s->handler->on_closed(s);
    }
  }

  io_uring ring_{};
  bool ring_ok_ = false;
  unsigned features_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  size_t br_bytes_ = 0;
  int br_mask_ = 0;
  int br_pending_ = 0;
  int wake_fd_ = -1;
  bool multishot_recv_ = true;
  std::vector<Socket*> closed_;
  char describe_[160] = "io_uring";
};

Loop* make_uring_loop(const LoopOptions& opt, char* why, size_t why_len) {
  // Fault injection for tests: behave as a kernel without io_uring would.
  if (getenv("TOKENRELAY_FAKE_NO_IO_URING") != nullptr) {
    std::snprintf(why, why_len, "io_uring_setup: %s (TOKENRELAY_FAKE_NO_IO_URING is set)",
                  std::strerror(ENOSYS));
    return nullptr;
  }
  auto* l = new UringLoop(opt);
  if (!l->init(opt, why, why_len)) {
    delete l;
    return nullptr;
  }
  return l;
}

bool probe_io_uring(char* why, size_t why_len) {
  LoopOptions opt;
  opt.buf_count = 64;
  opt.buf_bytes = 4096;
  opt.ring_entries = 64;
  Loop* l = make_uring_loop(opt, why, why_len);
  if (!l) return false;
  std::snprintf(why, why_len, "%s", l->describe());
  delete l;
  return true;
}

}  // namespace tr::io
