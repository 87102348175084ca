// The event loop interface every connection is written against. Two backends
// implement it: io_uring (src/io/uring_loop.cpp) and epoll (src/io/epoll_loop.cpp).
// The model is completion-based (the io_uring model): the caller starts an
// operation on a Socket it owns, and the loop later calls the Socket's handler
// with the result. The epoll backend emulates completions; in particular it
// never calls a handler from inside the call that started the operation, so
// handlers need not be re-entrant.
//
// Ownership rules:
//  - A Socket is owned by its handler's object. After loop.close(s) the loop
//    delivers no further callback but on_closed(s); only then may the owner free it.
//  - Received data lives in pool buffers (BufferPool). on_recv hands the handler one
//    reference; the handler sends the bytes from that buffer (OutQueue) and drops the
//    reference with pool.unref() when done. This is the zero-copy response path.
//  - At most one send per Socket is in flight; OutQueue (out_queue.hpp) serialises.
#pragma once

#include <linux/time_types.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>

#include "io/buffer_pool.hpp"
#include "io/timer.hpp"

namespace tr::io {

class Socket;

// Callbacks a socket owner implements. Defaults abort-free no-ops so a listener
// handler need not implement the stream callbacks and vice versa.
class SocketHandler {
 public:
  // A listener accepted <fd> (already CLOEXEC; non-blocking under epoll).
  virtual void on_accept(Socket* listener, int fd) { (void)listener, (void)fd; }
  // <len> bytes arrived in pool buffer <bid> at <data>; one reference is passed on.
  virtual void on_recv(Socket* s, uint16_t bid, char* data, uint32_t len) = 0;
  // Receiving ended: 0 = orderly EOF, <0 = -errno. recv is off afterwards.
  virtual void on_recv_end(Socket* s, int err) = 0;
  // The send started with Loop::send finished: bytes written (may be short) or -errno.
  virtual void on_send(Socket* s, int res) = 0;
  // connect finished: 0 or -errno (-ETIMEDOUT when the deadline passed).
  virtual void on_connect(Socket* s, int res) { (void)s, (void)res; }
  // Every operation has finished and the fd is closed; the Socket may be freed.
  virtual void on_closed(Socket* s) = 0;

 protected:
  ~SocketHandler() = default;
};

inline constexpr int kMaxSendIov = 32;

// Per-socket state shared by the caller and the loop. Kept in the owning
// connection object (no separate allocation). Fields below "loop state" belong
// to the backend.
class Socket {
 public:
  int fd = -1;
  SocketHandler* handler = nullptr;

  // Send buffers the backend reads from while a send is in flight.
  iovec iov[kMaxSendIov];
  int iovcnt = 0;

  bool closing() const { return closing_; }
  bool recv_on() const { return want_recv_; }
  bool send_busy() const { return send_inflight_; }

  // ---- loop state (backends only) ----
  msghdr msg_{};
  uint16_t pending_ = 0;  // operations (or deferred completions) outstanding
  bool closing_ = false;
  bool want_recv_ = false;   // the owner wants data
  bool recv_armed_ = false;  // io_uring: multishot recv outstanding
  bool send_inflight_ = false;
  bool connecting_ = false;
  bool listener_ = false;
  bool waiting_bufs_ = false;  // recv paused until a pool buffer frees up
  bool closed_reported_ = false;
  bool ep_registered_ = false;   // epoll: fd added to the epoll set
  bool send_blocked_ = false;    // epoll: send waits for EPOLLOUT
  uint32_t ep_mask_ = 0;         // epoll: events registered
  Socket* next_wait_ = nullptr;  // intrusive list of sockets waiting for buffers
  sockaddr_storage peer_{};      // connect target (must outlive the operation)
  socklen_t peer_len_ = 0;
  __kernel_timespec ts_{};  // io_uring: linked connect timeout
  Timer conn_timer_;        // epoll: connect deadline
};

enum class Backend { io_uring, epoll };

class Loop {
 public:
  virtual ~Loop() = default;
  virtual Backend backend() const = 0;
  // One-line description of the backend and setup flags actually in use.
  virtual const char* describe() const = 0;

  // Start accepting on a bound, listening socket (stop with close()).
  virtual void listen(Socket* s) = 0;
  // Start delivering received data to s->handler until recv_stop, EOF or error.
  virtual void recv_start(Socket* s) = 0;
  // Stop delivering. Data already received may still arrive (io_uring cancel race).
  virtual void recv_stop(Socket* s) = 0;
  // Send s->iov[0..s->iovcnt). The iovecs and the bytes they point at must stay
  // valid until on_send.
  virtual void send(Socket* s) = 0;
  // Connect a socket created by new_stream_socket(); on_connect by the deadline.
  virtual void connect(Socket* s, const sockaddr* addr, socklen_t len, uint32_t timeout_ms) = 0;
  // Close: cancels outstanding operations, shuts the connection down (the peer
  // sees FIN at once, which is how vLLM learns of an abort), then on_closed.
  virtual void close(Socket* s) = 0;

  // Create a TCP socket with the flags this backend wants (CLOEXEC; NONBLOCK for
  // epoll) and TCP_NODELAY set. Returns -errno on failure.
  int new_stream_socket(int family);
  // Applies per-connection options to an accepted socket (TCP_NODELAY).
  static void tune_accepted(int fd);

  // Run until stop() is called from a handler or timer on this thread.
  virtual void run() = 0;
  void stop() { stopping_ = true; }
  // Thread-safe: interrupt a wait so the loop checks its wake flag. The owner's
  // wake handler (set_wake_handler) then runs on the loop thread.
  virtual void wake() = 0;
  void set_wake_handler(void (*fn)(void*), void* arg) { wake_fn_ = fn, wake_arg_ = arg; }

  BufferPool& pool() { return pool_; }
  Timers& timers() { return timers_; }

 protected:
  explicit Loop(uint32_t buf_bytes, uint32_t buf_count) : pool_(buf_bytes, buf_count) {}
  void fire_wake() {
    if (wake_fn_) wake_fn_(wake_arg_);
  }
  // Sockets whose recv paused for lack of buffers, resumed as buffers free up.
  void wait_for_buffers(Socket* s);
  Socket* take_buffer_waiter();
  void forget_buffer_waiter(Socket* s);

  BufferPool pool_;
  Timers timers_;
  bool stopping_ = false;
  void (*wake_fn_)(void*) = nullptr;
  void* wake_arg_ = nullptr;
  Socket* wait_head_ = nullptr;
  Socket* wait_tail_ = nullptr;
};

struct LoopOptions {
  enum class Want { automatic, io_uring, epoll } want = Want::automatic;
  uint32_t buf_bytes = 16384;
  uint32_t buf_count = 4096;
  uint32_t ring_entries = 4096;
};

// Creates the loop for the calling thread (io_uring rings are created by the
// thread that uses them: SINGLE_ISSUER). With Want::automatic, io_uring is tried
// first and epoll is used when it fails. <why> receives a one-line reason for the
// choice (for the start-up log). Returns nullptr and sets <why> when the asked-for
// backend cannot be created.
Loop* make_loop(const LoopOptions& opt, char* why, size_t why_len);

// Probes whether io_uring can be used here (setup + the features we need). Used by
// main to log the choice once; each worker still falls back on its own.
bool probe_io_uring(char* why, size_t why_len);

}  // namespace tr::io
